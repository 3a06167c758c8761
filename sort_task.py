"""
Step 4 of "Let's build GPT": the same GPT learns to sort digits.

A task with one right answer shows what a Transformer can learn, and lets us check it
exactly. The model reads a sequence of digits followed by the same digits sorted,
`2 0 1 1 0 2 | 0 0 1 1 2 2`, and learns to predict each next token; only the sorted half
is scored (the input is random, there is nothing to learn in it). A quarter of all inputs
is held out by a stable hash and never trained on; after training the model writes the
sorted half of each of them alone, greedily, and must get every digit right. Last, it
shows where the last block's heads look while they sort.

Run:   python sort_task.py                              6 digits from {0, 1, 2}
       python sort_task.py length=12 num_digits=10 n_layer=3 n_embd=128 max_iters=1200 eval_interval=600 min_lr=3e-5
       python sort_task.py start=210210                 after training, sort this one

Expect (measured on 2 CPU cores, README.md): the default sorts all 193 held-out inputs
right in 23 s; the length-12 command above all of 2,000 held-out inputs in 171 s.
"""

import ctypes
import hashlib
import itertools
import math
import os
import sys
import time
from contextlib import nullcontext

import torch
import torch.nn as nn
from torch.nn import functional as F

# ---------------------------------------------------------------------- hyperparameters
device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
length = 6  # digits per sequence to sort
num_digits = 3  # the digits are 0 .. num_digits-1, at most 10
batch_size = 64  # sequences per step
n_layer = 2  # Transformer blocks
n_head = 4  # attention heads per block; must divide n_embd
n_embd = 64  # width of the residual stream
dropout = 0.0  # on the residual and MLP outputs, 0 to <1
max_iters = 600  # optimizer steps
eval_interval = 200  # steps between evaluations (and checkpoints)
eval_iters = 10  # batches per loss estimate
learning_rate = 3e-3  # peak, after warm-up (Muon and AdamW alike)
min_lr = 3e-4  # reached at max_iters by cosine decay
warmup_iters = 50  # steps of linear warm-up
weight_decay = 0.1  # on matrices only
grad_clip = 1.0  # clip the gradient norm to this; 0 = off
seed = 1337  # same seed and device, same losses
out_dir = "out"  # checkpoint and pictures go here
resume = False  # continue training from out_dir/sort_task.pt
start = ""  # digits to sort after training, e.g. 210210; empty = a held-out example

# ------------------------------------------------------------------------ configuration
CONFIG_KEYS = [k for k, v in globals().items() if not k.startswith("_") and type(v) in (bool, int, float, str)]
SCRIPT = "sort_task"
MODEL_KEYS = ("length", "num_digits", "n_embd", "n_head", "n_layer")  # a checkpoint must share these


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
        (device.split(":")[0] in ("cpu", "cuda", "mps"), f"device={device!r} is not cpu, cuda or mps"),
        (not device.startswith("cuda") or torch.cuda.is_available(), "device=cuda but no CUDA GPU is available"),
        (device != "mps" or torch.backends.mps.is_available(), "device=mps but MPS is not available"),
        (length > 0 and 2 <= num_digits <= 10, "length must be positive and num_digits from 2 to 10"),
        (min(batch_size, n_layer, n_head, n_embd, eval_interval, eval_iters) > 0,
         "batch_size, n_layer, n_head, n_embd, eval_interval and eval_iters must be positive"),
        (n_embd % n_head == 0, f"n_embd={n_embd} is not divisible by n_head={n_head}"),
        (0 <= dropout < 1, f"dropout={dropout} is not in [0, 1)"),
        (max_iters >= 0, "max_iters must be >= 0"),
        (learning_rate > 0 and 0 <= min_lr <= learning_rate, "learning_rate must be > 0 and min_lr in [0, learning_rate]"),
        (warmup_iters >= 0 and grad_clip >= 0, "warmup_iters and grad_clip must be >= 0"),
        (start == "" or (len(start) == length and all(c in "0123456789"[:num_digits] for c in start)),
         f"start={start!r} is not {length} digits from 0 to {num_digits - 1}"),
    ] if not ok]


# --------------------------------------------------------------------------------- data
def held_out(digits):
    """Whether an input (a list of digits) is in the held-out quarter. hashlib, unlike hash(), is the same every run."""
    return hashlib.sha256(bytes(digits)).digest()[0] % 4 == 0


def random_inputs(n, generator=None):
    """n random inputs (n, length); the first half use only a few distinct digits, so repeats are common."""
    inputs = torch.randint(num_digits, (n, length), generator=generator)
    few = torch.randint(num_digits, (n // 2, max(1, length // 3)), generator=generator)  # each row's few digits
    inputs[: n // 2] = few.gather(1, torch.randint(few.size(1), (n // 2, length), generator=generator))
    return inputs


def input_set(held, n_max=2000):
    """Inputs of one side of the split: all of them if the space is small, else n_max drawn at random."""
    if num_digits ** length <= 50 * n_max:
        inputs = [list(t) for t in itertools.product(range(num_digits), repeat=length)]
        return torch.tensor([x for x in inputs if held_out(x) == held])
    generator, found = torch.Generator().manual_seed(seed), {}  # a dict keeps the order of the draws
    while len(found) < n_max:
        found.update((tuple(x), None) for x in torch.randint(num_digits, (n_max, length), generator=generator).tolist()
                     if held_out(x) == held)
    return torch.tensor(list(found)[:n_max])


def examples(inputs):
    """Inputs (B, length) -> the model's inputs x and targets y, each (B, 2*length-1).

    [1, 2, 1, 0, 1] -> x = [1, 2, 1, 0, 1, 0, 1, 1, 1], y = [-1, -1, -1, -1, 0, 1, 1, 1, 2]:
    the sequence is input + sorted(input); y is x shifted by one, and -1 (not scored) where
    the next token is still part of the random input.
    """
    sequence = torch.cat([inputs, inputs.sort(dim=1).values], dim=1)  # (B, 2*length)
    x, y = sequence[:, :-1], sequence[:, 1:].clone()
    y[:, : length - 1] = -1
    return x, y


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
def get_batch(held, batch_size, block_size, device, generator=None):
    """batch_size examples of block_size tokens, from one side of the split only (held: the held-out side)."""
    rows = []
    while len(rows) < batch_size:
        rows += [x for x in random_inputs(batch_size, generator).tolist() if held_out(x) == held]
    x, y = examples(torch.tensor(rows[:batch_size]))
    assert x.size(1) == block_size, "an example is the input and its sorted copy, less the last digit"
    return x.to(device), y.to(device)


@torch.no_grad()
def estimate_loss(model, splits, eval_iters, batch_size, block_size, device, ctx=nullcontext()):
    """Mean loss over eval_iters batches of each split; the same batches at every call."""
    model.eval()
    out = {}
    for name, data in splits.items():
        generator = torch.Generator().manual_seed(seed)
        total = 0.0
        for _ in range(eval_iters):
            x, y = get_batch(data, batch_size, block_size, device, generator)
            with ctx:
                total += model(x, y)[1].item()
        out[name] = total / eval_iters
    model.train()
    return out


@torch.no_grad()
def sort_accuracy(model, inputs, device):
    """Exact-match rate of greedy generation from the input alone (no teacher forcing), and the mistakes."""
    model.eval()
    out = model.generate(inputs.to(device), length, temperature=0)[:, length:].cpu()
    model.train()
    right = (out == inputs.sort(dim=1).values).all(dim=1)
    mistakes = [(x, y) for x, y, ok in zip(inputs.tolist(), out.tolist(), right.tolist()) if not ok]
    return right.float().mean().item(), mistakes


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
@torch.no_grad()
def show_attention(model, x, decode, path):
    """The last block's attention while it reads x (1, T): a text heat map per head, and a picture."""
    model.eval()
    attn = model.blocks[-1].attn
    attn.keep_weights = True  # the explicit path, which keeps the weights
    model(x)
    attn.keep_weights = False
    weights = attn.weights[0].cpu()  # (n_head, T, T)
    labels = decode(x[0].tolist())
    row = length + length // 2 - 1  # this position writes the middle digit of the sorted half
    shades = " .:-=+*#%@"  # weight 0 .. 1
    print(f"last block's attention while sorting {labels[:length]}: row t attends to columns 0..t, "
          f"shade = weight ({shades!r} = 0 .. 1)")
    for h in range(weights.size(0)):
        print(f"head {h}   " + " ".join(labels))
        for t, label in enumerate(labels):
            print(f"{'->' if t == row else '  '} {t:2d} {label}  " + " ".join(shades[min(9, int(10 * w))] for w in weights[h, t]))
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print("matplotlib is not installed: no attention picture")
        return
    fig = Figure(figsize=(3 * (weights.size(0) + 1), 3.2))
    axes = fig.subplots(1, weights.size(0) + 1)
    ticks = dict(xticks=range(len(labels)), xticklabels=list(labels))
    for h, ax in enumerate(axes[:-1]):
        ax.imshow(weights[h].numpy(), cmap="viridis", vmin=0, vmax=1)
        ax.set(title=f"head {h}", yticks=range(len(labels)), yticklabels=list(labels), **ticks)
    for h in range(weights.size(0)):
        axes[-1].plot(weights[h, row].numpy(), marker="o", label=f"head {h}")
    axes[-1].set(title=f"position {row} (writes digit {length // 2 + 1})", ylim=(0, 1), **ticks)
    axes[-1].legend(fontsize=7)
    fig.suptitle(f"last block's attention, sorting {labels[:length]}")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    print(f"attention picture saved to {path}")


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

    vocab = "0123456789"[:num_digits]
    encode, decode = make_tokenizer(vocab)
    splits = {"train": False, "val": True}  # which side of the hash split each draws from
    tests = {"held-out": input_set(held=True), "train": input_set(held=False)}
    if min(len(inputs) for inputs in tests.values()) < 2:
        die(f"length={length} num_digits={num_digits} has too few inputs to hold a quarter out; make them larger")

    block_size = 2 * length - 1  # an example: the input, then its sorted copy less the last digit
    model = GPT(len(vocab), block_size, n_embd, n_head, n_layer, dropout).to(device)
    print(f"{SCRIPT}: device {device} | {sum(p.numel() for p in model.parameters()):,} parameters | "
          f"sorting {length} digits from 0-{num_digits - 1}: {num_digits ** length:,} inputs, a quarter held out; "
          f"judged on {len(tests['held-out']):,} held-out inputs")
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
            accuracy, _ = sort_accuracy(model, tests["held-out"], device)
            left = (now - t0) / max(1, step - first) * (max_iters - step)
            print(f"step {step}/{max_iters} | train {losses['train']:.4f} | val {losses['val']:.4f} | "
                  f"held-out sorted {accuracy:.1%} | {speed:,.0f} tok/s | {clock(now - t0)} | {clock(left)} left",
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

    for name, inputs in tests.items():  # greedy generation, exact match of the whole sorted half
        accuracy, mistakes = sort_accuracy(model, inputs, device)
        print(f"{name}: {accuracy:.2%} of {len(inputs):,} inputs sorted exactly right")
        for digits, out in mistakes[:5]:
            print(f"  mistake: {decode(digits)} -> {decode(out)} (right: {decode(sorted(digits))})")
    held = tests["held-out"].tolist()  # default example: a held-out input with as many distinct digits as any
    digits = encode(start) if start else max(held, key=lambda x: (len(set(x)), x != sorted(x)))
    model.eval()
    x = model.generate(torch.tensor([digits], device=device), length, temperature=0)  # (1, 2*length)
    print(f"--- sample: the model sorts {decode(digits)} into {decode(x[0, length:].tolist())} ---")
    show_attention(model, x[:, :-1], decode, os.path.join(out_dir, f"{SCRIPT}_attention.png"))

if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C: checkpoints are written whole or not at all, so what is saved is good
        die(f"interrupted; the last checkpoint saved, if any, is in {out_dir}/", 130)
