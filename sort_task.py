"""
Step 4 of "Let's build GPT": step 3's GPT learns to sort digits.

A task with one right answer shows what a Transformer can learn, and lets us check it exactly. The model
reads digits, then the same digits sorted (3 0 4 1 0 3 | 0 0 1 3 3 4), and learns to predict each next
token; only the sorted half is scored, since the input is random. A quarter of the multisets of digits
(so of the answers) is held out, never trained on. After training the model writes the sorted half of
each held-out input alone, greedily, and must get every digit right; then it shows where the last
block's heads look while they sort.

Run:   python sort_task.py                            6 digits from 0-4
       python sort_task.py max_iters=0 start=210410   sort these with the trained model
       python sort_task.py --help                     every setting, its value here and its meaning
12 digits from 0-9:
 python sort_task.py length=12 num_digits=10 n_layer=3 n_embd=128 max_iters=1200 eval_interval=600 min_lr=3e-5

Expect: all 2,730 held-out inputs sorted right (seeds 0 to 4 and 1337), in 37 to 50 s on 2 cores of an
AMD EPYC CPU.
"""

import hashlib
import itertools
import math
from contextlib import nullcontext

import torch
import torch.nn as nn
from torch.nn import functional as F

# hyperparameters: the task, step 3's GPT ---------------------------
length = 6  # digits to sort
num_digits = 5  # the digits are 0 .. num_digits-1, 2 to 10 of them
batch_size = 128  # sequences per step
max_iters = 1000  # steps of the optimizers
eval_interval = 250  # steps between evaluations, and checkpoints
learning_rate = 3e-3  # the peak, after warm-up: Muon's and AdamW's
device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
eval_iters = 10  # batches per loss estimate
n_embd = 64  # the width of each position's vector
n_head = 4  # heads per block, each n_embd // n_head wide
n_layer = 2  # blocks
dropout = 0.1  # the share zeroed while training, 0 to < 1
# ... step 3's changes, each with the value that takes it back
min_lr = 0.0  # where cosine decay ends, at max_iters; = learning_rate: constant
warmup_iters = 50  # steps of linear warm-up; 0: none
grad_clip = 1.0  # the largest gradient norm; 0: no clipping
optimizer = "muon"  # muon: Muon for the blocks' matrices, AdamW the rest | adamw: AdamW for all
weight_decay = 0.1  # on matrices only
tie = True  # the output layer is the token embedding's matrix; false: a matrix of its own
init = "gpt2"  # gpt2: normal(0, 0.02), projections to the residual smaller | pytorch: PyTorch's
# ... and the run's
seed = 1337  # same seed and device, same losses
log_interval = 50  # steps between progress lines
out_dir = "out"  # for the checkpoint and the pictures
resume = False  # go on from out_dir/sort_task.pt
start = ""  # digits to sort after training, e.g. 210210; empty: a held-out input

# data --------------------------------------------------------------
def held_out(digits):
    """Whether an input (a list of digits) is held out: its multiset, so its sorted answer, is in a quarter
    chosen by hashlib (the same in every run, unlike hash()). No held-out answer is ever a training target."""
    return hashlib.sha256(bytes(sorted(digits))).digest()[0] % 4 == 0

def random_inputs(n, generator=None):
    """n random inputs (n, length); the first half use only a few distinct digits, so repeats are common."""
    inputs = torch.randint(num_digits, (n, length), generator=generator)
    few = torch.randint(num_digits, (n // 2, max(1, length // 3)), generator=generator)  # a row's few digits
    inputs[: n // 2] = few.gather(1, torch.randint(few.size(1), (n // 2, length), generator=generator))
    return inputs

def input_set(held, n_max=2000):
    """Inputs of one side of the split: all of them if there are few, else n_max drawn at random."""
    if num_digits ** length <= 50 * n_max:
        inputs = [list(t) for t in itertools.product(range(num_digits), repeat=length)]
        return torch.tensor([x for x in inputs if held_out(x) == held])
    generator, found = torch.Generator().manual_seed(seed), {}  # a dict keeps the order of the draws
    for _ in range(100):  # enough draws for any split with a few multisets on each side
        drawn = torch.randint(num_digits, (n_max, length), generator=generator).tolist()
        found.update((tuple(x), None) for x in drawn if held_out(x) == held)
        if len(found) >= n_max:
            break
    return torch.tensor(list(found)[:n_max])

def examples(inputs):
    """Inputs (B, length) -> the model's inputs x and targets y, each (B, 2*length-1).

    [1, 2, 1, 0, 1] -> x = [1, 2, 1, 0, 1, 0, 1, 1, 1], y = [-100, -100, -100, -100, 0, 1, 1, 1, 2]:
    the sequence is input + sorted(input); y is x shifted by one, and -100 (not scored) where the next
    token is still part of the random input.
    """
    sequence = torch.cat([inputs, inputs.sort(dim=1).values], dim=1)  # (B, 2*length)
    x, y = sequence[:, :-1], sequence[:, 1:].clone()
    y[:, : length - 1] = -100  # cross_entropy's ignore_index
    return x, y

def encode(s):  # a digit is its own token: "2104" -> [2, 1, 0, 4]
    return [int(c) for c in s]

def decode(ids):  # [2, 1, 0, 4] -> "2104"
    return "".join(map(str, ids))

# model -------------------------------------------------------------
class CausalSelfAttention(nn.Module):
    """Step 2's MultiHeadAttention, all heads at once: one projection makes every head's query, key and
    value, and one fused kernel attends, never forming a (T, T) wei: far less memory, and faster. No
    dropout on the attention weights (GPT-2 has one): with it, the kernel falls back to forming them."""

    def __init__(self, n_embd, n_head, dropout):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)  # the heads' queries, keys and values, side by side
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # each (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # B,h,T,hs
        # softmax(q @ k^T / sqrt(hs), the future masked) @ v: what each Head computes, every head at once
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # the heads side by side again, as torch.cat did
        return self.resid_dropout(self.c_proj(y))

class MLP(nn.Module):
    """Step 2's FeedFoward."""

    def __init__(self, n_embd, dropout):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.c_proj = nn.Linear(4 * n_embd, n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.relu(self.c_fc(x))))

class Block(nn.Module):
    """Step 2's Block: communication, then computation, each on the residual path after a layer norm."""

    def __init__(self, n_embd, n_head, dropout):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd, dropout)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x

class GPT(nn.Module):

    def __init__(self, vocab_size, block_size, n_embd, n_head, n_layer, dropout):
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, n_embd)  # token embedding
        self.wpe = nn.Embedding(block_size, n_embd)  # position embedding
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*[Block(n_embd, n_head, dropout) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        if tie:  # one matrix reads the tokens in and writes them out, as in GPT-2: fewer to learn
            self.lm_head.weight = self.wte.weight
        for name, p in self.named_parameters() if init == "gpt2" else []:  # GPT-2's initialisation:
            if p.dim() == 2:  # small weights, and those that add to the residual stream smaller still,
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)  # so that it keeps its scale however many blocks add to it
            else:
                nn.init.zeros_(p) if name.endswith("bias") else None

    def forward(self, idx, targets=None):
        B, T = idx.shape
        x = self.drop(self.wte(idx) + self.wpe(torch.arange(T, device=idx.device)))  # (B, T, C)
        logits = self.lm_head(self.ln_f(self.blocks(x)))  # (B, T, vocab_size)
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=0):
        """idx (B, T) and max_new_tokens more, each fed back in; temperature 0: the likeliest."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.block_size:])  # at most block_size tokens of context
            logits = logits[:, -1, :].float()  # (B, vocab_size): the last position's, in float32
            if temperature == 0:
                idx_next = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k:  # only the top_k likeliest may be drawn
                    kth = torch.topk(logits, min(top_k, logits.size(-1)))[0][:, [-1]]
                    logits[logits < kth] = -float("inf")
                idx_next = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)  # (B, 1)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx

# optimizer ---------------------------------------------------------
def orthogonalize(G, steps=5):
    """A batch of matrices G -> about U V^T of each one's SVD (singular values near 1), by Newton-Schulz."""
    if G.size(-2) > G.size(-1):
        return orthogonalize(G.mT, steps).mT  # iterate on the wide side, where X @ X^T is the small product
    a, b, c = 3.4445, -4.7750, 2.0315  # a quintic that pushes all singular values towards 1 in 5 steps
    X = G / (G.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # singular values now at most 1
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return X

class Muon(torch.optim.Optimizer):
    """Muon (K. Jordan, 2024), as nanochat uses it: momentum, then each matrix's update orthogonalised, so
    that it moves every direction of the matrix about as far. Scaled to AdamW's typical update (0.2
    sqrt(larger side), as in Moonshot's Moonlight), so that both take the same learning rate. Written out:
    torch.optim.Muon's Newton-Schulz runs in bf16, ten times slower on a CPU without AVX-512."""

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

def make_optimizers(model):
    """optimizer=muon: Muon for the matrices inside the blocks, AdamW for the rest (embeddings, biases,
    norms); optimizer=adamw: AdamW for all. Weight decay on matrices only, as in GPT-2."""
    muon = [p for name, p in model.named_parameters() if name.startswith("blocks.") and p.dim() == 2]
    muon = muon if optimizer == "muon" else []
    matrices = [p for p in model.parameters() if p.dim() == 2 and all(p is not m for m in muon)]
    others = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}]
    adamw = torch.optim.AdamW(groups, lr=learning_rate, betas=(0.9, 0.99), fused=device != "mps")
    return [Muon(muon, lr=learning_rate, weight_decay=weight_decay), adamw] if muon else [adamw]

# training ----------------------------------------------------------
def get_batch(split, generator=None):
    """batch_size examples of one side of the split: "train", or "val" (the held-out multisets)."""
    rows = []
    while len(rows) < batch_size:
        rows += [x for x in random_inputs(batch_size, generator).tolist() if held_out(x) == (split == "val")]
    x, y = examples(torch.tensor(rows[:batch_size]))
    return x.to(device), y.to(device)

@torch.no_grad()
def estimate_loss(model):
    """The mean loss of eval_iters batches of each side of the split: the same batches at every call."""
    out = {}
    model.eval()
    for split in ("train", "val"):
        generator = torch.Generator().manual_seed(seed)
        losses = [model(*get_batch(split, generator))[1].item() for _ in range(eval_iters)]
        out[split] = sum(losses) / eval_iters
    model.train()
    return out

@torch.no_grad()
def sort_accuracy(model, inputs):
    """Exact-match rate of greedy generation from the input alone (no teacher forcing), and the mistakes."""
    model.eval()
    out = model.generate(inputs.to(device), length, temperature=0)[:, length:].cpu()
    right = (out == inputs.sort(dim=1).values).all(dim=1)
    mistakes = [(x, y) for x, y, ok in zip(inputs.tolist(), out.tolist(), right.tolist()) if not ok]
    model.train()
    return right.float().mean().item(), mistakes

def get_lr(step):
    """Linear warm-up to learning_rate, then cosine decay to min_lr at max_iters."""
    if step < warmup_iters:
        return learning_rate * (step + 1) / warmup_iters
    progress = min(1.0, (step - warmup_iters) / max(1, max_iters - warmup_iters))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (learning_rate - min_lr)

def autocast():
    """On a CUDA GPU the forward pass in 16 bits: bf16 where the GPU has it (compute capability 8.0 on),
    else fp16, with a scaler that keeps small gradients from rounding to 0 (a T4). Float32 elsewhere."""
    dtype = None
    if device.startswith("cuda"):
        dtype = torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
    ctx = torch.autocast("cuda", dtype=dtype) if dtype else nullcontext()
    return ctx, torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

def train(model, optimizers, held, run):
    """Step 3's loop; an evaluation also sorts the held-out inputs."""
    ctx, scaler = autocast()
    for iter in range(run.step, max_iters + 1):
        if (iter % eval_interval == 0 or iter == max_iters) and iter != run.resumed:
            run.evaluating(iter)
            accuracy, _ = sort_accuracy(model, held)
            with ctx:
                losses = estimate_loss(model)
            run.evaluated(iter, losses, f"held-out sorted {accuracy:.2%}")
        if iter == max_iters:
            break
        torch.manual_seed(seed + 1_000_003 * iter)  # the step's batch and dropout, from seed and step alone
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group["lr"] = get_lr(iter)
        xb, yb = get_batch("train")
        with ctx:
            logits, loss = model(xb, yb)
        scaler.scale(loss).backward()  # in fp16, scaled up first
        for optimizer in optimizers:
            scaler.unscale_(optimizer)
        if nn.utils.clip_grad_norm_(model.parameters(), grad_clip or math.inf).isfinite():  # clipped
            for optimizer in optimizers:  # an inf or nan in fp16: no optimizer steps, and the scale drops
                scaler.step(optimizer)
        scaler.update()
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        run.stepped(iter + 1, loss, xb.numel())

# sampling ----------------------------------------------------------
@torch.no_grad()
def last_block_attention(model, idx):
    """What each head of the last block attends to while reading idx (1, T): softmax(q k^T / sqrt(hs)),
    the future masked, of the queries and keys it makes of its input. (n_head, T, T), rows sum to 1."""
    model.eval()
    attn, seen = model.blocks[-1].attn, []
    hook = attn.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    model(idx)
    hook.remove()
    B, T, C = seen[0].shape
    q, k, _ = attn.c_attn(seen[0]).split(C, dim=2)
    q, k = (t.view(B, T, attn.n_head, C // attn.n_head).transpose(1, 2) for t in (q, k))  # (B, nh, T, hs)
    wei = q @ k.transpose(-2, -1) / math.sqrt(C // attn.n_head)
    future = torch.ones(T, T, dtype=torch.bool, device=idx.device).triu(1)
    return wei.masked_fill(future, float("-inf")).softmax(dim=-1)[0].cpu()

def print_attention(weights, labels, row):
    """The attention as text, a shade per weight: ' ' is 0 (the future), '.' up to 1/9, ... '@' up to 1."""
    shades = " .:-=+*#%@"
    print(f"the last block's attention while sorting {labels[:length]}: row t attends to 0..t, each weight a "
          f"shade\nof {shades!r} from 0 to 1; -> marks the row that writes the middle digit")
    for h in range(len(weights)):
        print(f"head {h}   " + " ".join(labels))
        for t, label in enumerate(labels):
            marks = " ".join(shades[math.ceil(9 * w)] for w in weights[h, t].tolist())
            print(f"{'->' if t == row else '  '} {t:2d} {label}  {marks}")

# main --------------------------------------------------------------
def main():
    checkpoint = configure()  # these functions (configure, Run, draw_attention) are below main()
    torch.manual_seed(seed)
    held, seen = input_set(held=True), input_set(held=False)
    model = GPT(num_digits, 2 * length - 1, n_embd, n_head, n_layer, dropout).to(device)
    multisets = len({tuple(sorted(x)) for x in held.tolist()})
    print(f"{sum(p.numel() for p in model.parameters()):,} parameters | device {device} | sorting "
          f"{length} digits from 0-{num_digits - 1}: {num_digits ** length:,} inputs, "
          f"{math.comb(length + num_digits - 1, length):,} multisets")
    print(f"judged on {len(held):,} held-out inputs of {multisets:,} multisets, never trained on")
    optimizers = make_optimizers(model)
    run = Run(checkpoint, num_digits, model, *optimizers)
    if run.step < max_iters:
        train(model, optimizers, held, run)
        run.plot()
    for name, inputs in (("held-out", held), ("train inputs", seen)):  # greedy, the whole sorted half right
        accuracy, mistakes = sort_accuracy(model, inputs)
        print(f"{name}: {accuracy:.2%} of {len(inputs):,} inputs sorted exactly right")
        for digits, out in mistakes[:5]:
            print(f"  mistake: {decode(digits)} -> {decode(out)} (right: {decode(sorted(digits))})")
    digits = encode(start) if start else max(held.tolist(), key=lambda x: (len(set(x)), x != sorted(x)))
    x = model.generate(torch.tensor([digits], device=device), length, temperature=0)  # (1, 2*length)
    print(f"--- sample: the model sorts {decode(digits)} into {decode(x[0, length:].tolist())} ---")
    weights, labels = last_block_attention(model, x[:, :-1]), decode(x[0, :-1].tolist())
    print_attention(weights, labels, row=length + length // 2 - 1)  # this position writes the middle digit
    draw_attention(weights, labels)

# Plumbing ========= the same in every script: settings, data, checkpoints, progress, pictures, errors
import datetime, difflib, os, re, sys, tempfile, textwrap, time  # noqa: E401,E402

SCRIPT = "sort_task"
NOTEBOOK = "__file__" not in globals()  # pasted into a cell, whose text is IPython's In[-1]
SOURCE = globals().get("In", [""])[-1] if NOTEBOOK else open(__file__, encoding="utf-8").read()
DEFAULTS = {k: globals()[k] for k in re.findall(r"^([a-z]\w*) = ", SOURCE, re.M)}  # the hyperparameters
OWN = ("device", "out_dir", "resume")  # never taken from a checkpoint
KEPT = {}  # the step that out_dir/SCRIPT.pt keeps

def problems():  # what this script's settings cannot be
    multisets = itertools.combinations_with_replacement(range(num_digits), length)
    held = [held_out(m) for m in itertools.islice(multisets, 9999)]  # the first ones tell
    return [said for bad, said in [
        (length < 1 or not 2 <= num_digits <= 10, "length must be 1 or more, num_digits from 2 to 10"),
        (min(sum(held), len(held) - sum(held)) < 2,
         f"length={length} num_digits={num_digits}: too few multisets to hold a quarter out"),
        (min(batch_size, n_embd, n_head, eval_interval, eval_iters, log_interval) < 1,
         "batch_size, n_embd, n_head, eval_interval, eval_iters, log_interval: 1 or more"),
        (n_embd % max(1, n_head), f"n_embd={n_embd} is not divisible by n_head={n_head}"),
        (dropout >= 1, f"dropout={dropout} is not below 1"),
        (optimizer not in ("muon", "adamw") or init not in ("gpt2", "pytorch"),
         "optimizer= is muon or adamw, init= gpt2 or pytorch"),
        (min_lr > learning_rate, f"min_lr={min_lr} is above learning_rate={learning_rate}"),
        (start and (len(start) != length or not set(start) <= set("0123456789"[:num_digits])),
         f"start={start!r} is not {length} digits from 0 to {num_digits - 1}"),
    ] if bad]

def die(said, status=1):  # one sentence, and a non-zero exit status (in a notebook: the cell's error)
    if NOTEBOOK:
        raise Stopped(wrap(f"{SCRIPT}: {said}")) from None
    print(wrap(f"{SCRIPT}: {said}"), file=sys.stderr)
    sys.exit(status)

class Stopped(Exception):
    _render_traceback_ = lambda self: [str(self)]  # noqa: E731  what IPython shows: no traceback

def configure(**presets):  # sets the settings; returns the checkpoint to go on from, or None
    args = [] if NOTEBOOK else sys.argv[1:]
    given = dict(parse(arg) for arg in args if arg not in ("-h", "--help"))
    globals().update(given)  # first, as they choose the presets and whether a checkpoint is read
    checkpoint = load_checkpoint(f"{out_dir}/{SCRIPT}.pt") if resume or max_iters == 0 else None
    if checkpoint and not NOTEBOOK:  # its settings (a notebook's cell says every one itself)
        globals().update({k: v for k, v in checkpoint["config"].items() if k not in OWN})
    else:  # the presets that the settings name: device=cpu picks presets["device"]["cpu"], and so on
        for name, table in presets.items():
            globals().update(table.get(globals()[name], {}))
    globals().update(given)  # and over them, the values given
    if "-h" in args or "--help" in args:  # the settings as they would be, with their comments
        notes = dict(re.findall(r"^([a-z]\w*) = .*?  # (.*)$", SOURCE, re.M))
        print(__doc__.strip(), "\nSettings (name=value), as they would be here:", sep="\n")
        for k in DEFAULTS:
            print(wrap(f"  {f'{k}={globals()[k]!r}':<24} {notes.get(k, '')}"))
        sys.exit(0)
    said = problems() + [f"{k}={v} is below 0" for k, v in globals().items()
                         if k in DEFAULTS and not isinstance(v, str) and v < 0]
    if seed >= 2**62:  # each step's seed, seed + 1_000_003 * step, is a 64-bit number
        said.append(f"seed={seed} is not below 2**62")
    try:
        torch.empty(0, device=device)
    except Exception:
        said.append(f"device={device!r} is not a device of this machine")
    if said:
        die(said[0], 2)
    print(wrap(f"{SCRIPT}.py {changed(globals())}"))
    torch.backends.cuda.matmul.allow_tf32 = True  # on a CUDA GPU, TF32 matrix products: much faster
    return checkpoint

def parse(arg):  # 'name=value' -> (name, the value in the type of the default)
    name, equals, text = arg.lstrip("-").partition("=")
    if name not in DEFAULTS or not equals:
        close = difflib.get_close_matches(name, DEFAULTS, 1)
        die(f"unknown setting {arg!r}{f' (did you mean {close[0]}=...?)' if close else ''}: see --help", 2)
    kind = type(DEFAULTS[name])
    try:
        value = {"true": True, "false": False}[text.lower()] if kind is bool else kind(text)
        if kind is float and not math.isfinite(value):
            raise ValueError
    except (KeyError, ValueError):
        what = {bool: "true or false", int: "a whole number"}.get(kind, "a finite number")
        die(f"{name}={text!r} is not {what}", 2)
    return name, value

def wrap(line):  # in lines of at most 110 characters
    return textwrap.fill(line, 110, subsequent_indent="    ", break_long_words=False, break_on_hyphens=False)

def changed(settings):  # name=value for each setting not as above
    return " ".join(f"{k}={settings[k]!r}" for k in DEFAULTS if k not in OWN and settings[k] != DEFAULTS[k])

def clock(seconds):  # as hours:minutes:seconds
    return str(datetime.timedelta(seconds=round(seconds)))

def load_checkpoint(path):
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        if checkpoint["script"] == SCRIPT and set(checkpoint["config"]) == set(DEFAULTS):
            return checkpoint
    except Exception:  # none, truncated, foreign
        pass
    die(f"{'resume=true' if resume else 'max_iters=0'} needs a checkpoint of {SCRIPT}.py: {path} is not one")

class Run:
    """The run so far (its step and losses), its progress lines, its checkpoint out_dir/SCRIPT.pt."""

    def __init__(self, checkpoint, vocab, model, *optimizers):
        self.path, self.parts = f"{out_dir}/{SCRIPT}.pt", (vocab, model, optimizers)
        self.step, self.evals, self.losses = 0, [], []  # (step, train, val), (step, a batch's loss)
        if checkpoint:
            try:
                if checkpoint["vocab"] != vocab:
                    raise ValueError("its text had another vocabulary")
                model.load_state_dict(checkpoint["model"])
                for optimizer, state in zip(optimizers, checkpoint["optimizers"]):
                    now = optimizer.state_dict()["param_groups"]  # this run's learning rate, weight decay...
                    optimizer.load_state_dict({**state, "param_groups": now})
            except (ValueError, RuntimeError) as e:  # another text; other sizes
                why = e if isinstance(e, ValueError) else "other sizes"
                die(f"{self.path} does not fit ({why}); it was trained with {changed(checkpoint['config'])}")
            self.step, self.evals, self.losses = checkpoint["step"], checkpoint["evals"], checkpoint["losses"]
            print(f"loaded {self.path}: step {self.step}, val {self.evals[-1][2]:.4f}")
        elif os.path.exists(self.path):  # a new run: the last run's checkpoint is kept in previous/
            os.makedirs(f"{out_dir}/previous", exist_ok=True)
            os.replace(self.path, f"{out_dir}/previous/{SCRIPT}.pt")
            print(f"(the last run's checkpoint is now {out_dir}/previous/{SCRIPT}.pt)")
        os.makedirs(out_dir, exist_ok=True)
        tempfile.TemporaryFile(dir=out_dir).close()  # a folder to write in: found now, not after training
        self.resumed = self.step if checkpoint else None  # a resumed run's step, evaluated already
        KEPT["step"] = self.resumed
        self.began = time.time()
        self.mark = (self.step, self.began)  # the last evaluation's step and time

    def stepped(self, step, loss, tokens):  # a progress line every log_interval steps, and after the first
        evaluates = step % eval_interval == 0 or step == max_iters  # (its line says it all)
        if (step % log_interval == 0 or step == (self.resumed or 0) + 1) and not evaluates:
            self.losses.append((step, loss.item()))
            since, then = self.mark  # the last evaluation's step and time: the pace since
            per_step = (time.time() - then) / (step - since)
            print(f"step {step}/{max_iters} | loss {loss.item():.4f} | {tokens / per_step:,.0f} tok/s | "
                  f"{clock(per_step * (max_iters - step))} left")

    def evaluating(self, step):  # which may take a while
        print(f"step {step}/{max_iters} | evaluating:", end=" ", flush=True)

    def evaluated(self, step, losses, more):  # its line; then, once a step is trained, a checkpoint
        spent = clock(time.time() - self.began)
        print(f"train {losses['train']:.4f} | val {losses['val']:.4f} | {more} | {spent}")
        self.evals.append((step, losses["train"], losses["val"]))
        vocab, model, optimizers = self.parts
        if step:  # to a temporary file first: never half a checkpoint
            with open(self.path + ".tmp", "wb") as f:
                torch.save({"script": SCRIPT, "config": {k: globals()[k] for k in DEFAULTS}, "vocab": vocab,
                            "step": step, "evals": self.evals, "losses": self.losses, "optimizers":
                            [o.state_dict() for o in optimizers], "model": model.state_dict()}, f)
            os.replace(self.path + ".tmp", self.path)
            KEPT["step"] = step
        self.mark = (step, time.time())

    def plot(self):  # a batch's loss at each progress line; the train and val loss at each evaluation
        if fig := figure(figsize=(6, 4)):
            ax = fig.subplots()
            ax.plot(*zip(*self.losses), ".", color="C0", alpha=0.4, label="a batch")
            steps, train, val = zip(*self.evals)
            ax.plot(steps, train, "o-", color="C0", label="train")
            ax.plot(steps, val, "o-", color="C1", label="val")
            ax.set(xlabel="step", ylabel="loss (nats per token)", title=f"{SCRIPT}.py")
            ax.legend()
            show(fig, "loss")

def figure(**kwargs):  # matplotlib's Figure (not pyplot's, which a notebook would draw twice), if installed
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print("no picture: matplotlib is not installed")
        return None
    return Figure(**kwargs)

def show(fig, name):  # to out_dir/SCRIPT_NAME.png, and in a notebook to the cell too
    fig.savefig(path := f"{out_dir}/{SCRIPT}_{name}.png", dpi=120, bbox_inches="tight")
    print(f"{name} picture saved to {path}")
    if NOTEBOOK:
        from IPython.display import Image, display
        display(Image(filename=path))

def draw_attention(weights, labels):  # a heat map per head: row t is what position t attends to
    if fig := figure(figsize=(1 + 4 * len(weights), 4), layout="constrained"):
        for h, ax in enumerate(fig.subplots(1, len(weights), squeeze=False)[0]):
            image = ax.imshow(weights[h].numpy(), vmin=0, vmax=1)
            ax.set(title=f"head {h}", xticks=range(len(labels)), yticks=range(len(labels)))
            ax.set_xticklabels(labels)
            ax.set_yticklabels(labels)
        fig.colorbar(image, ax=fig.axes, shrink=0.6, label="attention weight")
        fig.suptitle(f"{SCRIPT}.py: what the last block's heads attend to (a row: the position reading)")
        show(fig, "attention")

if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print(flush=True)  # after a line the evaluation left open
        die(f"interrupted; {out_dir}/{SCRIPT}.pt keeps step {KEPT['step']}: resume=true goes on from there"
            if KEPT.get("step") else "interrupted before this run's first checkpoint", 130)
    except ImportError as e:  # a package that is not installed
        die(f"this needs {e.name}: pip install {dict(bs4='beautifulsoup4').get(e.name, e.name)}")
    except OSError as e:  # a file that cannot be read or written, a full disk
        die(f"could not read or write {e.filename or 'a file'}: {e.strerror or e}")
    except RuntimeError as e:  # torch.OutOfMemoryError is one; a CPU's is "can't allocate memory"
        if "out of memory" not in str(e) and "can't allocate memory" not in str(e):
            raise
        die(f"out of memory on {device}: make batch_size, block_size or the model smaller")
