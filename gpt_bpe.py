"""
Step 3 of "Let's build GPT": the same GPT, reading subword tokens instead of characters.

Cicero's Letters to Atticus are cut into GPT-2's byte-level BPE tokens, with tiktoken or with
GPT2Tokenizer below, which does the same job in some fifty lines and gives the same ids: split the
text into words, write each word's bytes as printable characters, merge the pair that vocab.bpe
ranks first until no pair is left to merge, look each piece up in encoder.json. A token is a few
characters, so the same context sees further back. Only the ids that occur get an embedding.

Run:   python gpt_bpe.py                          Atticus through tiktoken (dataset=shakespeare too)
       python gpt_bpe.py tokenizer=scratch        the tokenizer written here: the same ids
       python gpt_bpe.py max_iters=0              only sample, from out/gpt_bpe.pt
       python gpt_bpe.py --help                   every setting and its default

Expect: val 1.976 bits per character in 220 s on 2 cores of an AMD EPYC CPU, and a sample
that continues "Scr. Romae" with a dateline and Latin prose.
"""

import builtins
import difflib
import hashlib
import json
import math
import os
import sys
import time
import urllib.request
from contextlib import contextmanager, nullcontext

import torch
import torch.nn as nn
from torch.nn import functional as F

# ----------------------------------------------------------------------------------- hyperparameters
device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
dataset = "atticus"  # atticus | shakespeare
encoding = "gpt2"  # a tiktoken encoding; gpt2 is built from data/gpt2/, the others need the network
tokenizer = "tiktoken"  # tiktoken | scratch (GPT2Tokenizer below, encoding=gpt2 only: the same ids)
compact_vocab = True  # embed only the token ids that occur in the text
if device == "cuda":  # the lecture's model
    batch_size = 64  # sequences per step
    block_size = 256  # context length, in tokens
    n_layer = 6  # Transformer blocks
    n_head = 6  # attention heads per block; must divide n_embd
    n_embd = 384  # width of the residual stream
    dropout = 0.2  # on the embeddings and on what each block adds to the residual stream, 0 to <1
    max_iters = 5000  # optimizer steps
    eval_interval = 500  # steps between evaluations and checkpoints
    eval_iters = 200  # train batches per loss estimate (val: the whole split)
    learning_rate = 1e-3  # peak, after warm-up (Muon and AdamW alike)
    min_lr = 1e-4  # reached at the last step by cosine decay
else:  # a laptop (CPU, or an Apple GPU): a smaller model that ends in minutes
    batch_size = 16
    block_size = 64
    n_layer = 4
    n_head = 4
    n_embd = 128
    dropout = 0.0
    max_iters = 1500
    eval_interval = 500
    eval_iters = 20
    learning_rate = 3e-3
    min_lr = 3e-4
warmup_iters = 100  # steps of linear warm-up
weight_decay = 0.1  # on matrices only
grad_clip = 1.0  # clip the gradient norm to this; 0 = off
log_interval = 50  # steps between progress lines
seed = 1337  # same seed and device, same losses
out_dir = "out"  # checkpoint and pictures go here
resume = False  # go on from out_dir/gpt_bpe.pt as if never stopped
start = "Scr. Romae"  # the prompt the sample continues: a dateline's opening
max_new_tokens = 200  # length of the sample, in tokens
temperature = 0.8  # < 1 sharper, > 1 wilder; 0 = always the likeliest
top_k = 0  # sample among the k likeliest only; 0 = all
# the names above: each can be set as name=value
SETTINGS = ("device dataset encoding tokenizer compact_vocab batch_size block_size n_layer n_head n_embd "
            "dropout max_iters eval_interval eval_iters learning_rate min_lr warmup_iters weight_decay "
            "grad_clip log_interval seed out_dir resume start max_new_tokens temperature top_k").split()

# ---------------------------------------------------------------------------------------------- data
TEXTS = {"shakespeare": "tinyshakespeare.txt", "atticus": "atticus.xml"}  # dataset -> file in data/

def load_text(path):
    """A text file as it is; Cicero's letters read out of their TEI XML (read_atticus, after main)."""
    if path.endswith(".xml"):
        return read_atticus(path)
    with open(path, encoding="utf-8") as f:
        return f.read()

def split_text(text):
    """The first 90 % of the characters to learn from, the rest to check on: the same cut in every step."""
    n = int(0.9 * len(text))
    return text[:n], text[n:]

# ----------------------------------------------------------------------------------------- tokenizer
# GPT-2's split of a text into words: contractions, letters, digits, other symbols, runs of white space
GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

def bytes_to_unicode():
    """GPT-2's table from the 256 byte values to printable characters, so that any bytes read as a str.

    Printable bytes stand for themselves ("A" -> "A"); the 68 others are moved past 255 in order:
    b" " -> "Ġ" (chr(288)), b"\\n" -> "Ċ" (chr(266)). A word " Romae" becomes "ĠRomae".
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + n) for n, b in enumerate(moved)}}

class GPT2Tokenizer:
    """GPT-2's byte-level BPE from its two files, written out; the same ids as tiktoken's "gpt2".

    >>> tok = GPT2Tokenizer("data/gpt2/encoder.json", "data/gpt2/vocab.bpe")
    >>> tok.encode("Hello world")  # "Hello" and "Ġworld" are each one piece of encoder.json
    [15496, 995]
    """

    def __init__(self, encoder_json_path, vocab_bpe_path):
        try:
            import regex  # re with \p{L} (any letter) and \p{N} (any number); tiktoken depends on it
        except ImportError:
            die("tokenizer=scratch needs the regex module: pip install regex")
        with open(encoder_json_path, encoding="utf-8") as f:
            self.encoder = json.load(f)  # piece -> id, 50,257 of them
        with open(vocab_bpe_path, encoding="utf-8") as f:
            merges = f.read().splitlines()[1:]  # after a version line, "Ġ t" means: join "Ġ" and "t"
        self.ranks = {tuple(merge.split()): rank for rank, merge in enumerate(merges) if merge}
        self.decoder = {i: piece for piece, i in self.encoder.items()}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.split = regex.compile(GPT2_SPLIT)
        self.eot = self.encoder["<|endoftext|>"]  # 50256: GPT-2's end of text, never a piece of a word
        self.cache = {}  # word -> ids: a text repeats its words, each is merged once

    def bpe(self, word):
        """Merge the adjacent pair that vocab.bpe ranks first, everywhere, until no pair has a rank."""
        parts = list(word)  # "ĠRomae" -> ["Ġ", "R", "o", "m", "a", "e"]
        while len(parts) > 1:
            pair = min(zip(parts, parts[1:]), key=lambda p: self.ranks.get(p, math.inf))
            if pair not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts  # ["ĠRom", "ae"]

    def encode(self, text, allowed_special=()):
        """Text -> GPT-2 ids. "<|endoftext|>" is ordinary text (as in GPT-2, and tiktoken's encode_ordinary)
        unless allowed_special is "all" or holds it: then it is id 50256."""
        special = allowed_special == "all" or "<|endoftext|>" in allowed_special
        ids = []
        for n, chunk in enumerate(text.split("<|endoftext|>") if special else [text]):
            if n:
                ids.append(self.eot)
            for word in self.split.findall(chunk):
                if word not in self.cache:
                    pieces = self.bpe("".join(self.byte_encoder[b] for b in word.encode("utf-8")))
                    self.cache[word] = [self.encoder[piece] for piece in pieces]
                ids.extend(self.cache[word])
        return ids

    def decode(self, ids):
        """GPT-2 ids -> text; bytes that are not whole UTF-8 characters become U+FFFD, as in tiktoken."""
        data = bytes(self.byte_decoder[c] for i in ids for c in self.decoder[i])
        return data.decode("utf-8", errors="replace")

def load_bpe(encoder_json, vocab_bpe):
    """(encode, decode, number of ids) of the BPE that tokenizer= and encoding= choose."""
    if tokenizer == "scratch":
        bpe = GPT2Tokenizer(encoder_json, vocab_bpe)
        return bpe.encode, bpe.decode, len(bpe.encoder)
    enc = tiktoken_encoding(encoding, encoder_json)  # after main
    return enc.encode_ordinary, enc.decode, enc.n_vocab

def make_tokenizer(vocab, bpe_encode, bpe_decode):
    """Text <-> the model's ids: vocab lists the BPE ids the model knows, and a model id is a place in it."""
    index = {t: i for i, t in enumerate(vocab)}
    encode = lambda s: [index[t] for t in bpe_encode(s)]  # noqa: E731  string -> list of ints
    decode = lambda ids: bpe_decode([vocab[i] for i in ids])  # noqa: E731  list of ints -> string
    return encode, decode

# --------------------------------------------------------------------------------------------- model
class CausalSelfAttention(nn.Module):
    """All heads at once: one projection makes every head's query, key and value."""

    def __init__(self, n_embd, n_head, dropout):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.dropout = nn.Dropout(dropout)
        self.keep_weights = False  # True: the explicit path, which keeps the attention in .weights

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # each (B, T, C)
        hs = C // self.n_head  # head size
        q, k, v = (t.view(B, T, self.n_head, hs).transpose(1, 2) for t in (q, k, v))  # each (B, nh, T, hs)
        if self.keep_weights:
            att = q @ k.transpose(-2, -1) / math.sqrt(hs)  # (B, nh, T, T), scaled by 1/sqrt(head size)
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
        self.dropout = nn.Dropout(dropout)

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
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*[Block(n_embd, n_head, dropout) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.token_embedding.weight  # tied, as in GPT-2: one matrix reads and writes
        for name, p in self.named_parameters():  # GPT-2's initialisation
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 2:  # residual projections shrunk, so that the residual stream keeps its scale
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

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

# ----------------------------------------------------------------------------------------- optimizer
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
    """Muon (K. Jordan, 2024): momentum, then each matrix's update orthogonalised, so that it moves every
    direction of the matrix about as far. Scaled to AdamW's typical update (0.2 sqrt(larger side), as in
    Moonshot's Moonlight), so that both optimizers take the same learning rate."""

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
    """Muon for the matrices inside the blocks; AdamW for the rest, with weight decay on matrices only.
    (The lecture uses AdamW alone: README.md says why these two.)"""
    in_blocks = [p for name, p in model.named_parameters() if name.startswith("blocks.") and p.dim() == 2]
    matrices = [p for name, p in model.named_parameters() if not name.startswith("blocks.") and p.dim() == 2]
    others = [p for p in model.parameters() if p.dim() < 2]  # biases and norms
    groups = [{"params": matrices, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}]
    fused = not device.startswith("mps")  # one kernel for the whole update, on CUDA and the CPU
    return [Muon(in_blocks, lr=learning_rate, weight_decay=weight_decay),
            torch.optim.AdamW(groups, lr=learning_rate, betas=(0.9, 0.99), fused=fused)]

# ------------------------------------------------------------------------------------------ training
def get_batch(data, generator=None):
    """batch_size random windows of data: inputs x and targets y, y shifted by one. Each (B, T)."""
    ix = torch.randint(len(data) - block_size, (batch_size, 1), generator=generator)
    window = data[ix + torch.arange(block_size + 1)]  # (B, T+1)
    return window[:, :-1].to(device), window[:, 1:].to(device)

@torch.no_grad()
def estimate_loss(model, data, ctx):
    """Mean loss per token: of the whole val split (in windows of block_size, each token once), and of
    eval_iters random batches of the much longer train split (the same batches at every call)."""
    model.eval()
    n = (len(data["val"]) - 1) // block_size  # whole windows; the last few tokens are left out
    windows = data["val"][: n * block_size + 1].unfold(0, block_size + 1, block_size)  # (n, T+1)
    generator = torch.Generator().manual_seed(seed)
    batches = {"train": [get_batch(data["train"], generator) for _ in range(eval_iters)],
               "val": [(w[:, :-1].to(device), w[:, 1:].to(device)) for w in windows.split(batch_size)]}
    losses = {}
    for split, pairs in batches.items():
        with ctx:
            total = sum(model(x, y)[1].float() * len(x) for x, y in pairs)
        losses[split] = total.item() / sum(len(x) for x, _ in pairs)
    model.train()
    return losses

def evaluate(model, data, ctx):
    """The losses, val bits per character (which compare across tokenizers), and their log line."""
    losses = estimate_loss(model, data, ctx)
    bpc = losses["val"] / math.log(2) * len(data["val"]) / data["val_characters"]
    return losses, f"train {losses['train']:.4f} | val {losses['val']:.4f} | val bpc {bpc:.3f}"

def get_lr(step):
    """Linear warm-up to learning_rate, then cosine decay to min_lr at max_iters."""
    if step < warmup_iters:
        return learning_rate * (step + 1) / warmup_iters
    progress = min(1.0, (step - warmup_iters) / max(1, max_iters - warmup_iters))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (learning_rate - min_lr)

def optimize(model, optimizers, scaler, loss, lr):
    """Backward, then a step of every optimizer at learning rate lr; after an fp16 overflow, of none."""
    scaler.scale(loss).backward()  # fp16 only: the loss scaled up, so that small gradients stay above zero
    for optimizer in optimizers:
        scaler.unscale_(optimizer)
        for group in optimizer.param_groups:
            group["lr"] = lr
    norm = nn.utils.clip_grad_norm_(model.parameters(), grad_clip or math.inf)
    if not scaler.is_enabled() or norm.isfinite():  # an inf or nan anywhere: no optimizer moves
        for optimizer in optimizers:
            scaler.step(optimizer)
    scaler.update()  # after an overflow, a smaller scale
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)

def train(model, optimizers, scaler, ctx, data, run):
    """Steps run["step"] to max_iters: progress every log_interval steps; the losses and a checkpoint every
    eval_interval steps and at the end. run is what the checkpoint keeps besides the model."""
    first, started, last = run["step"], time.time(), time.time()
    tokens, recent = 0, []
    for step in range(first, max_iters + 1):  # a resumed run has evaluated its first step already
        evaluating = (step % eval_interval == 0 or step == max_iters) and (step > first or not run["history"])
        if evaluating or (step % log_interval == 0 and step > first):
            now, line = time.time(), f"step {step}/{max_iters}"
            if evaluating:
                losses, report = evaluate(model, data, ctx)
                line += f" | {report}"
            else:
                line += f" | loss {torch.stack(recent).mean().item():.4f}"  # the batches since the last line
            if step > first:
                left = (now - started) / (step - first) * (max_iters - step)
                speed = tokens / max(now - last, 1e-6)
                line += f" | {speed:,.0f} tok/s | {clock(now - started)} | {clock(left)} left"
            print(line, flush=True)
            if evaluating:
                run["history"].append((step, losses["train"], losses["val"]))
                save_checkpoint(model, optimizers, scaler, run, step, losses["val"])  # replaces any older one
            tokens, recent, last = 0, [], time.time()
        if step == max_iters:
            break
        x, y = get_batch(data["train"])
        with ctx:
            _, loss = model(x, y)
        optimize(model, optimizers, scaler, loss, get_lr(step))
        tokens, recent = tokens + x.numel(), recent + [loss.detach()]

# ------------------------------------------------------------------------------------------ sampling
@torch.no_grad()
def sample(model, encode, ctx):
    """The prompt start= continued by max_new_tokens tokens, with dropout off: ids (1, T)."""
    model.eval()
    idx = torch.tensor([encode(start)], dtype=torch.long, device=device)  # (1, T)
    with ctx:
        return model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k or None)

# ---------------------------------------------------------------------------------------------- main
def main():
    given = configure(sys.argv)
    checkpoint = load_checkpoint(given) if resume or max_iters == 0 else None  # it sets the model's sizes
    ctx, scaler = set_up_device()
    text_file, encoder_json, vocab_bpe = data_files(TEXTS[dataset], "gpt2/encoder.json", "gpt2/vocab.bpe")
    bpe_encode, bpe_decode, n_ids = load_bpe(encoder_json, vocab_bpe)
    text = load_text(text_file)
    train_text, val_text = split_text(text)
    ids = {"train": torch.tensor(bpe_encode(train_text)), "val": torch.tensor(bpe_encode(val_text))}  # GPT-2
    vocab = torch.cat(list(ids.values())).unique().tolist() if compact_vocab else list(range(n_ids))
    encode, decode = make_tokenizer(vocab, bpe_encode, bpe_decode)
    data = {split: torch.searchsorted(torch.tensor(vocab), t) for split, t in ids.items()}  # as encode() does
    data["val_characters"] = len(val_text)
    check_prompt([bpe_decode([t]) for t in sorted(set(bpe_encode(start)) - set(vocab))], data)
    model = GPT(len(vocab), block_size, n_embd, n_head, n_layer, dropout).to(device)
    optimizers = make_optimizers(model)
    print(f"{SCRIPT}: device {device} | {sum(p.numel() for p in model.parameters()):,} parameters | "
          f"{dataset}: {len(text):,} characters, {len(data['train']) + len(data['val']):,} tokens, "
          f"vocabulary {len(vocab)} | val {len(val_text):,} characters")
    run = restore(checkpoint, model, optimizers, scaler, vocab)
    if max_iters > run["step"]:
        train(model, optimizers, scaler, ctx, data, run)
        plot_losses(run["history"])
    out = sample(model, encode, ctx)
    print(f"--- sample, prompt {start!r}, temperature {temperature} ---\n{decode(out[0].tolist())}")

# ===================================================================================================
# Plumbing, the same in every script: settings, errors, device, data files, checkpoints, pictures.
# ===================================================================================================
SCRIPT = "gpt_bpe"
MODEL_KEYS = ("dataset", "encoding", "compact_vocab", "block_size", "n_embd", "n_head", "n_layer")  # a model
KEEP = ("device", "out_dir", "resume", "start", "max_new_tokens", "temperature", "top_k")  # never from it

def setting_problems():
    return [message for ok, message in [
        (device in devices(), f"device={device!r} is not one of this machine's: {', '.join(devices())}"),
        (dataset in TEXTS, f"dataset={dataset!r} is not one of {', '.join(TEXTS)}"),
        (tokenizer in ("tiktoken", "scratch"), f"tokenizer={tokenizer!r} is not tiktoken or scratch"),
        (tokenizer == "tiktoken" or encoding == "gpt2",
         "tokenizer=scratch is GPT-2's BPE: it needs encoding=gpt2"),
        (min(batch_size, block_size, n_layer, n_head, n_embd, eval_interval, eval_iters, log_interval) > 0,
         "batch_size, block_size, n_layer, n_head, n_embd, eval_iters and the intervals must be > 0"),
        (n_embd % n_head == 0, f"n_embd={n_embd} is not divisible by n_head={n_head}"),
        (0 <= dropout < 1, f"dropout={dropout} is not in [0, 1)"),
        (0 <= min_lr <= learning_rate and learning_rate > 0, "learning_rate must be > 0, min_lr in [0, it]"),
        (min(max_iters, max_new_tokens, top_k, temperature, warmup_iters, grad_clip) >= 0,
         "max_iters, max_new_tokens, top_k, temperature, warmup_iters and grad_clip must be >= 0"),
        (start != "", "the prompt start= must not be empty"),
        (0 <= seed < 2**63, f"seed={seed} is not in [0, 2**63)"),
    ] if not ok]

def devices():
    gpus = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    apple = ["mps"] if torch.backends.mps.is_available() else []
    return ["cpu", *(["cuda", *gpus] if gpus else []), *apple]

def check_prompt(unknown, data):
    if unknown:
        die(f"the prompt start={start!r} has characters or tokens that never occur in {dataset}: "
            f"{', '.join(map(repr, unknown))}")
    if block_size >= len(data["val"]):
        die(f"block_size={block_size} is longer than the validation text ({len(data['val'])} tokens)")

class Stopped(Exception):
    """A mistake, in a notebook: IPython shows what _render_traceback_ returns instead of a traceback."""

    def _render_traceback_(self):
        return [str(self)]

def die(message, status=1):
    """Stop with one sentence: on stderr with a non-zero exit status, or in a notebook as the cell's error."""
    if getattr(builtins, "__IPYTHON__", False):
        raise Stopped(f"{SCRIPT}: {message}")
    print(f"{SCRIPT}: {message}", file=sys.stderr)
    sys.exit(status)

@contextmanager
def clear_errors():
    """Ctrl-C, or too little memory: one sentence; the last checkpoint is kept."""
    try:
        yield
    except KeyboardInterrupt:
        where = "" if out_dir == "out" else f" out_dir={out_dir}"
        die(f"interrupted; {checkpoint_path()} holds the last evaluation, if any: "
            f"resume=true{where} goes on from it", 130)
    except RuntimeError as e:  # torch.cuda.OutOfMemoryError is one
        if "out of memory" not in str(e) and "can't allocate memory" not in str(e):
            raise
        die(f"out of memory on {device}: make batch_size, block_size or the model smaller")

def configure(argv):
    """Set the hyperparameters from name=value arguments and return the names set. In a notebook the
    arguments are the kernel's own: there the settings are the lines above, and all count as set."""
    notebook = "kernel_launcher" in os.path.basename(argv[0] if argv else "") or "__file__" not in globals()
    args, given = ([], set(SETTINGS)) if notebook else (argv[1:], set())
    if {"-h", "--help"} & set(args):
        print((globals().get("__doc__") or "").strip(), "\nSettings (name=value) and their defaults here:",
              *(f"  {k}={globals()[k]!r}" for k in SETTINGS), sep="\n")
        sys.exit(0)
    valid = "valid settings: " + " ".join(f"{k}={globals()[k]!r}" for k in SETTINGS)
    for arg in args:
        name, eq, text = arg.lstrip("-").partition("=")
        if not eq or name not in SETTINGS:
            close = difflib.get_close_matches(name, SETTINGS, 1)
            die(f"unknown setting {arg!r}{f' (did you mean {close[0]}?)' if close else ''}; {valid}", 2)
        kind = type(globals()[name])
        try:
            globals()[name] = {"true": True, "1": True, "false": False, "0": False}[text.lower()] \
                if kind is bool else kind(text)
        except (KeyError, ValueError):
            die(f"{name}={text!r} is not a valid {kind.__name__}; {valid}", 2)
        if kind is float and not math.isfinite(globals()[name]):
            die(f"{name}={text!r} is not a finite number", 2)
        given.add(name)
    checked_later = resume or max_iters == 0  # then with the checkpoint's settings, in load_checkpoint
    for problem in [] if checked_later else setting_problems()[:1]:
        die(problem, 2)
    parent = out_dir  # out_dir, or the folder that will hold it, must be a folder one can write in
    while not os.path.exists(parent):
        parent = os.path.dirname(os.path.abspath(parent))
    writable = os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK)
    if not writable or os.path.isdir(checkpoint_path()):
        die(f"out_dir={out_dir!r} is not a folder this script can write {SCRIPT}.pt in", 2)
    return given

def set_up_device():
    """Seed; on CUDA, TF32 and autocast: bf16 where the GPU has it in hardware (compute capability 8.0 and
    up), else fp16 with a gradient scaler (a T4). The CPU and an Apple GPU train in float32."""
    torch.manual_seed(seed)
    kind, dtype = device.split(":")[0], torch.float32
    if kind == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        dtype = torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
    ctx = nullcontext() if dtype == torch.float32 else torch.autocast(kind, dtype=dtype)
    return ctx, torch.amp.GradScaler(kind, enabled=dtype == torch.float16)

HERE = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else "."  # a notebook: ./
DATA_DIR = os.path.join(HERE, "data")
DATA_FILES = {  # name in data/: (pinned download URL, SHA-256)
    "tinyshakespeare.txt": (
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),
    "atticus.xml": (
        "https://raw.githubusercontent.com/PerseusDL/canonical-latinLit/"
        "1066a551aa5445ab165e9b490a6bb06ce72828da/data/phi0474/phi057/phi0474.phi057.perseus-lat1.xml",
        "82e361a4dcf554470eab9daba9cc02b0e0ea34d13dc4ae3bf35ea98d2b18f3fe"),
    "gpt2/encoder.json": (  # GPT-2's token ids: the files tiktoken.get_encoding("gpt2") downloads
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
    "gpt2/vocab.bpe": (  # GPT-2's 50,000 merges, most frequent first
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
}

def data_files(*names):
    """The paths of data/NAME, each checked against its SHA-256 and downloaded first if it is missing.
    Stops naming every file it could not get."""
    problems = []
    for name in names:
        url, sha256 = DATA_FILES[name]
        path = os.path.join(DATA_DIR, name)
        if not os.path.lexists(path):
            problems += download(url, path, sha256)
        elif (digest := sha256_of(path)) != sha256:
            problems.append(f"{path} is not a readable file" if digest is None else f"{path} is not the "
                            f"pinned file (SHA-256 mismatch); delete it to download it again")
    if problems:
        die("; ".join(problems))
    return [os.path.join(DATA_DIR, name) for name in names]

def sha256_of(path):
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:  # a folder, say
        return None

def download(url, path, sha256):
    """url to a temporary file beside path, renamed to path if its SHA-256 is right; [] or [the problem]."""
    part = path + ".part"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        print(f"downloading {url}")
        with urllib.request.urlopen(url, timeout=30) as response, open(part, "wb") as f:
            f.write(response.read())
        if sha256_of(part) != sha256:
            raise ValueError("its SHA-256 is not the pinned one")
        os.replace(part, path)
        return []
    except Exception as e:  # no network, a wrong address, a corrupted file
        return [f"could not download {url} ({e}); download it by hand and save it as {path}"]
    finally:  # failed or interrupted: no partial file left
        if os.path.isfile(part):
            os.remove(part)

def read_atticus(path):
    """Cicero's letters from a Perseus TEI file, 'dateline\\nsalute\\nbody' each, a blank line between:
    the EpiDoc markup (<div subtype="letter">, <seg rend="dateline">) or the older hopper one (<div2>)."""
    try:
        from bs4 import BeautifulSoup
        import lxml  # noqa: F401  the XML parser that BeautifulSoup(..., "xml") uses
    except ImportError:
        die("reading atticus.xml needs BeautifulSoup and lxml: pip install beautifulsoup4 lxml")
    with open(path, encoding="utf-8") as f:
        soup = BeautifulSoup(f, "xml")
    letters = []
    for letter in soup.find_all("div", subtype="letter") or soup.find_all("div2"):
        for tag in letter.find_all(["del", "expan", "note"]):  # the editor's deletions, expansions and notes
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

def tiktoken_encoding(name, encoder_json):
    """tiktoken's encoding `name`: "gpt2" built from data/gpt2/ without the network, any other downloaded."""
    try:
        import tiktoken
        from tiktoken_ext.openai_public import r50k_pat_str  # GPT2_SPLIT, written for tiktoken's regex engine
    except ImportError:
        die("tokenizer=tiktoken needs tiktoken: pip install tiktoken (or use tokenizer=scratch)")
    if name != "gpt2":
        try:
            return tiktoken.get_encoding(name)
        except Exception as e:  # an unknown name, or no network: tiktoken downloads its files on first use
            first_line = str(e).splitlines()[0] if str(e) else ""
            die(f"tiktoken could not load the encoding {name!r} ({type(e).__name__}: {first_line}); "
                f"encoding=gpt2 works offline from {DATA_DIR}/gpt2/")
    with open(encoder_json, encoding="utf-8") as f:  # GPT-2's ids are the ranks of its merges
        byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
        ranks = {bytes(byte_decoder[c] for c in piece): i for piece, i in json.load(f).items() if i != 50256}
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})

def checkpoint_path():
    return os.path.join(out_dir, f"{SCRIPT}.pt")

def unusable(why):
    die(f"{checkpoint_path()} is not a checkpoint this {SCRIPT}.py can use ({why}); train anew, "
        f"or set out_dir= another folder")

def load_checkpoint(given):
    """The checkpoint for resume=true or max_iters=0. Its settings replace those not given (but for KEEP):
    max_iters too, the length of the learning-rate schedule. A model setting given that differs: an error."""
    path = checkpoint_path()
    if not os.path.exists(path):
        die(f"{'resume=true' if resume else 'max_iters=0'} needs a checkpoint, and there is none at {path}; "
            f"train first, or set out_dir= the folder that holds one")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        if checkpoint["script"] != SCRIPT:
            raise ValueError(f"it was written by {checkpoint['script']}.py")
        config = {k: checkpoint["config"][k] for k in SETTINGS}
    except Exception as e:  # truncated, foreign, or of another version of this script
        unusable(e if isinstance(e, ValueError) else type(e).__name__)
    clash = [f"{k}={config[k]!r}" for k in MODEL_KEYS if k in given and config[k] != globals()[k]]
    if clash:
        die(f"{path} was trained with {' '.join(clash)}: leave those settings out (or set them so), "
            f"or set out_dir= another folder")
    globals().update({k: v for k, v in config.items() if k not in given and k not in KEEP})
    for problem in setting_problems()[:1]:  # the checkpoint's settings and the ones given, together
        die(problem, 2)
    return checkpoint

def restore(checkpoint, model, optimizers, scaler, vocab):
    """The run so far: a new one, or the checkpoint's, with the model (and, to resume, the optimizers, the
    gradient scaler and the random state) as they were when it was saved."""
    if checkpoint is None:
        return {"vocab": vocab, "step": 0, "history": [], "best_val_loss": math.inf}
    try:
        if checkpoint["vocab"] != vocab:
            raise ValueError("another vocabulary")
        model.load_state_dict(checkpoint["model"])
        if resume:
            for optimizer, state in zip(optimizers, checkpoint["optimizer"], strict=True):
                optimizer.load_state_dict(state)
            if checkpoint["scaler"]:  # empty unless it was trained in fp16
                scaler.load_state_dict(checkpoint["scaler"])
            torch.set_rng_state(checkpoint["rng"]["cpu"])
            if device.startswith("cuda") and "cuda" in checkpoint["rng"]:
                torch.cuda.set_rng_state(checkpoint["rng"]["cuda"], device)
        run = {k: checkpoint[k] for k in ("vocab", "step", "history", "val_loss", "best_val_loss")}
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        unusable(e if isinstance(e, ValueError) else type(e).__name__)
    print(f"loaded {checkpoint_path()}: step {run['step']}, val {run['val_loss']:.4f}")
    if resume and run["step"] >= max_iters:
        print(f"max_iters={max_iters} is reached already: nothing to train; set max_iters= higher to go on")
    return run

def save_checkpoint(model, optimizers, scaler, run, step, val_loss):
    """All an exact resume needs, to a temporary file then renamed: never half a checkpoint."""
    if not math.isfinite(val_loss):
        die(f"the val loss is {val_loss} at step {step}: lower learning_rate (the last checkpoint is kept)")
    run.update(step=step, val_loss=val_loss, best_val_loss=min(run["best_val_loss"], val_loss))
    rng = {"cpu": torch.get_rng_state()}  # the batches, and dropout on the CPU
    if device.startswith("cuda"):
        rng["cuda"] = torch.cuda.get_rng_state(device)
    path = checkpoint_path()
    try:
        os.makedirs(out_dir, exist_ok=True)
        torch.save({**run, "script": SCRIPT, "config": {k: globals()[k] for k in SETTINGS}, "rng": rng,
                    "model": model.state_dict(), "optimizer": [o.state_dict() for o in optimizers],
                    "scaler": scaler.state_dict()}, path + ".tmp")
        os.replace(path + ".tmp", path)
    except (OSError, RuntimeError) as e:  # a full disk, say
        die(f"could not write {path} ({e}); the last checkpoint is kept")
    finally:  # failed or interrupted: no half-written file left
        if os.path.isfile(path + ".tmp"):
            os.remove(path + ".tmp")

def clock(seconds):
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"

def figure(**kwargs):
    try:
        from matplotlib.figure import Figure  # not pyplot: a notebook's own backend is left alone
    except ImportError:
        return print("matplotlib is not installed: no picture")
    return Figure(**kwargs)

def save_figure(fig, name):
    path = os.path.join(out_dir, f"{SCRIPT}_{name}.png")
    try:
        os.makedirs(out_dir, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
        print(f"{name} picture saved to {path}")
    except OSError as e:
        print(f"could not save {path} ({e})")

def plot_losses(history):
    fig = figure(figsize=(6, 4))
    if fig:
        ax = fig.subplots()
        steps, train, val = zip(*history)
        ax.plot(steps, train, label="train")
        ax.plot(steps, val, label="val")
        ax.set(xlabel="step", ylabel="loss (nats per token)")
        ax.set_title(f"{SCRIPT}.py " + " ".join(f"{k}={globals()[k]}" for k in MODEL_KEYS), fontsize=8)
        ax.legend()
        save_figure(fig, "loss")

if __name__ == "__main__":
    with clear_errors():
        main()
