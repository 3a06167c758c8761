"""
Step 2 of "Let's build GPT": the lecture's GPT as its code has it (Head, MultiHeadAttention, FeedFoward,
Block), trained as it trained it; each idea the lecture adds is a switch, each rung of its ladder a command.

Run:   python gpt_char.py                  tinyshakespeare (dataset=PATH: a UTF-8 text file of yours)
       python gpt_char.py lecture=heads    a rung: head, heads, ffwd, residual, layernorm, full
       python gpt_char.py resume=true      after Ctrl-C: go on from the last checkpoint
       python gpt_char.py max_iters=0      only sample from out/gpt_char.pt (start="ROMEO:": its prompt)
       python -m doctest -v gpt_char.py    the mathematical trick in self-attention, three ways
       python gpt_char.py --help           every setting, its value here and its meaning
Expect: val loss 1.706 (2.46 bits per character) in 207 s on 2 cores of an AMD EPYC CPU.
"""

import math

import torch
import torch.nn as nn
from torch.nn import functional as F

# hyperparameters: the lecture's ------------------------------------
batch_size = 64  # how many independent sequences will we process in parallel?
block_size = 256  # what is the maximum context length for predictions?
max_iters = 5000  # steps of the optimizer
eval_interval = 500  # steps between evaluations, and checkpoints
learning_rate = 3e-4  # constant
device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
eval_iters = 200  # train batches per loss estimate (the val loss reads all of val)
n_embd = 384  # the width of each position's vector
n_head = 6  # heads per block, each n_embd // n_head wide
n_layer = 6  # blocks
dropout = 0.2  # the share zeroed while training, 0 to < 1
# ... the ladder's switches
mlp = True  # each block's FeedFoward; the rungs without it had no residual path either
residual = True  # each block adds to x; false: replaces it
layernorm = True  # ln1, ln2, ln_f and the init of gpt.py; false: none, and PyTorch's init
lecture = ""  # a rung of the ladder: head, heads, ffwd, residual, layernorm, full
# ... and the run's
dataset = "shakespeare"  # or the path of a UTF-8 text
seed = 1337  # same seed and device, same losses
log_interval = 50  # steps between progress lines
out_dir = "out"  # for the checkpoint and the pictures
resume = False  # go on from out_dir/gpt_char.pt
start = "\n"  # the prompt the sample continues
max_new_tokens = 500  # characters to sample
# on a CPU or an Apple GPU (mps) these replace the values above, to train in minutes:
LAPTOP = dict(batch_size=32, block_size=64, max_iters=2100, eval_interval=700, learning_rate=1e-3,
              eval_iters=20, n_embd=96, n_head=4, n_layer=4, dropout=0.0)
RUNG = dict(batch_size=32, block_size=8, max_iters=5000, eval_interval=500, learning_rate=1e-3,
            eval_iters=200, n_embd=32, dropout=0.0)
LECTURE = {  # lecture=NAME: the model of a rung (its attention projection and 4x FeedFoward aside)
    "head": dict(RUNG, n_layer=1, n_head=1, mlp=False, residual=False, layernorm=False),
    "heads": dict(RUNG, n_layer=1, n_head=4, mlp=False, residual=False, layernorm=False),
    "ffwd": dict(RUNG, n_layer=1, n_head=4, residual=False, layernorm=False),
    "residual": dict(RUNG, n_layer=3, n_head=4, layernorm=False),
    "layernorm": dict(RUNG, n_layer=3, n_head=4),
    "full": dict(RUNG, batch_size=64, block_size=256, learning_rate=3e-4, n_embd=384, n_head=6, n_layer=6,
                 dropout=0.2),  # the lecture's GPT, which a GPU trains by default
}

# data and tokenizer ------------------------------------------------
TEXTS = {"shakespeare": "tinyshakespeare.txt"}  # dataset= -> data/NAME

def tokenizer(text):
    # here are all the unique characters that occur in this text
    chars = sorted(list(set(text)))
    # create a mapping from characters to integers
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = {i: ch for i, ch in enumerate(chars)}
    encode = lambda s: [stoi[c] for c in s]  # encoder: take a string, output a list of integers
    decode = lambda l: "".join([itos[i] for i in l])  # decoder: take a list of integers, output a string
    return chars, encode, decode

# model -------------------------------------------------------------
def the_trick(B=4, T=8, C=2):
    """The mathematical trick in self-attention: position t averages positions 0..t, three ways.

    >>> xbow, xbow2, xbow3 = the_trick()
    >>> torch.allclose(xbow, xbow2, atol=1e-6) and torch.allclose(xbow, xbow3, atol=1e-6)
    True
    """
    x = torch.randn(B, T, C)
    xbow = torch.zeros((B, T, C))  # version 1: a loop
    for b in range(B):
        for t in range(T):
            xprev = x[b, :t + 1]  # (t,C)
            xbow[b, t] = torch.mean(xprev, 0)
    wei = torch.tril(torch.ones(T, T))  # version 2: a matrix multiply
    wei = wei / wei.sum(1, keepdim=True)
    xbow2 = wei @ x  # (B, T, T) @ (B, T, C) ----> (B, T, C)
    tril = torch.tril(torch.ones(T, T))  # version 3: use Softmax
    wei = torch.zeros((T, T))
    wei = wei.masked_fill(tril == 0, float("-inf"))
    wei = F.softmax(wei, dim=-1)
    xbow3 = wei @ x
    return xbow, xbow2, xbow3

class Head(nn.Module):
    """ one head of self-attention """

    def __init__(self, head_size):
        super().__init__()
        self.key = nn.Linear(n_embd, head_size, bias=False)
        self.query = nn.Linear(n_embd, head_size, bias=False)
        self.value = nn.Linear(n_embd, head_size, bias=False)
        self.register_buffer("tril", torch.tril(torch.ones(block_size, block_size)))

        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        # input of size (batch, time-step, channels)
        # output of size (batch, time-step, head size)
        B, T, C = x.shape
        k = self.key(x)  # (B,T,hs)
        q = self.query(x)  # (B,T,hs)
        # compute attention scores ("affinities")
        wei = q @ k.transpose(-2, -1) * k.shape[-1] ** -0.5  # (B, T, hs) @ (B, hs, T) -> (B, T, T)
        wei = wei.masked_fill(self.tril[:T, :T] == 0, float("-inf"))  # (B, T, T)
        wei = F.softmax(wei, dim=-1)  # (B, T, T)
        wei = self.dropout(wei)
        # perform the weighted aggregation of the values
        v = self.value(x)  # (B,T,hs)
        out = wei @ v  # (B, T, T) @ (B, T, hs) -> (B, T, hs)
        return out

class MultiHeadAttention(nn.Module):
    """ multiple heads of self-attention in parallel """

    def __init__(self, num_heads, head_size):
        super().__init__()
        self.heads = nn.ModuleList([Head(head_size) for _ in range(num_heads)])
        self.proj = nn.Linear(head_size * num_heads, n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        out = torch.cat([h(x) for h in self.heads], dim=-1)
        out = self.dropout(self.proj(out))
        return out

class FeedFoward(nn.Module):
    """ a simple linear layer followed by a non-linearity """

    def __init__(self, n_embd):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd),
            nn.ReLU(),
            nn.Linear(4 * n_embd, n_embd),
            nn.Dropout(dropout),
        )

    def forward(self, x):
        return self.net(x)

class Block(nn.Module):
    """ Transformer block: communication followed by computation """

    def __init__(self, n_embd, n_head):
        # n_embd: embedding dimension, n_head: the number of heads we'd like
        super().__init__()
        head_size = n_embd // n_head
        self.sa = MultiHeadAttention(n_head, head_size)
        self.ffwd = FeedFoward(n_embd) if mlp else nn.Identity()  # the switches mlp and layernorm
        self.ln1 = nn.LayerNorm(n_embd) if layernorm else nn.Identity()
        self.ln2 = nn.LayerNorm(n_embd) if layernorm else nn.Identity()

    def forward(self, x):
        if not residual:  # the rungs before the residual path: each part replaces x
            return self.ffwd(self.ln2(self.sa(self.ln1(x))))
        x = x + self.sa(self.ln1(x))
        x = x + self.ffwd(self.ln2(x))
        return x

class GPTLanguageModel(nn.Module):

    def __init__(self, vocab_size):
        super().__init__()
        # each token directly reads off the logits for the next token from a lookup table
        self.token_embedding_table = nn.Embedding(vocab_size, n_embd)
        self.position_embedding_table = nn.Embedding(block_size, n_embd)
        self.blocks = nn.Sequential(*[Block(n_embd, n_head=n_head) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd) if layernorm else nn.Identity()  # final layer norm
        self.lm_head = nn.Linear(n_embd, vocab_size)

        # better init, not covered in the original GPT video, but important, will cover in followup video
        if layernorm:  # (the rungs before layer norm keep PyTorch's, as the video trained them all)
            self.apply(self._init_weights)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        B, T = idx.shape

        # idx and targets are both (B,T) tensor of integers
        tok_emb = self.token_embedding_table(idx)  # (B,T,C)
        pos_emb = self.position_embedding_table(torch.arange(T, device=device))  # (T,C)
        x = tok_emb + pos_emb  # (B,T,C)
        x = self.blocks(x)  # (B,T,C)
        x = self.ln_f(x)  # (B,T,C)
        logits = self.lm_head(x)  # (B,T,vocab_size)

        if targets is None:
            loss = None
        else:
            B, T, C = logits.shape
            logits = logits.view(B * T, C)
            targets = targets.view(B * T)
            loss = F.cross_entropy(logits, targets)

        return logits, loss

    def generate(self, idx, max_new_tokens):
        # idx is (B, T) array of indices in the current context
        for _ in range(max_new_tokens):
            # crop idx to the last block_size tokens
            idx_cond = idx[:, -block_size:]
            # get the predictions
            logits, loss = self(idx_cond)
            # focus only on the last time step
            logits = logits[:, -1, :]  # becomes (B, C)
            # apply softmax to get probabilities
            probs = F.softmax(logits, dim=-1)  # (B, C)
            # sample from the distribution
            idx_next = torch.multinomial(probs, num_samples=1)  # (B, 1)
            # append sampled index to the running sequence
            idx = torch.cat((idx, idx_next), dim=1)  # (B, T+1)
        return idx

# training ----------------------------------------------------------
def get_batch(data, generator=None):
    # generate a small batch of data of inputs x and targets y
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    x = torch.stack([data[i:i + block_size] for i in ix])
    y = torch.stack([data[i + 1:i + block_size + 1] for i in ix])
    x, y = x.to(device), y.to(device)
    return x, y

@torch.no_grad()
def estimate_loss(model, train_data, val_data):
    """The train loss of eval_iters random batches (the same each time); the val loss of every val token."""
    out = {}
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    losses = [model(*get_batch(train_data, generator))[1].item() for _ in range(eval_iters)]
    out["train"] = sum(losses) / eval_iters
    val = torch.cat([train_data[-1:], val_data])  # the first val token is read after the last train one
    pad = -(len(val) - 1) % block_size  # windows filled up with the target -100, which does not count
    x = F.pad(val[:-1], (0, pad)).view(-1, block_size)
    y = F.pad(val[1:], (0, pad), value=-100).view(-1, block_size)
    out["val"] = sum(model(xb.to(device), yb.to(device))[1].item() * (yb >= 0).sum().item()
                     for xb, yb in zip(x.split(batch_size), y.split(batch_size))) / len(val_data)
    model.train()
    return out

def train(model, optimizer, train_data, val_data, run):
    """The lecture's loop, from run.step; run (defined below main) prints it and keeps checkpoints."""
    for iter in range(run.step, max_iters + 1):

        # every once in a while evaluate the loss on train and val sets (after the last step too; a resumed
        # run's first step has its evaluation in the checkpoint)
        if (iter % eval_interval == 0 or iter == max_iters) and iter != run.resumed:
            run.evaluating(iter)
            losses = estimate_loss(model, train_data, val_data)
            run.evaluated(iter, losses, f"val bpc {losses['val'] / math.log(2):.3f}")  # bits per character
        if iter == max_iters:
            break
        torch.manual_seed(seed + 1_000_003 * iter)  # the step's batch and dropout, from seed and step alone

        # sample a batch of data
        xb, yb = get_batch(train_data)

        # evaluate the loss
        logits, loss = model(xb, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        run.stepped(iter + 1, loss, xb.numel())

# sampling ----------------------------------------------------------
@torch.no_grad()
def sample(model, encode):  # the prompt start=, continued by max_new_tokens tokens, with dropout off
    model.eval()
    context = torch.tensor([encode(start)], dtype=torch.long, device=device)
    return model.generate(context, max_new_tokens)[0].tolist()

# main --------------------------------------------------------------
def main():
    checkpoint = configure(device=dict(cpu=LAPTOP, mps=LAPTOP), lecture=LECTURE)  # these functions
    torch.manual_seed(seed)  # (configure, load_text, check_data, Run) are below main()
    text = load_text(dataset)
    chars, encode, decode = tokenizer(text)
    vocab_size = len(chars)
    # train and test splits
    data = torch.tensor(encode(text), dtype=torch.long)
    n = int(0.9 * len(data))  # first 90% will be train, rest val
    train_data = data[:n]
    val_data = data[n:]
    check_data(train_data, val_data, unknown=set(start) - set(chars))
    model = GPTLanguageModel(vocab_size).to(device)
    # print the number of parameters in the model
    print(f"{sum(p.numel() for p in model.parameters()):,} parameters | device {device} | "
          f"{dataset}: {len(text):,} characters, {vocab_size} distinct, {len(val_data):,} to validate")
    # create a PyTorch optimizer
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    run = Run(checkpoint, chars, model, optimizer)
    if run.step < max_iters:
        train(model, optimizer, train_data, val_data, run)
        run.plot()
    # generate from the model
    ids = sample(model, encode)
    print(f"--- sample ---\n{decode(ids)}")

# Plumbing ========= the same in every script: settings, data, checkpoints, progress, pictures, errors
import datetime, difflib, os, re, socket, sys, tempfile, textwrap, time  # noqa: E401,E402

SCRIPT = "gpt_char"
NOTEBOOK = "__file__" not in globals()  # pasted into a cell, whose text is IPython's In[-1]
SOURCE = globals().get("In", [""])[-1] if NOTEBOOK else open(__file__, encoding="utf-8").read()
DEFAULTS = {k: globals()[k] for k in re.findall(r"^([a-z]\w*) = ", SOURCE, re.M)}  # the hyperparameters
DATA_DIR = "data" if NOTEBOOK else os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
OWN = ("device", "out_dir", "resume")  # never taken from a checkpoint
KEPT = {}  # the step that out_dir/SCRIPT.pt keeps

def problems():  # what this script's settings cannot be
    return [said for bad, said in [
        (dataset not in TEXTS and not os.path.isfile(dataset),
         f"dataset={dataset!r} is not {' or '.join(TEXTS)}, nor a file"),
        (lecture not in ("", *LECTURE), f"lecture={lecture!r} is not one of {', '.join(LECTURE)}"),
        (min(batch_size, block_size, n_embd, n_head, eval_interval, eval_iters, log_interval) < 1,
         "batch_size, block_size, n_embd, n_head, eval_interval, eval_iters, log_interval: 1 or more"),
        (n_head > n_embd, f"n_head={n_head} is more than n_embd={n_embd}: each head would be 0 wide"),
        (dropout >= 1, f"dropout={dropout} is not below 1"),
        (residual and not mlp, "mlp=false needs residual=false, as in the rungs before FeedFoward"),
        (not start, "start= cannot be empty"),
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

DATA_FILES = {"tinyshakespeare.txt": (  # data/NAME: its URL and SHA-256
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed")}

def data_files(*names):  # the paths of data/NAME..., downloaded and checked if missing
    for name in names:
        path, (url, sha256) = os.path.join(DATA_DIR, name), DATA_FILES[name]
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            socket.setdefaulttimeout(30)  # torch.hub would wait forever
            try:
                torch.hub.download_url_to_file(url, path, hash_prefix=sha256)
            except Exception as e:  # no network, a wrong address, a corrupted download
                die(f"could not download {url} ({e}): download it by hand as {path}")
    return [os.path.join(DATA_DIR, name) for name in names]

def load_text(dataset):  # Shakespeare's plays, or a text file
    path = data_files(TEXTS[dataset])[0] if dataset in TEXTS else dataset
    try:
        return open(path, encoding="utf-8").read()
    except UnicodeDecodeError:
        die(f"{path} is not UTF-8 text")

def check_data(train_data, val_data, unknown=()):
    if block_size >= min(len(train_data), len(val_data)):
        die(f"{dataset} is too short for block_size={block_size}")
    if unknown:
        die(f"the prompt start={start!r} has characters that {dataset} lacks: {sorted(unknown)}")

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
