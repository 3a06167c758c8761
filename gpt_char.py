"""
Step 2 of "Let's build GPT": a GPT that writes one character at a time.

The bigram model of step 1 looked at one character to guess the next. Here every position
looks back at all the characters before it through causal self-attention, and a stack of
pre-norm Transformer blocks (attention, then an MLP, each on a residual path) turns that
into a guess. Trained on tinyshakespeare (or Cicero's letters, dataset=atticus), with Muon
for the weight matrices inside the blocks and AdamW for the rest, as nanochat does.

Run:   python gpt_char.py                        tinyshakespeare, sized to this machine
       python gpt_char.py dataset=atticus        Cicero's Letters to Atticus
       python gpt_char.py max_iters=500 n_layer=4    any global below, as name=value
       python gpt_char.py max_iters=0            only sample from out/gpt_char.pt

Expect (measured on 2 CPU cores, README.md): the CPU defaults (4 layers x 4 heads x 96
wide, context 64, batch 32, 2,100 steps) reach val loss 1.547 (2.23 bits per character,
the whole validation split) on tinyshakespeare in 257 s, and write something like a play.
On a GPU the defaults are the lecture's 6 layers x 6 heads x 384 wide, context 256, 5,000
steps (not measured yet).
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
_gpu = device != "cpu"  # a GPU gets the lecture's model; a CPU a smaller one that ends in minutes
dataset = "shakespeare"  # shakespeare | atticus
batch_size = 64 if _gpu else 32  # sequences per step
block_size = 256 if _gpu else 64  # context length, in characters
n_layer = 6 if _gpu else 4  # Transformer blocks
n_head = 6 if _gpu else 4  # attention heads per block; must divide n_embd
n_embd = 384 if _gpu else 96  # width of the residual stream
dropout = 0.2 if _gpu else 0.0  # on the residual and MLP outputs, 0 to <1
max_iters = 5000 if _gpu else 2100  # optimizer steps
eval_interval = 500 if _gpu else 700  # steps between evaluations (and checkpoints)
eval_iters = 200 if _gpu else 25  # train batches per loss estimate (val: the whole split)
learning_rate = 1e-3 if _gpu else 7e-3  # peak, after warm-up (Muon and AdamW alike)
min_lr = 1e-4 if _gpu else 0.0  # reached at max_iters by cosine decay
warmup_iters = 100  # steps of linear warm-up
weight_decay = 0.1  # on matrices only
grad_clip = 1.0  # clip the gradient norm to this; 0 = off
seed = 1337  # same seed and device, same losses
out_dir = "out"  # checkpoint and pictures go here
resume = False  # continue training from out_dir/gpt_char.pt
start = "\n"  # the prompt the sample continues
max_new_tokens = 500  # length of the sample, in characters
temperature = 0.8  # < 1 sharper, > 1 wilder; 0 = always the likeliest
top_k = 0  # sample among the k likeliest only; 0 = all

# ------------------------------------------------------------------------ configuration
CONFIG_KEYS = [k for k, v in globals().items() if not k.startswith("_") and type(v) in (bool, int, float, str)]
SCRIPT = "gpt_char"
MODEL_KEYS = ("dataset", "block_size", "n_embd", "n_head", "n_layer")  # a checkpoint must share these


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
        (min(batch_size, block_size, n_layer, n_head, n_embd, eval_interval, eval_iters) > 0,
         "batch_size, block_size, n_layer, n_head, n_embd, eval_interval and eval_iters must be positive"),
        (n_embd % n_head == 0, f"n_embd={n_embd} is not divisible by n_head={n_head}"),
        (0 <= dropout < 1, f"dropout={dropout} is not in [0, 1)"),
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
class Dropout(nn.Dropout):
    """nn.Dropout, but its backward keeps a 1-byte mask: on the CPU nn.Dropout keeps a 4-byte one (and is slower)."""

    def forward(self, x):
        return torch.native_dropout(x, self.p, True)[0] if self.training and self.p > 0 else x


class CausalSelfAttention(nn.Module):
    """All heads at once: one projection makes every head's query, key and value."""

    def __init__(self, n_embd, n_head, dropout):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.dropout = Dropout(dropout)
        self.keep_weights = False  # True: the explicit path, which keeps the attention in .weights

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # each (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if self.keep_weights:
            att = q @ k.transpose(-2, -1) / math.sqrt(k.size(-1))  # (B, nh, T, T), scaled by 1/sqrt(head size)
            future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
            self.weights = att.masked_fill(future, float("-inf")).softmax(dim=-1)  # no token sees the future
            y = self.weights @ v  # (B, nh, T, hs)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # the same, fused, never forms (T, T)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, n_embd, dropout):
        super().__init__()
        self.fc = nn.Linear(n_embd, 4 * n_embd)
        self.proj = nn.Linear(4 * n_embd, n_embd)
        self.dropout = Dropout(dropout)

    def forward(self, x):
        h = F.relu(self.fc(x))  # (B, T, 4C)
        return self.dropout(self.proj(h))  # (B, T, C)


class Block(nn.Module):
    """Communication (attention) then computation (MLP), each pre-norm on a residual path."""

    def __init__(self, n_embd, n_head, dropout):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd, dropout)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab_size, block_size, n_embd, n_head, n_layer, dropout):
        super().__init__()
        self.block_size = block_size
        self.token_embedding = nn.Embedding(vocab_size, n_embd)
        self.position_embedding = nn.Embedding(block_size, n_embd)
        self.drop = Dropout(dropout)
        self.blocks = nn.Sequential(*[Block(n_embd, n_head, dropout) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.token_embedding.weight  # tied, as in GPT-2: one matrix reads and writes tokens
        for name, p in self.named_parameters():  # GPT-2's initialisation
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 2:  # residual projections shrunk so the residual stream keeps its scale
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer) if name.endswith("proj.weight") else 0.02)

    def forward(self, idx, targets=None):
        B, T = idx.shape
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.token_embedding(idx) + self.position_embedding(pos))  # (B, T, C)
        logits = self.lm_head(self.ln_f(self.blocks(x)))  # (B, T, vocab_size)
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


# ---------------------------------------------------------------------------- optimizer
def orthogonalize(G, steps=5):
    """A batch of matrices G -> about U V^T of each one's SVD (singular values near 1), by Newton-Schulz steps."""
    if G.size(-2) > G.size(-1):
        return orthogonalize(G.mT, steps).mT  # iterate on the wide side, where X @ X^T is the small product
    a, b, c = 3.4445, -4.7750, 2.0315  # a quintic chosen to push all singular values towards 1 in 5 steps
    X = G / (G.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # singular values now at most 1
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return X


class Muon(torch.optim.Optimizer):
    """Muon (K. Jordan, 2024) for the weight matrices inside the blocks: momentum, then each matrix's update
    orthogonalised, so that it moves every direction of the matrix about as far. The update is scaled to
    AdamW's typical size (0.2 sqrt(max side), as Moonshot's Moonlight does), so both take the same learning rate."""

    def __init__(self, params, lr, momentum=0.95, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            by_shape = {}  # the same matrix of every block, orthogonalised together
            for p in group["params"]:
                by_shape.setdefault(p.shape, []).append(p)
            for shape, params in by_shape.items():
                grads = torch.stack([p.grad for p in params])
                state = self.state[params[0]]
                if "momentum" not in state:
                    state["momentum"] = torch.zeros_like(grads)
                state["momentum"].mul_(group["momentum"]).add_(grads)
                update = orthogonalize(grads.add_(state["momentum"], alpha=group["momentum"]))  # Nesterov
                for p, u in zip(params, update):
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_(u, alpha=-group["lr"] * 0.2 * max(shape) ** 0.5)


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

    model = GPT(len(vocab), block_size, n_embd, n_head, n_layer, dropout).to(device)
    print(f"{SCRIPT}: device {device} | {sum(p.numel() for p in model.parameters()):,} parameters | "
          f"{dataset}: {len(text):,} characters, {len(data):,} tokens, vocabulary {len(vocab)}")
    in_blocks = [p for name, p in model.named_parameters() if name.startswith("blocks.") and p.dim() == 2]
    matrices = [p for name, p in model.named_parameters() if not name.startswith("blocks.") and p.dim() == 2]
    others = [p for p in model.parameters() if p.dim() < 2]  # biases and norms: no weight decay
    optimizers = [Muon(in_blocks, lr=learning_rate, weight_decay=weight_decay),
                  torch.optim.AdamW([{"params": matrices, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}],
                                    lr=learning_rate, betas=(0.9, 0.99), fused=device_type in ("cuda", "cpu"))]
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
