"""Tests of the collection: `pytest test_smoke.py` (a few minutes on 2 CPU cores, no network, no GPU).

Every script runs end to end as a user runs it (its __main__, with tiny settings, in a temporary folder)
and as a notebook runs it (IPython with no __file__ and the kernel's own arguments, and a real Jupyter
kernel for the pictures); then the pieces users rely on, one by one: settings, downloads, the Atticus
parser, the lecture's classes and their switches, step 3's changes and the settings that take them back,
the tokenizers, checkpoints and exact resume, and every kind of mistake. Nothing depends on the clock: a
busy machine only makes the tests slower. The tests that need a CUDA GPU are skipped without one.
"""

import ast
import doctest
import functools
import hashlib
import http.server
import importlib.util
import itertools
import math
import os
import re
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import threading

import pytest
import torch
from torch.nn import functional as F

ROOT = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(ROOT, "data")
SCRIPTS = ["bigram", "gpt_char", "gpt_bpe", "sort_task"]
SMALL = dict(device="cpu", max_iters=4, eval_interval=2, eval_iters=2, log_interval=1)
TINY = {  # settings small enough that a whole run takes a second or two
    "bigram": dict(SMALL, batch_size=8, block_size=16, max_new_tokens=40),
    "gpt_char": dict(SMALL, batch_size=8, block_size=16, max_new_tokens=40, n_layer=1, n_head=2, n_embd=16),
    "gpt_bpe": dict(SMALL, batch_size=8, block_size=16, max_new_tokens=40, n_layer=1, n_head=2, n_embd=16),
    "sort_task": dict(SMALL, eval_iters=1, n_layer=1, n_head=2, n_embd=16),
}
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # threads that never fight
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
EVAL = re.compile(
    r"^step (\d+)/(\d+) \| evaluating: train ([\d.]+) \| val ([\d.]+) \| "
    r"(?:val bpc ([\d.]+)|held-out sorted ([\d.]+)%) \| \d+:\d\d:\d\d$",
    re.M,
)
PROGRESS = re.compile(
    r"^step (\d+)/\d+ \| loss ([\d.]+) \| ([\d,]+) tok/s \| \d+:\d\d:\d\d left$", re.M
)
SAMPLE_MARK = "--- sample"
_count = itertools.count()
torch.set_num_threads(1)  # the runs in this process, too


def load(script, folder=ROOT):
    """A fresh copy of a script as a module (its main() not run), so that tests do not share globals."""
    spec = importlib.util.spec_from_file_location(
        f"{script}_{next(_count)}", os.path.join(folder, f"{script}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_args(script):
    return [f"{k}={v}" for k, v in TINY[script].items()]


def run(script, args, monkeypatch, capsys, tiny=True, folder=ROOT):
    """`python SCRIPT.py [tiny settings] args`, run in this process (runpy, as __main__, the guard and its
    error handling included): (exit status, stdout, stderr)."""
    path = os.path.join(folder, f"{script}.py")
    monkeypatch.setattr(sys, "argv", [path, *(tiny_args(script) if tiny else []), *args])
    capsys.readouterr()
    try:
        runpy.run_path(path, run_name="__main__")
        status = 0
    except SystemExit as stop:
        status = stop.code
    out, err = capsys.readouterr()
    return status, out, err


def evals(stdout):
    """(step, train loss, val loss) of each evaluation line; bits per character checked on the way."""
    lines = EVAL.findall(stdout)
    for m in lines:
        assert m[4] or m[5]
    return [(int(m[0]), float(m[2]), float(m[3])) for m in lines]


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def listing(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def one_sentence(err, script):
    """One sentence on stderr, in lines of at most 110 characters."""
    lines = err.splitlines()
    return (
        err.startswith(f"{script}: ")
        and err.count(". ") == 0
        and "Traceback" not in err
        and err.endswith("\n")
        and max(map(len, lines)) <= 110
        and len(lines) <= 3
    )


@functools.lru_cache(maxsize=None)
def atticus_text():
    return load("gpt_bpe").read_atticus(os.path.join(DATA, "atticus.xml"))


@functools.lru_cache(maxsize=None)
def shakespeare_text():
    with open(os.path.join(DATA, "tinyshakespeare.txt"), encoding="utf-8") as f:
        return f.read()


# ------------------------------------------------------------------ end to end, as a user
def test_sort_task_default_sorts_every_held_out_input(tmp_path):  # the longest test, so first
    p = subprocess.run(
        [sys.executable, os.path.join(ROOT, "sort_task.py"), "device=cpu"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=3600,
        env=ONE_THREAD,
    )
    assert p.returncode == 0, p.stderr
    held = re.search(r"^held-out: ([\d.]+)% of ([\d,]+) inputs sorted exactly right$", p.stdout, re.M)
    assert held and float(held[1]) == 100.0 and held[2] == "2,730"


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_end_to_end(script, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status, out, err = run(script, [], monkeypatch, capsys)
    assert status == 0 and err == "", err
    assert [s for s, _, _ in evals(out)] == [0, 2, 4]  # step 0, every eval_interval, the last step
    assert [int(m[0]) for m in PROGRESS.findall(out)] == [1, 3]  # after the first step, every log_interval
    assert all(0 < train < 12 and 0 < val < 12 for _, train, val in evals(out))
    assert "step 0/4 | evaluating: " in out and "left" not in out.split("step 0/4")[1].split("\n")[0]
    assert " parameters | device cpu |" in out
    lines = out.split(SAMPLE_MARK)[0].splitlines()
    assert max(map(len, lines)) <= 120, max(lines, key=len)  # no line of the log is long
    checkpoint = torch.load(tmp_path / "out" / f"{script}.pt", weights_only=True)
    assert set(checkpoint) == {"script", "config", "vocab", "step", "evals", "losses", "model", "optimizers"}
    assert checkpoint["step"] == 4 and [e[0] for e in checkpoint["evals"]] == [0, 2, 4]
    assert [s for s, _ in checkpoint["losses"]] == [1, 3] and checkpoint["config"]["max_iters"] == 4
    assert (tmp_path / "out" / f"{script}_loss.png").stat().st_size > 1000
    assert (tmp_path / "out" / f"{script}_attention.png").exists() == (script == "sort_task")
    assert listing(tmp_path / "out") == sorted(f for f in os.listdir(tmp_path / "out"))  # no tmp, no previous
    if script != "sort_task":
        sample = out.split(SAMPLE_MARK)[1].split("\n", 1)[1]
        prompt = "Scr. Romae" if script == "gpt_bpe" else "\n"
        assert sample.startswith(prompt) and len(sample) > len(prompt) + 20


def test_the_last_step_has_its_evaluation_line_alone(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status, out, err = run("gpt_char", ["max_iters=5"], monkeypatch, capsys)
    assert status == 0 and [s for s, _, _ in evals(out)] == [0, 2, 4, 5], err
    assert [int(m[0]) for m in PROGRESS.findall(out)] == [1, 3] and "step 5/5 | loss" not in out


def test_same_seed_same_losses(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    first, second, other = (
        run("gpt_char", ["dropout=0.1", *args], monkeypatch, capsys)
        for args in ([], ["out_dir=o2"], ["seed=7", "out_dir=o7"])
    )
    assert first[0] == second[0] == other[0] == 0
    assert len(evals(first[1])) == 3 and evals(first[1]) == evals(second[1]) != evals(other[1])
    assert first[1].split(SAMPLE_MARK)[1] == second[1].split(SAMPLE_MARK)[1].replace("o2/", "out/")


def test_bigram_prints_the_counting_answers(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status, out, err = run("bigram", ["max_iters=40", "eval_interval=20"], monkeypatch, capsys)
    assert status == 0, err
    least = float(
        re.search(r"counting the pairs: train ([\d.]+), the least a bigram table can reach", out)[1]
    )
    assert re.search(r"counting the pairs, with add-one smoothing: val [\d.]+", out)
    trained = float(
        re.search(r"the trained table: train ([\d.]+) on every pair of the training text", out)[1]
    )
    assert least == pytest.approx(2.4519, abs=1e-4) and least < trained  # 40 steps get close, never below


# ----------------------------------------------------------------------- as a notebook runs it
IPYTHON = """
import sys
from IPython.core.interactiveshell import InteractiveShell
cells = sys.argv[1:]
sys.argv = ["/usr/local/lib/python3/dist-packages/colab_kernel_launcher.py", "-f", "/root/kernel-1.json"]
for cell in cells:  # cells run one after the other in the same kernel
    result = InteractiveShell.instance().run_cell(open(cell, encoding="utf-8").read(), store_history=True)
sys.exit(0 if result.success else 3)
"""


def edited(script, **settings):
    """The script's source with its hyperparameters edited by hand, as in a notebook cell: each line
    `name = ...`, and the laptop's value in LAPTOP, which replaces it on a CPU."""
    source = open(os.path.join(ROOT, f"{script}.py"), encoding="utf-8").read()
    for name, value in settings.items():
        source, n = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", source, flags=re.M)
        assert n == 1, name
        laptop = source.index("LAPTOP = dict(") if "LAPTOP = dict(" in source else len(source)
        end = source.find(")\n", laptop)
        source = (
            source[:laptop]
            + re.sub(rf"\b{name}=[^,)]+", f"{name}={value!r}", source[laptop:end])
            + source[end:]
        )
    return source


def notebook(script, tmp_path, *cells):
    """The cells (each the script's source, edited) run one after the other by IPython, in a folder with
    data/ beside it and no __file__, as a notebook runs them."""
    names = []
    for source in cells:
        names.append(f"cell{len(names)}.py")
        (tmp_path / names[-1]).write_text(source, encoding="utf-8")
    if not (tmp_path / "data").exists():
        os.symlink(DATA, tmp_path / "data")
    return subprocess.run(
        [sys.executable, "-c", IPYTHON, *names],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=3600,
        env=ONE_THREAD,
    )


@pytest.mark.parametrize("script", SCRIPTS)
def test_runs_as_a_notebook_cell_and_resumes(script, tmp_path):
    """Run, then run again with resume = True and more steps, in the same kernel, as after stopping it."""
    first = edited(script, **TINY[script])
    again = edited(script, **{**TINY[script], "resume": True, "max_iters": 6})
    p = notebook(script, tmp_path, first, again)
    assert p.returncode == 0, p.stdout + p.stderr
    before, after = p.stdout.split(f"loaded out/{script}.pt: step 4")
    assert [s for s, _, _ in evals(before)] == [0, 2, 4] and [s for s, _, _ in evals(after)] == [6]
    assert torch.load(tmp_path / "out" / f"{script}.pt", weights_only=True)["step"] == 6


def test_a_mistake_in_a_notebook_ends_in_its_sentence_alone(tmp_path):
    p = notebook("gpt_bpe", tmp_path, edited("gpt_bpe", **{**TINY["gpt_bpe"], "n_head": 3}))
    shown = (p.stdout + p.stderr).strip()
    assert p.returncode == 3 and shown == "gpt_bpe: n_embd=16 is not divisible by n_head=3", shown
    p = notebook("gpt_char", tmp_path, edited("gpt_char", **TINY["gpt_char"], resume=True))
    assert p.returncode == 3 and (p.stdout + p.stderr).strip() == (
        "gpt_char: resume=true needs a checkpoint of gpt_char.py: out/gpt_char.pt is not one"
    )


def test_another_cells_variables_are_not_settings(tmp_path):
    """A kernel that ran other cells first (another script's setting, a variable below 0): the settings of
    the script are the lines of its own cell."""
    p = notebook("gpt_char", tmp_path, "x = -1\nmin_lr = 0.5\n", edited("gpt_char", **TINY["gpt_char"]))
    assert p.returncode == 0, p.stdout + p.stderr
    config = torch.load(tmp_path / "out" / "gpt_char.pt", weights_only=True)["config"]
    assert list(config) == list(load("gpt_char").DEFAULTS) and "x" not in config


def test_a_preset_in_a_notebook_sets_its_rung_and_says_so(tmp_path):
    source = edited(
        "gpt_char", lecture="head", max_iters=2, eval_interval=1, eval_iters=1, max_new_tokens=5
    ).replace('"head": dict(RUNG,', '"head": dict(RUNG, max_iters=2,')
    p = notebook("gpt_char", tmp_path, source)
    assert p.returncode == 0, p.stdout + p.stderr
    told = " ".join(p.stdout.split())
    assert "gpt_char.py batch_size=32 block_size=8 " in told and " n_head=1 " in told
    assert torch.load(tmp_path / "out" / "gpt_char.pt", weights_only=True)["config"]["n_embd"] == 32


def test_a_real_jupyter_kernel_shows_the_pictures_in_the_cell(tmp_path, monkeypatch):
    """nbclient runs each script in a cell of one real kernel (the namespace reset before each): its loss
    (and attention) pictures are shown as images, the very PNGs saved, and not as the text <Figure ...>."""
    import nbformat
    from nbclient import NotebookClient

    os.symlink(DATA, tmp_path / "data")
    for name, value in ONE_THREAD.items():
        monkeypatch.setenv(name, value)
    cells = [nbformat.v4.new_code_cell("%reset -f\n" + edited(script, **TINY[script])) for script in SCRIPTS]
    notebook_file = nbformat.v4.new_notebook(cells=cells)
    NotebookClient(
        notebook_file, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    for script, cell in zip(SCRIPTS, notebook_file.cells):
        images = [o for o in cell.outputs if o.output_type == "display_data" and "image/png" in o.data]
        text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in cell.outputs)
        names = ["loss", "attention"] if script == "sort_task" else ["loss"]
        assert len(images) == len(names) and "<Figure size" not in text and "Traceback" not in text, text
        assert SAMPLE_MARK in text or script == "sort_task", text
        assert {sha256(tmp_path / "out" / f"{script}_{name}.png") for name in names} == {
            hashlib.sha256(__import__("base64").b64decode(o.data["image/png"])).hexdigest() for o in images
        }


# ---------------------------------------------------------------------------- settings
def configure(script, *args, monkeypatch, presets=None):
    """A fresh copy of the script, configured with these arguments as main() would: the module."""
    module = load(script)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *args])
    module.configure(**(presets or {}))
    return module


def test_settings_take_the_type_of_the_default(monkeypatch):
    g = configure(
        "gpt_char",
        "dropout=0",
        "learning_rate=1",
        "--max_iters=3",
        "layernorm=FALSE",
        "start=ROMEO:",
        "residual=false",
        monkeypatch=monkeypatch,
    )
    assert (g.dropout, g.learning_rate, g.max_iters, g.layernorm, g.start) == (0.0, 1.0, 3, False, "ROMEO:")
    assert type(g.dropout) is float and type(g.max_iters) is int and g.residual is False


def test_the_settings_are_the_lower_case_globals_of_the_hyperparameters():
    for script in SCRIPTS:
        module = load(script)
        source = open(os.path.join(ROOT, f"{script}.py"), encoding="utf-8").read()
        block = source[
            (
                source.index("# --- hyperparameters") if False else source.index("hyperparameters")
            ) : source.index("DEFAULTS = ")
        ]
        names = re.findall(r"^([a-z]\w*) = ", block, re.M)
        assert list(module.DEFAULTS) == names, script
        assert all(isinstance(v, (bool, int, float, str)) for v in module.DEFAULTS.values())


def test_a_notebooks_own_arguments_are_ignored(monkeypatch):
    g = load("gpt_char")
    g.NOTEBOOK = True
    monkeypatch.setattr(sys, "argv", ["/usr/lib/python3/dist-packages/ipykernel_launcher.py", "-f", "k.json"])
    g.configure()
    assert g.max_iters == load("gpt_char").max_iters


@pytest.mark.parametrize("script", ["gpt_char", "gpt_bpe"])
def test_a_device_picks_its_sizes_and_a_value_given_wins(script, monkeypatch, capsys):
    """The lecture's sizes where a CUDA GPU trains; device=cpu (given, or the default without one) picks
    the laptop's; a size given beside it wins, in any order; --help shows the sizes that would be used."""
    laptop = load(script).LAPTOP
    presets = {"device": {"cpu": laptop, "mps": laptop}}
    module = load(script)
    assert (module.n_layer, module.n_embd, module.block_size) == (6, 384, 256)  # the lecture's, for cuda
    module = configure(script, "device=cpu", monkeypatch=monkeypatch, presets=presets)
    assert all(getattr(module, k) == v for k, v in laptop.items())
    assert f"{script}.py batch_size={laptop['batch_size']}" in capsys.readouterr().out  # the settings used
    module = configure(script, "n_layer=2", "device=cpu", monkeypatch=monkeypatch, presets=presets)
    assert (module.n_layer, module.n_embd) == (2, laptop["n_embd"])
    with pytest.raises(SystemExit) as stop:
        configure(script, "device=cpu", "--help", monkeypatch=monkeypatch, presets=presets)
    out = capsys.readouterr().out
    assert stop.value.code == 0 and f"\n  n_embd={laptop['n_embd']} " in out


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_shows_every_setting_with_its_meaning(script, monkeypatch, capsys):
    status, out, err = run(script, ["--help", "max_iters=3"], monkeypatch, capsys, tiny=False)
    module = load(script)
    assert status == 0 and out.startswith(module.__doc__.strip()) and "\nRun:" in out, err
    source = open(os.path.join(ROOT, f"{script}.py"), encoding="utf-8").read()
    used = configure(
        script,
        "max_iters=3",
        monkeypatch=monkeypatch,
        presets={"device": {"cpu": module.LAPTOP}} if hasattr(module, "LAPTOP") else {},
    )
    for name in module.DEFAULTS:  # each as it would be used, with the comment beside it in the file
        comment = re.search(rf"^{name} = .*?  # (.*)$", source, re.M)
        meaning = f" +{re.escape(comment[1][:30])}" if comment else ""
        assert re.search(rf"^  {re.escape(f'{name}={getattr(used, name)!r}')}{meaning}", out, re.M), name
        assert comment or name == "device", name  # every setting says what it is, but the device line
    assert max(map(len, out.splitlines())) <= 112


@pytest.mark.parametrize(
    "args, message",
    [
        (["max_iter=3"], "unknown setting 'max_iter=3' (did you mean max_iters=...?): see --help"),
        (["--max_iters", "3"], "unknown setting '--max_iters' (did you mean max_iters=...?)"),
        (["max_iters"], "unknown setting 'max_iters'"),
        (["max_iters=3.5"], "max_iters='3.5' is not a whole number"),
        (["dropout=lots"], "dropout='lots' is not a finite number"),
        (["learning_rate=inf"], "learning_rate='inf' is not a finite number"),
        (["resume=yes"], "resume='yes' is not true or false"),
        (["dataset=wikipedia"], "dataset='wikipedia' is not shakespeare, nor a file"),
        (
            ["lecture=attention"],
            "lecture='attention' is not one of head, heads, ffwd, residual, layernorm, full",
        ),
        (["batch_size=0"], "eval_iters, log_interval: 1 or more"),
        (["dropout=1"], "dropout=1.0 is not below 1"),
        (["mlp=false"], "mlp=false needs residual=false"),
        (["n_embd=2", "n_head=4"], "n_head=4 is more than n_embd=2: each head would be 0 wide"),
        (["max_new_tokens=-1"], "max_new_tokens=-1 is below 0"),
        (["seed=-1"], "seed=-1 is below 0"),
        (["seed=99999999999999999999"], "seed=99999999999999999999 is not below 2**62"),
        (["start="], "start= cannot be empty"),
        (["device=gpu"], "device='gpu' is not a device of this machine"),
        (["device=cuda:7"], "device='cuda:7' is not a device of this machine"),
    ],
)
def test_a_bad_setting_exits_2_before_anything_is_read(args, message, tmp_path, monkeypatch, capsys):
    """A copy of the script alone in an empty folder: one sentence, exit status 2, nothing written or
    downloaded, nothing printed."""
    shutil.copy(os.path.join(ROOT, "gpt_char.py"), tmp_path)
    monkeypatch.chdir(tmp_path)
    status, out, err = run("gpt_char", args, monkeypatch, capsys, tiny=False, folder=tmp_path)
    assert status == 2 and message in err and one_sentence(err, "gpt_char"), err
    assert out == "" and os.listdir(tmp_path) == ["gpt_char.py"]


# --------------------------------------------------------------------------------- data
class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


def dead_port():
    with socket.socket() as s:  # a port that nobody listens on
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_missing_data_file_is_downloaded_and_checked(server, tmp_path, capsys):
    root, url = server
    shutil.copy(os.path.join(DATA, "tinyshakespeare.txt"), root / "input.txt")
    g = load("gpt_char")
    g.DATA_DIR = str(tmp_path / "data")
    g.DATA_FILES["tinyshakespeare.txt"] = (f"{url}/input.txt", g.DATA_FILES["tinyshakespeare.txt"][1])
    assert g.load_text("shakespeare").startswith("First Citizen:")
    assert listing(tmp_path / "data") == ["tinyshakespeare.txt"]  # no temporary file beside it


@pytest.mark.parametrize(
    "served, problem",
    [(b"corrupted", "invalid hash value"), (None, "404"), ("no server", "Connection refused")],
)
def test_a_failed_download_leaves_no_file_and_says_where_to_put_it(served, problem, server, tmp_path):
    root, url = server
    if served == "no server":
        url = f"http://127.0.0.1:{dead_port()}"
    elif served is not None:
        (root / "input.txt").write_bytes(served)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "other.txt").write_text("kept")
    g = load("gpt_char")
    g.NOTEBOOK, g.DATA_DIR = True, str(tmp_path / "data")  # die raises, so that the message can be read
    g.DATA_FILES["tinyshakespeare.txt"] = (f"{url}/input.txt", "0" * 64)
    with pytest.raises(g.Stopped) as stop:
        g.data_files("tinyshakespeare.txt")
    said = " ".join(str(stop.value).split())  # unwrapped
    assert said.startswith(f"gpt_char: could not download {url}/input.txt (") and problem in said
    assert said.endswith(f": download it by hand as {tmp_path / 'data' / 'tinyshakespeare.txt'}")
    assert listing(tmp_path / "data") == ["other.txt"]


def test_offline_the_file_missing_is_named_with_where_to_put_it(tmp_path):
    """gpt_bpe.py pasted alone, offline: one sentence names the file it could not download and where to put
    it, and nothing is left."""
    shutil.copy(os.path.join(ROOT, "gpt_bpe.py"), tmp_path)
    proxy = f"http://127.0.0.1:{dead_port()}"  # every download goes to a proxy that nobody runs
    env = {k: v for k, v in ONE_THREAD.items() if k.lower() != "no_proxy"}
    env.update(HTTPS_PROXY=proxy, HTTP_PROXY=proxy, https_proxy=proxy, http_proxy=proxy)
    p = subprocess.run(
        [sys.executable, "gpt_bpe.py"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=3600
    )
    url, said = load("gpt_bpe").DATA_FILES["atticus.xml"][0], " ".join(p.stderr.split())
    assert p.returncode == 1 and "Traceback" not in p.stderr and p.stderr.count(url) == 1, p.stderr
    assert said.startswith(f"gpt_bpe: could not download {url} (<urlopen error")
    assert said.endswith(f"download it by hand as {tmp_path / 'data' / 'atticus.xml'}")
    assert listing(tmp_path) == ["gpt_bpe.py"] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("script", ["bigram", "gpt_char", "gpt_bpe"])
def test_the_shipped_data_match_their_checksums(script):
    for name, (_, expected) in load(script).DATA_FILES.items():
        assert sha256(os.path.join(DATA, name)) == expected


def test_atticus_parser_on_the_shipped_epidoc_file():
    text = atticus_text()
    letters = text.split("\n\n")
    assert len(letters) == 446 and all(len(letter.split("\n")) == 3 for letter in letters)
    dateline, salute, body = letters[0].split("\n")
    assert dateline.startswith("Scr. Romae") and salute == "CICERO ATTICO salutem"
    assert body.startswith("petitionis nostrae, quam tibi summae curae esse scio")
    assert "<" not in text and "  " not in text and len(text) == 825_409
    assert load("gpt_bpe").read_atticus(os.path.join(DATA, "atticus.xml")) == text


def test_atticus_parser_on_hopper_markup(tmp_path):
    (tmp_path / "hopper.xml").write_text(
        """<?xml version="1.0" encoding="UTF-8"?>
<TEI.2><text><body><div1 type="book" n="1">
<div2 type="letter" n="1"><opener><dateline>Scr. Romae
   <date>a. 689</date>.</dateline> <salute>CICERO ATTICO SAL.</salute></opener>
<p>petitionis nostrae, <note>a modern note</note>quam tibi
      summae curae esse scio.</p><p>Graece: <foreign lang="greek">\
&#x1F00;&#x03B4;&#x03CD;&#x03BD;&#x03B1;&#x03C4;&#x03BF;&#x03BD;</foreign></p></div2>
<div2 type="letter" n="2"><opener>\
<dateline>Scr. Romae a. 689.</dateline><salute>CICERO ATTICO SAL.</salute></opener>
<p>L. Iulio Caesare <del>verum</del> C. Marcio Figulo consulibus filiolo me auctum scito.</p></div2>
</div1></body></text></TEI.2>""",
        encoding="utf-8",
    )
    assert load("gpt_bpe").read_atticus(str(tmp_path / "hopper.xml")) == (
        "Scr. Romae a. 689.\nCICERO ATTICO SAL.\npetitionis nostrae, quam tibi summae curae esse scio. "
        "Graece: \u1f00\u03b4\u03cd\u03bd\u03b1\u03c4\u03bf\u03bd\n\n"
        "Scr. Romae a. 689.\nCICERO ATTICO SAL.\n"
        "L. Iulio Caesare C. Marcio Figulo consulibus filiolo me auctum scito."
    )


@pytest.mark.parametrize(
    "package, script, args",
    [
        ("lxml", "gpt_bpe", []),
        ("bs4", "gpt_bpe", []),
        ("tiktoken", "gpt_bpe", []),
        ("regex", "gpt_bpe", ["tokenizer=trained"]),
    ],
)
def test_a_missing_package_is_one_sentence(package, script, args, tmp_path, monkeypatch, capsys):
    import bs4  # noqa: F401  imported with lxml there, so that it keeps its XML parser for the other tests

    monkeypatch.setitem(sys.modules, package, None)  # as if it were not installed
    monkeypatch.chdir(tmp_path)
    status, out, err = run(script, args, monkeypatch, capsys)
    install = {"bs4": "beautifulsoup4"}.get(package, package)
    assert status == 1 and err == f"{script}: this needs {package}: pip install {install}\n", err
    assert not (tmp_path / "out").exists()


def test_step_2_and_step_3_validate_on_the_same_characters(tmp_path, monkeypatch, capsys):
    """The split is made on the characters, before tokenising: the same last 10 % in both steps."""
    monkeypatch.chdir(tmp_path)
    for script, shown in (("gpt_char", "111,540 to validate"), ("gpt_bpe", "111,540 characters to validate")):
        status, out, err = run(
            script, ["dataset=shakespeare", "max_iters=1", "eval_iters=1"], monkeypatch, capsys
        )
        assert status == 0 and shown in out, err
    text = shakespeare_text()
    assert len(text) - int(0.9 * len(text)) == 111_540


def test_val_loss_is_the_mean_over_every_val_token():
    """estimate_loss against a loop over the val tokens: each scored once with the context its window gives
    it (the first after the last training token), the tail too; in step 2 and in step 3."""
    for script in ("gpt_char", "gpt_bpe"):
        module = load(script)
        module.block_size, module.batch_size, module.eval_iters, module.device = 8, 3, 1, "cpu"
        torch.manual_seed(0)
        model = tiny(module, 11, 8)
        train, val = torch.randint(11, (50,)), torch.randint(11, (29,))  # 29 = 3 windows of 8, and 5
        stream = torch.cat([train[-1:], val])
        losses = []
        for j in range(1, len(stream)):  # target stream[j], read after the window's earlier tokens
            first = (j - 1) // 8 * 8
            logits = model(stream[None, first:j])[0][0, -1]
            losses.append(-torch.log_softmax(logits, dim=-1)[stream[j]].item())
        assert module.estimate_loss(model, train, val)["val"] == pytest.approx(sum(losses) / 29, abs=1e-5)


# -------------------------------------------------------------------------------- models
def tiny(module, vocab_size=11, block_size=8):
    """A tiny model of the script's own class, dropout off (the lecture's classes read their sizes from the
    script's globals, as in the lecture)."""
    module.n_embd, module.n_head, module.n_layer, module.block_size, module.dropout = (
        16,
        4,
        2,
        block_size,
        0.0,
    )
    module.device = "cpu"  # where these tests build it, on a machine with a GPU too
    if hasattr(module, "GPTLanguageModel"):
        return module.GPTLanguageModel(vocab_size).eval()
    return module.GPT(vocab_size, block_size, n_embd=16, n_head=4, n_layer=2, dropout=0.0).eval()


@pytest.mark.parametrize("script", ["gpt_char", "gpt_bpe"])
def test_causality(script):
    torch.manual_seed(0)
    model = tiny(load(script))
    idx = torch.randint(11, (1, 8))
    for t in range(7):
        changed = idx.clone()
        changed[0, t + 1] = (idx[0, t + 1] + 1) % 11
        a, b = model(idx)[0], model(changed)[0]
        assert torch.equal(a[:, : t + 1], b[:, : t + 1])  # the past does not see the future
        assert not torch.allclose(a[:, t + 1], b[:, t + 1])  # but the changed position itself does


def test_step_3s_attention_computes_what_the_lectures_multiheadattention_computes():
    """The same weights in both: the lecture's per-head key, query and value matrices stacked into one
    c_attn; the same output, dropout off (the lecture's Heads have no bias: c_attn's is zero)."""
    g, b = load("gpt_char"), load("gpt_bpe")
    g.n_embd, g.block_size, g.dropout = 24, 16, 0.0
    torch.manual_seed(0)
    lecture = g.MultiHeadAttention(4, 6).eval()  # 4 heads of 6, 24 wide, context 16
    fused = b.CausalSelfAttention(24, 4, 0.0).eval()
    with torch.no_grad():
        for i, part in enumerate(("query", "key", "value")):
            weight = torch.cat([getattr(head, part).weight for head in lecture.heads])  # (24, 24)
            fused.c_attn.weight[24 * i : 24 * (i + 1)] = weight
        fused.c_attn.bias.zero_()
        fused.c_proj.load_state_dict(lecture.proj.state_dict())
    x = torch.randn(3, 9, 24)
    assert torch.allclose(fused(x), lecture(x), atol=1e-5)


def test_the_lectures_model_and_step_3s_have_the_same_size():
    """Step 3 adds biases to the queries, keys and values, ties the output layer, and drops its bias."""
    g, b = load("gpt_char"), load("gpt_bpe")
    lecture, step3 = tiny(g, 65, 8), tiny(b, 65, 8)
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert count(step3) == count(lecture) + 2 * 3 * 16 - 65 * 16 - 65


@pytest.mark.parametrize("script", ["bigram", "gpt_char", "gpt_bpe"])
def test_generate(script):
    module = load(script)
    torch.manual_seed(0)
    model = module.BigramLanguageModel(11) if script == "bigram" else tiny(module)
    idx = torch.zeros((2, 1), dtype=torch.long)
    out = model.generate(idx, 20)  # longer than block_size 8: the context is cropped
    assert out.shape == (2, 21) and torch.equal(out[:, :1], idx) and int(out.max()) < 11
    likeliest = model(idx)[0][:, -1].argmax(-1, keepdim=True)
    if script == "gpt_bpe":  # step 3's has top_k, as nanoGPT's
        assert model.generate(idx, 5, top_k=1000).shape == (2, 6)  # top_k above the vocabulary
        assert torch.equal(model.generate(idx, 1, top_k=1)[:, 1:], likeliest)  # top_k=1: the likeliest


def test_top_k_and_temperature_shape_the_distribution():
    """4,000 draws of one next token: top_k=3 draws only the three likeliest, and at temperature T the
    frequencies follow softmax(logits / T)."""
    b = load("gpt_bpe")
    torch.manual_seed(0)
    model = tiny(b)
    with torch.no_grad():
        model.wte.weight.mul_(6)  # logits of a few units: a distribution far from uniform
    idx = torch.zeros((4000, 1), dtype=torch.long)
    logits = model(idx[:1])[0][0, -1]
    drawn = model.generate(idx, 1, top_k=3)[:, 1]
    assert set(drawn.tolist()) == set(logits.topk(3).indices.tolist())
    peaks = []
    for temperature in (0.5, 1.0, 2.0):
        expected = torch.softmax(logits / temperature, dim=-1)
        frequency = torch.bincount(model.generate(idx, 1, temperature)[:, 1], minlength=11) / 4000
        assert (frequency - expected).abs().max() < 0.04, temperature  # 5 standard errors at most
        peaks.append(frequency.max().item())
    assert peaks[0] > peaks[1] + 0.05 and peaks[1] > peaks[2] + 0.05  # sharper below 1, flatter above


def test_step_3_samples_on_float32_logits_under_autocast():
    """bf16 logits of about 20 divided by a temperature of 1e-4 overflow: generate takes the last
    position's logits in float32 first, and temperature 0 is the likeliest."""
    b = load("gpt_bpe")
    torch.manual_seed(0)
    model = tiny(b)
    with torch.no_grad():
        model.wte.weight.mul_(250)
    idx = torch.zeros((3, 1), dtype=torch.long)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(idx)[0].dtype == torch.bfloat16
        greedy = model.generate(idx, 6, temperature=0)
        assert torch.equal(model.generate(idx, 6, temperature=1e-4), greedy)


def test_bigram_counts_give_the_least_training_loss():
    b = load("bigram")
    torch.manual_seed(0)
    train = torch.randint(5, (400,))
    least = b.count_table(train, 5, 0)  # unsmoothed
    logits = least.clone().requires_grad_()
    loss = -logits.log_softmax(-1)[train[:-1], train[1:]].mean()
    loss.backward()
    assert loss.item() == pytest.approx(b.score(least, train)) and logits.grad.abs().max() < 1e-6  # a minimum
    for _ in range(20):  # and no other table does better
        assert b.score((least + 0.1 * torch.randn(5, 5)).log_softmax(-1), train) > b.score(least, train)
    # add-one smoothing: 0 -> 1 counted twice, plus one: (2 + 1) / (2 + 2)
    assert b.score(b.count_table(torch.tensor([0, 1, 0, 1, 0]), 2, 1), torch.tensor([0, 1])) == pytest.approx(
        -math.log(3 / 4)
    )


# ------------------------------------------------------------------- the lecture's ladder (step 2)
def test_the_trick_runs_its_three_ways_and_they_agree():
    results = doctest.testmod(load("gpt_char"))
    assert results.attempted >= 2 and results.failed == 0
    xbow, xbow2, xbow3 = load("gpt_char").the_trick(2, 5, 3)
    assert xbow.shape == (2, 5, 3) and torch.allclose(xbow, xbow2) and torch.allclose(xbow, xbow3)


def built(g, **switches):
    for name, value in switches.items():
        setattr(g, name, value)
    torch.manual_seed(0)
    return tiny(g)


def test_each_switch_takes_its_idea_away():
    g = load("gpt_char")
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    full = built(g)
    per_ffwd = sum(p.numel() for p in full.blocks[0].ffwd.parameters())
    no_ffwd = built(g, mlp=False, residual=False)
    assert count(no_ffwd) == count(full) - 2 * per_ffwd
    assert all(isinstance(block.ffwd, torch.nn.Identity) for block in no_ffwd.blocks)
    bare = built(g, mlp=True, residual=True, layernorm=False)
    assert count(bare) == count(full) - 5 * 2 * 16  # two norms a block, and the final
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in bare.modules())
    assert 0.1 < bare.token_embedding_table.weight.std() and full.token_embedding_table.weight.std() < 0.03
    x = torch.randn(3, 8, 16)
    for residual in (True, False):  # the block's forward, as the switch says
        block = built(g, layernorm=True, residual=residual).blocks[0]
        if residual:
            h = x + block.sa(block.ln1(x))
            expected = h + block.ffwd(block.ln2(h))
        else:
            expected = block.ffwd(block.ln2(block.sa(block.ln1(x))))
        assert torch.allclose(block(x), expected, atol=1e-6)
    g.residual = True


LADDER = {  # what each rung of the lecture had (its ng-video-lecture commits)
    "head": dict(n_layer=1, n_head=1, n_embd=32, mlp=False, residual=False, layernorm=False),
    "heads": dict(n_layer=1, n_head=4, n_embd=32, mlp=False, residual=False, layernorm=False),
    "ffwd": dict(n_layer=1, n_head=4, n_embd=32, mlp=True, residual=False, layernorm=False),
    "residual": dict(n_layer=3, n_head=4, n_embd=32, mlp=True, residual=True, layernorm=False),
    "layernorm": dict(n_layer=3, n_head=4, n_embd=32, mlp=True, residual=True, layernorm=True),
    "full": dict(
        n_layer=6,
        n_head=6,
        n_embd=384,
        mlp=True,
        residual=True,
        layernorm=True,
        batch_size=64,
        block_size=256,
        dropout=0.2,
        learning_rate=3e-4,
    ),
}
TRAINED_AS_THE_LECTURE = dict(
    batch_size=32, block_size=8, max_iters=5000, eval_interval=500, learning_rate=1e-3, dropout=0.0
)


@pytest.mark.parametrize("name", LADDER)
def test_a_rung_sets_its_sizes_and_switches_and_yields_to_settings_given(name, monkeypatch, capsys):
    g = load("gpt_char")
    presets = {"device": {"cpu": g.LAPTOP, "mps": g.LAPTOP}, "lecture": g.LECTURE}
    assert set(g.LECTURE[name]) <= {*g.LAPTOP, "mlp", "residual", "layernorm"}  # sizes and switches alone
    g = configure("gpt_char", f"lecture={name}", "device=cpu", monkeypatch=monkeypatch, presets=presets)
    for key, value in {**TRAINED_AS_THE_LECTURE, **LADDER[name]}.items():
        assert getattr(g, key) == value, key
    told = capsys.readouterr().out  # the line of the settings that differ from the file's
    assert f"lecture={name!r}" in told
    assert name == "full" or "gpt_char.py batch_size=32 block_size=8 " in told  # full: the lines above
    g = configure(
        "gpt_char",
        "max_iters=7",
        f"lecture={name}",
        "n_embd=8",
        "n_head=2",
        monkeypatch=monkeypatch,
        presets=presets,
    )
    assert (g.max_iters, g.n_embd, g.n_head, g.n_layer) == (7, 8, 2, LADDER[name]["n_layer"])


@pytest.mark.parametrize("name", LADDER)
def test_every_rung_of_the_ladder_runs(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    small = (
        ["n_embd=24", "n_layer=2", "block_size=32", "batch_size=8", "eval_iters=1"] if name == "full" else []
    )
    args = [
        f"lecture={name}",
        "max_iters=4",
        "eval_interval=2",
        "eval_iters=2",
        "log_interval=1",
        "max_new_tokens=20",
        *small,
    ]
    status, out, err = run("gpt_char", args, monkeypatch, capsys, tiny=False)
    assert status == 0, err
    assert [s for s, _, _ in evals(out)] == [0, 2, 4] and SAMPLE_MARK in out
    config = torch.load(tmp_path / "out" / "gpt_char.pt", weights_only=True)["config"]
    assert config["lecture"] == name and all(
        config[k] == v
        for k, v in LADDER[name].items()
        if k in ("mlp", "residual", "layernorm", "n_head") or not small
    )


# -------------------------------------------------------- step 3's changes, and what takes them back
def test_gpt2s_initialisation_and_pytorchs():
    b = load("gpt_bpe")
    gpt2 = tiny(b)
    assert gpt2.wte.weight.std() < 0.03 and not gpt2.blocks[0].attn.c_attn.bias.any()
    std = gpt2.blocks[1].mlp.c_proj.weight.std().item()
    assert std == pytest.approx(0.02 / math.sqrt(2 * 2), rel=0.1)  # the residual projections, smaller
    b.init = "pytorch"
    pytorch = tiny(b)
    assert 0.8 < pytorch.wpe.weight.std() < 1.2 and pytorch.blocks[0].attn.c_attn.bias.any()  # N(0, 1)


def test_tie_false_gives_the_output_layer_its_own_matrix():
    b = load("gpt_bpe")
    tied = tiny(b)
    assert tied.lm_head.weight is tied.wte.weight
    b.tie = False
    untied = tiny(b)
    assert untied.lm_head.weight is not untied.wte.weight
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert count(untied) == count(tied) + 11 * 16


def test_muon_gets_the_matrices_inside_the_blocks_adamw_the_rest():
    b = load("gpt_bpe")
    model = tiny(b)
    muon, adamw = b.make_optimizers(model)
    in_muon = {id(p) for group in muon.param_groups for p in group["params"]}
    in_adamw = {id(p) for group in adamw.param_groups for p in group["params"]}
    assert not in_muon & in_adamw and in_muon | in_adamw == {id(p) for p in model.parameters()}
    for name, p in model.named_parameters():
        assert (id(p) in in_muon) == (name.startswith("blocks.") and p.dim() == 2), name
    decayed = {id(p) for group in adamw.param_groups if group["weight_decay"] > 0 for p in group["params"]}
    assert decayed == {id(p) for p in model.parameters() if p.dim() == 2 and id(p) not in in_muon}
    b.optimizer = "adamw"
    (only,) = b.make_optimizers(model)
    assert isinstance(only, torch.optim.AdamW)
    assert sorted(id(p) for g in only.param_groups for p in g["params"]) == sorted(
        map(id, model.parameters())
    )


def test_muon_orthogonalises_its_updates():
    b = load("gpt_bpe")
    torch.manual_seed(0)
    G = torch.randn(3, 8, 20)
    singular = torch.linalg.svdvals(b.orthogonalize(G))
    assert singular.min() > 0.5 and singular.max() < 1.3  # every direction about as far
    tall = torch.linalg.svdvals(b.orthogonalize(G.mT))
    assert torch.allclose(tall, singular, atol=1e-4)


def test_the_learning_rate_warms_up_decays_or_stays():
    b = load("gpt_bpe")
    b.learning_rate, b.min_lr, b.warmup_iters, b.max_iters = 1e-3, 1e-4, 10, 110
    rates = [b.get_lr(step) for step in range(111)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert rates[110] == pytest.approx(1e-4) and rates[60] == pytest.approx(5.5e-4)
    assert all(a >= c for a, c in zip(rates[9:], rates[10:]))
    b.min_lr, b.warmup_iters = 1e-3, 0  # the lecture's constant rate
    assert {b.get_lr(step) for step in range(111)} == {1e-3}


class Stop(Exception):
    pass


class OneStep:
    """A stand-in for a script's Run that lets its train() take one step, then stops it."""

    step, resumed = 0, None

    def evaluating(self, step):
        pass

    def evaluated(self, step, losses, more):
        pass

    def stepped(self, step, loss, tokens):
        raise Stop


def step_of_training(module, grad_hook=None, scaler=None):
    """One step of gpt_bpe's own train() on random tokens: the model's state before and after."""
    module.device, module.max_iters, module.eval_iters, module.block_size, module.batch_size = (
        "cpu",
        1,
        1,
        8,
        4,
    )
    torch.manual_seed(0)
    model = tiny(module).train()
    optimizers = module.make_optimizers(model)
    if scaler:
        module.autocast = lambda: (torch.autocast("cpu", dtype=torch.float16), scaler)
    if grad_hook:  # on a matrix inside a block, which Muon steps
        model.blocks[0].mlp.c_fc.weight.register_hook(grad_hook)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(Stop):
        module.train(model, optimizers, torch.randint(11, (100,)), torch.randint(11, (50,)), OneStep(), 50)
    return before, model.state_dict()


def test_an_fp16_overflow_moves_no_optimizer():
    """Only Muon's gradients overflow: AdamW must skip its step too, and the scale drops."""
    b = load("gpt_bpe")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    before, after = step_of_training(b, lambda grad: torch.full_like(grad, math.inf), scaler)
    assert all(torch.equal(before[k], after[k]) for k in before)  # not the embedding, not a block
    assert scaler.get_scale() < 2.0**10
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    before, after = step_of_training(load("gpt_bpe"), None, scaler)  # a good step moves both
    assert not torch.equal(before["wte.weight"], after["wte.weight"])
    assert not torch.equal(before["blocks.0.mlp.c_fc.weight"], after["blocks.0.mlp.c_fc.weight"])


def test_gradient_clipping_bounds_the_step():
    b = load("gpt_bpe")
    b.optimizer, b.learning_rate, b.warmup_iters, b.min_lr = "adamw", 1.0, 0, 1.0
    norms = []
    clip = torch.nn.utils.clip_grad_norm_

    def recording(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        norm = clip(parameters, max_norm, *args, **kwargs)
        norms.append((max_norm, torch.norm(torch.stack([p.grad.norm() for p in parameters])).item()))
        return norm

    b.nn.utils.clip_grad_norm_ = recording
    try:
        step_of_training(b, lambda grad: grad * 1000)
        b.grad_clip = 0.0
        step_of_training(b, lambda grad: grad * 1000)
    finally:
        b.nn.utils.clip_grad_norm_ = clip
    assert norms[0][0] == 1.0 and norms[0][1] == pytest.approx(1.0, rel=1e-4)  # clipped to grad_clip
    assert norms[1][0] == math.inf and norms[1][1] > 10  # grad_clip=0: not clipped


def test_cuda_precision_follows_the_hardware(monkeypatch):
    """bf16 only where the GPU has it (compute capability 8.0 and up); a T4 (7.5) gets fp16 and a scaler."""
    import warnings

    b = load("gpt_bpe")
    b.device = "cpu"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # a T4 too
    ctx, scaler = b.autocast()
    assert not scaler.is_enabled() and isinstance(ctx, b.nullcontext)  # float32 on the CPU
    b.device = "cuda"
    monkeypatch.setattr(torch.amp, "GradScaler", lambda kind, enabled: (kind, enabled))
    for capability, dtype in [((7, 5), torch.float16), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)]:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # without a GPU, autocast("cuda") warns
            ctx, scaler = b.autocast()
        assert ctx.fast_dtype == dtype and scaler == ("cuda", dtype == torch.float16), capability


@cuda
@pytest.mark.parametrize("capability", [None, (7, 5)])  # the GPU's own precision, and fp16 as on a T4
def test_a_tiny_run_on_cuda_resumes(capability, tmp_path, monkeypatch, capsys):
    if capability:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.chdir(tmp_path)
    assert run("gpt_bpe", ["device=cuda", "dropout=0.1"], monkeypatch, capsys)[0] == 0
    status, out, err = run("gpt_bpe", ["device=cuda", "resume=true", "max_iters=6"], monkeypatch, capsys)
    assert status == 0 and "loaded out/gpt_bpe.pt: step 4" in out and "device cuda" in out, err
    assert [s for s, _, _ in evals(out)] == [6]


@cuda
def test_the_lectures_model_runs_on_cuda(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status, out, err = run("gpt_char", ["device=cuda"], monkeypatch, capsys)
    assert status == 0 and "device cuda" in out and [s for s, _, _ in evals(out)] == [0, 2, 4], err


# ----------------------------------------------------------- checkpoints and exact resume
def interrupt_after_saving(monkeypatch, script, saves):
    """Ctrl-C at the first step after the run's checkpoint has been written `saves` times."""
    replace, zero_grad, written = os.replace, torch.optim.AdamW.zero_grad, []

    def counting(src, dst):
        replace(src, dst)
        written.append(str(src).endswith(f"{script}.pt.tmp"))

    def stop_once_written(*args, **kwargs):
        if sum(written) == saves:
            raise KeyboardInterrupt
        return zero_grad(*args, **kwargs)

    monkeypatch.setattr(os, "replace", counting)
    monkeypatch.setattr(torch.optim.AdamW, "zero_grad", stop_once_written)


@pytest.mark.parametrize("script", ["gpt_char", "gpt_bpe", "sort_task"])
def test_an_interrupted_run_resumes_exactly(script, tmp_path, monkeypatch, capsys):
    """Stopped by Ctrl-C after the checkpoint of step 4, resumed: the losses, the weights and the sample of
    a run never stopped (dropout draws random numbers too)."""
    monkeypatch.chdir(tmp_path)
    settings = ["max_iters=8", "dropout=0.1"]
    status, whole, _ = run(script, [*settings, "out_dir=whole"], monkeypatch, capsys)
    assert status == 0
    with monkeypatch.context() as m:
        interrupt_after_saving(m, script, 2)  # steps 2 and 4 (step 0's trains nothing: not written)
        status, _, err = run(script, settings, monkeypatch, capsys)
    assert status == 130 and one_sentence(err, script), err
    assert err == f"{script}: interrupted; out/{script}.pt keeps step 4: resume=true goes on from there\n"
    status, resumed, err = run(script, ["resume=true"], monkeypatch, capsys, tiny=False)
    assert status == 0 and f"loaded out/{script}.pt: step 4" in resumed, err
    expected = evals(whole)
    assert [s for s, _, _ in expected] == [0, 2, 4, 6, 8] and evals(resumed) == expected[3:]
    assert resumed.split(SAMPLE_MARK)[1] == whole.split(SAMPLE_MARK)[1].replace("whole/", "out/")
    a, b = (torch.load(tmp_path / folder / f"{script}.pt", weights_only=True) for folder in ("whole", "out"))
    assert a["evals"] == b["evals"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_ctrl_c_in_a_terminal_stops_cleanly_and_says_what_is_kept(tmp_path, monkeypatch, capsys):
    args = tiny_args("gpt_char") + ["max_iters=100000", "eval_interval=5", "log_interval=1"]
    reset = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731  a CI job may ignore SIGINT
    p = subprocess.Popen(
        [sys.executable, "-u", os.path.join(ROOT, "gpt_char.py"), *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=reset,
        env=ONE_THREAD,
    )
    try:
        for line in p.stdout:
            if line.startswith("step 12/"):  # the checkpoint of step 10 is on disk by now
                break
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=3600)
    finally:
        p.kill()
    saved = torch.load(tmp_path / "out" / "gpt_char.pt", weights_only=True)["step"]
    assert (
        p.returncode == 130
        and saved >= 10
        and err
        == (f"gpt_char: interrupted; out/gpt_char.pt keeps step {saved}: resume=true goes on from there\n")
    ), err
    monkeypatch.chdir(tmp_path)
    status, out, err = run("gpt_char", ["resume=true", "max_iters=20"], monkeypatch, capsys, tiny=False)
    assert status == 0 and f"loaded out/gpt_char.pt: step {saved}" in out and evals(out)[-1][0] == 20, err


def test_ctrl_c_before_the_first_checkpoint_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        torch.optim.AdamW, "step", lambda *args, **kwargs: (_ for _ in ()).throw(KeyboardInterrupt)
    )
    status, _, err = run("gpt_char", [], monkeypatch, capsys)
    assert status == 130 and err == "gpt_char: interrupted before this run's first checkpoint\n", err


@pytest.mark.parametrize("script", ["gpt_char", "gpt_bpe"])
def test_settings_given_with_resume_are_the_ones_that_train(script, tmp_path, monkeypatch, capsys):
    """load_state_dict brings back the saved groups' learning rate and weight decay: those given win."""
    monkeypatch.chdir(tmp_path)
    assert run(script, [], monkeypatch, capsys)[0] == 0
    given = (
        ["learning_rate=0.0005", "min_lr=0.0005", "warmup_iters=0", "weight_decay=0.0"]
        if script == "gpt_bpe"
        else ["learning_rate=0.0005"]
    )
    status, out, err = run(script, ["resume=true", "max_iters=6", *given], monkeypatch, capsys, tiny=False)
    assert status == 0 and "loaded out/" in out, err
    resumed = torch.load(tmp_path / "out" / f"{script}.pt", weights_only=True)
    groups = [group for state in resumed["optimizers"] for group in state["param_groups"]]
    assert resumed["step"] == 6 and resumed["config"]["learning_rate"] == 0.0005
    assert all(group["lr"] == 0.0005 for group in groups)
    if script == "gpt_bpe":
        assert all(group["weight_decay"] == 0.0 for group in groups)


def test_sampling_from_a_checkpoint_needs_no_settings(tmp_path, monkeypatch, capsys):
    """Trained with other sizes and data (on a GPU, say): max_iters=0 alone rebuilds the model, says what it
    was trained with, and samples, writing nothing; a size given that does not fit is refused."""
    monkeypatch.chdir(tmp_path)
    trained = ["n_layer=2", "n_embd=24", "n_head=3", "block_size=32"]
    assert run("gpt_char", trained, monkeypatch, capsys)[0] == 0
    path, plot = tmp_path / "out" / "gpt_char.pt", tmp_path / "out" / "gpt_char_loss.png"
    saved = sha256(path)
    plot.unlink()
    status, out, err = run(
        "gpt_char", ["max_iters=0", "start=ROMEO", "max_new_tokens=30"], monkeypatch, capsys, tiny=False
    )
    assert status == 0 and "loaded out/gpt_char.pt: step 4, val " in out, err
    told = " ".join(out.split("gpt_char.py ")[1].split("\nloaded")[0].split())  # the settings it uses
    assert all(setting in told for setting in ("max_iters=0", "n_layer=2", "n_embd=24", "block_size=32"))
    assert out.split(SAMPLE_MARK)[1].split("\n", 1)[1].startswith("ROMEO") and EVAL.search(out) is None
    assert sha256(path) == saved and not plot.exists()
    status, _, err = run("gpt_char", ["max_iters=0", "n_layer=3"], monkeypatch, capsys, tiny=False)
    assert status == 1 and one_sentence(err, "gpt_char") and "does not fit (" in err, err
    assert "n_layer=2" in err and sha256(path) == saved


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_bad_checkpoint_ends_in_one_sentence_and_is_kept(script, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "out" / f"{script}.pt"
    for mode in ("max_iters=0", "resume=true"):  # none at all
        status, _, err = run(script, [mode], monkeypatch, capsys)
        assert (
            status == 1
            and err == f"{script}: {mode} needs a checkpoint of {script}.py: out/{script}.pt is not one\n"
        )
    other = "bigram" if script != "bigram" else "sort_task"
    assert run(other, ["out_dir=other"], monkeypatch, capsys)[0] == 0
    assert run(script, [], monkeypatch, capsys)[0] == 0
    good = path.read_bytes()
    old = torch.load(path, weights_only=True)
    del old["config"]["seed"]  # as another version of the script wrote it
    for kind, content in [
        ("truncated", good[: len(good) // 2]),
        ("foreign", b"not a checkpoint"),
        ("another script's", (tmp_path / "other" / f"{other}.pt").read_bytes()),
        ("older", old),
    ]:
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        before = sha256(path)
        for mode in ("max_iters=0", "resume=true"):
            status, out, err = run(script, [mode], monkeypatch, capsys)
            assert status == 1 and one_sentence(err, script), (kind, mode, err)
            assert f"needs a checkpoint of {script}.py: out/" in err and SAMPLE_MARK not in out, (kind, mode)
            assert sha256(path) == before, (kind, mode)


def test_a_new_run_keeps_the_last_runs_checkpoint(tmp_path, monkeypatch, capsys):
    """A new run moves the last run's checkpoint to out/previous/ and says so (stopped before its own first
    checkpoint, too), and resume=true goes on from it there."""
    monkeypatch.chdir(tmp_path)
    assert run("gpt_char", [], monkeypatch, capsys)[0] == 0
    trained = sha256(tmp_path / "out" / "gpt_char.pt")
    with monkeypatch.context() as m:
        m.setattr(torch.optim.AdamW, "step", lambda *args, **kwargs: (_ for _ in ()).throw(KeyboardInterrupt))
        status, out, err = run("gpt_char", ["max_iters=8"], monkeypatch, capsys)
    assert status == 130 and "(the last run's checkpoint is now out/previous/gpt_char.pt)" in out
    assert err.strip() == "gpt_char: interrupted before this run's first checkpoint"
    assert listing(tmp_path / "out") == ["gpt_char_loss.png", "previous/gpt_char.pt"]
    assert sha256(tmp_path / "out" / "previous" / "gpt_char.pt") == trained
    status, out, err = run(
        "gpt_char", ["resume=true", "out_dir=out/previous", "max_iters=6"], monkeypatch, capsys, tiny=False
    )
    assert status == 0 and "loaded out/previous/gpt_char.pt: step 4" in out, err
    assert [s for s, _, _ in evals(out)] == [6]


def test_a_checkpoint_that_cannot_be_written_keeps_the_last_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run("gpt_char", [], monkeypatch, capsys)[0] == 0
    path = tmp_path / "out" / "gpt_char.pt"
    saved = sha256(path)

    def disk_full(obj, f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    status, _, err = run("gpt_char", ["resume=true", "max_iters=6"], monkeypatch, capsys, tiny=False)
    assert status == 1 and one_sentence(err, "gpt_char") and "No space left on device" in err, err
    assert sha256(path) == saved
    status, out, err = run("gpt_char", [], monkeypatch, capsys)  # a new run, the disk still full
    assert status == 1 and "No space left on device" in err and one_sentence(err, "gpt_char"), err
    assert [f for f in listing(tmp_path / "out") if f.endswith(".pt")] == ["previous/gpt_char.pt"]
    assert sha256(tmp_path / "out" / "previous" / "gpt_char.pt") == saved  # kept, as a new run keeps it


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: "
            "can't allocate memory: you tried to allocate 9 GB"
        ),
    ],
)
def test_out_of_memory_ends_in_one_sentence_and_other_errors_are_not_hidden(
    error, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(torch.optim.AdamW, "step", fail)
    status, _, err = run("gpt_char", [], monkeypatch, capsys)
    assert (
        status == 1
        and err == "gpt_char: out of memory on cpu: make batch_size, block_size or the model " "smaller\n"
    ), err
    error = RuntimeError("another bug")
    with pytest.raises(RuntimeError, match="another bug"):
        run("gpt_char", [], monkeypatch, capsys)


MISTAKES = [  # (script, what the user typed, exit status, what the one sentence on stderr says)
    *[
        (script, ["max_iter=3"], 2, "unknown setting 'max_iter=3' (did you mean max_iters=...?)")
        for script in SCRIPTS
    ],
    *[(script, ["max_iters=3.5"], 2, "max_iters='3.5' is not a whole number") for script in SCRIPTS],
    *[
        (script, ["n_embd=100", "n_head=3"], 2, "n_embd=100 is not divisible by n_head=3")
        for script in ("gpt_bpe", "sort_task")
    ],
    *[(script, ["block_size=200000"], 1, "is too short for block_size=200000") for script in SCRIPTS[:3]],
    (
        "sort_task",
        ["length=3", "num_digits=2"],
        2,
        "length=3 num_digits=2: too few multisets to hold a quarter",
    ),
    ("sort_task", ["num_digits=11"], 2, "length must be 1 or more, num_digits from 2 to 10"),
    ("sort_task", ["start=2103"], 2, "start='2103' is not 6 digits from 0 to 4"),
    ("bigram", ["start=ROMEO€"], 1, "start='ROMEO€' has characters that shakespeare lacks: ['€']"),
    ("gpt_char", ["start=ROMEO€"], 1, "has characters that shakespeare lacks"),
    (
        "gpt_bpe",
        ["tokenizer=sentencepiece"],
        2,
        "tokenizer='sentencepiece' is not tiktoken, scratch or trained",
    ),
    ("gpt_bpe", ["tokenizer=trained", "vocab_size=200"], 2, "vocab_size=200 is less than the 256 bytes"),
    ("gpt_bpe", ["optimizer=sgd"], 2, "optimizer= is muon or adamw, init= gpt2 or pytorch"),
    ("gpt_bpe", ["min_lr=1"], 2, "min_lr=1.0 is above learning_rate="),
    *[
        (
            script,
            ["out_dir=a_file"],
            1,
            "could not read or write a_file: File exists",
        )
        for script in SCRIPTS
    ],
    *[
        (script, ["out_dir=a_file/out"], 1, "could not read or write a_file/out: Not a directory")
        for script in SCRIPTS
    ],
]


@pytest.mark.parametrize(
    "script, args, status, message", MISTAKES, ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_mistake_ends_in_one_clear_sentence(
    script, args, status, message, tmp_path, monkeypatch, capsys
):
    """One sentence, a non-zero exit, and nothing written: not in data/, not in the current folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("a file, not a folder")
    before, data = listing(tmp_path), {name: sha256(os.path.join(DATA, name)) for name in listing(DATA)}
    got, out, err = run(script, args, monkeypatch, capsys)
    assert got == status and message in err and one_sentence(err, script), err
    assert SAMPLE_MARK not in out and listing(tmp_path) == before and not (tmp_path / "out").exists()
    assert {name: sha256(os.path.join(DATA, name)) for name in listing(DATA)} == data


# --------------------------------------------------------------------- a text of one's own
OWN_TEXT = "".join(f"Line {i}: the quick brown fox, {i * 7 % 13} times, over the dog.\n" for i in range(400))


@pytest.mark.parametrize("script", ["bigram", "gpt_char", "gpt_bpe"])
def test_a_text_of_ones_own(script, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.txt").write_text(OWN_TEXT, encoding="utf-8")
    start = "start=Line" if script == "gpt_bpe" else "start=\n"
    status, out, err = run(script, ["dataset=mine.txt", start], monkeypatch, capsys)
    assert status == 0, err
    val = len(OWN_TEXT) - int(0.9 * len(OWN_TEXT))
    assert f"mine.txt: {len(OWN_TEXT):,} characters" in out and f"{val:,}" in out
    assert [s for s, _, _ in evals(out)] == [0, 2, 4]
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the checkpoint keeps dataset= as given: name it again
    sampling = ["max_iters=0", "max_new_tokens=20", "out_dir=../out"]
    status, _, err = run(script, sampling, monkeypatch, capsys, tiny=False)
    assert status == 2 and "dataset='mine.txt' is not shakespeare" in err, err
    status, out, err = run(script, [*sampling, "dataset=../mine.txt"], monkeypatch, capsys, tiny=False)
    assert status == 0 and "loaded ../out/" in out and SAMPLE_MARK in out, err
    (tmp_path / "other.txt").write_text(OWN_TEXT.upper(), encoding="utf-8")
    status, _, err = run(script, [*sampling, "dataset=../other.txt"], monkeypatch, capsys, tiny=False)
    assert status == 1 and "its text had another vocabulary" in err and one_sentence(err, script), err


@pytest.mark.parametrize("script", ["bigram", "gpt_char", "gpt_bpe"])
@pytest.mark.parametrize(
    "kind, content, status, message",
    [
        ("missing", None, 2, "dataset='mine.txt' is not shakespeare"),
        ("a folder", "folder", 2, "dataset='mine.txt' is not shakespeare"),
        ("Latin-1", "Cicero's café ".encode("latin-1") * 100, 1, "mine.txt is not UTF-8 text"),
        ("binary", bytes(range(256)) * 10, 1, "mine.txt is not UTF-8 text"),
        ("empty", b"", 1, "mine.txt is too short for block_size=32"),
        ("too short", b"to be or not to be,\n" * 12, 1, "mine.txt is too short for block_size="),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 12 else "",
)
def test_a_bad_text_of_ones_own_ends_in_one_sentence(
    script, kind, content, status, message, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    if content == "folder":
        (tmp_path / "mine.txt").mkdir()
    elif content is not None:
        (tmp_path / "mine.txt").write_bytes(content)
    before = listing(tmp_path)
    got, out, err = run(script, ["dataset=mine.txt", "block_size=32"], monkeypatch, capsys)
    assert got == status and message in err and one_sentence(err, script), err
    assert listing(tmp_path) == before and not (tmp_path / "out").exists() and SAMPLE_MARK not in out


def test_a_prompt_the_text_lacks_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.txt").write_text(OWN_TEXT.replace("\n", " "), encoding="utf-8")
    status, _, err = run("gpt_char", ["dataset=mine.txt"], monkeypatch, capsys)  # start="\n"
    assert (
        status == 1
        and err == "gpt_char: the prompt start='\\n' has characters that mine.txt lacks: ['\\n']\n"
    )


# ------------------------------------------------------------------- tokenizers (gpt_bpe)
GPT2_URLS = {
    "vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
}
GPT2_FILES = [os.path.join(DATA, "gpt2", "encoder.json"), os.path.join(DATA, "gpt2", "vocab.bpe")]
HARD_STRINGS = [
    "",
    " ",
    "  ",
    "   x",
    "a  b   c",
    "\n",
    "\n\n\n",
    "line\n  indented\n\n",
    "\r\n",
    "a\r\nb\r\n\r\n",
    "\t",
    "\ta\t\tb \t",
    "trailing spaces   ",
    " leading",
    "it's",
    "don't",
    "we're",
    "they've",
    "I'm",
    "you'll",
    "he'd",
    "IT'S",
    "DON'T",
    "WE'RE",
    "THEY'VE",
    "I'M",
    "YOU'LL",
    "HE'D",
    "'s 't 're 've 'm 'll 'd",
    "''s",
    "rock'n'roll",
    "0",
    "1234567890",
    "3.14159",
    "1,000,000",
    "a1b2c3",
    "!!!",
    "...",
    "?!?!",
    "--",
    "((()))",
    "[{<>}]",
    "@#$%^&*",
    "a.b.c",
    "e.g.,",
    "Scr. Romae a. 689.",
    "CICERO ATTICO SAL.",
    "café",
    "naïve façade",
    "Æneas Cæsar",
    "ἀδύνατον",
    "τὸ δὲ μέγιστον",
    "日本語のテキスト",
    "中文",
    "한국어",
    "emoji 😀 👍🏽 🇮🇹",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𐍈",
    "\u0301",
    "e\u0301",
    " \u0301x",
    "\u00a0non-breaking\u00a0space",
    "zero\u200bwidth",
    "\x00\x01\x1f\x7f",
    "<|endoftext|>",
    "a<|endoftext|>b",
]


@functools.lru_cache(maxsize=None)
def offline_gpt2():
    """gpt_bpe.py's tiktoken "gpt2" encoding, built from data/gpt2/."""
    return load("gpt_bpe").tiktoken_gpt2(GPT2_FILES[0])


@pytest.fixture(scope="module")
def tiktoken_gpt2(tmp_path_factory):
    """tiktoken.get_encoding("gpt2") itself, offline: its download cache primed with the shipped files."""
    import tiktoken

    cache = tmp_path_factory.mktemp("tiktoken-cache")
    for name, url in GPT2_URLS.items():  # tiktoken names a cached file by the SHA-1 of its URL
        shutil.copy(os.path.join(DATA, "gpt2", name), cache / hashlib.sha1(url.encode()).hexdigest())
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    try:
        yield tiktoken.get_encoding("gpt2")
    finally:
        os.environ.pop("TIKTOKEN_CACHE_DIR") if old is None else os.environ.update(TIKTOKEN_CACHE_DIR=old)


@pytest.fixture(scope="module")
def scratch():
    b = load("gpt_bpe")
    return b.GPT2Tokenizer(*b.read_gpt2(*GPT2_FILES))


def test_offline_gpt2_is_tiktokens_gpt2(tiktoken_gpt2):
    enc = offline_gpt2()
    assert enc._mergeable_ranks == tiktoken_gpt2._mergeable_ranks and enc._pat_str == tiktoken_gpt2._pat_str
    assert enc._special_tokens == tiktoken_gpt2._special_tokens == {"<|endoftext|>": 50256}
    assert enc.n_vocab == tiktoken_gpt2.n_vocab == 50257
    for s in HARD_STRINGS:
        assert enc.encode_ordinary(s) == tiktoken_gpt2.encode_ordinary(s), s


def test_scratch_tokenizer_known_answers(scratch):
    assert scratch.encode("Hello world") == [15496, 995]  # GPT-2's ids for "Hello" and " world"
    assert scratch.encode("") == [] and scratch.decode([]) == ""
    table = load("gpt_bpe").bytes_to_unicode()
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and len(set(table.values())) == 256


@pytest.mark.parametrize("text", HARD_STRINGS)
def test_scratch_tokenizer_equals_tiktoken_on_hard_strings(text, scratch, tiktoken_gpt2):
    assert scratch.encode(text) == tiktoken_gpt2.encode_ordinary(text)
    assert scratch.decode(scratch.encode(text)) == text


def test_scratch_tokenizer_end_of_text_as_gpt2(scratch, tiktoken_gpt2):
    text = "one<|endoftext|>two"
    assert 50256 not in scratch.encode(text)  # ordinary text unless asked for
    asked = scratch.encode(text, allowed_special={"<|endoftext|>"})
    assert asked == tiktoken_gpt2.encode(text, allowed_special={"<|endoftext|>"}) and asked.count(50256) == 1
    assert scratch.decode(asked) == text and scratch.decode([50256]) == "<|endoftext|>"
    assert scratch.encode(text, allowed_special="all") == tiktoken_gpt2.encode(text, allowed_special="all")
    ids = tiktoken_gpt2.encode_ordinary("\U0001d518")  # one 4-byte character, more than one token
    assert len(ids) > 1 and scratch.decode(ids[:1]) == tiktoken_gpt2.decode(ids[:1]) == "\ufffd"


@pytest.mark.parametrize("dataset", ["atticus", "shakespeare"])
def test_scratch_tokenizer_equals_tiktoken_on_whole_corpora(dataset, tiktoken_gpt2):
    text = atticus_text() if dataset == "atticus" else shakespeare_text()
    b = load("gpt_bpe")
    ids = b.GPT2Tokenizer(*b.read_gpt2(*GPT2_FILES)).encode(text)
    assert ids == tiktoken_gpt2.encode_ordinary(text)
    if dataset == "atticus":
        assert len(set(ids)) == 4431  # 4,431 of GPT-2's 50,257 ids occur in the letters


def test_compact_vocabulary_knows_the_training_text_and_spells_the_rest():
    """The model's ids: those of the training text and the 256 bytes, nothing read from the validation
    text; a token the training text never has is spelled in its bytes, so every text has model ids."""
    b, enc = load("gpt_bpe"), offline_gpt2()
    text = atticus_text()
    train, val = text[: int(0.9 * len(text))], text[int(0.9 * len(text)) :]
    known = set(enc.encode_ordinary(train))
    vocab = sorted(known | {enc.encode_single_token(bytes([x])) for x in range(256)})
    assert len(known) == 4320 and len(vocab) == 4460
    encode, decode = b.make_tokenizer(vocab, enc)
    assert [vocab[i] for i in encode(train)] == enc.encode_ordinary(train) and decode(encode(train)) == train
    gpt2_val, model_val = enc.encode_ordinary(val), encode(val)
    unseen = [t for t in gpt2_val if t not in known]
    assert len(unseen) == 148 and decode(model_val) == val
    assert len(model_val) == len(gpt2_val) - len(unseen) + sum(
        len(enc.decode_single_token_bytes(t)) for t in unseen
    )
    phrase = "Scr. Romae a. 689. CICERO ATTICO salutem 日本"
    assert decode(encode(phrase)) == phrase and max(encode(phrase)) < len(vocab)


def test_the_gpt2_files_are_downloaded_when_missing(server, tmp_path):
    root, url = server
    for name in GPT2_URLS:
        shutil.copy(os.path.join(DATA, "gpt2", name), root / name)
    b = load("gpt_bpe")
    b.DATA_DIR = str(tmp_path / "data")
    for name in GPT2_URLS:
        b.DATA_FILES[f"gpt2/{name}"] = (f"{url}/{name}", b.DATA_FILES[f"gpt2/{name}"][1])
    for b.tokenizer in ("tiktoken", "scratch"):
        bpe = b.load_bpe([], *b.data_files(*b.GPT2))
        assert bpe.encode_ordinary("Hello world") == [15496, 995] and bpe.n_vocab == 50257
    assert listing(tmp_path / "data") == ["gpt2/encoder.json", "gpt2/vocab.bpe"]


@pytest.mark.parametrize(
    "args, vocabulary",
    [
        (["tokenizer=scratch"], 4460),
        (["dataset=shakespeare", "tokenizer=scratch"], 11428),
        (["compact_vocab=false", "dataset=mine.txt", "max_iters=2", "eval_iters=1"], 50257),
    ],
)
def test_gpt_bpe_variants(args, vocabulary, tmp_path, monkeypatch, capsys):
    """GPT2Tokenizer as the tokenizer; Shakespeare; every one of GPT-2's ids embedded."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.txt").write_text(OWN_TEXT, encoding="utf-8")
    status, out, err = run("gpt_bpe", args, monkeypatch, capsys)
    assert status == 0, err
    assert re.search(rf"^[\d,]+ tokens \(\w+\), {vocabulary:,} distinct,", out, re.M)
    checkpoint = torch.load(tmp_path / "out" / "gpt_bpe.pt", weights_only=True)
    assert len(checkpoint["vocab"]["ids"]) == vocabulary == checkpoint["model"]["wte.weight"].shape[0]


# --------------------------------------------------------- a tokenizer trained here (gpt_bpe)
def test_train_bpe_known_merges():
    """Counted by hand. aaabdaaabac: aa 4 times (overlaps count), then (a, b) and (aa, a) twice each, a tie
    that byte order breaks. In "ab ab", the space starts the second word: b and the space are never a pair."""
    b = load("gpt_bpe")
    assert b.train_bpe("aaabdaaabac", 259) == [(b"a", b"a"), (b"a", b"b"), (b"aa", b"ab")]
    assert b.train_bpe("ab ab", 300) == [(b"a", b"b"), (b" ", b"ab")]  # then no pair is left
    assert b.train_bpe("aaaa", 300) == [(b"a", b"a"), (b"aa", b"aa")]  # aaaa -> aa aa -> aaaa
    assert b.train_bpe("αα", 257) == [(b"\xce", b"\xb1")]  # bytes, not characters: α is 2 bytes


def test_the_worked_examples_in_the_docstrings_hold(monkeypatch):
    monkeypatch.chdir(ROOT)  # they read data/gpt2/
    results = doctest.testmod(load("gpt_bpe"))
    assert results.attempted >= 3 and results.failed == 0


def test_every_learned_merge_is_the_most_frequent_pair_at_its_step():
    import regex

    b = load("gpt_bpe")
    text = atticus_text()[:30_000]
    merges = b.train_bpe(text, 256 + 200)
    assert len(merges) == 200
    words = {}
    for word in regex.findall(b.GPT2_SPLIT, text):
        key = tuple(bytes([x]) for x in word.encode())
        words[key] = words.get(key, 0) + 1
    for step, pair in enumerate(merges):
        counts = {}
        for word, n in words.items():  # the plain way: every adjacent pair, counted again from scratch
            for p in zip(word, word[1:]):
                counts[p] = counts.get(p, 0) + n
        most = max(counts.values())
        assert counts.get(pair) == most, (step, pair, counts.get(pair), most)
        assert pair == min(p for p, n in counts.items() if n == most)  # a tie: the first in byte order
        words = {tuple(b.merge(list(word), pair)): n for word, n in words.items()}


@functools.lru_cache(maxsize=None)
def trained_merges():
    text = atticus_text()
    return tuple(load("gpt_bpe").train_bpe(text[: int(0.9 * len(text))], 1024))


@pytest.mark.parametrize("text", HARD_STRINGS)
def test_a_trained_tokenizer_round_trips(text):
    tok = load("gpt_bpe").learned_bpe(trained_merges())
    assert tok.decode(tok.encode_ordinary(text)) == text
    assert all(0 <= i < tok.n_vocab == 1024 for i in tok.encode_ordinary(text))


def test_a_trained_tokenizer_splits_like_its_merges():
    """The ids are the 256 bytes, then one a merge in the order learned; " Romae", where Cicero writes
    from, is one of the 1,024."""
    tok = load("gpt_bpe").learned_bpe(trained_merges())
    ids = tok.encode_ordinary(" Romae")
    assert len(ids) == 1 and tok.decode(ids) == " Romae"
    assert [tok.decode_single_token_bytes(i) for i in range(256)] == [bytes([x]) for x in range(256)]
    left, right = trained_merges()[0]
    assert tok.encode_ordinary((left + right).decode()) == [256]  # the first merge is id 256


def test_the_tokenizer_is_trained_on_the_training_text_alone(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    seen, train_bpe = [], load("gpt_bpe").train_bpe
    monkeypatch.setattr(
        sys, "argv", ["gpt_bpe.py", *tiny_args("gpt_bpe"), "tokenizer=trained", "vocab_size=300"]
    )
    b = load("gpt_bpe")
    b.train_bpe = lambda text, size: seen.append(text) or train_bpe(text, size)
    capsys.readouterr()
    b.main()
    out = capsys.readouterr().out
    text = atticus_text()
    assert seen == [text[: int(0.9 * len(text))]]  # not a character of the validation text
    assert "44 merges learned from the training text" in out and "tokens (trained)" in out
    checkpoint = torch.load(tmp_path / "out" / "gpt_bpe.pt", weights_only=True)
    assert checkpoint["vocab"]["merges"] == train_bpe(seen[0], 300)
    # sampling needs no settings, and does not learn the merges again
    monkeypatch.setattr(sys, "argv", ["gpt_bpe.py", "max_iters=0"])
    b = load("gpt_bpe")
    b.train_bpe = lambda *args: pytest.fail("merges learned again")
    b.main()
    out = capsys.readouterr().out
    assert "tokens (trained)" in out and out.split(SAMPLE_MARK)[1].split("\n", 1)[1].startswith("Scr. Romae")
    status, _, err = run("gpt_bpe", ["max_iters=0", "tokenizer=tiktoken"], monkeypatch, capsys, tiny=False)
    assert status == 1 and "does not fit (" in err and one_sentence(err, "gpt_bpe"), err


# ---------------------------------------------------------------------------- sort task
def test_sort_examples_mask_the_input_half():
    s = load("sort_task")
    s.length = 5
    x, y = s.examples(torch.tensor([[1, 2, 1, 0, 1]]))
    assert x.tolist() == [[1, 2, 1, 0, 1, 0, 1, 1, 1]] and y.tolist() == [[-100] * 4 + [0, 1, 1, 1, 2]]


def test_sort_holds_out_answers_not_just_inputs():
    s = load("sort_task")
    held, train = s.input_set(held=True).tolist(), s.input_set(held=False).tolist()
    assert len(held) + len(train) == s.num_digits**s.length  # every input, on one side only
    held_answers = {tuple(sorted(x)) for x in held}
    assert not held_answers & {tuple(sorted(x)) for x in train}  # no held-out answer is a training target
    assert {tuple(x) for x in held} == {p for a in held_answers for p in itertools.permutations(a)}
    assert 0.1 < len(held_answers) / math.comb(s.length + s.num_digits - 1, s.length) < 0.4
    source = open(os.path.join(ROOT, "sort_task.py"), encoding="utf-8").read()  # hashlib, not hash():
    held_out = next(n for n in ast.parse(source).body if getattr(n, "name", "") == "held_out")
    code = (
        "import hashlib, itertools\n"
        + ast.get_source_segment(source, held_out)
        + "\nprint(sorted(x for x in itertools.product(range(5), repeat=6) if held_out(x)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**ONE_THREAD, "PYTHONHASHSEED": "12345"},
    ).stdout  # another hash seed
    assert out.strip() == str(sorted(map(tuple, held)))
    s.device = "cpu"
    for _ in range(50):
        x, y = s.get_batch("train")
        assert not {tuple(sorted(row)) for row in x[:, : s.length].tolist()} & held_answers
        assert (y[:, : s.length - 1] == -100).all() and (y[:, s.length - 1 :] >= 0).all()
    x, _ = s.get_batch("val")
    assert {tuple(sorted(row)) for row in x[:, : s.length].tolist()} <= held_answers
    repeats = [len(set(row)) for row in s.random_inputs(1000).tolist()]
    assert sum(r <= 2 for r in repeats) > 500  # inputs with many repeated digits are oversampled


def test_sort_attention_picture_is_what_the_heads_compute():
    """The weights recomputed from the last block's queries and keys, applied to its values and projected,
    give the block's attention output: they are the weights its fused attention used."""
    s = load("sort_task")
    torch.manual_seed(0)
    model = s.GPT(5, 11, 32, 4, 2, 0.0).eval()
    x = torch.randint(5, (1, 11))
    weights = s.last_block_attention(model, x)
    attn, seen = model.blocks[-1].attn, []
    hook = attn.register_forward_hook(lambda module, args, out: seen.append((args[0], out)))
    model(x)
    hook.remove()
    inputs, output = seen[0]
    v = attn.c_attn(inputs).split(32, dim=2)[2].view(1, 11, 4, 8).transpose(1, 2)
    assert torch.allclose(
        attn.c_proj((weights[None] @ v).transpose(1, 2).reshape(1, 11, 32)), output, atol=1e-5
    )
    assert weights.shape == (4, 11, 11) and torch.all(weights.triu(1) == 0)


def test_sort_text_heat_map_shows_every_weight_above_zero(capsys):
    s = load("sort_task")
    s.length = 2
    weights = torch.tensor([[[1.0, 0, 0], [0.5, 0.5, 0], [0.34, 0.33, 0.33]]])  # near uniform: all below 0.4
    s.print_attention(weights, "012", row=1)
    rows = capsys.readouterr().out.splitlines()[3:]
    assert [row[9:] for row in rows] == ["@    ", "+ +  ", "= - -"]  # int(10 * w) would show nothing


def test_sort_task_samples_a_checkpoint_of_other_sizes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run("sort_task", ["length=5", "num_digits=4"], monkeypatch, capsys)[0] == 0
    status, out, err = run("sort_task", ["max_iters=0", "start=32103"], monkeypatch, capsys, tiny=False)
    assert (
        status == 0 and "loaded out/sort_task.pt: step 4" in out and "sorting 5 digits from 0-3" in out
    ), err
    assert "--- sample: the model sorts 32103 into " in out


def test_sort_judges_with_dropout_off_and_trains_with_it_on():
    s = load("sort_task")
    s.device = "cpu"
    torch.manual_seed(0)
    model = s.GPT(5, 11, 16, 2, 1, 0.5).train()
    inputs = s.input_set(held=True)[:20]
    first = s.sort_accuracy(model, inputs)[1]
    assert len(first) == 20 and model.training  # untrained: every input wrong; and back to training
    assert s.sort_accuracy(model, inputs)[1] == first  # the same outputs: no dropout while judging
    assert model.generate(inputs, s.length, temperature=0)[:, s.length :].tolist() != [o for _, o in first]


def test_sort_accuracy_is_generation_not_teacher_forcing():
    """A model that peeks at the next input token is right under teacher forcing, and wrong when it must feed
    back its own digits; one that sorts the input it has read is right both ways."""
    s = load("sort_task")
    s.device = "cpu"

    class Peek(torch.nn.Module):  # not causal: position t predicts the token at t + 1 of its input
        block_size = 2 * s.length - 1
        generate = s.GPT.generate

        def forward(self, idx, targets=None):
            return 10.0 * F.one_hot(torch.cat([idx[:, 1:], idx[:, -1:]], dim=1), s.num_digits).float(), None

    class Sorter(Peek):  # causal: after the input, the next digit of the sorted input
        def forward(self, idx, targets=None):
            answer = idx[:, : s.length].sort(dim=1).values
            position = (torch.arange(idx.size(1)) - s.length + 1).clamp(0, s.length - 1)
            return 10.0 * F.one_hot(answer[:, position], s.num_digits).float(), None

    inputs = s.input_set(held=True)
    x, y = s.examples(inputs)
    for model, generated in ((Peek(), 0.0), (Sorter(), 1.0)):
        forced = (model(x)[0].argmax(-1) == y)[y >= 0].float().mean().item()  # teacher forcing, per digit
        accuracy, _ = s.sort_accuracy(model, inputs)
        assert forced > 0.8 and (accuracy < 0.2 if generated < 1 else accuracy == 1.0), (model, accuracy)


@pytest.mark.parametrize(
    "switches",
    [[], ["optimizer=adamw", "tie=false", "init=pytorch", "warmup_iters=0", "min_lr=0.003", "grad_clip=0"]],
)
def test_sort_task_end_to_end_tiny(switches, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status, out, err = run("sort_task", ["start=210430", *switches], monkeypatch, capsys)
    assert status == 0, err
    assert [s for s, _, _ in evals(out)] == [0, 2, 4]
    assert re.search(r"^judged on 2,730 held-out inputs of 46 multisets, never trained on$", out, re.M)
    assert re.search(r"^held-out: [\d.]+% of 2,730 inputs sorted exactly right$", out, re.M)
    assert "--- sample: the model sorts 210430 into " in out and "head 1 " in out


# ----------------------------------------------------------------- one skeleton, four scripts
PLUMBING = [
    "die",
    "Stopped",
    "configure",
    "parse",
    "changed",
    "wrap",
    "load_checkpoint",
    "Run",
    "clock",
    "figure",
    "show",
    "the __main__ guard",
    "NOTEBOOK",
    "OWN",
    "KEPT",
    "the banner",
]
SHARED = {  # blocks -> the scripts that must hold the very same text of each
    tuple(PLUMBING): SCRIPTS,
    ("data_files", "check_data", "DATA_DIR"): ["bigram", "gpt_char", "gpt_bpe"],
    ("load_text", "DATA_FILES"): ["bigram", "gpt_char"],
    ("tokenizer", "train", "sample"): ["bigram", "gpt_char"],  # steps 1 and 2
    ("get_batch", "estimate_loss"): ["bigram", "gpt_char", "gpt_bpe"],
    (
        "CausalSelfAttention",
        "MLP",
        "Block",
        "GPT",
        "orthogonalize",
        "Muon",
        "make_optimizers",
        "get_lr",
        "autocast",
    ): [
        "gpt_bpe",
        "sort_task",
    ],  # step 3's model, and how it trains
}


def blocks(script):
    """A script's top-level functions, classes and assignments by name, and a few more pieces, as text."""
    source = open(os.path.join(ROOT, f"{script}.py"), encoding="utf-8").read()
    found = {}
    for node in ast.parse(source).body:
        name = getattr(node, "name", None) or (
            isinstance(node, ast.Assign) and getattr(node.targets[0], "id", 0)
        )
        if name:
            found[name] = ast.get_source_segment(source, node)
    found["the banner"] = source[source.index("# Plumbing") :].split("\n")[0]
    found["the __main__ guard"] = source[source.index('if __name__ == "__main__":') :]
    return found


@pytest.mark.parametrize("names, scripts", SHARED.items(), ids=lambda v: v[0] if isinstance(v, tuple) else "")
def test_shared_blocks_have_the_same_text(names, scripts):
    """A fix in one script cannot silently miss its twins: these blocks are equal, letter for letter."""
    found = {script: blocks(script) for script in scripts}
    for name in names:
        first = found[scripts[0]][name]
        for script in scripts[1:]:
            assert found[script][name] == first, f"{name} differs between {scripts[0]}.py and {script}.py"


BUDGETS = {"bigram": 240, "gpt_char": 320, "gpt_bpe": 570, "sort_task": 420}  # the lesson's lines at most
PLUMBING_LINES, PLUMBING_BYTES = 240, 14_000  # the plumbing's size at most, from the banner on


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_lesson_comes_first_and_the_plumbing_is_short(script):
    """Every function that exits, downloads, touches a checkpoint or draws is after main(); the lesson and
    the plumbing keep to their sizes; no line is over 110 characters."""
    source = open(os.path.join(ROOT, f"{script}.py"), encoding="utf-8").read()
    body = ast.parse(source).body
    main = next(n.lineno for n in body if isinstance(n, ast.FunctionDef) and n.name == "main")
    plumbing = {
        "die",
        "sys.exit",
        "torch.save",
        "torch.load",
        "savefig",
        "data_files",
        "download_url_to_file",
    }

    def called(f):  # die, sys.exit, torch.load: a name, an attribute, and a module's attribute
        name, module = getattr(f, "attr", getattr(f, "id", None)), getattr(
            getattr(f, "value", None), "id", None
        )
        return {name, f"{module}.{name}"}

    for node in body:
        if isinstance(node, ast.FunctionDef) and node.lineno < main:
            calls = set().union(*(called(c.func) for c in ast.walk(node) if isinstance(c, ast.Call)))
            assert not calls & plumbing, f"{script}.py: {node.name} calls {calls & plumbing} before main()"
    lines = source.splitlines()
    banner = next(i for i, line in enumerate(lines) if line.startswith("# Plumbing"))
    assert max(map(len, lines)) <= 110
    assert banner <= BUDGETS[script]
    assert len(lines) - banner <= PLUMBING_LINES and len("\n".join(lines[banner:]).encode()) <= PLUMBING_BYTES
