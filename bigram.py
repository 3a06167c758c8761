"""
Step 1 of "Let's build GPT": a bigram language model of characters.

The simplest model that can write: it guesses the next character from the current one
alone. It is a single table, vocabulary x vocabulary, whose row for a character holds the
scores (logits) of every character that may follow it. It learns by gradient descent on
tinyshakespeare (or Cicero's letters, dataset=atticus), and beside it the script computes
the same table in closed form, from add-one smoothed counts of character pairs, so that
you can watch the trained model close the gap. Step 2 (gpt_char.py) lets every character
look at all those before it.

Run:   python bigram.py                          tinyshakespeare
       python bigram.py dataset=atticus          Cicero's Letters to Atticus
       python bigram.py max_iters=500 learning_rate=0.05   any global below, as name=value

Expect (measured on 2 CPU cores, README.md): 9.7 s, val loss 2.4845 (3.58 bits per
character) on tinyshakespeare, against 2.4819 for the smoothed counts.
"""

import ctypes
import hashlib
import http.client
import math
import os
import sys
import tempfile
import time
import urllib.request
from contextlib import nullcontext

import torch
import torch.nn as nn
from torch.nn import functional as F

# ---------------------------------------------------------------------- hyperparameters
device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
dataset = "shakespeare"  # shakespeare | atticus
batch_size = 64  # sequences per step
block_size = 32  # characters per sequence (the model itself sees only one at a time)
max_iters = 2000  # optimizer steps
eval_interval = 500  # steps between evaluations (and checkpoints)
eval_iters = 200  # train batches per loss estimate (val: the whole split)
learning_rate = 0.05  # peak, after warm-up
min_lr = 0.005  # reached at max_iters by cosine decay
warmup_iters = 20  # steps of linear warm-up
weight_decay = 0.1  # AdamW, on matrices only; pulls never-seen pairs back from -inf
grad_clip = 1.0  # clip the gradient norm to this; 0 = off
seed = 1337  # same seed and device, same losses
out_dir = "out"  # checkpoint and pictures go here
resume = False  # continue training from out_dir/bigram.pt
start = "\n"  # the prompt the sample continues
max_new_tokens = 500  # length of the sample, in characters
temperature = 1.0  # < 1 sharper, > 1 wilder; 0 = always the likeliest
top_k = 0  # sample among the k likeliest only; 0 = all

# ------------------------------------------------------------------------ configuration
CONFIG_KEYS = [k for k, v in globals().items() if not k.startswith("_") and type(v) in (bool, int, float, str)]
SCRIPT = "bigram"
MODEL_KEYS = ("dataset",)  # a checkpoint must share these


def keep_freed_memory():
    """On Linux, let malloc keep the memory PyTorch frees for reuse instead of handing big blocks back to the
    system after every step, only to fault them in again: a small model's steps ran 14-23 % faster here."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: blocks below 32 MB come from the heap...
            libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: ...which keeps up to 1 GB of free memory
        except (OSError, AttributeError):  # not glibc: leave malloc as it is
            pass


def die(message, status=1):
    """Stop with one clear sentence on stderr and a non-zero exit status."""
    print(f"{SCRIPT}: {message}", file=sys.stderr)
    sys.exit(status)


def configure(argv):
    """Override the globals above with name=value arguments; exit 2 on any mistake."""
    notebook = "kernel_launcher" in os.path.basename(argv[0] if argv else "")  # ipykernel_launcher.py -f kernel.json
    valid = "valid settings: " + " ".join(f"{k}={globals()[k]!r}" for k in CONFIG_KEYS)
    for arg in [] if notebook else argv[1:]:  # a notebook's arguments are the kernel's own: edit the globals
        name, eq, text = arg.lstrip("-").partition("=")
        if not eq or name not in CONFIG_KEYS:
            die(f"unknown setting {arg!r}; {valid}", 2)
        default = globals()[name]
        try:
            if type(default) is bool:
                value = {"true": True, "1": True, "false": False, "0": False}[text.lower()]
            else:
                value = type(default)(text)
        except (KeyError, ValueError):
            die(f"{name}={text!r} is not a {type(default).__name__}; {valid}", 2)
        globals()[name] = value
    problems = config_problems()
    if problems:
        die(problems[0], 2)


def config_problems():
    """What is wrong with the settings, in words; empty if nothing."""
    return [msg for ok, msg in [
        (dataset in ("shakespeare", "atticus"), f"dataset={dataset!r} is not shakespeare or atticus"),
        (device.split(":")[0] in ("cpu", "cuda", "mps"), f"device={device!r} is not cpu, cuda or mps"),
        (not device.startswith("cuda") or torch.cuda.is_available(), "device=cuda but no CUDA GPU is available"),
        (device != "mps" or torch.backends.mps.is_available(), "device=mps but MPS is not available"),
        (min(batch_size, block_size, eval_interval, eval_iters) > 0,
         "batch_size, block_size, eval_interval and eval_iters must be positive"),
        (max_iters >= 0 and max_new_tokens >= 0 and top_k >= 0, "max_iters, max_new_tokens and top_k must be >= 0"),
        (learning_rate > 0 and 0 <= min_lr <= learning_rate, "learning_rate must be > 0 and min_lr in [0, learning_rate]"),
        (temperature >= 0 and warmup_iters >= 0 and grad_clip >= 0, "temperature, warmup_iters and grad_clip must be >= 0"),
        (len(start) > 0, "the prompt start= must not be empty"),
    ] if not ok]


# --------------------------------------------------------------------------------- data
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data") if "__file__" in globals() else "data"
DATA_FILES = {  # name in data/: (pinned download URL, SHA-256)
    "tinyshakespeare.txt": (
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),
    "atticus.xml": (
        "https://raw.githubusercontent.com/PerseusDL/canonical-latinLit/1066a551aa5445ab165e9b490a6bb06ce72828da"
        "/data/phi0474/phi057/phi0474.phi057.perseus-lat1.xml",
        "82e361a4dcf554470eab9daba9cc02b0e0ea34d13dc4ae3bf35ea98d2b18f3fe"),
}


def sha256_of(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def download(url, path, sha256):
    """Fetch url into path through a temporary file beside it, kept only if its SHA-256 matches."""
    folder = os.path.dirname(path) or "."
    new_folders = []  # folders made here, removed again if the download fails
    parent = folder
    while not os.path.isdir(parent):
        new_folders.append(parent)
        parent = os.path.dirname(parent) or "."
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".download-")
        print(f"downloading {url}")
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=30) as response:
            f.write(response.read())
        digest = sha256_of(tmp)
        if digest != sha256:
            raise ValueError(f"its SHA-256 is {digest}, not {sha256}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        tmp = None
    except (OSError, ValueError, http.client.HTTPException) as e:
        die(f"could not download {url} ({e}); download it by hand and save it as {path}")
    finally:  # failed or interrupted: leave nothing behind
        if tmp is not None:
            os.remove(tmp)
        if not os.path.exists(path):
            for new in new_folders:
                os.rmdir(new)


def data_file(name):
    """The path of data/name, downloaded first if it is missing; refused if it is not the pinned file."""
    url, sha256 = DATA_FILES[name]
    path = os.path.join(DATA_DIR, name)
    if not os.path.exists(path):
        download(url, path, sha256)
    elif sha256_of(path) != sha256:
        die(f"{path} is not the expected file (SHA-256 mismatch); delete it to download it again from {url}")
    return path


def read_atticus(path):
    """Cicero's letters from a Perseus TEI file: 'dateline\\nsalute\\nbody' per letter, blank line between.

    Reads the EpiDoc markup (<div subtype="letter">, <seg rend="dateline">) and the older
    hopper markup (<div2>, <dateline>); drops the editor's deletions, expansions and notes.
    """
    try:
        from bs4 import BeautifulSoup
        import lxml  # noqa: F401  the XML parser that BeautifulSoup(..., "xml") uses
    except ImportError:
        die("reading atticus.xml needs BeautifulSoup and lxml: pip install beautifulsoup4 lxml")
    with open(path, encoding="utf-8") as f:
        soup = BeautifulSoup(f, "xml")
    letters = []
    for letter in soup.find_all("div", subtype="letter") or soup.find_all("div2"):
        for tag in letter.find_all(["del", "expan", "note"]):
            tag.decompose()
        for tag in letter.find_all(["p", "l"]):
            tag.append(" ")  # a paragraph or verse line ends a word even where no space follows it
        parts = []
        for name in ("dateline", "salute"):
            tag = letter.find(attrs={"rend": name}) or letter.find(name)
            parts.append(" ".join(tag.extract().get_text().split()) if tag else "")
        parts.append(" ".join(letter.get_text().split()))
        letters.append("\n".join(parts))
    return "\n\n".join(letters)


def load_text(name):
    if name == "atticus":
        return read_atticus(data_file("atticus.xml"))
    with open(data_file("tinyshakespeare.txt"), encoding="utf-8") as f:
        return f.read()


# ---------------------------------------------------------------------------- tokenizer
def make_tokenizer(vocab):
    """Characters <-> integers: vocab is the string of all characters, sorted."""
    stoi = {ch: i for i, ch in enumerate(vocab)}
    encode = lambda s: [stoi[c] for c in s]  # noqa: E731  string -> list of ints
    decode = lambda ids: "".join(vocab[i] for i in ids)  # noqa: E731  list of ints -> string
    return encode, decode


# -------------------------------------------------------------------------------- model
class BigramLanguageModel(nn.Module):
    """One table: row i holds the logits of the character that follows character i."""

    def __init__(self, vocab_size):
        super().__init__()
        self.block_size = 1  # all the context it uses: the current character
        self.token_embedding = nn.Embedding(vocab_size, vocab_size)
        nn.init.zeros_(self.token_embedding.weight)  # every next character equally likely at first

    def forward(self, idx, targets=None):
        logits = self.token_embedding(idx)  # (B, T, vocab_size)
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        """Extend idx (B, T) by max_new_tokens tokens, each fed back in; temperature 0 is greedy."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.block_size:])  # crop the context to what the model knows
            logits = logits[:, -1, :]  # (B, vocab_size): the last position predicts the next token
            if temperature == 0:
                idx_next = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                idx_next = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)  # (B, 1)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx


def count_optimum(train, val, vocab_size):
    """The bigram table in closed form: add-one smoothed counts of pairs in train, scored on val (nats)."""
    counts = torch.ones(vocab_size, vocab_size)  # one imagined sighting of every pair: none is impossible
    counts.index_put_((train[:-1], train[1:]), torch.tensor(1.0), accumulate=True)
    log_probs = (counts / counts.sum(dim=1, keepdim=True)).log()  # row i: log P(next | i)
    return -log_probs[val[:-1], val[1:]].mean().item()  # mean negative log-likelihood, nats


# ----------------------------------------------------------------------------- training
def get_batch(data, batch_size, block_size, device, generator=None):
    """batch_size random windows of data: inputs x and targets y, y shifted by one. Each (B, T)."""
    ix = torch.randint(len(data) - block_size, (batch_size, 1), generator=generator)
    window = data[ix + torch.arange(block_size + 1)]  # (B, T+1)
    return window[:, :-1].to(device), window[:, 1:].to(device)


@torch.no_grad()
def estimate_loss(model, splits, eval_iters, batch_size, block_size, device, ctx=nullcontext()):
    """Mean loss per token: of the whole val split (in windows of block_size, each token once), and of
    eval_iters random batches of the much longer train split (the same batches at every call)."""
    model.eval()
    out = {}
    for name, data in splits.items():
        if name == "val":
            n = (len(data) - 1) // block_size  # windows; the last few tokens are left out
            windows = data[: n * block_size + 1].unfold(0, block_size + 1, block_size)  # (n, T+1), overlapping by one
            batches = [(w[:, :-1], w[:, 1:]) for w in windows.split(batch_size)]
        else:
            generator = torch.Generator().manual_seed(seed)
            batches = [get_batch(data, batch_size, block_size, "cpu", generator) for _ in range(eval_iters)]
        total = 0.0
        for x, y in batches:
            with ctx:
                total += model(x.to(device), y.to(device))[1].item() * len(x)
        out[name] = total / sum(len(x) for x, _ in batches)
    model.train()
    return out


def get_lr(step):
    """Linear warm-up to learning_rate, then cosine decay to min_lr at max_iters."""
    if step < warmup_iters:
        return learning_rate * (step + 1) / warmup_iters
    progress = min(1.0, (step - warmup_iters) / max(1, max_iters - warmup_iters))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (learning_rate - min_lr)


def save_checkpoint(path, checkpoint):
    """Write to a temporary file, then rename: an interrupted save never leaves half a checkpoint."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    torch.save(checkpoint, path + ".tmp")
    os.replace(path + ".tmp", path)


def load_checkpoint(path, model, optimizers, vocab):
    """Restore model and optimizers from path; stop clearly if it is missing or does not fit."""
    if not os.path.exists(path):
        die(f"resume=true but there is no checkpoint at {path}; train without resume first")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        missing = {"model", "optimizer", "config", "vocab", "step", "val_loss", "history"} - set(checkpoint)
    except Exception as e:  # a truncated or foreign file: say so, leave it alone
        die(f"{path} is not a checkpoint this script can read ({type(e).__name__})")
    if missing:
        die(f"{path} is not a checkpoint of {SCRIPT}.py: it has no {', '.join(sorted(missing))}")
    changed = [f"{k}={checkpoint['config'].get(k)!r}" for k in MODEL_KEYS if checkpoint["config"].get(k) != globals()[k]]
    if changed or checkpoint["vocab"] != vocab:
        die(f"{path} was trained with other settings ({' '.join(changed) or 'another vocabulary'}); "
            f"pass the same settings, or out_dir= another folder")
    try:
        model.load_state_dict(checkpoint["model"])
        if not isinstance(checkpoint["optimizer"], list) or len(checkpoint["optimizer"]) != len(optimizers):
            raise ValueError("not one state per optimizer")
        for optimizer, state in zip(optimizers, checkpoint["optimizer"]):
            optimizer.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError, KeyError) as e:
        die(f"{path} does not fit this version of {SCRIPT}.py ({type(e).__name__}); train anew, or out_dir= another folder")
    return checkpoint["step"], checkpoint["val_loss"], checkpoint["history"]


def plot_losses(history, path):
    """Train and val loss against step, as a PNG; skipped if matplotlib is missing."""
    try:
        from matplotlib.figure import Figure  # no pyplot: leaves a notebook's own backend alone
    except ImportError:
        print("matplotlib is not installed: no loss plot")
        return
    steps, train, val = zip(*history)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(steps, train, label="train")
    ax.plot(steps, val, label="val")
    ax.set(xlabel="step", ylabel="loss (nats per token)")
    ax.set_title(f"{SCRIPT}.py " + " ".join(f"{k}={globals()[k]}" for k in MODEL_KEYS), fontsize=8)
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    print(f"loss curves saved to {path}")


def clock(seconds):
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


# ----------------------------------------------------------------------------- sampling
def sample(model, encode, decode, device, ctx=nullcontext()):
    """Continue the prompt `start` by max_new_tokens tokens, with dropout off (generate keeps no gradients)."""
    model.eval()
    idx = torch.tensor([encode(start)], dtype=torch.long, device=device)  # (1, T)
    with ctx:
        out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k or None)
    return decode(out[0].tolist())


# --------------------------------------------------------------------------------- main
def main():
    configure(sys.argv)
    torch.manual_seed(seed)
    device_type = device.split(":")[0]
    if device_type == "cuda":  # TF32 matmuls, bf16 autocast (or fp16 with a gradient scaler)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        ctx = torch.autocast("cuda", dtype=dtype)
    else:  # CPU and MPS train in float32
        dtype, ctx = torch.float32, nullcontext()
    if device_type == "cpu":
        keep_freed_memory()
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

    text = load_text(dataset)
    vocab = "".join(sorted(set(text)))
    encode, decode = make_tokenizer(vocab)
    missing = "".join(sorted(set(start) - set(vocab)))
    if missing:
        die(f"the prompt start={start!r} has characters that are not in the vocabulary of {dataset}: {missing!r}")
    data = torch.tensor(encode(text), dtype=torch.long)
    n = int(0.9 * len(data))
    splits = {"train": data[:n], "val": data[n:]}  # learn on the first 90 %, check on the rest
    if block_size >= len(splits["val"]):
        die(f"block_size={block_size} is longer than the validation text ({len(splits['val'])} tokens)")
    bpc = len(splits["val"]) / len(decode(splits["val"].tolist())) / math.log(2)  # nats/token -> bits/char

    model = BigramLanguageModel(len(vocab)).to(device)
    best = count_optimum(splits["train"], splits["val"], len(vocab))
    print(f"counting answer (add-one smoothed pair counts): val {best:.4f} | val bpc {best * bpc:.3f}")
    print(f"{SCRIPT}: device {device} | {sum(p.numel() for p in model.parameters()):,} parameters | "
          f"{dataset}: {len(text):,} characters, {len(data):,} tokens, vocabulary {len(vocab)}")
    matrices = [p for p in model.parameters() if p.dim() >= 2]  # weight decay on these only
    others = [p for p in model.parameters() if p.dim() < 2]
    optimizers = [torch.optim.AdamW([{"params": matrices, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}],
                                    lr=learning_rate, betas=(0.9, 0.95), fused=device_type in ("cuda", "cpu"))]
    path = os.path.join(out_dir, f"{SCRIPT}.pt")
    step, best_val, history = 0, float("inf"), []
    if resume or (max_iters == 0 and os.path.exists(path)):
        step, best_val, history = load_checkpoint(path, model, optimizers, vocab)
        print(f"loaded {path}: step {step}, val {best_val:.3f}")

    config = {k: globals()[k] for k in CONFIG_KEYS}
    t0 = last = time.time()
    first = last_step = step
    for step in range(step, max_iters + 1):
        if (step % eval_interval == 0 or step == max_iters) and not (step == first and history):  # not twice on resume
            now = time.time()
            speed = (step - last_step) * batch_size * block_size / max(now - last, 1e-9)
            losses = estimate_loss(model, splits, eval_iters, batch_size, block_size, device, ctx)
            left = (now - t0) / max(1, step - first) * (max_iters - step)
            print(f"step {step}/{max_iters} | train {losses['train']:.4f} | val {losses['val']:.4f} | "
                  f"val bpc {losses['val'] * bpc:.3f} | {speed:,.0f} tok/s | {clock(now - t0)} | {clock(left)} left",
                  flush=True)
            history.append((step, losses["train"], losses["val"]))
            if step > first and (losses["val"] < best_val or step == max_iters):  # an untrained model is not saved
                best_val = min(best_val, losses["val"])
                save_checkpoint(path, {"model": model.state_dict(), "optimizer": [o.state_dict() for o in optimizers],
                                       "config": config, "vocab": vocab, "step": step,
                                       "val_loss": losses["val"], "history": history})
            last, last_step = time.time(), step
        if step == max_iters:
            break
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group["lr"] = get_lr(step)
        x, y = get_batch(splits["train"], batch_size, block_size, device)
        with ctx:
            _, loss = model(x, y)
        scaler.scale(loss).backward()
        if grad_clip:
            for optimizer in optimizers:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        for optimizer in optimizers:
            scaler.step(optimizer)
            optimizer.zero_grad(set_to_none=True)
        scaler.update()
    if len(history) > 1:
        plot_losses(history, os.path.join(out_dir, f"{SCRIPT}_loss.png"))
    print(f"--- sample, prompt {start!r}, temperature {temperature} ---")
    print(sample(model, encode, decode, device, ctx))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C: checkpoints are written whole or not at all, so what is saved is good
        die(f"interrupted; the last checkpoint saved, if any, is in {out_dir}/", 130)
