"""Smoke and correctness tests of the collection: `pytest test_smoke.py` (a few minutes on 2 CPU cores).

Every script runs end to end as a user runs it (a subprocess with tiny settings, in a
temporary folder) and as a notebook cell runs it; the pieces users rely on (overrides,
downloads, the Atticus parser, the model, checkpoints) are checked one by one.
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

ROOT = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(ROOT, "data")
TINY = {  # settings small enough that a whole run takes a few seconds
    "bigram": dict(device="cpu", max_iters=4, eval_interval=2, eval_iters=2, batch_size=32, block_size=16,
                   max_new_tokens=40),
    "gpt_char": dict(device="cpu", max_iters=4, eval_interval=2, eval_iters=2, batch_size=32, block_size=64,
                     max_new_tokens=40, n_layer=1, n_head=2, n_embd=16),
    "gpt_bpe": dict(device="cpu", max_iters=4, eval_interval=2, eval_iters=2, batch_size=32, block_size=16,
                    max_new_tokens=40, n_layer=1, n_head=2, n_embd=16),
    "sort_task": dict(device="cpu", max_iters=4, eval_interval=2, eval_iters=1, n_layer=1, n_head=2, n_embd=16),
}
LOG_LINE = re.compile(r"^step (\d+)/(\d+) \| train ([\d.]+) \| val ([\d.]+) \| val bpc ([\d.]+) \| ", re.M)
SAMPLE_MARK = "--- sample"
_count = itertools.count()


def load(script, folder=ROOT):
    """A fresh copy of a script as a module (its main() not run), so tests do not share globals."""
    spec = importlib.util.spec_from_file_location(f"{script}_{next(_count)}", os.path.join(folder, f"{script}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(script, *args, cwd, timeout=300):
    """Run `python SCRIPT.py [tiny settings] args` in cwd, as a user would."""
    settings = [f"{k}={v}" for k, v in TINY[script].items()]
    return subprocess.run([sys.executable, os.path.join(ROOT, f"{script}.py"), *settings, *args],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


def main_in_process(script, args, monkeypatch, capsys, tiny=True, folder=ROOT):
    """Run a fresh copy of the script's main() here, with tiny settings: (exit status, stdout, stderr).

    The same as `python SCRIPT.py ...` without a new interpreter's few seconds of imports."""
    module = load(script, folder)
    settings = [f"{k}={v}" for k, v in TINY[script].items()] if tiny else []
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *settings, *args])
    capsys.readouterr()
    try:
        module.main()
        status = 0
    except SystemExit as stop:
        status = stop.code
    out, err = capsys.readouterr()
    return status, out, err


def losses(stdout, chars_per_token=1.0):
    """(step, train loss, val loss) of each log line; val bits per character checked on the way."""
    lines = LOG_LINE.findall(stdout)
    for m in lines:  # bits per character = nats per token / ln 2 / characters per token
        assert float(m[4]) == pytest.approx(float(m[3]) / math.log(2) / chars_per_token, abs=2e-3)
    return [(int(m[0]), float(m[2]), float(m[3])) for m in lines]


@functools.lru_cache(maxsize=None)
def val_chars_per_token(script, dataset):
    """Characters per token of the validation text (the last 10 % of the tokens), computed here with tiktoken."""
    if script != "gpt_bpe":
        return 1.0
    enc = offline_gpt2()
    ids = enc.encode_ordinary(load(script).load_text(dataset))
    val = ids[int(0.9 * len(ids)):]
    return len(enc.decode(val)) / len(val)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def listing(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


# ------------------------------------------------------------------ end to end, as a user
@pytest.mark.parametrize("dataset", ["shakespeare", "atticus"])
@pytest.mark.parametrize("script", ["bigram", "gpt_char", "gpt_bpe"])
def test_script_end_to_end(script, dataset, tmp_path):
    p = run(script, f"dataset={dataset}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    steps = losses(p.stdout, val_chars_per_token(script, dataset))
    assert [s for s, _, _ in steps] == [0, 2, 4]  # step 0, every eval_interval, the last step
    assert all(0 < train < 12 and 0 < val < 12 for _, train, val in steps)
    assert f"device cpu" in p.stdout and "parameters" in p.stdout
    sample = p.stdout.split(SAMPLE_MARK, 1)[1].split("\n", 1)[1]
    if script == "gpt_bpe":  # 40 tokens of one or more bytes each after the prompt
        assert sample.startswith("Scr. Romae") and len(sample.encode()) >= len("Scr. Romae") + 40 + 1
    else:
        assert len(sample) == 1 + 40 + 1  # the prompt "\n", 40 new characters, print's newline
    checkpoint = torch.load(tmp_path / "out" / f"{script}.pt", weights_only=True)
    assert set(checkpoint) >= {"model", "config", "vocab", "step", "val_loss"}
    assert checkpoint["step"] == 4 and checkpoint["config"]["dataset"] == dataset
    assert (tmp_path / "out" / f"{script}_loss.png").stat().st_size > 1000
    assert not [f for f in os.listdir(tmp_path / "out") if f.endswith(".tmp")]  # saved atomically


@pytest.mark.parametrize("script", ["bigram", "gpt_char", "gpt_bpe"])
def test_runs_as_a_notebook_cell(script, tmp_path):
    """The source pasted into a cell: no __file__, the kernel's own argv, globals edited by hand."""
    source = open(os.path.join(ROOT, f"{script}.py"), encoding="utf-8").read()
    for name, value in TINY[script].items():  # the lines a user would edit in the cell
        source, n = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", source, flags=re.M)
        assert n == 1, name
    (tmp_path / "cell.py").write_text(source, encoding="utf-8")
    os.symlink(DATA, tmp_path / "data")  # a notebook finds its data in ./data
    kernel = ("import sys; sys.argv = ['/usr/local/lib/python3/dist-packages/ipykernel_launcher.py', '-f', "
              "'/root/.local/share/jupyter/runtime/kernel-1.json']; "
              "exec(compile(open('cell.py', encoding='utf-8').read(), '<cell>', 'exec'), {'__name__': '__main__'})")
    p = subprocess.run([sys.executable, "-c", kernel], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    dataset = "atticus" if script == "gpt_bpe" else "shakespeare"  # each script's default
    assert [s for s, _, _ in losses(p.stdout, val_chars_per_token(script, dataset))] == [0, 2, 4]
    assert SAMPLE_MARK in p.stdout
    assert (tmp_path / "out" / f"{script}.pt").exists()


def test_same_seed_same_losses(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    first, second, other = (main_in_process("gpt_char", args, monkeypatch, capsys)
                            for args in ([], ["out_dir=o2"], ["seed=7", "out_dir=o7"]))
    assert first[0] == second[0] == other[0] == 0
    assert len(losses(first[1])) == 3 and losses(first[1]) == losses(second[1])
    assert len(losses(other[1])) == 3 and losses(first[1]) != losses(other[1])


# ---------------------------------------------------------------------------- overrides
def test_overrides_take_the_type_of_the_default():
    g = load("gpt_char")
    g.configure(["gpt_char.py", "dropout=0", "learning_rate=1", "--max_iters=3", "resume=true", "start=ROMEO:"])
    assert (g.dropout, g.learning_rate, g.max_iters, g.resume, g.start) == (0.0, 1.0, 3, True, "ROMEO:")
    assert type(g.dropout) is float and type(g.max_iters) is int
    g.configure(["gpt_char.py", "resume=0", "dataset=atticus"])
    assert g.resume is False and g.dataset == "atticus"


def test_notebook_arguments_are_ignored():
    g = load("gpt_char")
    g.configure(["/usr/lib/python3/dist-packages/ipykernel_launcher.py", "-f", "/tmp/kernel-1.json"])
    assert g.max_iters == load("gpt_char").max_iters


@pytest.mark.parametrize("args, message", [
    (["max_iter=3"], "unknown setting 'max_iter=3'"),
    (["max_iters"], "unknown setting 'max_iters'"),
    (["max_iters=3.5"], "max_iters='3.5' is not a int"),
    (["dropout=lots"], "dropout='lots' is not a float"),
    (["resume=yes"], "resume='yes' is not a bool"),
    (["n_embd=100", "n_head=3"], "n_embd=100 is not divisible by n_head=3"),
    (["dataset=wikipedia"], "dataset='wikipedia' is not shakespeare or atticus"),
    pytest.param(["device=cuda"], "device=cuda but no CUDA GPU is available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
    (["batch_size=0"], "must be positive"),
    (["dropout=1"], "dropout=1.0 is not in [0, 1)"),
])
def test_bad_overrides_exit_2(args, message, capsys):
    g = load("gpt_char")
    with pytest.raises(SystemExit) as stop:
        g.configure(["gpt_char.py", *args])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    if "unknown" in message or "is not a" in message:
        assert "valid settings: " in err and "max_iters=" in err and "n_layer=" in err


@pytest.mark.parametrize("script", ["bigram", "gpt_char", "gpt_bpe"])
def test_bad_override_stops_before_any_data_is_read(script, tmp_path, monkeypatch, capsys):
    """A copy of the script alone in an empty folder: a typo must not start a download."""
    shutil.copy(os.path.join(ROOT, f"{script}.py"), tmp_path)
    monkeypatch.chdir(tmp_path)
    for arg in ["max_itres=5", "batch_size=abc"]:
        status, out, err = main_in_process(script, [arg], monkeypatch, capsys, tiny=False, folder=tmp_path)
        assert status == 2 and "valid settings" in err and err.count("\n") == 1, err
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


def test_download_good_file(server, tmp_path):
    root, url = server
    (root / "f.txt").write_bytes(b"to be or not to be")
    g = load("gpt_char")
    target = tmp_path / "data" / "f.txt"
    g.download(f"{url}/f.txt", str(target), hashlib.sha256(b"to be or not to be").hexdigest())
    assert target.read_bytes() == b"to be or not to be"
    assert os.listdir(tmp_path / "data") == ["f.txt"]  # no temporary file left beside it


def test_download_with_wrong_checksum_leaves_nothing(server, tmp_path, capsys):
    root, url = server
    (root / "f.txt").write_bytes(b"corrupted")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "other.txt").write_text("kept")
    g = load("gpt_char")
    with pytest.raises(SystemExit) as stop:
        g.download(f"{url}/f.txt", str(tmp_path / "data" / "f.txt"), "0" * 64)
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert f"{url}/f.txt" in err and "SHA-256" in err and "by hand" in err and str(tmp_path / "data" / "f.txt") in err
    assert listing(tmp_path / "data") == ["other.txt"]


def test_download_of_a_missing_file_leaves_nothing(server, tmp_path, capsys):
    _, url = server  # serves an empty folder: 404
    g = load("gpt_char")
    with pytest.raises(SystemExit) as stop:
        g.download(f"{url}/input.txt", str(tmp_path / "data" / "input.txt"), "0" * 64)
    assert stop.value.code == 1 and "404" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["www"]


def test_download_with_no_server_leaves_nothing(tmp_path, capsys):
    with socket.socket() as s:  # a port that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    g = load("gpt_char")
    with pytest.raises(SystemExit) as stop:
        g.download(f"http://127.0.0.1:{port}/atticus.xml", str(tmp_path / "data" / "atticus.xml"), "0" * 64)
    assert stop.value.code == 1
    assert f"http://127.0.0.1:{port}/atticus.xml" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []  # not even the data/ folder it made


def test_missing_data_file_is_downloaded_and_checked(server, tmp_path):
    root, url = server
    shutil.copy(os.path.join(DATA, "tinyshakespeare.txt"), root / "input.txt")
    g = load("gpt_char")
    g.DATA_DIR = str(tmp_path / "data")
    g.DATA_FILES["tinyshakespeare.txt"] = (f"{url}/input.txt", g.DATA_FILES["tinyshakespeare.txt"][1])
    assert g.load_text("shakespeare").startswith("First Citizen:")
    assert listing(tmp_path / "data") == ["tinyshakespeare.txt"]


def test_corrupted_data_file_is_refused(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "tinyshakespeare.txt").write_text("not Shakespeare", encoding="utf-8")
    g = load("gpt_char")
    g.DATA_DIR = str(tmp_path / "data")
    with pytest.raises(SystemExit) as stop:
        g.load_text("shakespeare")
    assert stop.value.code == 1 and "SHA-256" in capsys.readouterr().err
    assert (tmp_path / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8") == "not Shakespeare"


@pytest.mark.parametrize("script", ["bigram", "gpt_char", "gpt_bpe"])
def test_shipped_data_matches_its_checksums(script):
    g = load(script)
    for name, (_, expected) in g.DATA_FILES.items():
        assert sha256(os.path.join(DATA, name)) == expected


@pytest.mark.parametrize("script", ["bigram", "gpt_char", "gpt_bpe"])
def test_atticus_parser_on_the_shipped_epidoc_file(script):
    text = load(script).load_text("atticus")
    letters = text.split("\n\n")
    assert len(letters) == 446
    dateline, salute, body = letters[0].split("\n")
    assert dateline.startswith("Scr. Romae") and salute == "CICERO ATTICO salutem"
    assert body.startswith("petitionis nostrae, quam tibi summae curae esse scio")
    assert all(len(letter.split("\n")) == 3 for letter in letters)
    assert "<" not in text and "  " not in text and 700_000 < len(text) < 900_000


def test_atticus_without_lxml_is_a_clear_error(tmp_path):
    code = ("import runpy, sys; sys.modules['lxml'] = None; "  # as if lxml were not installed
            f"sys.argv = ['gpt_char.py', 'dataset=atticus']; runpy.run_path({os.path.join(ROOT, 'gpt_char.py')!r}, "
            "run_name='__main__')")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "needs BeautifulSoup and lxml: pip install beautifulsoup4 lxml" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("script", ["bigram", "gpt_char", "gpt_bpe"])
def test_atticus_parser_on_hopper_markup(script, tmp_path):
    (tmp_path / "hopper.xml").write_text("""<?xml version="1.0" encoding="UTF-8"?>
<TEI.2><text><body><div1 type="book" n="1">
<div2 type="letter" n="1"><opener><dateline>Scr. Romae
   <date>a. 689</date>.</dateline> <salute>CICERO ATTICO SAL.</salute></opener>
<p>petitionis nostrae, <note>a modern note</note>quam tibi
      summae curae esse scio.</p><p>Graece: <foreign lang="greek">&#x1F00;&#x03B4;&#x03CD;&#x03BD;&#x03B1;&#x03C4;&#x03BF;&#x03BD;</foreign></p></div2>
<div2 type="letter" n="2"><opener><dateline>Scr. Romae a. 689.</dateline><salute>CICERO ATTICO SAL.</salute></opener>
<p>L. Iulio Caesare <del>verum</del> C. Marcio Figulo consulibus filiolo me auctum scito.</p></div2>
</div1></body></text></TEI.2>""", encoding="utf-8")
    assert load(script).read_atticus(str(tmp_path / "hopper.xml")) == (
        "Scr. Romae a. 689.\nCICERO ATTICO SAL.\npetitionis nostrae, quam tibi summae curae esse scio. "
        "Graece: \u1f00\u03b4\u03cd\u03bd\u03b1\u03c4\u03bf\u03bd\n\n"
        "Scr. Romae a. 689.\nCICERO ATTICO SAL.\nL. Iulio Caesare C. Marcio Figulo consulibus filiolo me auctum scito.")


# -------------------------------------------------------------------------------- model
def tiny_gpt(g, vocab_size=11, block_size=8, seed=0):
    torch.manual_seed(seed)
    return g.GPT(vocab_size, block_size, n_embd=16, n_head=4, n_layer=2, dropout=0.0).eval()


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
    assert attn.weights.shape == (3, 4, 9, 9)
    assert torch.allclose(attn.weights.sum(-1), torch.ones(3, 4, 9))
    assert torch.all(attn.weights.triu(1) == 0)


def test_dropout_keeps_a_one_byte_mask_and_scales_the_rest():
    g = load("gpt_char")
    torch.manual_seed(0)
    drop = g.Dropout(0.2)
    x = (torch.rand(500, 400) + 1).requires_grad_()  # no zeros of its own
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = drop(x)
    assert [t.dtype for t in saved] == [torch.bool]  # not a float mask of the input's size
    assert abs((y == 0).float().mean().item() - 0.2) < 0.01
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.8)
    y.sum().backward()
    assert torch.equal(x.grad, kept / 0.8)  # the gradient flows where the input was kept, scaled alike
    drop.eval()
    assert drop(x) is x
    assert g.Dropout(0.0)(x) is x


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


def test_bigram_count_optimum():
    b = load("bigram")
    train, val = torch.tensor([0, 1, 0, 1, 0]), torch.tensor([0, 1])
    # counts with one added: 0->0: 1, 0->1: 3, 1->0: 3, 1->1: 1; val scores the pair 0->1
    assert b.count_optimum(train, val, 2) == pytest.approx(-math.log(3 / 4))


# ----------------------------------------------------------- user mistakes and checkpoints
SCRIPTS = ["bigram", "gpt_char", "gpt_bpe", "sort_task"]
MISTAKES = [  # (script, what the user typed, exit status, what the one sentence on stderr says)
    *[(script, ["max_iter=3"], 2, "unknown setting 'max_iter=3'; valid settings: ") for script in SCRIPTS],
    *[(script, ["max_iters=3.5"], 2, "max_iters='3.5' is not a int; valid settings: ") for script in SCRIPTS],
    *[(script, ["n_embd=100", "n_head=3"], 2, "n_embd=100 is not divisible by n_head=3") for script in SCRIPTS[1:]],
    *[(script, ["block_size=200000"], 1, "block_size=200000 is longer than the validation text") for script in SCRIPTS[:3]],
    ("sort_task", ["length=2", "num_digits=2"], 1, "length=2 num_digits=2 has too few inputs to hold a quarter out"),
    ("bigram", ["start=ROMEO€"], 1, "not in the vocabulary of shakespeare: '€'"),
    ("gpt_char", ["start=ROMEO€"], 1, "not in the vocabulary of shakespeare: '€'"),
    ("gpt_bpe", ["start=日本"], 1, "has tokens that never occur in atticus"),
    ("sort_task", ["start=2103"], 2, "start='2103' is not 6 digits from 0 to 2"),
    *[(script, ["resume=true"], 1, "resume=true but there is no checkpoint at out/") for script in SCRIPTS],
]


@pytest.mark.parametrize("script, args, status, message", MISTAKES, ids=lambda v: v if isinstance(v, str) else "")
def test_every_mistake_ends_in_one_clear_sentence(script, args, status, message, tmp_path, monkeypatch, capsys):
    """The bad-input table of the README, row by row: one sentence, a non-zero exit, nothing written."""
    monkeypatch.chdir(tmp_path)
    data_before = {name: sha256(os.path.join(DATA, name)) for name in listing(DATA)}
    got, out, err = main_in_process(script, args, monkeypatch, capsys)
    assert got == status
    assert err.startswith(f"{script}: ") and message in err and err.count("\n") == 1, err
    assert SAMPLE_MARK not in out and os.listdir(tmp_path) == []
    assert {name: sha256(os.path.join(DATA, name)) for name in listing(DATA)} == data_before


@pytest.mark.parametrize("script, change", [("bigram", "dataset=atticus"), ("gpt_char", "n_layer=2"),
                                            ("gpt_bpe", "n_embd=32"), ("sort_task", "length=5")])
def test_a_checkpoint_of_other_settings_is_refused_and_kept(script, change, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main_in_process(script, [], monkeypatch, capsys)[0] == 0
    path = tmp_path / "out" / f"{script}.pt"
    saved = sha256(path)
    for args in (["max_iters=0", change], ["resume=true", change]):
        status, _, err = main_in_process(script, args, monkeypatch, capsys)
        assert status == 1
        assert f"out/{script}.pt was trained with other settings ({change.split('=')[0]}=" in err, err
        assert err.count("\n") == 1 and sha256(path) == saved


def test_checkpoint_resume_sample_only_and_mismatch(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_here = lambda *args: main_in_process("gpt_char", args, monkeypatch, capsys)  # noqa: E731
    path = tmp_path / "out" / "gpt_char.pt"
    assert run_here()[0] == 0
    assert torch.load(path, weights_only=True)["step"] == 4

    status, out, err = run_here("resume=true", "max_iters=6")  # goes on from step 4
    assert status == 0, err
    assert "loaded out/gpt_char.pt: step 4" in out
    assert [s for s, _, _ in losses(out)] == [6]
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["step"] == 6 and [h[0] for h in checkpoint["history"]] == [0, 2, 4, 6]

    saved = sha256(path)
    status, out, _ = run_here("max_iters=0")  # only samples
    assert status == 0 and losses(out) == [] and SAMPLE_MARK in out
    assert sha256(path) == saved

    for args in (["resume=true", "n_layer=2"], ["max_iters=0", "n_head=4"], ["max_iters=0", "dataset=atticus"]):
        status, _, err = run_here(*args)
        assert status == 1 and "was trained with other settings" in err and err.count("\n") == 1, args
    assert sha256(path) == saved

    checkpoint = torch.load(path, weights_only=True)  # as the one-optimizer version of this script saved it
    checkpoint["optimizer"] = checkpoint["optimizer"][1]
    torch.save(checkpoint, path)
    saved = sha256(path)
    status, _, err = run_here("resume=true")
    assert status == 1 and "does not fit this version of gpt_char.py" in err and err.count("\n") == 1, err
    assert sha256(path) == saved

    path.write_bytes(b"not a checkpoint")
    status, _, err = run_here("resume=true")
    assert status == 1 and "is not a checkpoint" in err and err.count("\n") == 1, err
    assert path.read_bytes() == b"not a checkpoint"


@pytest.mark.parametrize("script", SCRIPTS)
def test_ctrl_c_stops_cleanly_and_keeps_the_checkpoint(script, tmp_path):
    args = [f"{k}={v}" for k, v in TINY[script].items()] + ["max_iters=100000", "eval_interval=5"]
    reset = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731  a background CI job may ignore SIGINT
    p = subprocess.Popen([sys.executable, "-u", os.path.join(ROOT, f"{script}.py"), *args], cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=reset)
    try:
        for line in p.stdout:
            if line.startswith("step 10/"):  # the checkpoint of step 5 is on disk by now
                break
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130 and "interrupted; the last checkpoint saved, if any, is in out/" in err
    assert "Traceback" not in err
    assert torch.load(tmp_path / "out" / f"{script}.pt", weights_only=True)["step"] in (5, 10)


# ------------------------------------------------------------------- tokenizers (gpt_bpe)
GPT2_URLS = {"vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
             "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json"}
HARD_STRINGS = [
    "", " ", "  ", "   x", "a  b   c", "\n", "\n\n\n", "line\n  indented\n\n", "\r\n", "a\r\nb\r\n\r\n", "\t", "\ta\t\tb \t",
    "trailing spaces   ", " leading", "it's", "don't", "we're", "they've", "I'm", "you'll", "he'd",
    "IT'S", "DON'T", "WE'RE", "THEY'VE", "I'M", "YOU'LL", "HE'D", "'s 't 're 've 'm 'll 'd", "''s", "rock'n'roll",
    "0", "1234567890", "3.14159", "1,000,000", "a1b2c3", "!!!", "...", "?!?!", "--", "((()))", "[{<>}]", "@#$%^&*",
    "a.b.c", "e.g.,", "Scr. Romae a. 689.", "CICERO ATTICO SAL.", "café", "naïve façade", "Æneas Cæsar",
    "ἀδύνατον", "τὸ δὲ μέγιστον", "日本語のテキスト", "中文", "한국어", "emoji 😀 👍🏽 🇮🇹", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𐍈",
    "\u0301", "e\u0301", " \u0301x", "\u00a0non-breaking\u00a0space", "zero\u200bwidth", "\x00\x01\x1f\x7f",
    "<|endoftext|>", "a<|endoftext|>b",
]


def offline_gpt2():
    """gpt_bpe.py's tiktoken "gpt2" encoding, built from data/gpt2/ (once)."""
    if not hasattr(offline_gpt2, "enc"):
        offline_gpt2.enc = load("gpt_bpe").tiktoken_encoding("gpt2")
    return offline_gpt2.enc


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
    return b.GPT2Tokenizer(os.path.join(DATA, "gpt2", "encoder.json"), os.path.join(DATA, "gpt2", "vocab.bpe"))


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
    assert load("gpt_bpe").bytes_to_unicode()[ord(" ")] == "Ġ" and len(set(load("gpt_bpe").bytes_to_unicode().values())) == 256


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
    assert scratch.encode(text, allowed_special="all") == tiktoken_gpt2.encode(text, allowed_special="all") == asked
    ids = tiktoken_gpt2.encode_ordinary("\U0001d518")  # one 4-byte character, more than one token
    assert len(ids) > 1 and scratch.decode(ids[:1]) == tiktoken_gpt2.decode(ids[:1]) == "\ufffd"  # cut: U+FFFD


@pytest.mark.parametrize("dataset", ["atticus", "shakespeare"])
def test_scratch_tokenizer_equals_tiktoken_on_whole_corpora(dataset, tiktoken_gpt2):
    import time
    b = load("gpt_bpe")
    text = b.load_text(dataset)
    fresh = b.GPT2Tokenizer(os.path.join(DATA, "gpt2", "encoder.json"), os.path.join(DATA, "gpt2", "vocab.bpe"))
    t = time.perf_counter()
    ids = fresh.encode(text)
    seconds = time.perf_counter() - t
    assert ids == tiktoken_gpt2.encode_ordinary(text)
    assert fresh.decode(ids) == text
    assert seconds < 5, f"the scratch tokenizer took {seconds:.1f} s on {dataset}"
    if dataset == "atticus":
        assert 4000 < len(set(ids)) < 5000  # the compact vocabulary: about 4.4 k of GPT-2's 50,257 ids


@pytest.mark.parametrize("name", ["vocab.bpe", "encoder.json"])
def test_corrupted_gpt2_file_is_refused(name, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(os.path.join(DATA, "gpt2"), data / "gpt2")
    with open(data / "gpt2" / name, "a", encoding="utf-8") as f:
        f.write("x y\n")
    corrupted = sha256(data / "gpt2" / name)
    for choice in ("tiktoken", "scratch"):
        b = load("gpt_bpe")
        b.DATA_DIR, b.tokenizer = str(data), choice
        with pytest.raises(SystemExit) as stop:
            b.load_bpe()
        assert stop.value.code == 1 and f"{name} is not the expected file (SHA-256 mismatch)" in capsys.readouterr().err
    assert sha256(data / "gpt2" / name) == corrupted and listing(data) == ["gpt2/encoder.json", "gpt2/vocab.bpe"]


def test_compact_vocabulary_maps_ids_both_ways():
    b = load("gpt_bpe")
    enc = offline_gpt2()
    text = b.load_text("atticus")
    vocab = sorted(set(enc.encode_ordinary(text)))
    encode, decode = b.make_tokenizer(vocab, enc.encode_ordinary, enc.decode)
    ids = encode(text)
    assert min(ids) == 0 and max(ids) == len(vocab) - 1 == 4430 and decode(ids) == text
    gpt2_ids = torch.tensor(enc.encode_ordinary(text))  # main() maps them in one pass, as encode(text) would
    assert torch.searchsorted(torch.tensor(vocab), gpt2_ids).tolist() == ids
    phrase = "Scr. Romae a. 689. CICERO ATTICO salutem"
    assert [vocab[i] for i in encode(phrase)] == enc.encode_ordinary(phrase)


def test_missing_gpt2_files_are_downloaded(server, tmp_path):
    root, url = server
    for name in GPT2_URLS:
        shutil.copy(os.path.join(DATA, "gpt2", name), root / name)
    b = load("gpt_bpe")
    b.DATA_DIR = str(tmp_path / "data")
    for name in GPT2_URLS:
        b.DATA_FILES[f"gpt2/{name}"] = (f"{url}/{name}", b.DATA_FILES[f"gpt2/{name}"][1])
    encode, decode, n_ids = b.load_bpe()
    assert encode("Hello world") == [15496, 995] and n_ids == 50257
    assert listing(tmp_path / "data") == ["gpt2/encoder.json", "gpt2/vocab.bpe"]


@pytest.mark.parametrize("args, status, message", [
    (["encoding=cl100k_base"], 1, "tiktoken could not load the encoding 'cl100k_base'"),
    (["encoding=no_such_encoding"], 1, "tiktoken could not load the encoding 'no_such_encoding'"),
    (["tokenizer=scratch", "encoding=cl100k_base"], 2, "tokenizer=scratch is GPT-2's BPE: it needs encoding=gpt2"),
    (["tokenizer=sentencepiece"], 2, "tokenizer='sentencepiece' is not tiktoken or scratch"),
])
def test_gpt_bpe_mistakes(args, status, message, tmp_path):
    with socket.socket() as s:  # no network: every download goes to a proxy that nobody runs
        s.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{s.getsockname()[1]}"
    env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}  # no exception to the dead proxy
    env.update(HTTPS_PROXY=proxy, HTTP_PROXY=proxy, https_proxy=proxy, http_proxy=proxy,
               TIKTOKEN_CACHE_DIR=str(tmp_path / "cache"))
    settings = [f"{k}={v}" for k, v in TINY["gpt_bpe"].items()]
    p = subprocess.run([sys.executable, os.path.join(ROOT, "gpt_bpe.py"), *settings, *args], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == status and message in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args", [["tokenizer=scratch"], ["compact_vocab=false", "max_iters=2"],
                                  ["dataset=shakespeare", "tokenizer=scratch"]])
def test_gpt_bpe_variants(args, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status, out, err = main_in_process("gpt_bpe", args, monkeypatch, capsys)
    assert status == 0, err
    dataset = "shakespeare" if "dataset=shakespeare" in args else "atticus"
    steps = [0, 2] if "max_iters=2" in args else [0, 2, 4]  # the whole val split through 50,257 logits is slow
    assert [s for s, _, _ in losses(out, val_chars_per_token("gpt_bpe", dataset))] == steps
    vocabulary = int(re.search(r"vocabulary (\d+)", out)[1])
    assert vocabulary == 50257 if "compact_vocab=false" in args else 4000 < vocabulary < 20000
    checkpoint = torch.load(tmp_path / "out" / "gpt_bpe.pt", weights_only=True)
    assert len(checkpoint["vocab"]) == vocabulary == checkpoint["model"]["lm_head.weight"].shape[0]
    if "compact_vocab=false" in args:  # the checkpoint of the full vocabulary does not fit the compact one
        status, _, err = main_in_process("gpt_bpe", ["max_iters=0"], monkeypatch, capsys)
        assert status == 1 and "compact_vocab=False" in err and err.count("\n") == 1, err


# ----------------------------------------------------------------- one skeleton, four scripts
SHARED = {  # blocks -> the scripts that must hold the very same text of each
    ("keep_freed_memory", "die", "configure", "get_lr", "save_checkpoint", "load_checkpoint", "plot_losses", "clock",
     "main: resume", "main: the training loop", "the __main__ guard"): ["bigram", "gpt_char", "gpt_bpe", "sort_task"],
    ("sha256_of", "download", "data_file", "read_atticus", "load_text", "get_batch", "estimate_loss", "sample",
     "main: set-up", "main: the training loop's log line"): ["bigram", "gpt_char", "gpt_bpe"],
    ("Dropout", "CausalSelfAttention", "MLP", "Block", "GPT", "orthogonalize", "Muon", "main: optimizers"):
        ["gpt_char", "gpt_bpe", "sort_task"],
}


def blocks(script):
    """A script's top-level functions and classes by name, and pieces of main(), as source text."""
    import ast
    source = open(os.path.join(ROOT, f"{script}.py"), encoding="utf-8").read()
    found = {node.name: ast.get_source_segment(source, node) for node in ast.parse(source).body
             if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    main = found["main"]
    found["main: set-up"] = main[: main.index("\n\n")]  # overrides, seed, device, autocast, scaler
    optimizers = main.index("    in_blocks = [" if "    in_blocks = [" in main else "    matrices = [")
    found["main: optimizers"] = main[optimizers: main.index("    path = os.path.join(")]
    found["main: resume"] = main[main.index("    path = os.path.join("): main.index("    config = {")]
    found["the __main__ guard"] = source[source.index('if __name__ == "__main__":'):]
    loop = main[main.index("    for step in range("): main.index("\n    if len(history) > 1:")]
    log = re.search(r"\n {12}print\(.*?flush=True\)", loop, re.S)[0]  # what sort_task.py logs differs
    found["main: the training loop's log line"] = log
    found["main: the training loop"] = re.sub(r"\n {12}accuracy, _ = .*", "", loop.replace(log, ""))
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


# ---------------------------------------------------------------------------- sort task
def test_sort_examples_mask_the_input_half():
    s = load("sort_task")
    s.length = 5
    x, y = s.examples(torch.tensor([[1, 2, 1, 0, 1]]))
    assert x.tolist() == [[1, 2, 1, 0, 1, 0, 1, 1, 1]]
    assert y.tolist() == [[-1, -1, -1, -1, 0, 1, 1, 1, 2]]


def test_sort_split_is_stable_and_training_never_sees_held_out_inputs():
    s = load("sort_task")
    held = {tuple(x) for x in s.input_set(held=True).tolist()}
    train = {tuple(x) for x in s.input_set(held=False).tolist()}
    assert len(held) + len(train) == 3 ** 6 and not held & train
    assert 0.15 < len(held) / 3 ** 6 < 0.35
    # hashlib, not hash(): a fresh interpreter (another hash seed) makes the same split
    code = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('s', sys.argv[1]); "
            "s = importlib.util.module_from_spec(spec); spec.loader.exec_module(s); "
            "print(sorted(map(tuple, s.input_set(held=True).tolist())))")
    out = subprocess.run([sys.executable, "-c", code, os.path.join(ROOT, "sort_task.py")], capture_output=True,
                         text=True, env={**os.environ, "PYTHONHASHSEED": "12345"}, check=True).stdout
    assert out.strip() == str(sorted(held))
    for _ in range(50):
        x, y = s.get_batch(False, 64, 2 * s.length - 1, "cpu")
        assert not {tuple(row) for row in x[:, : s.length].tolist()} & held
        assert (y[:, : s.length - 1] == -1).all() and (y[:, s.length - 1:] >= 0).all()
    x, _ = s.get_batch(True, 64, 2 * s.length - 1, "cpu")
    assert {tuple(row) for row in x[:, : s.length].tolist()} <= held
    repeats = [len(set(row)) for row in s.random_inputs(1000).tolist()]
    assert sum(r <= 2 for r in repeats) > 500  # inputs with many repeated digits are oversampled


def test_sort_attention_explicit_path_equals_fast_path():
    s = load("sort_task")
    torch.manual_seed(0)
    model = s.GPT(3, 11, 32, 4, 2, 0.0).eval()
    x = torch.randint(3, (5, 11))
    fast = model(x)[0]
    model.blocks[-1].attn.keep_weights = True
    assert torch.allclose(model(x)[0], fast, atol=1e-5)
    assert model.blocks[-1].attn.weights.shape == (5, 4, 11, 11)


def test_sort_task_end_to_end_tiny(tmp_path):
    p = subprocess.run([sys.executable, os.path.join(ROOT, "sort_task.py"), "device=cpu", "max_iters=4", "eval_interval=2",
                        "eval_iters=1", "n_layer=1", "n_embd=16", "n_head=2", "start=210210"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert [s for s, _, _ in losses_sort(p.stdout)] == [0, 2, 4]
    assert re.search(r"^held-out: [\d.]+% of \d+ inputs sorted exactly right$", p.stdout, re.M)
    assert "--- sample: the model sorts 210210 into " in p.stdout
    assert "head 1 " in p.stdout
    assert (tmp_path / "out" / "sort_task_attention.png").stat().st_size > 1000
    assert torch.load(tmp_path / "out" / "sort_task.pt", weights_only=True)["config"]["length"] == 6


def test_sort_task_default_setting_reaches_100_percent_held_out(tmp_path):
    p = subprocess.run([sys.executable, os.path.join(ROOT, "sort_task.py"), "device=cpu"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    held = re.search(r"^held-out: ([\d.]+)% of (\d+) inputs sorted exactly right$", p.stdout, re.M)
    assert held and float(held[1]) == 100.0 and int(held[2]) > 150


def losses_sort(stdout):
    pattern = r"^step (\d+)/(\d+) \| train ([\d.]+) \| val ([\d.]+) \| held-out sorted [\d.]+% \| "
    return [(int(m[0]), float(m[2]), float(m[3])) for m in re.findall(pattern, stdout, re.M)]
