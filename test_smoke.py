"""Tests of the collection: `pytest test_smoke.py` (2 to 3 minutes on 2 CPU cores, no network, no GPU).

Every script runs end to end as a user runs it (a subprocess with tiny settings, in a temporary
folder) and as a notebook runs it (IPython, no __file__, the kernel's own arguments; gpt_char.py also
in a real Jupyter kernel); the pieces users rely on are checked one by one: settings, downloads, the
Atticus parser, the tokenizers (GPT-2's and one trained here), the model and its switches, the
lecture's presets, sampling, the optimizers and fp16, checkpoints and exact resume, and every kind
of mistake. Each subprocess runs on one thread, and nothing depends on the clock, so a busy machine
only makes the tests slower. The few tests that need a CUDA GPU are skipped without one.
"""

import functools
import hashlib
import http.server
import importlib.util
import itertools
import math
import os
import re
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
TINY = {  # settings small enough that a whole run takes a few seconds
    "bigram": dict(device="cpu", max_iters=4, eval_interval=2, eval_iters=2, log_interval=1, batch_size=32,
                   block_size=16, max_new_tokens=40),
    "gpt_char": dict(device="cpu", max_iters=4, eval_interval=2, eval_iters=2, log_interval=1, batch_size=32,
                     block_size=64, max_new_tokens=40, n_layer=1, n_head=2, n_embd=16),
    "gpt_bpe": dict(device="cpu", max_iters=4, eval_interval=2, eval_iters=2, log_interval=1, batch_size=32,
                    block_size=16, max_new_tokens=40, n_layer=1, n_head=2, n_embd=16),
    "sort_task": dict(device="cpu", max_iters=4, eval_interval=2, eval_iters=1, log_interval=1, n_layer=1,
                      n_head=2, n_embd=16),
}
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # threads that never fight
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
FULL = re.compile(r"^step (\d+)/(\d+) \| train ([\d.]+) \| val ([\d.]+) \| "
                  r"(?:val bpc|held-out sorted) ([\d.]+)", re.M)
PROGRESS = re.compile(r"^step (\d+)/\d+ \| loss ([\d.]+) \| ([\d,]+) tok/s \| \d+m\d\ds \| \d+m\d\ds left$",
                      re.M)
SAMPLE_MARK = "--- sample"
VAL_CHARACTERS = {"shakespeare": 111_540, "atticus": 82_541}  # the last 10 % of each text
_count = itertools.count()
torch.set_num_threads(1)  # the runs in this process, too


def load(script, folder=ROOT):
    """A fresh copy of a script as a module (its main() not run), so tests do not share globals."""
    spec = importlib.util.spec_from_file_location(f"{script}_{next(_count)}",
                                                  os.path.join(folder, f"{script}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_args(script):
    return [f"{k}={v}" for k, v in TINY[script].items()]


def run(script, *args, cwd, tiny=True, timeout=3600, env=ONE_THREAD):
    """`python SCRIPT.py [tiny settings] args` in cwd, as a user runs it."""
    return subprocess.run([sys.executable, os.path.join(ROOT, f"{script}.py"),
                           *(tiny_args(script) if tiny else []), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def main_in_process(script, args, monkeypatch, capsys, tiny=True, folder=ROOT, module=None):
    """A fresh copy of the script's main() run here: (exit status, stdout, stderr). The same as
    `python SCRIPT.py ...` without a new interpreter's seconds of imports."""
    module = module or load(script, folder)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *(tiny_args(script) if tiny else []), *args])
    capsys.readouterr()
    try:
        module.main()
        status = 0
    except SystemExit as stop:
        status = stop.code
    out, err = capsys.readouterr()
    return status, out, err


def full_lines(stdout, script="gpt_char", dataset="shakespeare"):
    """(step, train loss, val loss) of each evaluation line; val bits per character checked on the way."""
    lines = FULL.findall(stdout)
    if script != "sort_task":
        tokens_per_char = val_tokens_per_character(script, dataset)
        for m in lines:  # bits per character = nats per token / ln 2 x tokens per character
            assert float(m[4]) == pytest.approx(float(m[3]) / math.log(2) * tokens_per_char, abs=2e-3)
    return [(int(m[0]), float(m[2]), float(m[3])) for m in lines]


@functools.lru_cache(maxsize=None)
def atticus_text():
    return load("gpt_char").load_text(os.path.join(DATA, "atticus.xml"))


def text_of(dataset):
    if dataset == "atticus":
        return atticus_text()
    with open(os.path.join(DATA, "tinyshakespeare.txt"), encoding="utf-8") as f:
        return f.read()


@functools.lru_cache(maxsize=None)
def val_tokens_per_character(script, dataset):
    """The model's tokens per character of the validation text (the last 10 % of the characters): GPT-2's
    tokens, those that the training text lacks spelled in bytes."""
    if script != "gpt_bpe":
        return 1.0
    text, enc = text_of(dataset), offline_gpt2()
    train, val = text[:int(0.9 * len(text))], text[int(0.9 * len(text)):]
    known = set(enc.encode_ordinary(train))
    tokens = sum(1 if t in known else len(enc.decode_single_token_bytes(t)) for t in enc.encode_ordinary(val))
    return tokens / len(val)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def listing(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def one_sentence(err, script):
    return err.startswith(f"{script}: ") and err.count("\n") == 1 and "Traceback" not in err


# ------------------------------------------------------------------ end to end, as a user
@pytest.mark.parametrize("script, dataset", [("bigram", "shakespeare"), ("gpt_char", "shakespeare"),
                                             ("gpt_bpe", "atticus")])  # the others in process, below
def test_script_end_to_end(script, dataset, tmp_path):
    p = run(script, f"dataset={dataset}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    # the same validation text in every step
    assert f"| val {VAL_CHARACTERS[dataset]:,} characters" in p.stdout
    steps = full_lines(p.stdout, script, dataset)
    assert [s for s, _, _ in steps] == [0, 2, 4]  # step 0, every eval_interval, the last step
    assert all(0 < train < 12 and 0 < val < 12 for _, train, val in steps)
    # every log_interval, between evaluations
    assert [int(m[0]) for m in PROGRESS.findall(p.stdout)] == [1, 3]
    step_0 = re.search(r"^step 0/4 .*$", p.stdout, re.M)[0]
    # nothing timed at step 0
    assert "tok/s" not in step_0 and "left" not in step_0 and " 0 tok/s" not in p.stdout
    assert "device cpu" in p.stdout and "parameters" in p.stdout
    sample = p.stdout.split(SAMPLE_MARK, 1)[1].split("\n", 1)[1]
    if script == "gpt_bpe":  # 40 tokens of one or more bytes each after the prompt
        assert sample.startswith("Scr. Romae") and len(sample.encode()) >= len("Scr. Romae") + 40
    else:
        assert sample.startswith("\n") and len(sample.split("\nattention picture")[0]) >= 1 + 40
    checkpoint = torch.load(tmp_path / "out" / f"{script}.pt", weights_only=True)
    assert set(checkpoint) == {"script", "model", "optimizer", "scaler", "config", "vocab", "step",
                               "val_loss", "best_val_loss", "history", "progress", "rng"}
    assert [step for step, _ in checkpoint["progress"]] == [1, 2, 3, 4]  # every line after a step
    assert checkpoint["step"] == 4 and checkpoint["config"]["dataset"] == dataset
    assert ([h[0] for h in checkpoint["history"]] == [0, 2, 4]
            and checkpoint["val_loss"] == pytest.approx(steps[-1][2], abs=1e-4))
    assert checkpoint["best_val_loss"] == min(val for _, _, val in checkpoint["history"])
    assert (tmp_path / "out" / f"{script}_loss.png").stat().st_size > 1000
    assert (tmp_path / "out" / f"{script}_attention.png").exists() == (script == "gpt_char")
    assert sorted(os.listdir(tmp_path / "out")) == sorted(f for f in os.listdir(tmp_path / "out")
                                                          if ".tmp" not in f)


def test_bigram_prints_the_counting_answers(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status, out, err = main_in_process("bigram", ["max_iters=40", "eval_interval=20", "log_interval=20",
                                                  "dataset=atticus"], monkeypatch, capsys)
    assert status == 0, err
    assert ("| val 82,541 characters" in out
            and [s for s, _, _ in full_lines(out, "bigram", "atticus")] == [0, 20, 40])
    least = float(re.search(r"counting pairs: train ([\d.]+), the least any bigram table can reach", out)[1])
    assert re.search(r"\| val [\d.]+ with add-one smoothing, a reference but not the best possible", out)
    trained = float(re.search(r"the trained table: train ([\d.]+) on every pair of the training text",
                              out)[1])
    assert least < trained  # 40 steps get close, never below


def test_same_seed_same_losses(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    first, second, other = (
        main_in_process("gpt_char", ["max_iters=2", "dropout=0.1", *args], monkeypatch, capsys)
        for args in ([], ["out_dir=o2"], ["seed=7", "out_dir=o7"]))
    assert first[0] == second[0] == other[0] == 0
    assert len(full_lines(first[1])) == 2 and full_lines(first[1]) == full_lines(second[1])
    assert len(full_lines(other[1])) == 2 and full_lines(first[1]) != full_lines(other[1])
    assert first[1].split(SAMPLE_MARK)[1] == second[1].split(SAMPLE_MARK)[1].replace("o2/", "out/")


def test_the_default_cpu_run_reports_often():
    """A learner waits at most log_interval steps for a line: at least 20 lines in a default CPU run."""
    for script in SCRIPTS:
        module = load(script)
        if hasattr(module, "sizes"):
            module.sizes("cpu")  # the laptop's sizes, on any machine
        assert module.max_iters // module.log_interval >= (20 if script == "gpt_char" else 10), script


# ----------------------------------------------------------------------- as a notebook runs it
IPYTHON_KERNEL = """
import sys
from IPython.core.interactiveshell import InteractiveShell
cells = sys.argv[1:]
sys.argv = ["/usr/local/lib/python3/dist-packages/colab_kernel_launcher.py", "-f", "/root/kernel-1.json", \
*cells]
for cell in cells:  # cells run one after the other in the same kernel
    result = InteractiveShell.instance().run_cell(open(cell, encoding="utf-8").read())
sys.exit(0 if result.success else 3)
"""


def notebook_cell(script, tmp_path, *more, **settings):
    """The script pasted into a cell (no __file__, data/ beside the notebook), its hyperparameters edited by
    hand; run by IPython in a subprocess. Each dict in `more` is a further run of the cell, with those lines
    edited."""
    source = open(os.path.join(ROOT, f"{script}.py"), encoding="utf-8").read()
    cells = []
    for edits in ({**TINY[script], **settings}, *more):
        for name, value in edits.items():  # every line that sets it, in either branch
            source, n = re.subn(rf"^(\s*){name} = .*$", rf"\g<1>{name} = {value!r}", source, flags=re.M)
            assert n >= 1, name
        cells.append(f"cell{len(cells)}.py")
        (tmp_path / cells[-1]).write_text(source, encoding="utf-8")
    if not (tmp_path / "data").exists():
        os.symlink(DATA, tmp_path / "data")
    return subprocess.run([sys.executable, "-c", IPYTHON_KERNEL, *cells], cwd=tmp_path, capture_output=True,
                          text=True, timeout=3600, env=ONE_THREAD)


@pytest.mark.parametrize("script", SCRIPTS)
def test_runs_as_a_notebook_cell(script, tmp_path):
    """Run, then run again with resume = True and more steps, in the same kernel, as after a Ctrl-C."""
    p = notebook_cell(script, tmp_path, dict(resume=True, max_iters=6))
    assert p.returncode == 0, p.stdout + p.stderr
    first, again = p.stdout.split(f"loaded out/{script}.pt: step 4")
    dataset = "atticus" if script == "gpt_bpe" else "shakespeare"
    assert [s for s, _, _ in full_lines(first, script, dataset)] == [0, 2, 4]
    assert [s for s, _, _ in full_lines(again, script, dataset)] == [6]
    assert SAMPLE_MARK in again and torch.load(tmp_path / "out" / f"{script}.pt",
                                               weights_only=True)["step"] == 6
    assert "<IPython" not in p.stdout  # IPython without a kernel (a terminal) shows no pictures


def test_a_mistake_in_a_notebook_ends_in_its_sentence_alone(tmp_path):
    p = notebook_cell("gpt_char", tmp_path, n_head=3)
    assert p.returncode == 3
    shown = (p.stdout + p.stderr).strip()
    assert shown == "gpt_char: n_embd=16 is not divisible by n_head=3", shown  # no traceback, no exit warning
    p = notebook_cell("gpt_char", tmp_path, resume=True)
    assert p.returncode == 3 and (p.stdout + p.stderr).strip().startswith(
        "gpt_char: resume=true needs a checkpoint")


def test_a_notebook_shows_each_picture_in_the_cell(tmp_path, monkeypatch):
    """A real Jupyter kernel (nbclient): the cell shows the loss and attention pictures as images, not only
    their file names, and not the text <Figure size ...> that a Figure made without pyplot displays as."""
    import nbformat
    from nbclient import NotebookClient
    source = open(os.path.join(ROOT, "gpt_char.py"), encoding="utf-8").read()
    for name, value in TINY["gpt_char"].items():
        source = re.sub(rf"^(\s*){name} = .*$", rf"\g<1>{name} = {value!r}", source, flags=re.M)
    os.symlink(DATA, tmp_path / "data")
    for name, value in ONE_THREAD.items():
        monkeypatch.setenv(name, value)
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    where = {"metadata": {"path": str(tmp_path)}}  # the notebook's folder
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources=where).execute()
    outputs = notebook.cells[0].outputs
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
    shown = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert len(images) == 2 and "<Figure size" not in shown and "attention picture saved to" in shown
    assert {sha256(tmp_path / "out" / f"gpt_char_{name}.png") for name in ("loss", "attention")} == {
        hashlib.sha256(__import__("base64").b64decode(o.data["image/png"])).hexdigest() for o in images}


# ---------------------------------------------------------------------------- settings
def test_settings_take_the_type_of_the_default():
    g = load("gpt_char")
    given = g.configure(["gpt_char.py", "dropout=0", "learning_rate=1", "--max_iters=3", "resume=true",
                         "start=ROMEO:"])
    assert (g.dropout, g.learning_rate, g.max_iters, g.resume, g.start) == (0.0, 1.0, 3, True, "ROMEO:")
    assert type(g.dropout) is float and type(g.max_iters) is int
    assert given == {"dropout", "learning_rate", "max_iters", "resume", "start"}
    g.configure(["gpt_char.py", "resume=0", "dataset=atticus"])
    assert g.resume is False and g.dataset == "atticus"


def test_a_notebooks_arguments_are_ignored():
    g = load("gpt_char")
    given = g.configure(["/usr/lib/python3/dist-packages/ipykernel_launcher.py", "-f", "/tmp/kernel-1.json"])
    assert g.max_iters == load("gpt_char").max_iters and given == set(g.SETTINGS)


def test_laptop_defaults_off_cuda():
    g = load("gpt_char")
    if g.device != "cuda":  # an Apple GPU gets the laptop's model too
        assert (g.n_layer, g.n_embd, g.block_size, g.max_iters) == (4, 96, 64, 2100)
    assert all(isinstance(getattr(g, name), (bool, int, float, str)) for name in g.SETTINGS)
    assert {"device", "dropout", "top_k"} <= set(g.SETTINGS) and "DATA_DIR" not in g.SETTINGS

@pytest.mark.parametrize("script", ["gpt_char", "gpt_bpe"])
def test_a_device_given_picks_its_own_sizes(script, monkeypatch, capsys):
    """On a machine with a GPU, device=cpu trains the laptop's model, and --help shows its sizes."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    laptop = {"gpt_char": (4, 96, 2100), "gpt_bpe": (4, 128, 1500)}[script]
    module = load(script)
    assert module.device == "cuda" and (module.n_layer, module.n_embd, module.max_iters) == (6, 384, 5000)
    given = module.configure([f"{script}.py", "device=cpu"])
    assert "device" in given and (module.n_layer, module.n_embd, module.max_iters) == laptop
    module = load(script)
    module.configure([f"{script}.py", "n_layer=2", "device=cpu"])  # a size given beside it wins, in any order
    assert (module.n_layer, module.n_embd) == (2, laptop[1])
    with pytest.raises(SystemExit):
        load(script).configure([f"{script}.py", "device=cpu", "--help"])
    out = capsys.readouterr().out
    assert f"\n  n_embd={laptop[1]} " in out and f"\n  max_iters={laptop[2]} " in out
    # in a notebook, the edited device line picks the sizes that follow it
    source = open(os.path.join(ROOT, f"{script}.py"), encoding="utf-8").read()
    cell = {"__name__": "cell"}
    source = re.sub(r"^device = .*$", 'device = "cpu"', source, count=1, flags=re.M)
    exec(compile(source, "cell", "exec"), cell)
    assert (cell["n_layer"], cell["n_embd"], cell["max_iters"]) == laptop


def test_settings_list_every_hyperparameter():
    """Every name set between the hyperparameters banner and SETTINGS, in order, is a setting: a new
    hyperparameter cannot be left out of SETTINGS (and so out of name=value and --help)."""
    import ast

    # the names these statements set, in order, inside sizes(device) and its `if ...: ... else: ...` too
    def assigned(nodes):
        for node in nodes:
            if isinstance(node, ast.If):
                yield from assigned(node.body + node.orelse)
            elif isinstance(node, ast.FunctionDef):
                yield from assigned(node.body)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    yield from (n.id for n in ast.walk(target) if isinstance(n, ast.Name)
                                and isinstance(n.ctx, ast.Store))

    for script in SCRIPTS:
        source = open(os.path.join(ROOT, f"{script}.py"), encoding="utf-8").read()
        banner = next(i for i, line in enumerate(source.split("\n"), 1)
                      if line.startswith("# ---") and "hyperparameters" in line)
        block = []
        for node in ast.parse(source).body:
            if node.lineno < banner:
                continue
            if isinstance(node, ast.Assign) and any(getattr(target, "id", None) == "SETTINGS"
                                                    for target in node.targets):
                break
            block.append(node)
        else:
            pytest.fail(f"{script}.py: no SETTINGS after the hyperparameters banner")
        names = list(dict.fromkeys(assigned(block)))
        assert names == load(script).SETTINGS, script


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_every_setting(script, flag, capsys):
    module = load(script)
    with pytest.raises(SystemExit) as stop:
        module.configure([f"{script}.py", "max_iters=3", flag])
    out = capsys.readouterr().out
    assert stop.value.code == 0 and out.startswith(module.__doc__.strip()) and "\nRun:" in out
    notes = {"max_iters": "optimizer steps", "seed": "same seed and device, same losses",
             "out_dir": "checkpoint and pictures go here"}
    for name in module.SETTINGS:  # as they would be used, each with the comment beside it in the file
        value = 3 if name == "max_iters" else getattr(load(script), name)
        assert re.search(rf"^  {re.escape(f'{name}={value!r}')} +{notes.get(name, '')}", out, re.M), name


@pytest.mark.parametrize("args, message", [
    (["max_iter=3"], "unknown setting 'max_iter=3' (did you mean max_iters=...?)"),
    (["--max_iters", "3"], "unknown setting '--max_iters' (did you mean max_iters=...?)"),
    (["max_iters"], "unknown setting 'max_iters'"),
    (["max_iters=3.5"], "max_iters='3.5' is not a valid int"),
    (["dropout=lots"], "dropout='lots' is not a valid float"),
    (["resume=yes"], "resume='yes' is not a valid bool ('false', '0', 'true', '1'); valid settings"),
    (["n_embd=100", "n_head=3"], "n_embd=100 is not divisible by n_head=3"),
    (["dataset=wikipedia"], "dataset='wikipedia' is not one of shakespeare, atticus"),
    (["batch_size=0"], "must be > 0"),
    (["dropout=1"], "dropout=1.0 is not in [0, 1)"),
    (["top_k=-1"], "must be >= 0"),
    (["learning_rate=0"], "learning_rate must be > 0"),
    (["start="], "the prompt start= must not be empty"),
    (["seed=-1"], "seed=-1 is not in [0, 2**63)"),
    (["temperature=nan"], "temperature='nan' is not a finite number"),
    (["learning_rate=inf"], "learning_rate='inf' is not a finite number"),
    (["device=gpu"], "device='gpu' is not one of this machine's: cpu"),
    (["device=cuda:7"], "device='cuda:7' is not one of this machine's: cpu"),
])
def test_bad_settings_exit_2(args, message, capsys):
    g = load("gpt_char")
    with pytest.raises(SystemExit) as stop:
        g.configure(["gpt_char.py", *args])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err and one_sentence(err, "gpt_char"), err
    if "unknown" in message or "is not a valid" in message:
        assert "valid settings: " in err and "max_iters=" in err and "n_layer=" in err


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_bad_setting_stops_before_any_data_is_read(script, tmp_path, monkeypatch, capsys):
    """A copy of the script alone in an empty folder: a typo must not start a download."""
    shutil.copy(os.path.join(ROOT, f"{script}.py"), tmp_path)
    monkeypatch.chdir(tmp_path)
    for arg in ["max_itres=5", "batch_size=abc"]:
        status, out, err = main_in_process(script, [arg], monkeypatch, capsys, tiny=False, folder=tmp_path)
        assert status == 2 and "valid settings" in err and one_sentence(err, script), err
        assert out == "" and sorted(os.listdir(tmp_path)) == [f"{script}.py"]


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


def test_download_good_file(server, tmp_path):
    root, url = server
    (root / "f.txt").write_bytes(b"to be or not to be")
    target = tmp_path / "data" / "f.txt"
    assert load("gpt_char").download(f"{url}/f.txt", str(target),
                                     hashlib.sha256(b"to be or not to be").hexdigest()) == []
    assert target.read_bytes() == b"to be or not to be"
    assert os.listdir(tmp_path / "data") == ["f.txt"]  # no temporary file left beside it


@pytest.mark.parametrize("served, problem", [(b"corrupted", "its SHA-256 is not the pinned one"),
                                             (None, "404"), ("no server", "Connection refused")])
def test_a_failed_download_leaves_no_file(served, problem, server, tmp_path):
    root, url = server
    if served == "no server":
        url = f"http://127.0.0.1:{dead_port()}"
    elif served is not None:
        (root / "f.txt").write_bytes(served)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "other.txt").write_text("kept")
    target = str(tmp_path / "data" / "f.txt")
    problems = load("gpt_char").download(f"{url}/f.txt", target, "0" * 64)
    assert len(problems) == 1 and problem in problems[0] and f"{url}/f.txt" in problems[0]
    assert f"download it by hand and save it as {target}" in problems[0]
    assert listing(tmp_path / "data") == ["other.txt"]


def test_a_missing_data_file_is_downloaded_and_checked(server, tmp_path):
    root, url = server
    shutil.copy(os.path.join(DATA, "tinyshakespeare.txt"), root / "input.txt")
    g = load("gpt_char")
    g.DATA_DIR = str(tmp_path / "data")
    g.DATA_FILES["tinyshakespeare.txt"] = (f"{url}/input.txt", g.DATA_FILES["tinyshakespeare.txt"][1])
    assert g.load_text(g.data_files("tinyshakespeare.txt")[0]).startswith("First Citizen:")
    assert listing(tmp_path / "data") == ["tinyshakespeare.txt"]


def test_every_missing_data_file_is_named_at_once(tmp_path):
    """gpt_bpe.py pasted alone, offline: one sentence names all three files, and nothing is left but data/."""
    shutil.copy(os.path.join(ROOT, "gpt_bpe.py"), tmp_path)
    proxy = f"http://127.0.0.1:{dead_port()}"  # every download goes to a proxy that nobody runs
    env = {k: v for k, v in ONE_THREAD.items() if k.lower() != "no_proxy"}
    env.update(HTTPS_PROXY=proxy, HTTP_PROXY=proxy, https_proxy=proxy, http_proxy=proxy)
    p = subprocess.run([sys.executable, "gpt_bpe.py"], cwd=tmp_path, capture_output=True, text=True, env=env,
                       timeout=3600)
    assert p.returncode == 1 and one_sentence(p.stderr, "gpt_bpe"), p.stderr
    for name in ("atticus.xml", "gpt2/encoder.json", "gpt2/vocab.bpe"):
        assert f"save it as {tmp_path / 'data' / name}" in p.stderr
    assert listing(tmp_path) == ["gpt_bpe.py"] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["corrupted", "a folder"])
def test_a_bad_data_file_is_refused_and_kept(kind, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    data.mkdir()
    if kind == "corrupted":
        (data / "tinyshakespeare.txt").write_text("not Shakespeare", encoding="utf-8")
    else:
        (data / "tinyshakespeare.txt").mkdir()
    before = listing(data)
    g = load("gpt_char")
    g.DATA_DIR = str(data)
    monkeypatch.chdir(tmp_path)
    status, out, err = main_in_process("gpt_char", [], monkeypatch, capsys, module=g)
    assert status == 1 and one_sentence(err, "gpt_char"), err
    expected = "SHA-256 mismatch" if kind == "corrupted" else "tinyshakespeare.txt is not a readable file"
    assert expected in err and listing(data) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize("script", ["bigram", "gpt_char", "gpt_bpe"])
def test_shipped_data_matches_its_checksums(script):
    for name, (_, expected) in load(script).DATA_FILES.items():
        assert sha256(os.path.join(DATA, name)) == expected


def test_atticus_parser_on_the_shipped_epidoc_file():
    text = atticus_text()
    letters = text.split("\n\n")
    assert len(letters) == 446
    dateline, salute, body = letters[0].split("\n")
    assert dateline.startswith("Scr. Romae") and salute == "CICERO ATTICO salutem"
    assert body.startswith("petitionis nostrae, quam tibi summae curae esse scio")
    assert all(len(letter.split("\n")) == 3 for letter in letters)
    assert "<" not in text and "  " not in text and len(text) == 825_409


@pytest.mark.parametrize("script", ["bigram", "gpt_char", "gpt_bpe"])
def test_atticus_parser_on_hopper_markup(script, tmp_path):
    (tmp_path / "hopper.xml").write_text("""<?xml version="1.0" encoding="UTF-8"?>
<TEI.2><text><body><div1 type="book" n="1">
<div2 type="letter" n="1"><opener><dateline>Scr. Romae
   <date>a. 689</date>.</dateline> <salute>CICERO ATTICO SAL.</salute></opener>
<p>petitionis nostrae, <note>a modern note</note>quam tibi
      summae curae esse scio.</p><p>Graece: <foreign lang="greek">\
&#x1F00;&#x03B4;&#x03CD;&#x03BD;&#x03B1;&#x03C4;&#x03BF;&#x03BD;</foreign></p></div2>
<div2 type="letter" n="2"><opener>\
<dateline>Scr. Romae a. 689.</dateline><salute>CICERO ATTICO SAL.</salute></opener>
<p>L. Iulio Caesare <del>verum</del> C. Marcio Figulo consulibus filiolo me auctum scito.</p></div2>
</div1></body></text></TEI.2>""", encoding="utf-8")
    assert load(script).read_atticus(str(tmp_path / "hopper.xml")) == (
        "Scr. Romae a. 689.\nCICERO ATTICO SAL.\npetitionis nostrae, quam tibi summae curae esse scio. "
        "Graece: \u1f00\u03b4\u03cd\u03bd\u03b1\u03c4\u03bf\u03bd\n\n"
        "Scr. Romae a. 689.\nCICERO ATTICO SAL.\n"
        "L. Iulio Caesare C. Marcio Figulo consulibus filiolo me auctum scito.")


def test_atticus_without_lxml_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lxml", None)  # as if lxml were not installed
    monkeypatch.chdir(tmp_path)
    status, _, err = main_in_process("gpt_char", ["dataset=atticus"], monkeypatch, capsys)
    assert status == 1 and "needs BeautifulSoup and lxml: pip install beautifulsoup4 lxml" in err
    assert one_sentence(err, "gpt_char")


def test_the_split_is_made_on_characters_at_the_same_place():
    for script in ("bigram", "gpt_char", "gpt_bpe"):
        train, val = load(script).split_text("abcdefghij" * 10)
        assert train + val == "abcdefghij" * 10 and len(val) == 10


def test_val_loss_is_the_mean_over_every_val_token():
    """estimate_loss against a loop over the val tokens: each scored once with the context its window gives
    it (the first after the last training token), the tail too."""
    g = load("gpt_char")
    g.block_size, g.batch_size, g.eval_iters = 8, 3, 1
    model = tiny_gpt(g, 11, 8)
    data = {"train": torch.randint(11, (50,)), "val": torch.randint(11, (29,))}  # 29 = 3 windows of 8, and 5
    stream = torch.cat([data["train"][-1:], data["val"]])
    losses = []
    for j in range(1, len(stream)):  # target stream[j], read after the window's earlier tokens
        first = (j - 1) // 8 * 8
        logits = model(stream[None, first:j])[0][0, -1]
        losses.append(-torch.log_softmax(logits, dim=-1)[stream[j]].item())
    assert len(losses) == 29
    assert g.estimate_loss(model, data, g.nullcontext())["val"] == pytest.approx(sum(losses) / 29, abs=1e-5)


# -------------------------------------------------------------------------------- model
def tiny_gpt(module, vocab_size=11, block_size=8, seed=0):
    torch.manual_seed(seed)
    return module.GPT(vocab_size, block_size, n_embd=16, n_head=4, n_layer=2, dropout=0.0).eval()


def test_loss_at_initialisation_is_ln_vocab():
    g, b = load("gpt_char"), load("bigram")
    idx = torch.randint(65, (8, 32))
    _, loss = tiny_gpt(g, 65, 32)(idx[:, :-1], idx[:, 1:])
    assert abs(loss.item() - math.log(65)) < 0.1
    _, loss = b.BigramLanguageModel(65)(idx[:, :-1], idx[:, 1:])
    assert abs(loss.item() - math.log(65)) < 1e-5  # the table starts at zero: all characters equally likely


def test_causality():
    model = tiny_gpt(load("gpt_char"))
    idx = torch.randint(11, (1, 8))
    for t in range(7):
        changed = idx.clone()
        changed[0, t + 1] = (idx[0, t + 1] + 1) % 11
        a, b = model(idx)[0], model(changed)[0]
        assert torch.equal(a[:, : t + 1], b[:, : t + 1])  # the past does not see the future
        assert not torch.allclose(a[:, t + 1], b[:, t + 1])  # but the changed position itself does


def test_batched_attention_equals_the_per_head_formula():
    g = load("gpt_char")
    torch.manual_seed(0)
    attn = g.CausalSelfAttention(n_embd=24, n_head=4, dropout=0.0).eval()
    x = torch.randn(3, 9, 24)
    q, k, v = attn.qkv(x).split(24, dim=2)
    mask = torch.full((9, 9), float("-inf")).triu(1)
    heads = []
    for h in range(4):
        s = slice(6 * h, 6 * h + 6)  # head size 6
        weights = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(6) + mask, dim=-1)
        heads.append(weights @ v[..., s])
    expected = attn.proj(torch.cat(heads, dim=-1))
    assert torch.allclose(attn(x), expected, atol=1e-5)
    attn.keep_weights = True  # the explicit path: same output, and the weights kept
    assert torch.allclose(attn(x), expected, atol=1e-5)
    assert attn.wei.shape == (3, 4, 9, 9)
    assert torch.allclose(attn.wei.sum(-1), torch.ones(3, 4, 9)) and torch.all(attn.wei.triu(1) == 0)


@pytest.mark.parametrize("script", ["bigram", "gpt_char"])
def test_generate(script):
    module = load(script)
    model = tiny_gpt(module) if script == "gpt_char" else module.BigramLanguageModel(11)
    if script == "bigram":
        torch.nn.init.normal_(model.token_embedding.weight)  # untrained, every logit ties: no likeliest token
    idx = torch.zeros((2, 1), dtype=torch.long)
    out = model.generate(idx, 20)  # longer than block_size 8: the context is cropped
    assert out.shape == (2, 21) and torch.equal(out[:, :1], idx) and int(out.max()) < 11
    assert model.generate(idx, 5, top_k=1000).shape == (2, 6)  # top_k above the vocabulary
    greedy = model.generate(idx, 5, temperature=0)
    assert torch.equal(greedy, model.generate(idx, 5, top_k=1))  # top_k=1 samples the likeliest: greedy too
    assert torch.equal(greedy[:, 1:2], model(idx)[0][:, -1].argmax(-1, keepdim=True))

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sampling_works_on_float32_logits_under_autocast(dtype):
    """fp16 logits of about 20 divided by a temperature of 1e-4 overflow to inf, then NaN: generate takes the
    last position's logits in float32 first. A tiny temperature must pick the likeliest token."""
    g = load("gpt_char")
    model = tiny_gpt(g, 11, 8)
    with torch.no_grad():
        model.token_embedding.weight.mul_(250)  # logits of about 20
    idx = torch.zeros((3, 1), dtype=torch.long)
    with torch.autocast("cpu", dtype=dtype):
        assert model(idx)[0].dtype == dtype and model(idx)[0].abs().max() > 10
        greedy = model.generate(idx, 6, temperature=0)
        torch.manual_seed(0)
        sampled = model.generate(idx, 6, temperature=1e-4)
    assert torch.equal(sampled, greedy)


def test_top_k_and_temperature_shape_the_distribution():
    """4,000 draws of one next token: top_k=3 draws only the three likeliest, and at temperature T the
    frequencies follow softmax(logits / T)."""
    g = load("gpt_char")
    model = tiny_gpt(g, 11, 8)
    with torch.no_grad():
        model.token_embedding.weight.mul_(8)  # logits of a few units: a distribution far from uniform
    idx = torch.zeros((4000, 1), dtype=torch.long)
    logits = model(idx[:1])[0][0, -1]
    torch.manual_seed(0)
    drawn = model.generate(idx, 1, top_k=3)[:, 1]
    assert set(drawn.tolist()) == set(logits.topk(3).indices.tolist())
    peaks = []
    for temperature in (0.5, 1.0, 2.0):
        expected = torch.softmax(logits / temperature, dim=-1)
        frequency = torch.bincount(model.generate(idx, 1, temperature=temperature)[:, 1], minlength=11) / 4000
        assert (frequency - expected).abs().max() < 0.04, temperature  # 5 standard errors at most
        peaks.append(frequency.max().item())
    assert peaks[0] > peaks[1] + 0.05 and peaks[1] > peaks[2] + 0.05  # sharper below 1, flatter above


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
    assert b.score(b.count_table(torch.tensor([0, 1, 0, 1, 0]), 2, 1), torch.tensor([0, 1])) \
        == pytest.approx(-math.log(3 / 4))

# ------------------------------------------------------------------- the lecture's ladder
def test_the_averaging_trick_three_ways():
    x = torch.randn(2, 7, 5)
    expected = x.cumsum(dim=1) / torch.arange(1, 8).view(1, 7, 1)  # row t: the mean of rows 0..t
    for way in load("gpt_char").average_of_the_past(x):
        assert torch.allclose(way, expected, atol=1e-6)


def test_each_switch_takes_its_idea_away():
    g = load("gpt_char")

    def build(**switches):
        torch.manual_seed(0)
        return g.GPT(11, 8, n_embd=16, n_head=4, n_layer=2, dropout=0.0, **switches).eval()

    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    full = build()
    per_mlp = sum(p.numel() for p in full.blocks[0].mlp.parameters()) + 2 * 16  # and its norm
    assert count(build(mlp=False)) == count(full) - 2 * per_mlp
    assert all(block.mlp is None for block in build(mlp=False).blocks)
    assert count(build(layernorm=False)) == count(full) - 5 * 2 * 16  # two norms a block, and the final
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in build(layernorm=False).modules())
    assert count(build(residual=False)) == count(full)
    untied = build(tie=False)
    assert count(untied) == count(full) + 11 * 16 + 11  # an output matrix and a bias of its own
    assert untied.lm_head.weight is not untied.token_embedding.weight
    assert full.lm_head.weight is full.token_embedding.weight and full.lm_head.bias is None
    x = torch.randn(3, 8, 16)
    for residual in (True, False):
        block = build(residual=residual).blocks[0]
        h = block.attn(block.ln_1(x)) + (x if residual else 0)
        assert torch.allclose(block(x), block.mlp(block.ln_2(h)) + (h if residual else 0), atol=1e-6)
    idx = torch.randint(11, (3, 8))
    assert not torch.allclose(build(residual=False)(idx)[0], full(idx)[0])
    gpt2, pytorch = build(init="gpt2"), build(init="pytorch")
    assert gpt2.token_embedding.weight.std() < 0.03 and not gpt2.blocks[0].attn.qkv.bias.any()
    assert 0.8 < pytorch.token_embedding.weight.std() < 1.2  # nn.Embedding's own: N(0, 1)


def test_optimizer_adamw_trains_every_parameter_with_adamw():
    g = load("gpt_char")
    g.optimizer, g.beta2 = "adamw", 0.999
    model = tiny_gpt(g)
    optimizers = g.make_optimizers(model)
    assert len(optimizers) == 1 and isinstance(optimizers[0], torch.optim.AdamW)
    groups = optimizers[0].param_groups
    assert sorted(id(p) for group in groups for p in group["params"]) == sorted(map(id, model.parameters()))
    assert all(group["betas"] == (0.9, 0.999) for group in groups)
    g.learning_rate = g.min_lr = 1e-3
    g.warmup_iters = 0
    assert {g.get_lr(step) for step in range(0, g.max_iters + 1, 7)} == {1e-3}  # a constant rate


LADDER = {  # what each rung of the lecture had (its ng-video-lecture commits), beside what all share
    "head": dict(n_layer=1, n_head=1, n_embd=32, mlp=False, residual=False, layernorm=False),
    "heads": dict(n_layer=1, n_head=4, n_embd=32, mlp=False, residual=False, layernorm=False),
    "ffwd": dict(n_layer=1, n_head=4, n_embd=32, mlp=True, residual=False, layernorm=False),
    "residual": dict(n_layer=3, n_head=4, n_embd=32, mlp=True, residual=True, layernorm=False),
    "layernorm": dict(n_layer=3, n_head=4, n_embd=32, mlp=True, residual=True, layernorm=True),
    "full": dict(n_layer=6, n_head=6, n_embd=384, mlp=True, residual=True, layernorm=True, batch_size=64,
                 block_size=256, dropout=0.2, learning_rate=3e-4, min_lr=3e-4),
}
LECTURE_TRAINING = dict(batch_size=32, block_size=8, max_iters=5000, learning_rate=1e-3, min_lr=1e-3,
                        warmup_iters=0, dropout=0.0, optimizer="adamw", weight_decay=0.01, beta2=0.999,
                        grad_clip=0.0, init="pytorch", tie=False)  # PyTorch's defaults, its own output layer


@pytest.mark.parametrize("name", LADDER)
def test_a_lecture_preset_sets_its_rung_and_yields_to_settings_given(name, capsys):
    g = load("gpt_char")
    given = g.configure(["gpt_char.py", f"lecture={name}"])
    for key, value in {**LECTURE_TRAINING, **LADDER[name]}.items():
        assert getattr(g, key) == value, key
    assert given >= {"lecture", *LADDER[name]}
    g = load("gpt_char")
    g.configure(["gpt_char.py", "max_iters=7", f"lecture={name}", "n_embd=8", "n_head=2"])
    assert (g.max_iters, g.n_embd, g.n_head, g.n_layer) == (7, 8, 2, LADDER[name]["n_layer"])
    with pytest.raises(SystemExit):
        load("gpt_char").configure(["gpt_char.py", "--help"])
    assert f"\nlecture={name} sets " in capsys.readouterr().out


@pytest.mark.parametrize("name", LADDER)
def test_every_rung_of_the_ladder_runs(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    small = ["n_embd=24", "n_layer=2", "block_size=32", "batch_size=8"] if name == "full" else []
    args = [f"lecture={name}", "device=cpu", "max_iters=4", "eval_interval=2", "eval_iters=2",
            "log_interval=1", "max_new_tokens=20", *small]
    status, out, err = main_in_process("gpt_char", args, monkeypatch, capsys, tiny=False)
    assert status == 0, err
    assert [s for s, _, _ in full_lines(out)] == [0, 2, 4] and SAMPLE_MARK in out
    config = torch.load(tmp_path / "out" / "gpt_char.pt", weights_only=True)["config"]
    assert config["lecture"] == name and config["optimizer"] == "adamw"
    assert all(config[k] == v for k, v in LADDER[name].items() if k not in {"n_embd", "n_layer", "block_size",
                                                                            "batch_size"} or not small)


def test_a_preset_in_a_notebook_sets_its_rung_and_says_so(tmp_path, capsys):
    """In a notebook every line is a setting: the preset replaces them, and prints what it set."""
    source = open(os.path.join(ROOT, "gpt_char.py"), encoding="utf-8").read()
    source = re.sub(r'^lecture = ""', 'lecture = "head"', source, flags=re.M)
    (tmp_path / "gpt_char.py").write_text(re.sub(r"^max_iters = .*$", "max_iters = 200", source, flags=re.M))
    g = load("gpt_char", folder=tmp_path)
    given = g.configure(["/usr/lib/python3/dist-packages/ipykernel_launcher.py", "-f", "/tmp/kernel-1.json"])
    assert given == set(g.SETTINGS) and (g.n_head, g.n_embd, g.max_iters, g.tie) == (1, 32, 5000, False)
    assert "lecture=head sets batch_size=32 block_size=8 n_embd=32" in capsys.readouterr().out


def test_a_preset_given_again_to_resume_or_sample_takes_the_checkpoints_settings(tmp_path, monkeypatch,
                                                                                  capsys):
    monkeypatch.chdir(tmp_path)
    args = ["lecture=head", "device=cpu", "max_iters=4", "eval_interval=2", "eval_iters=2", "n_embd=16",
            "max_new_tokens=10"]
    status, out, err = main_in_process("gpt_char", args, monkeypatch, capsys, tiny=False)
    assert status == 0 and "lecture=head sets batch_size=32 block_size=8 dropout=0.0 " in out, err
    for mode in (["resume=true", "max_iters=6"], ["max_iters=0"]):
        status, out, err = main_in_process("gpt_char", ["lecture=head", "device=cpu", *mode], monkeypatch,
                                           capsys, tiny=False)
        assert status == 0 and "loaded out/gpt_char.pt: step" in out and "sets" not in out, err
    checkpoint = torch.load(tmp_path / "out" / "gpt_char.pt", weights_only=True)
    assert checkpoint["step"] == 6 and checkpoint["config"]["n_embd"] == 16  # not the preset's 32
    status, _, err = main_in_process("gpt_char", ["lecture=heads", "device=cpu", "max_iters=0"], monkeypatch,
                                     capsys, tiny=False)
    assert status == 1 and "was trained with lecture='head'" in err and one_sentence(err, "gpt_char")


def test_sampling_runs_without_autocast(tmp_path, monkeypatch, capsys):
    """Where training runs under autocast (bf16 here, on the CPU), the sample's logits are float32."""
    monkeypatch.chdir(tmp_path)
    g = load("gpt_char")
    g.set_up_device = lambda: (torch.autocast("cpu", dtype=torch.bfloat16),
                               torch.amp.GradScaler("cpu", enabled=False))
    seen, generate = [], g.GPT.generate

    def recording(model, *args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        return generate(model, *args, **kwargs)
    monkeypatch.setattr(g.GPT, "generate", recording)
    status, out, err = main_in_process("gpt_char", [], monkeypatch, capsys, module=g)
    assert status == 0 and seen == [False] and SAMPLE_MARK in out, err


# ------------------------------------------------------------------- optimizers and fp16
def snapshot(model, optimizers):
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    states = [{k: v.clone() for k, v in state.items()} for o in optimizers for state in o.state.values()]
    return params, states


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda)])
def test_an_fp16_overflow_moves_no_optimizer(device):
    """Only Muon's gradients overflow: AdamW must skip its step too (fp16 autocast and GradScaler)."""
    g = load("gpt_char")
    g.device = device
    model = tiny_gpt(g, 11, 8).train().to(device)
    optimizers = g.make_optimizers(model)
    scaler = torch.amp.GradScaler(device, init_scale=2.0 ** 10)
    assert scaler.is_enabled()
    x = torch.randint(11, (4, 8), device=device)

    def step(overflow):
        with torch.autocast(device, dtype=torch.float16):
            _, loss = model(x, x)
        if overflow:  # one matrix inside a block, which Muon steps, gets an infinite gradient
            hook = model.blocks[0].mlp.fc.weight.register_hook(lambda grad: torch.full_like(grad, math.inf))
        g.optimize(model, optimizers, scaler, loss, lr=1e-2)
        if overflow:
            hook.remove()

    step(overflow=False)  # every optimizer now has a state
    params, states = snapshot(model, optimizers)
    scale = scaler.get_scale()
    step(overflow=True)
    after = snapshot(model, optimizers)
    assert all(torch.equal(params[name], after[0][name]) for name in params)  # not the embedding, not a block
    per_shape, per_parameter = 4, sum(len(group["params"]) for group in optimizers[1].param_groups)
    assert len(states) == len(after[1]) == per_shape + per_parameter  # Muon's and AdamW's, each compared
    assert all(set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a) for a, b in zip(states, after[1]))
    assert scaler.get_scale() < scale  # a smaller scale next time
    step(overflow=False)  # and a good step moves both optimizers' parameters again
    moved = snapshot(model, optimizers)[0]
    assert not torch.equal(moved["token_embedding.weight"], params["token_embedding.weight"])
    assert not torch.equal(moved["blocks.0.mlp.fc.weight"], params["blocks.0.mlp.fc.weight"])


def test_an_fp16_scaler_resumes_with_its_scale_and_growth(tmp_path):
    """A scaler that lowered its scale after an overflow and counted good steps since: resumed as it was."""
    g = load("gpt_char")
    g.out_dir, g.resume = str(tmp_path), True
    model = tiny_gpt(g, 11, 8).train()
    optimizers = g.make_optimizers(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=100)
    x = torch.randint(11, (4, 8))
    for overflow in (True, False, False):
        with torch.autocast("cpu", dtype=torch.float16):
            _, loss = model(x, x)
        hook = model.blocks[0].mlp.fc.weight.register_hook(lambda grad: grad * math.inf) if overflow else None
        g.optimize(model, optimizers, scaler, loss, lr=1e-2)
        hook and hook.remove()
    saved = scaler.state_dict()
    assert saved["scale"] == 2.0 ** 9 and saved["_growth_tracker"] == 2
    g.save_checkpoint(model, optimizers, scaler, {"vocab": "v", "history": [], "progress": [],
                                                  "best_val_loss": math.inf}, 3, 1.0)
    fresh, again = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16), tiny_gpt(g, 11, 8)
    checkpoint = torch.load(tmp_path / "gpt_char.pt", weights_only=True)
    g.restore(checkpoint, again, g.make_optimizers(again), fresh, "v")
    assert fresh.state_dict() == saved


def test_muon_gets_the_matrices_inside_the_blocks_adamw_the_rest():
    g = load("gpt_char")
    model = tiny_gpt(g)
    muon, adamw = g.make_optimizers(model)
    in_muon = {id(p) for group in muon.param_groups for p in group["params"]}
    in_adamw = {id(p) for group in adamw.param_groups for p in group["params"]}
    assert not in_muon & in_adamw and in_muon | in_adamw == {id(p) for p in model.parameters()}
    for name, p in model.named_parameters():
        assert (id(p) in in_muon) == (name.startswith("blocks.") and p.dim() == 2), name


def test_cuda_precision_follows_the_hardware(monkeypatch):
    """bf16 only where the GPU has it (compute capability 8.0 and up); a T4 (7.5) gets fp16 and a scaler."""
    import warnings
    g = load("gpt_char")
    g.device = "cuda"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: True)  # yes, on a T4 too
    monkeypatch.setattr(torch.amp, "GradScaler", lambda kind, enabled: (kind, enabled))
    # these two flags are set back by hand: some versions of pytest's monkeypatch cannot undo them
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        for capability, dtype in [((7, 5), torch.float16), ((8, 0), torch.bfloat16),
                                  ((9, 0), torch.bfloat16)]:
            monkeypatch.setattr(torch.cuda, "get_device_capability",
                                lambda device=None, c=capability: c)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # without a GPU, autocast("cuda") warns
                ctx, scaler = g.set_up_device()
            assert ctx.fast_dtype == dtype and scaler == ("cuda", dtype == torch.float16), capability
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


@cuda
@pytest.mark.parametrize("capability", [None, (7, 5)])  # the GPU's own precision, and fp16 as on a T4
def test_a_tiny_run_on_cuda_resumes(capability, tmp_path, monkeypatch, capsys):
    if capability:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.chdir(tmp_path)
    module = load("gpt_char")
    interrupt_after_saving(module, 2)
    with pytest.raises(KeyboardInterrupt):
        main_in_process("gpt_char", ["device=cuda", "dropout=0.1"], monkeypatch, capsys, module=module)
    status, out, err = main_in_process("gpt_char", ["resume=true", "device=cuda", "max_new_tokens=20"],
                                       monkeypatch, capsys, tiny=False)
    assert status == 0 and "loaded out/gpt_char.pt: step 2" in out and "device cuda" in out, err
    assert [s for s, _, _ in full_lines(out)] == [4]
    scaler = torch.load(tmp_path / "out" / "gpt_char.pt", weights_only=True)["scaler"]
    fp16 = (capability or torch.cuda.get_device_capability())[0] < 8
    assert bool(scaler) == fp16 and (not fp16 or scaler["scale"] > 0)


# ----------------------------------------------------------- checkpoints and exact resume
def interrupt_after_saving(module, step):
    """Make module's run stop with Ctrl-C right after it saved the checkpoint of `step`."""
    save = module.save_checkpoint

    def save_then_stop(*args):
        save(*args)
        if args[4] == step:
            raise KeyboardInterrupt
    module.save_checkpoint = save_then_stop


def test_a_new_run_replaces_an_old_checkpoint_at_once(tmp_path, monkeypatch, capsys):
    """Stopped before its first steps, a new run must not leave resume=true an older run's checkpoint."""
    monkeypatch.chdir(tmp_path)
    assert main_in_process("bigram", [], monkeypatch, capsys)[0] == 0
    module = load("bigram")
    interrupt_after_saving(module, 0)
    with pytest.raises(KeyboardInterrupt):
        main_in_process("bigram", ["dataset=atticus"], monkeypatch, capsys, module=module)
    checkpoint = torch.load(tmp_path / "out" / "bigram.pt", weights_only=True)
    assert checkpoint["step"] == 0 and checkpoint["config"]["dataset"] == "atticus"
    status, out, err = main_in_process("bigram", ["resume=true", "device=cpu"], monkeypatch, capsys,
                                       tiny=False)
    assert status == 0 and "loaded out/bigram.pt: step 0" in out, err
    assert "atticus: 825,409 characters" in out
    assert [s for s, _, _ in full_lines(out, "bigram", "atticus")] == [2, 4]
    status, out, err = main_in_process("bigram", ["resume=true", "device=cpu"], monkeypatch, capsys,
                                       tiny=False)
    assert status == 0 and "max_iters=4 is reached already: nothing to train" in out
    assert FULL.search(out) is None


@pytest.mark.parametrize("script", ["gpt_char", "sort_task"])
def test_an_interrupted_run_resumes_exactly(script, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    settings = ["max_iters=8", "dropout=0.1"]  # dropout draws random numbers too
    status, whole, _ = main_in_process(script, settings + ["out_dir=whole"], monkeypatch, capsys)
    assert status == 0
    module = load(script)
    interrupt_after_saving(module, 4)
    with pytest.raises(KeyboardInterrupt):
        main_in_process(script, settings, monkeypatch, capsys, module=module)
    assert torch.load(tmp_path / "out" / f"{script}.pt", weights_only=True)["step"] == 4
    # the run's own settings: not in a checkpoint
    sampling = ["max_new_tokens=40"] if script == "gpt_char" else []
    status, resumed, err = main_in_process(script, ["resume=true", "device=cpu", *sampling], monkeypatch,
                                           capsys, tiny=False)
    assert status == 0, err
    assert f"loaded out/{script}.pt: step 4" in resumed
    expected = full_lines(whole, script)
    assert [s for s, _, _ in expected] == [0, 2, 4, 6, 8] and full_lines(resumed, script) == expected[3:]
    # same sample
    assert resumed.split(SAMPLE_MARK)[1] == whole.split(SAMPLE_MARK)[1].replace("whole/", "out/")
    a, b = (torch.load(tmp_path / folder / f"{script}.pt", weights_only=True) for folder in ("whole", "out"))
    assert a["history"] == b["history"] and a["config"]["max_iters"] == b["config"]["max_iters"] == 8
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_ctrl_c_stops_cleanly_and_resume_goes_on(tmp_path, monkeypatch, capsys):
    args = tiny_args("gpt_char") + ["max_iters=100000", "eval_interval=5", "log_interval=5"]
    # a background CI job may ignore SIGINT
    reset = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    p = subprocess.Popen([sys.executable, "-u", os.path.join(ROOT, "gpt_char.py"), *args], cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=reset,
                         env=ONE_THREAD)
    try:
        for line in p.stdout:
            if line.startswith("step 10/"):  # the checkpoint of step 5 is on disk by now
                break
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=3600)
    finally:
        p.kill()
    assert p.returncode == 130 and one_sentence(err, "gpt_char"), err
    assert "interrupted; out/gpt_char.pt holds the last evaluation: resume=true goes on from it" in err
    saved = torch.load(tmp_path / "out" / "gpt_char.pt", weights_only=True)["step"]
    assert saved in (5, 10)
    monkeypatch.chdir(tmp_path)
    status, out, err = main_in_process("gpt_char", ["resume=true", "max_iters=20", "device=cpu"], monkeypatch,
                                       capsys, tiny=False)
    assert status == 0, err
    assert f"loaded out/gpt_char.pt: step {saved}" in out and full_lines(out)[-1][0] == 20


def test_sampling_from_a_checkpoint_needs_no_settings(tmp_path, monkeypatch, capsys):
    """Trained with other sizes and data (say on a GPU): max_iters=0 alone rebuilds the model and samples."""
    monkeypatch.chdir(tmp_path)
    trained = ["dataset=atticus", "n_layer=2", "n_embd=24", "n_head=3", "block_size=32"]
    assert main_in_process("gpt_char", trained, monkeypatch, capsys)[0] == 0
    path, plot = tmp_path / "out" / "gpt_char.pt", tmp_path / "out" / "gpt_char_loss.png"
    saved = sha256(path)
    plot.unlink()
    status, out, err = main_in_process("gpt_char", ["max_iters=0", "start=Scr.", "max_new_tokens=30",
                                                    "device=cpu"], monkeypatch, capsys, tiny=False)
    assert status == 0, err
    assert "loaded out/gpt_char.pt: step 4" in out and FULL.search(out) is None
    assert "atticus: 825,409 characters, vocabulary 203 | val 82,541 characters" in out
    assert out.split(SAMPLE_MARK)[1].split("\n", 1)[1].startswith("Scr.")
    # a sample-only run writes no checkpoint and no loss plot
    assert sha256(path) == saved and not plot.exists()
    # contradicts it: refused
    for args in (["max_iters=0", "n_layer=3"], ["resume=true", "dataset=shakespeare"]):
        status, _, err = main_in_process("gpt_char", [*args, "device=cpu"], monkeypatch, capsys, tiny=False)
        assert status == 1 and one_sentence(err, "gpt_char") and "was trained with" in err, err
        assert f"{args[1].split('=')[0]}=" in err and sha256(path) == saved


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_bad_checkpoint_ends_in_one_sentence_and_is_kept(script, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "out" / f"{script}.pt"
    for mode in ("max_iters=0", "resume=true"):  # none at all
        status, _, err = main_in_process(script, [mode], monkeypatch, capsys)
        assert status == 1 and one_sentence(err, script), err
        assert f"{mode} needs a checkpoint, and there is none at out/{script}.pt" in err
    other = "bigram" if script != "bigram" else "sort_task"
    assert main_in_process(other, ["out_dir=other"], monkeypatch, capsys)[0] == 0
    assert main_in_process(script, [], monkeypatch, capsys)[0] == 0
    good = path.read_bytes()
    old = torch.load(path, weights_only=True)
    del old["best_val_loss"]  # as an older version of the script wrote it
    for kind, content in [("truncated", good[: len(good) // 2]), ("foreign", b"not a checkpoint"),
                          ("another script's", (tmp_path / "other" / f"{other}.pt").read_bytes()),
                          ("older", old)]:
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        before = sha256(path)
        for mode in ("max_iters=0", "resume=true"):
            status, out, err = main_in_process(script, [mode], monkeypatch, capsys)
            assert status == 1 and one_sentence(err, script), (kind, mode, err)
            assert (f"is not a checkpoint {script}.py can use" in err
                    and SAMPLE_MARK not in out), (kind, mode)
            assert sha256(path) == before, (kind, mode)


def test_a_run_without_fp16_resumes_on_an_fp16_gpu(tmp_path, monkeypatch, capsys):
    """The checkpoint of a CPU run has no scaler state; a T4 resuming it starts its scaler afresh."""
    monkeypatch.chdir(tmp_path)
    assert main_in_process("gpt_char", [], monkeypatch, capsys)[0] == 0
    g = load("gpt_char")
    g.configure(["gpt_char.py", "resume=true", "device=cpu"])
    checkpoint = g.load_checkpoint({"resume", "device"})
    model = g.GPT(65, g.block_size, g.n_embd, g.n_head, g.n_layer, g.dropout)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)  # enabled, as on a T4
    run = g.restore(checkpoint, model, g.make_optimizers(model), scaler, checkpoint["vocab"])
    assert run["step"] == 4 and scaler.get_scale() == 2.0 ** 10

@pytest.mark.parametrize("script", SCRIPTS)
def test_settings_given_with_resume_are_the_ones_that_train(script, tmp_path, monkeypatch, capsys):
    """load_state_dict brings back the saved groups' weight decay (and fused flag): the settings given win."""
    monkeypatch.chdir(tmp_path)
    assert main_in_process(script, [], monkeypatch, capsys)[0] == 0
    path = tmp_path / "out" / f"{script}.pt"
    saved = torch.load(path, weights_only=True)
    for group in (group for state in saved["optimizer"] for group in state["param_groups"]):
        if "fused" in group:  # AdamW's, as if saved where fused steps are not available
            group["fused"] = None
    torch.save(saved, path)
    status, out, err = main_in_process(script, ["resume=true", "device=cpu", "max_iters=6", "weight_decay=0"],
                                       monkeypatch, capsys, tiny=False)
    assert status == 0 and "loaded out/" in out, err
    resumed = torch.load(path, weights_only=True)
    groups = [group for state in resumed["optimizer"] for group in state["param_groups"]]
    assert resumed["step"] == 6 and resumed["config"]["weight_decay"] == 0.0
    assert all(group["weight_decay"] == 0.0 for group in groups), [g["weight_decay"] for g in groups]
    assert all(group["fused"] for group in groups if "fused" in group)  # fused again, on the CPU


def test_the_random_state_of_an_apple_gpu_is_kept_too(tmp_path, monkeypatch):
    """On mps, dropout draws from the GPU's generator: its state goes into the checkpoint and comes back."""
    g = load("gpt_char")
    g.out_dir, g.device, g.resume = str(tmp_path), "mps", True
    states = {"now": torch.tensor([1, 2, 3], dtype=torch.uint8)}
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda device="mps": states["now"].clone())
    monkeypatch.setattr(torch.mps, "set_rng_state", lambda state, device="mps": states.update(now=state))
    model = tiny_gpt(g)
    g.save_checkpoint(model, [], torch.amp.GradScaler("cpu", enabled=False),
                      {"vocab": "v", "history": [], "progress": [], "best_val_loss": math.inf}, 2, 1.0)
    states["now"] = torch.tensor([9, 9, 9], dtype=torch.uint8)  # the generator moved on
    checkpoint = torch.load(tmp_path / "gpt_char.pt", weights_only=True)
    g.restore(checkpoint, model, [], torch.amp.GradScaler("cpu", enabled=False), "v")
    assert states["now"].tolist() == [1, 2, 3]


def test_a_new_run_keeps_the_trained_checkpoint(tmp_path, monkeypatch, capsys):
    """A run started by mistake (and stopped at once, twice) moves the trained checkpoint to out/previous/,
    says so, and resume=true out_dir=out/previous goes on from it. A checkpoint of step 0 is not kept."""
    monkeypatch.chdir(tmp_path)
    assert main_in_process("gpt_char", [], monkeypatch, capsys)[0] == 0
    trained = sha256(tmp_path / "out" / "gpt_char.pt")
    for _ in range(2):
        module = load("gpt_char")
        interrupt_after_saving(module, 0)
        with pytest.raises(KeyboardInterrupt):
            main_in_process("gpt_char", ["max_iters=8"], monkeypatch, capsys, module=module)
        assert sha256(tmp_path / "out" / "previous" / "gpt_char.pt") == trained
        assert torch.load(tmp_path / "out" / "gpt_char.pt", weights_only=True)["step"] == 0
    status, out, err = main_in_process("gpt_char", ["resume=true", "out_dir=out/previous", "max_iters=6",
                                                    "device=cpu"], monkeypatch, capsys, tiny=False)
    assert status == 0 and "loaded out/previous/gpt_char.pt: step 4" in out, err
    assert [s for s, _, _ in full_lines(out)] == [6]
    status, out, _ = main_in_process("gpt_char", ["max_iters=2"], monkeypatch, capsys)
    assert status == 0 and "previous" not in out  # out/gpt_char.pt was of step 0: not worth keeping
    status, out, _ = main_in_process("gpt_char", [], monkeypatch, capsys)
    assert status == 0 and ("the previous run's checkpoint (step 2) is now out/previous/gpt_char.pt: "
                            "resume=true out_dir=out/previous goes on from it") in out


def test_ctrl_c_before_the_first_checkpoint_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    g = load("gpt_char")
    with pytest.raises(SystemExit) as stop:
        with g.clear_errors():
            raise KeyboardInterrupt
    err = capsys.readouterr().err
    assert stop.value.code == 130 and err == "gpt_char: interrupted; no checkpoint was written\n", err


def test_a_checkpoint_that_cannot_be_written_keeps_the_last_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main_in_process("gpt_char", [], monkeypatch, capsys)[0] == 0
    path = tmp_path / "out" / "gpt_char.pt"
    saved = sha256(path)
    module = load("gpt_char")

    def disk_full(obj, f):
        with open(f, "wb") as partial:
            partial.write(b"half")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(module.torch, "save", disk_full)
    status, _, err = main_in_process("gpt_char", ["resume=true", "max_iters=6", "device=cpu"], monkeypatch,
                                     capsys, tiny=False, module=module)
    assert status == 1 and one_sentence(err, "gpt_char") and "No space left on device" in err, err
    assert "; out/gpt_char.pt keeps the last evaluation" in err
    assert sha256(path) == saved and [f for f in listing(tmp_path / "out") if "tmp" in f] == []
    status, out, err = main_in_process("gpt_char", [], monkeypatch, capsys)  # a new run, the disk still full
    assert status == 1 and err.endswith("No space left on device); no checkpoint was written\n"), err
    assert sha256(tmp_path / "out" / "previous" / "gpt_char.pt") == saved
    assert [f for f in listing(tmp_path / "out") if f.endswith((".pt", ".tmp"))] == ["previous/gpt_char.pt"]


@pytest.mark.parametrize("error, message", [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out of memory on cpu"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
     "out of memory on cpu"),
    (KeyboardInterrupt(), "interrupted; out/gpt_char.pt holds the last evaluation: resume=true goes on"),
])
def test_memory_and_ctrl_c_end_in_one_sentence(error, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "gpt_char.pt").write_bytes(b"a checkpoint")
    g = load("gpt_char")
    with pytest.raises(SystemExit) as stop:
        with g.clear_errors():
            raise error
    err = capsys.readouterr().err
    assert stop.value.code in (1, 130) and message in err and one_sentence(err, "gpt_char")
    with pytest.raises(RuntimeError, match="another bug"):  # anything else is not hidden
        with g.clear_errors():
            raise RuntimeError("another bug")


MISTAKES = [  # (script, what the user typed, exit status, what the one sentence on stderr says)
    *[(script, ["max_iter=3"], 2, "unknown setting 'max_iter=3' (did you mean max_iters=...?); valid setting")
      for script in SCRIPTS],
    *[(script, ["max_iters=3.5"], 2, "max_iters='3.5' is not a valid int; valid settings: ")
      for script in SCRIPTS],
    *[(script, ["n_embd=100", "n_head=3"], 2, "n_embd=100 is not divisible by n_head=3")
      for script in SCRIPTS[1:]],
    *[(script, ["block_size=200000"], 1, "is too short for block_size=200000: ")
      for script in SCRIPTS[:3]],
    ("sort_task", ["length=3", "num_digits=2"], 1,
     "length=3 num_digits=2 has too few multisets to hold a quarter"),
    ("bigram", ["start=ROMEO€"], 1,
     "the prompt start='ROMEO€' has characters that never occur in shakespeare: '€'; set start= to a"),
    ("gpt_char", ["start=ROMEO€"], 1, "has characters that never occur in shakespeare"),
    ("sort_task", ["start=2103"], 2, "start='2103' is not 6 digits from 0 to 4"),
    *[(script, ["out_dir=a_file"], 2, "out_dir='a_file' is not a folder this script can write")
      for script in SCRIPTS],
    *[(script, ["out_dir=a_file/out"], 2, "out_dir='a_file/out' is not a folder") for script in SCRIPTS],
    ("gpt_char", ["out_dir=/proc/sys/out"], 2,
     "out_dir='/proc/sys/out' is not a folder this script can write"),
    ("gpt_char", ["out_dir=pt_is_a_folder"], 2,
     "out_dir='pt_is_a_folder' is not a folder this script can write"),
    ("bigram", ["out_dir=previous_is_a_file"], 2,
     "out_dir='previous_is_a_file' is not a folder this script can write bigram.pt and previous/ in"),
]


@pytest.mark.parametrize("script, args, status, message", MISTAKES,
                         ids=lambda v: v if isinstance(v, str) else "")
def test_every_mistake_ends_in_one_clear_sentence(script, args, status, message, tmp_path, monkeypatch,
                                                  capsys):
    """One sentence, a non-zero exit, and nothing written: not in data/, not in the current folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("a file, not a folder")
    (tmp_path / "pt_is_a_folder" / "gpt_char.pt").mkdir(parents=True)
    (tmp_path / "previous_is_a_file").mkdir()
    (tmp_path / "previous_is_a_file" / "previous").write_text("a file, not a folder")
    before, data_before = listing(tmp_path), {name: sha256(os.path.join(DATA, name))
                                              for name in listing(DATA)}
    got, out, err = main_in_process(script, args, monkeypatch, capsys)
    assert got == status and message in err and one_sentence(err, script), err
    assert SAMPLE_MARK not in out and listing(tmp_path) == before and not (tmp_path / "out").exists()
    assert {name: sha256(os.path.join(DATA, name)) for name in listing(DATA)} == data_before


# ------------------------------------------------------------------- tokenizers (gpt_bpe)
GPT2_URLS = {"vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
             "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json"}
GPT2_FILES = [os.path.join(DATA, "gpt2", "encoder.json"), os.path.join(DATA, "gpt2", "vocab.bpe")]
HARD_STRINGS = [
    "", " ", "  ", "   x", "a  b   c", "\n", "\n\n\n", "line\n  indented\n\n", "\r\n", "a\r\nb\r\n\r\n", "\t",
    "\ta\t\tb \t", "trailing spaces   ", " leading", "it's", "don't", "we're", "they've", "I'm", "you'll",
    "he'd", "IT'S", "DON'T", "WE'RE", "THEY'VE", "I'M", "YOU'LL", "HE'D", "'s 't 're 've 'm 'll 'd", "''s",
    "rock'n'roll", "0", "1234567890", "3.14159", "1,000,000", "a1b2c3", "!!!", "...", "?!?!", "--", "((()))",
    "[{<>}]", "@#$%^&*", "a.b.c", "e.g.,", "Scr. Romae a. 689.", "CICERO ATTICO SAL.", "café", "naïve façade",
    "Æneas Cæsar", "ἀδύνατον", "τὸ δὲ μέγιστον", "日本語のテキスト", "中文", "한국어", "emoji 😀 👍🏽 🇮🇹", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𐍈",
    "\u0301", "e\u0301", " \u0301x", "\u00a0non-breaking\u00a0space", "zero\u200bwidth", "\x00\x01\x1f\x7f",
    "<|endoftext|>", "a<|endoftext|>b",
]


@functools.lru_cache(maxsize=None)
def offline_gpt2():
    """gpt_bpe.py's tiktoken "gpt2" encoding, built from data/gpt2/."""
    return load("gpt_bpe").tiktoken_encoding("gpt2", GPT2_FILES[0])


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
    assert (scratch.encode(text, allowed_special="all") == tiktoken_gpt2.encode(text, allowed_special="all")
            == asked)
    ids = tiktoken_gpt2.encode_ordinary("\U0001d518")  # one 4-byte character, more than one token
    # cut: U+FFFD
    assert len(ids) > 1 and scratch.decode(ids[:1]) == tiktoken_gpt2.decode(ids[:1]) == "\ufffd"


@pytest.mark.parametrize("dataset", ["atticus", "shakespeare"])
def test_scratch_tokenizer_equals_tiktoken_on_whole_corpora(dataset, tiktoken_gpt2):
    text = text_of(dataset)
    b = load("gpt_bpe")
    fresh = b.GPT2Tokenizer(*b.read_gpt2(*GPT2_FILES))
    ids = fresh.encode(text)
    assert ids == tiktoken_gpt2.encode_ordinary(text) and fresh.decode(ids) == text
    if dataset == "atticus":
        assert len(set(ids)) == 4431  # 4,431 of GPT-2's 50,257 ids occur in the letters


def test_compact_vocabulary_knows_the_training_text_and_spells_the_rest():
    """The model's ids: those of the training text and the 256 bytes, nothing read from the validation
    text; a token the training text never has is spelled in its bytes, so every text has model ids."""
    b = load("gpt_bpe")
    enc = offline_gpt2()
    train, val = b.split_text(atticus_text())
    known = set(enc.encode_ordinary(train))
    vocab = sorted(known | {enc.encode_single_token(bytes([x])) for x in range(256)})
    assert len(known) == 4320 and len(vocab) == 4460
    encode, decode = b.make_tokenizer(vocab, enc)
    assert [vocab[i] for i in encode(train)] == enc.encode_ordinary(train) and decode(encode(train)) == train
    gpt2_val, model_val = enc.encode_ordinary(val), encode(val)
    unseen = [t for t in gpt2_val if t not in known]
    assert len(unseen) == 148 and decode(model_val) == val  # 148 tokens, 111 ids, not in the training text
    spelled = sum(len(enc.decode_single_token_bytes(t)) for t in unseen)
    assert len(model_val) == len(gpt2_val) - len(unseen) + spelled
    phrase = "Scr. Romae a. 689. CICERO ATTICO salutem 日本"
    assert decode(encode(phrase)) == phrase and max(encode(phrase)) < len(vocab)


def test_missing_gpt2_files_are_downloaded(server, tmp_path):
    root, url = server
    for name in GPT2_URLS:
        shutil.copy(os.path.join(DATA, "gpt2", name), root / name)
    b = load("gpt_bpe")
    b.DATA_DIR = str(tmp_path / "data")
    for name in GPT2_URLS:
        b.DATA_FILES[f"gpt2/{name}"] = (f"{url}/{name}", b.DATA_FILES[f"gpt2/{name}"][1])
    for b.tokenizer in ("tiktoken", "scratch"):
        bpe = b.load_bpe([], *b.data_files("gpt2/encoder.json", "gpt2/vocab.bpe"))
        assert bpe.encode_ordinary("Hello world") == [15496, 995] and bpe.n_vocab == 50257
    assert listing(tmp_path / "data") == ["gpt2/encoder.json", "gpt2/vocab.bpe"]


@pytest.mark.parametrize("args, status, message", [
    (["encoding=cl100k_base"], 1, "tiktoken could not load the encoding 'cl100k_base'"),
    (["encoding=no_such_encoding"], 1, "tiktoken could not load the encoding 'no_such_encoding'"),
    (["tokenizer=scratch", "encoding=cl100k_base"], 2,
     "tokenizer=scratch is GPT-2's BPE: it needs encoding=gpt2"),
    (["tokenizer=sentencepiece"], 2, "tokenizer='sentencepiece' is not tiktoken, scratch or trained"),
    (["tokenizer=trained", "vocab_size=200"], 2, "vocab_size=200 is less than the 256 bytes"),
])
def test_gpt_bpe_mistakes(args, status, message, tmp_path, monkeypatch, capsys):
    proxy = f"http://127.0.0.1:{dead_port()}"  # no network: every download goes to a proxy that nobody runs
    for name in ("no_proxy", "NO_PROXY"):  # no exception to the dead proxy
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.setenv(name, proxy)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    got, out, err = main_in_process("gpt_bpe", args, monkeypatch, capsys)
    assert got == status and message in err and one_sentence(err, "gpt_bpe"), err
    assert not (tmp_path / "out").exists() and SAMPLE_MARK not in out


def test_gpt_bpe_can_embed_all_of_gpt2(tmp_path, monkeypatch, capsys):
    """compact_vocab=false: all 50,257 ids get an embedding (not trained here: 50,257 logits a token are
    slow)."""
    monkeypatch.chdir(tmp_path)
    b = load("gpt_bpe")
    models = []
    b.train = lambda model, *args: models.append(model)
    b.plot_losses = lambda run: None
    status, out, err = main_in_process("gpt_bpe", ["compact_vocab=false"], monkeypatch, capsys, module=b)
    assert status == 0, err
    assert "vocabulary 50257" in out and models[0].lm_head.weight.shape == (50257, 16)
    assert out.split(SAMPLE_MARK)[1].split("\n", 1)[1].startswith("Scr. Romae")


@pytest.mark.parametrize("args", [["tokenizer=scratch"], ["dataset=shakespeare", "tokenizer=scratch"]])
def test_gpt_bpe_variants(args, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status, out, err = main_in_process("gpt_bpe", args, monkeypatch, capsys)
    assert status == 0, err
    dataset = "shakespeare" if "dataset=shakespeare" in args else "atticus"
    assert f"| val {VAL_CHARACTERS[dataset]:,} characters" in out
    assert [s for s, _, _ in full_lines(out, "gpt_bpe", dataset)] == [0, 2, 4]
    vocabulary = int(re.search(r"vocabulary (\d+)", out)[1])
    assert vocabulary == (4460 if dataset == "atticus" else 11428)  # the training text's ids, and the bytes
    checkpoint = torch.load(tmp_path / "out" / "gpt_bpe.pt", weights_only=True)
    assert len(checkpoint["vocab"]["ids"]) == vocabulary == checkpoint["model"]["lm_head.weight"].shape[0]
    assert "tokens of scratch" in out

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
    import doctest
    monkeypatch.chdir(ROOT)  # they read data/gpt2/
    results = doctest.testmod(load("gpt_bpe"))
    assert results.attempted >= 3 and results.failed == 0


def recount(words):
    """The plain way, for the check: every adjacent pair of every word, counted again from scratch."""
    counts = {}
    for word, n in words.items():
        for p in zip(word, word[1:]):
            counts[p] = counts.get(p, 0) + n
    return counts


def test_every_learned_merge_is_the_most_frequent_pair_at_its_step():
    b = load("gpt_bpe")
    import regex
    text = atticus_text()[:30_000]
    merges = b.train_bpe(text, 256 + 200)
    assert len(merges) == 200
    words = {}
    for word in regex.findall(b.GPT2_SPLIT, text):
        key = tuple(bytes([x]) for x in word.encode())
        words[key] = words.get(key, 0) + 1
    for step, pair in enumerate(merges):
        counts = recount(words)
        most = max(counts.values())
        assert counts.get(pair) == most, (step, pair, counts.get(pair), most)
        assert pair == min(p for p, n in counts.items() if n == most)  # a tie: the first in byte order
        words = {tuple(b.merge(list(word), pair)): n for word, n in words.items()}


@pytest.mark.parametrize("text", HARD_STRINGS)
def test_a_trained_tokenizer_round_trips(text):
    b = load("gpt_bpe")
    tok = b.learned_bpe(trained_merges())
    assert tok.decode(tok.encode_ordinary(text)) == text
    assert all(0 <= i < tok.n_vocab == 1024 for i in tok.encode_ordinary(text))


@functools.lru_cache(maxsize=None)
def trained_merges():
    b = load("gpt_bpe")
    return tuple(b.train_bpe(b.split_text(atticus_text())[0], 1024))


def test_a_trained_tokenizer_splits_like_its_merges():
    """The ids are the 256 bytes, then one a merge in the order learned; " Romae", where Cicero writes
    from, is one of the 1,024."""
    b = load("gpt_bpe")
    tok = b.learned_bpe(trained_merges())
    ids = tok.encode_ordinary(" Romae")
    assert len(ids) == 1 and tok.decode(ids) == " Romae"  # one of the 1,024: Rome is where he writes from
    assert [tok.decode_single_token_bytes(i) for i in range(256)] == [bytes([x]) for x in range(256)]
    left, right = trained_merges()[0]
    assert tok.encode_ordinary((left + right).decode()) == [256]  # the first merge is id 256


def test_the_tokenizer_is_trained_on_the_training_text_alone(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    b = load("gpt_bpe")
    seen, train_bpe = [], b.train_bpe
    b.train_bpe = lambda text, size: seen.append(text) or train_bpe(text, size)
    status, out, err = main_in_process("gpt_bpe", ["tokenizer=trained", "vocab_size=300"], monkeypatch,
                                       capsys, module=b)
    assert status == 0, err
    assert seen == [b.split_text(atticus_text())[0]]  # not a character of the validation text
    assert "44 merges learned from the training text" in out and "tokens of trained" in out
    checkpoint = torch.load(tmp_path / "out" / "gpt_bpe.pt", weights_only=True)
    assert checkpoint["vocab"]["merges"] == train_bpe(seen[0], 300)
    assert len(checkpoint["vocab"]["ids"]) == checkpoint["model"]["lm_head.weight"].shape[0] <= 300
    # sampling needs no settings, and does not learn the merges again
    b = load("gpt_bpe")
    b.train_bpe = lambda *args: pytest.fail("merges learned again")
    status, out, err = main_in_process("gpt_bpe", ["max_iters=0", "device=cpu"], monkeypatch, capsys,
                                       tiny=False, module=b)
    assert status == 0 and "tokens of trained" in out, err
    assert out.split(SAMPLE_MARK)[1].split("\n", 1)[1].startswith("Scr. Romae")
    status, _, err = main_in_process("gpt_bpe", ["max_iters=0", "tokenizer=tiktoken"], monkeypatch, capsys)
    assert status == 1 and "was trained with tokenizer='trained'" in err and one_sentence(err, "gpt_bpe")


# --------------------------------------------------------------------- a text of one's own
OWN_TEXT = "".join(f"Line {i}: the quick brown fox, {i * 7 % 13} times, over the dog.\n" for i in range(400))


@pytest.mark.parametrize("script", ["bigram", "gpt_char", "gpt_bpe"])
def test_a_text_of_ones_own(script, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.txt").write_text(OWN_TEXT, encoding="utf-8")
    start = "start=Line" if script == "gpt_bpe" else "start=\n"
    status, out, err = main_in_process(script, ["dataset=mine.txt", start], monkeypatch, capsys)
    assert status == 0, err
    val = len(OWN_TEXT) - int(0.9 * len(OWN_TEXT))
    assert f"mine.txt: {len(OWN_TEXT):,} characters" in out and f"| val {val:,} characters" in out
    assert [int(m[0]) for m in FULL.findall(out)] == [0, 2, 4]
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the checkpoint keeps the file's whole path
    sampling = ["max_iters=0", "device=cpu", "max_new_tokens=20", "out_dir=../out"]
    status, out, err = main_in_process(script, sampling, monkeypatch, capsys, tiny=False)
    assert status == 0 and "loaded ../out/" in out and f"mine.txt: {len(OWN_TEXT):,} characters" in out, err
    status, _, err = main_in_process(script, [*sampling, f"dataset={tmp_path}/../{tmp_path.name}/mine.txt"],
                                     monkeypatch, capsys, tiny=False)  # the same file, named another way
    assert status == 0, err
    (tmp_path / "mine.txt").rename(tmp_path / "elsewhere" / "moved.txt")  # the text moved: name it again
    status, _, err = main_in_process(script, sampling, monkeypatch, capsys, tiny=False)
    assert status == 2 and f"dataset='{tmp_path}/mine.txt' is not one of shakespeare, atticus, nor" in err
    status, out, err = main_in_process(script, [*sampling, "dataset=moved.txt"], monkeypatch, capsys, tiny=False)
    assert status == 0 and f"moved.txt: {len(OWN_TEXT):,} characters" in out, err
    (tmp_path / "elsewhere" / "other.txt").write_text(OWN_TEXT.upper(), encoding="utf-8")
    status, _, err = main_in_process(script, [*sampling, "dataset=other.txt"], monkeypatch, capsys, tiny=False)
    assert status == 1 and "(its text had another vocabulary)" in err and one_sentence(err, script), err


def test_a_shipped_text_wins_over_a_file_of_its_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "atticus").write_text(OWN_TEXT, encoding="utf-8")
    g = load("gpt_char")
    g.configure(["gpt_char.py", "dataset=atticus"])
    assert g.dataset == "atticus"
    g.configure(["gpt_char.py", "dataset=./atticus"])
    assert g.dataset == str(tmp_path / "atticus")


@pytest.mark.parametrize("script", ["bigram", "gpt_char", "gpt_bpe"])
@pytest.mark.parametrize("kind, content, status, message", [
    ("missing", None, 2, "dataset='mine.txt' is not one of shakespeare, atticus, nor the path of a text"),
    ("a folder", "folder", 2, "dataset='mine.txt' is not one of shakespeare, atticus, nor the path of a"),
    ("Latin-1", "Cicero's café ".encode("latin-1") * 100, 1, "mine.txt is not UTF-8 text"),
    ("binary", bytes(range(256)) * 10, 1, "mine.txt is not UTF-8 text"),
    ("zeros", b"\x00" * 1000, 1, "mine.txt is a binary file, not text"),
    ("empty", b"", 1, "mine.txt is empty"),
    ("too short", b"to be or not to be,\n" * 12, 1, "mine.txt is too short for block_size="),
], ids=lambda v: v if isinstance(v, str) and len(v) < 12 else "")
def test_a_bad_text_of_ones_own_ends_in_one_sentence(script, kind, content, status, message, tmp_path,
                                                     monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    if content == "folder":
        (tmp_path / "mine.txt").mkdir()
    elif content is not None:
        (tmp_path / "mine.txt").write_bytes(content)
    before = listing(tmp_path)
    got, out, err = main_in_process(script, ["dataset=mine.txt", "block_size=32"], monkeypatch, capsys)
    assert got == status and message in err and one_sentence(err, script), err
    assert listing(tmp_path) == before and not (tmp_path / "out").exists() and SAMPLE_MARK not in out


def test_a_prompt_the_text_lacks_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.txt").write_text(OWN_TEXT.replace("\n", " "), encoding="utf-8")
    status, _, err = main_in_process("gpt_char", ["dataset=mine.txt"], monkeypatch, capsys)  # start="\n"
    told = f"the prompt start='\\n' has characters that never occur in {tmp_path}/mine.txt: '\\n'; set start="
    assert status == 1 and one_sentence(err, "gpt_char") and told in err, err


# ----------------------------------------------------------------- one skeleton, four scripts
SHARED = {  # blocks -> the scripts that must hold the very same text of each
    ("Stopped", "devices", "die", "clear_errors", "configure", "set_up_device", "checkpoint_path", "unusable",
     "load_checkpoint", "restore", "save_checkpoint", "clock", "figure", "save_figure", "plot_losses",
     "get_lr", "optimize", "train", "main: set-up", "main: train and plot", "the plumbing's banner",
     "the __main__ guard"):
        SCRIPTS,
    ("make_tokenizer",): ["bigram", "gpt_char", "sort_task"],
    ("load_text", "split_text", "get_batch", "estimate_loss", "evaluate", "sample", "check_prompt",
     "data_files", "sha256_of", "download", "read_text", "read_atticus", "generate"):
        ["bigram", "gpt_char", "gpt_bpe"],
    ("CausalSelfAttention", "MLP", "Block", "GPT", "orthogonalize", "Muon", "make_optimizers", "generate"):
        ["gpt_char", "gpt_bpe", "sort_task"],
    ("last_block_attention", "draw_attention"): ["gpt_char", "sort_task"],
}


def blocks(script):
    """A script's top-level functions and classes by name, and a few more pieces, as source text."""
    import ast
    source = open(os.path.join(ROOT, f"{script}.py"), encoding="utf-8").read()
    found = {node.name: ast.get_source_segment(source, node) for node in ast.parse(source).body
             if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    model = found["BigramLanguageModel" if script == "bigram" else "GPT"]
    found["generate"] = model[model.index("    @torch.no_grad()\n    def generate"):]
    main = found["main"]
    found["main: set-up"] = main[: main.index("    ctx, scaler = set_up_device()\n") + 35]
    found["main: train and plot"] = main[main.index("    run = restore("):
                                         main.index("        plot_losses(run)")]
    found["the plumbing's banner"] = source[source.index("# ====="): source.index("SCRIPT = ")]
    found["the __main__ guard"] = source[source.index('if __name__ == "__main__":'):]
    return found


@pytest.mark.parametrize("names, scripts", SHARED.items(), ids=lambda v: v[0] if isinstance(v, tuple) else "")
def test_shared_blocks_have_the_same_text(names, scripts):
    """A fix in one script cannot silently miss its twins: these blocks must be equal, letter for letter."""
    found = {script: blocks(script) for script in scripts}
    for name in names:
        first = found[scripts[0]][name]
        assert len(first.splitlines()) >= 2, name
        for script in scripts[1:]:
            assert found[script][name] == first, f"{name} differs between {scripts[0]}.py and {script}.py"


def test_the_lesson_comes_first():
    """Every function that exits, downloads, touches a checkpoint or draws is defined after main()."""
    import ast
    for script in SCRIPTS:
        source = open(os.path.join(ROOT, f"{script}.py"), encoding="utf-8").read()
        body = ast.parse(source).body
        main = next(n.lineno for n in body if isinstance(n, ast.FunctionDef) and n.name == "main")
        plumbing = {"die", "exit", "urlopen", "torch.save", "torch.load", "savefig", "data_files",
                    "load_checkpoint", "figure"}

        def called(f):  # die, sys.exit, torch.load: a name, an attribute, and a module's attribute
            name = getattr(f, "attr", getattr(f, "id", None))
            module = getattr(getattr(f, "value", None), "id", None)
            return {name, f"{module}.{name}"} if module else {name}

        for node in body:
            if isinstance(node, ast.FunctionDef) and node.lineno < main and node.name != "main":
                calls = set().union(*(called(c.func) for c in ast.walk(node) if isinstance(c, ast.Call)))
                assert not calls & plumbing, (
                    f"{script}.py: {node.name} calls {calls & plumbing} before main()")
        assert max(map(len, source.splitlines())) <= 110, script
        assert next(n.lineno for n in body if isinstance(n, ast.ClassDef)) <= 140, script


# ---------------------------------------------------------------------------- sort task
def test_sort_examples_mask_the_input_half():
    s = load("sort_task")
    s.length = 5
    x, y = s.examples(torch.tensor([[1, 2, 1, 0, 1]]))
    assert x.tolist() == [[1, 2, 1, 0, 1, 0, 1, 1, 1]]
    assert y.tolist() == [[-1, -1, -1, -1, 0, 1, 1, 1, 2]]


def test_sort_holds_out_answers_not_just_inputs():
    s = load("sort_task")
    held, train = s.input_set(held=True).tolist(), s.input_set(held=False).tolist()
    assert len(held) + len(train) == s.num_digits ** s.length  # every input, on one side only
    held_answers = {tuple(sorted(x)) for x in held}
    assert not held_answers & {tuple(sorted(x)) for x in train}  # no held-out answer is a training target
    assert {tuple(x) for x in held} == {p for a in held_answers for p in itertools.permutations(a)}
    assert 0.1 < len(held_answers) / math.comb(s.length + s.num_digits - 1, s.length) < 0.4
    # hashlib, not hash(): a fresh interpreter (another hash seed) makes the same split
    import ast
    source = open(os.path.join(ROOT, "sort_task.py"), encoding="utf-8").read()
    held_out = next(n for n in ast.parse(source).body if getattr(n, "name", "") == "held_out")
    # held_out() alone, without torch
    code = ("import hashlib, itertools\n" + ast.get_source_segment(source, held_out)
            + "\nprint(sorted(x for x in itertools.product(range(5), repeat=6) if held_out(x)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**ONE_THREAD, "PYTHONHASHSEED": "12345"}).stdout
    assert out.strip() == str(sorted(map(tuple, held)))
    for _ in range(50):
        x, y = s.get_batch("train")
        assert not {tuple(sorted(row)) for row in x[:, : s.length].tolist()} & held_answers
        assert (y[:, : s.length - 1] == -1).all() and (y[:, s.length - 1:] >= 0).all()
    x, _ = s.get_batch("val")
    assert {tuple(sorted(row)) for row in x[:, : s.length].tolist()} <= held_answers
    repeats = [len(set(row)) for row in s.random_inputs(1000).tolist()]
    assert sum(r <= 2 for r in repeats) > 500  # inputs with many repeated digits are oversampled


def test_sort_attention_explicit_path_equals_fast_path():
    s = load("sort_task")
    torch.manual_seed(0)
    model = s.GPT(5, 11, 32, 4, 2, 0.0).eval()
    x = torch.randint(5, (5, 11))
    fast = model(x)[0]
    model.blocks[-1].attn.keep_weights = True
    assert torch.allclose(model(x)[0], fast, atol=1e-5)
    assert model.blocks[-1].attn.wei.shape == (5, 4, 11, 11)


def test_sort_text_heat_map_shows_every_weight_above_zero(capsys):
    s = load("sort_task")
    s.length = 2
    weights = torch.tensor([[[1.0, 0, 0], [0.5, 0.5, 0], [0.34, 0.33, 0.33]]])  # near uniform: all below 0.4
    s.print_attention(weights, "012", row=1)
    rows = capsys.readouterr().out.splitlines()[2:]
    assert [row[9:] for row in rows] == ["@    ", "+ +  ", "= - -"]  # int(10 * w) would show nothing


def test_sort_task_samples_a_checkpoint_of_other_sizes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main_in_process("sort_task", ["length=5", "num_digits=4"], monkeypatch, capsys)[0] == 0
    status, out, err = main_in_process("sort_task", ["max_iters=0", "start=32103", "device=cpu"], monkeypatch,
                                       capsys, tiny=False)
    assert status == 0, err
    assert "loaded out/sort_task.pt: step 4" in out and "sorting 5 digits from 0-3" in out
    assert "--- sample: the model sorts 32103 into " in out


def test_sort_judges_with_dropout_off_and_trains_with_it_on():
    s = load("sort_task")
    s.dropout, s.eval_iters = 0.5, 1
    torch.manual_seed(0)
    model = s.GPT(5, 11, 16, 2, 1, 0.5)
    inputs = s.input_set(held=True)[:20]
    first = s.sort_accuracy(model, inputs)[1]
    assert len(first) == 20  # untrained: every input wrong, so every output listed
    assert not model.training and s.sort_accuracy(model, inputs)[1] == first  # the same outputs: no dropout
    model.train()  # with dropout on, greedy generation writes other digits
    assert model.generate(inputs, s.length, temperature=0)[:, s.length:].tolist() != [out for _, out in first]
    s.evaluate(model, {"train": "train", "val": "val", "held-out": inputs}, s.nullcontext())
    assert model.training


def test_sort_accuracy_is_generation_not_teacher_forcing():
    """A model that peeks at the next input token is right under teacher forcing, and wrong when it must feed
    back its own digits; one that sorts the input it has read is right both ways."""
    s = load("sort_task")

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


@pytest.mark.parametrize("switches", [[], ["layernorm=false", "residual=false", "optimizer=adamw"]])
def test_sort_task_end_to_end_tiny(switches, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status, out, err = main_in_process("sort_task", ["start=210430", *switches], monkeypatch, capsys)
    assert status == 0, err
    assert [s for s, _, _ in full_lines(out, "sort_task")] == [0, 2, 4]
    assert re.search(r"^judged on 2,730 held-out inputs of 46 multisets, never trained on$", out, re.M)
    assert re.search(r"^held-out: [\d.]+% of 2,730 inputs sorted exactly right$", out, re.M)
    assert "--- sample: the model sorts 210430 into " in out and "head 1 " in out
    assert (tmp_path / "out" / "sort_task_attention.png").stat().st_size > 1000
    assert torch.load(tmp_path / "out" / "sort_task.pt", weights_only=True)["config"]["length"] == 6


def test_sort_task_default_sorts_every_held_out_input(tmp_path):
    p = run("sort_task", "device=cpu", cwd=tmp_path, tiny=False)
    assert p.returncode == 0, p.stderr
    held = re.search(r"^held-out: ([\d.]+)% of ([\d,]+) inputs sorted exactly right$", p.stdout, re.M)
    assert held and float(held[1]) == 100.0 and int(held[2].replace(",", "")) > 1000
