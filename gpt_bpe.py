"""
Step 3 of "Let's build GPT": the same GPT, reading subword tokens instead of characters.

Cicero's Letters to Atticus are cut into byte-level BPE tokens. GPT-2's, with tiktoken or with
GPT2Tokenizer below, which does the same job in some fifty lines and gives the same ids: split the
text into words, write each word's bytes as printable characters, merge the pair that vocab.bpe
ranks first until no pair is left to merge, look each piece up in encoder.json. Or one learned
here from the training text: train_bpe makes merges as vocab.bpe's were made, the most frequent
pair first. A token is a few characters, so the same context sees further back. Only the ids of
the training text (and the 256 bytes) get an embedding; a token it lacks is spelled in bytes.

Run:   python gpt_bpe.py                          Atticus through tiktoken (dataset=shakespeare too)
       python gpt_bpe.py tokenizer=scratch        the tokenizer written here: the same ids
       python gpt_bpe.py tokenizer=trained        a BPE of vocab_size=2048 ids learned from the letters
       python gpt_bpe.py max_iters=0              only sample, from out/gpt_bpe.pt
       python gpt_bpe.py --help                   every setting, its value here and what it means

Expect: val 2.068 bits per character in 176 s on 2 cores of an Intel Xeon CPU (tokenizer=trained:
1.980 in 148 s), and a sample that continues "Scr. Romae" with a dateline and Latin prose.
"""

import builtins
import collections
import difflib
import hashlib
import heapq
import json
import math
import os
import re
import sys
import time
import urllib.request
from contextlib import contextmanager, nullcontext

import torch
import torch.nn as nn
from torch.nn import functional as F

# ----------------------------------------------------------------------------------- hyperparameters
device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
dataset = "atticus"  # atticus | shakespeare | the path of a UTF-8 text file of your own
tokenizer = "tiktoken"  # tiktoken | scratch: GPT2Tokenizer below, the same ids | trained: one learned here
encoding = "gpt2"  # tiktoken's encoding; gpt2 is built from data/gpt2/, the others need the network
vocab_size = 2048  # tokenizer=trained: the 256 bytes and vocab_size - 256 merges learned from the text
compact_vocab = True  # embed only the token ids of the training text, and the 256 bytes

def sizes(device):
    """The sizes for a device: the lecture's model on a CUDA GPU, a smaller one on a laptop (CPU, mps)."""
    global batch_size, block_size, n_layer, n_head, n_embd, dropout, max_iters, eval_interval, eval_iters
    global learning_rate, min_lr
    if device.startswith("cuda"):  # the lecture's model
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
        min_lr = 1e-4  # reached at the last step by cosine decay; = learning_rate: constant
    else:  # a laptop: a smaller model that ends in minutes
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

sizes(device)  # and again in configure(), for a device= given on the command line
mlp = True  # each block's feed-forward layer, the "computation" after the attention's "communication"
residual = True  # each block adds to its input (x = x + f(x)); false: replaces it (x = f(x))
layernorm = True  # the norms before attention and MLP, and the final one
init = "gpt2"  # gpt2: GPT-2's small weights | pytorch: PyTorch's defaults, which the lecture's rungs had
tie = True  # the output layer reads the token embedding's matrix, as in GPT-2; false: its own (the lecture)
optimizer = "muon"  # muon: Muon for the blocks' matrices, AdamW for the rest | adamw: AdamW for all
beta2 = 0.99  # AdamW's decay of its mean squared gradient (PyTorch's default, the lecture's: 0.999)
warmup_iters = 100  # steps of linear warm-up; 0 = none
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
SETTINGS = ("device dataset tokenizer encoding vocab_size compact_vocab batch_size block_size n_layer "
            "n_head n_embd dropout max_iters eval_interval eval_iters learning_rate min_lr mlp residual "
            "layernorm init tie optimizer beta2 warmup_iters weight_decay grad_clip log_interval seed "
            "out_dir resume start max_new_tokens temperature top_k").split()

# ---------------------------------------------------------------------------------------------- data
TEXTS = {"shakespeare": "tinyshakespeare.txt", "atticus": "atticus.xml"}  # dataset -> its file in data/

def load_text(path):
    """Cicero's letters read out of their TEI XML (read_atticus, after main); any other file as it is
    (read_text, after main, which stops with one sentence at a file that is not UTF-8 text)."""
    shipped = os.path.abspath(path) == os.path.abspath(os.path.join(DATA_DIR, TEXTS["atticus"]))
    return read_atticus(path) if shipped else read_text(path)

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
    """A byte-level BPE, written out: GPT-2's from its two files (read_gpt2), with the same ids as tiktoken's
    "gpt2" and the same methods, or one learned here (train_bpe, then learned_bpe).

    >>> tok = GPT2Tokenizer(*read_gpt2("data/gpt2/encoder.json", "data/gpt2/vocab.bpe"))
    >>> tok.encode("Hello world")  # "Hello" and "Ġworld" are each one piece of encoder.json
    [15496, 995]
    """

    def __init__(self, pieces, merges):
        """pieces: the printable text of each id (id 0 first); merges: (left, right) pairs of pieces, the
        pair to merge first first."""
        self.pieces, self.n_vocab = pieces, len(pieces)
        self.encoder = {}  # piece -> id: the first id of a piece that two merges make alike
        for i, piece in enumerate(pieces):
            self.encoder.setdefault(piece, i)
        self.ranks = {tuple(merge): rank for rank, merge in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.split = regex_module().compile(GPT2_SPLIT)  # after main
        self.eot = self.encoder.get("<|endoftext|>")  # 50256 in GPT-2: its end of text, never part of a word
        self.cache = {}  # word -> ids: a text repeats its words, each is merged once

    def bpe(self, word):
        """Merge the adjacent pair that ranks first, everywhere, until no pair has a rank."""
        parts = list(word)  # "ĠRomae" -> ["Ġ", "R", "o", "m", "a", "e"]
        while len(parts) > 1:
            pair = min(zip(parts, parts[1:]), key=lambda p: self.ranks.get(p, math.inf))
            if pair not in self.ranks:
                break
            parts = merge(parts, pair)
        return parts  # ["ĠRom", "ae"] with GPT-2's merges

    def encode(self, text, allowed_special=()):
        """Text -> ids. "<|endoftext|>" is ordinary text (as in GPT-2, and tiktoken's encode_ordinary)
        unless allowed_special is "all" or holds it: then it is id 50256."""
        special = self.eot is not None and (allowed_special == "all" or "<|endoftext|>" in allowed_special)
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

    def encode_ordinary(self, text):
        return self.encode(text)

    def decode_single_token_bytes(self, i):
        return bytes(self.byte_decoder[c] for c in self.pieces[i])

    def encode_single_token(self, piece):
        return self.encoder["".join(self.byte_encoder[b] for b in piece)]

    def decode(self, ids):
        """Ids -> text; bytes that are not whole UTF-8 characters become U+FFFD, as in tiktoken."""
        return b"".join(map(self.decode_single_token_bytes, ids)).decode("utf-8", errors="replace")

def read_gpt2(encoder_json, vocab_bpe):
    """GPT-2's pieces (encoder.json: piece -> id, 50,257 of them) and merges (vocab.bpe: most frequent
    first)."""
    with open(encoder_json, encoding="utf-8") as f:
        pieces = sorted(json.loads(f.read()).items(), key=lambda item: item[1])
    with open(vocab_bpe, encoding="utf-8") as f:
        merges = f.read().splitlines()[1:]  # after a version line, "Ġ t" means: join "Ġ" and "t"
    return [piece for piece, _ in pieces], [merge.split() for merge in merges if merge]

def merge(parts, pair):
    """parts with each two adjacent parts that equal pair joined into one, left to right: aaa -> aa, a."""
    merged, i = [], 0
    while i < len(parts):
        if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
            merged.append(parts[i] + parts[i + 1])
            i += 2
        else:
            merged.append(parts[i])
            i += 1
    return merged

def train_bpe(text, vocab_size):
    """The merges of a byte-level BPE of vocab_size ids (the 256 bytes, then one a merge), learned from text:
    (left, right) pairs of bytes, in the order learned. Each joins the adjacent pair that occurs most often
    in the words of GPT2_SPLIT at that moment, counted at every position ("aaa" holds "aa" twice), never
    across two words; a tie goes to the pair that comes first in byte order. Each distinct word is counted
    once, times its frequency, and a merge recounts only the words that hold its pair.

    >>> train_bpe("aaabdaaabac", 259)  # aa 4 times; then (a, b) and (aa, a) twice each: (a, b) sorts first
    [(b'a', b'a'), (b'a', b'b'), (b'aa', b'ab')]
    """
    counted = collections.Counter(regex_module().findall(GPT2_SPLIT, text))
    words = [[bytes([b]) for b in word.encode("utf-8")] for word in counted]  # each a list of tokens
    frequency = list(counted.values())
    pairs, where = collections.Counter(), collections.defaultdict(set)  # pair -> count; -> the words with it
    for w, word in enumerate(words):
        for pair in zip(word, word[1:]):
            pairs[pair] += frequency[w]
            where[pair].add(w)
    heap = [(-n, *pair) for pair, n in pairs.items()]  # the most frequent first, then in byte order
    heapq.heapify(heap)
    merges = []
    while len(merges) < vocab_size - 256 and heap:
        n, left, right = heapq.heappop(heap)
        if n == 0 or pairs[left, right] != -n:  # an old count: the pair's newer one is in the heap too
            continue
        merges.append((left, right))
        changed = set()
        for w in where.pop((left, right)):
            old, words[w] = words[w], merge(words[w], (left, right))
            delta = collections.Counter(zip(words[w], words[w][1:]))
            delta.subtract(zip(old, old[1:]))
            for pair, d in delta.items():
                pairs[pair] += d * frequency[w]
                changed.add(pair)
                if d > 0:
                    where[pair].add(w)
        for pair in changed:
            heapq.heappush(heap, (-pairs[pair], *pair))
    return merges

def learned_bpe(merges):
    """A GPT2Tokenizer of merges that train_bpe learned: ids 0-255 are the bytes, then one id a merge."""
    show = bytes_to_unicode()
    piece = lambda token: "".join(show[b] for b in token)  # noqa: E731  bytes -> printable, as GPT-2 writes
    pieces = [piece(bytes([b])) for b in range(256)] + [piece(left + right) for left, right in merges]
    return GPT2Tokenizer(pieces, [(piece(left), piece(right)) for left, right in merges])

def load_bpe(merges, encoder_json=None, vocab_bpe=None):
    """The BPE that tokenizer= chooses: tiktoken's, GPT2Tokenizer with GPT-2's files, or with the merges
    learned here. All three have the same methods (encode_ordinary, decode, ...)."""
    if tokenizer == "trained":
        return learned_bpe(merges)
    if tokenizer == "scratch":
        return GPT2Tokenizer(*read_gpt2(encoder_json, vocab_bpe))
    return tiktoken_encoding(encoding, encoder_json)  # after main

def make_tokenizer(vocab, bpe):
    """Text <-> the model's ids: vocab lists the BPE ids the model knows, and a model id is a place in it.
    A BPE id it does not know (the training text never has it) is spelled in its bytes, each of which is
    an id of every byte-level BPE: every text has model ids, and a rare token costs what its bytes cost."""
    index = {t: i for i, t in enumerate(vocab)}

    def spell(t):  # a BPE id -> the model ids of its bytes
        return [index[bpe.encode_single_token(bytes([b]))] for b in bpe.decode_single_token_bytes(t)]

    def encode(s):  # string -> list of ints
        return [i for t in bpe.encode_ordinary(s) for i in ([index[t]] if t in index else spell(t))]

    decode = lambda ids: bpe.decode([vocab[i] for i in ids])  # noqa: E731  list of ints -> string
    return encode, decode

# --------------------------------------------------------------------------------------------- model
class CausalSelfAttention(nn.Module):
    """All heads at once: one projection makes every head's query, key and value (the lecture's Head makes
    one head's, and MultiHeadAttention runs n_head of them one after the other)."""

    def __init__(self, n_embd, n_head, dropout):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.dropout = nn.Dropout(dropout)
        self.keep_weights = False  # True: the explicit path, which keeps the attention weights in .wei

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # each (B, T, C)
        hs = C // self.n_head  # head size
        q, k, v = (t.view(B, T, self.n_head, hs).transpose(1, 2) for t in (q, k, v))  # each (B, nh, T, hs)
        if self.keep_weights:  # the lecture's formula, for every head at once
            wei = q @ k.transpose(-2, -1) / math.sqrt(hs)  # (B, nh, T, T): affinities, scaled by 1/sqrt(hs)
            tril = torch.tril(torch.ones(T, T, device=x.device))
            self.wei = wei.masked_fill(tril == 0, float("-inf")).softmax(dim=-1)  # no token sees the future
            y = self.wei @ v  # (B, nh, T, hs)
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
    """Communication (attention) then computation (MLP), each pre-norm on a residual path (each a switch)."""

    def __init__(self, n_embd, n_head, dropout, mlp=True, residual=True, layernorm=True):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd) if layernorm else nn.Identity()
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln_2 = nn.LayerNorm(n_embd) if layernorm and mlp else nn.Identity()
        self.mlp = MLP(n_embd, dropout) if mlp else None
        self.residual = residual  # False: each part replaces x instead of adding to it

    def forward(self, x):
        x = (x if self.residual else 0) + self.attn(self.ln_1(x))
        if self.mlp:
            x = (x if self.residual else 0) + self.mlp(self.ln_2(x))
        return x

class GPT(nn.Module):
    def __init__(self, vocab_size, block_size, n_embd, n_head, n_layer, dropout, mlp=True, residual=True,
                 layernorm=True, init="gpt2", tie=True):
        super().__init__()
        self.block_size = block_size
        self.token_embedding = nn.Embedding(vocab_size, n_embd)
        self.position_embedding = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*[Block(n_embd, n_head, dropout, mlp, residual, layernorm)
                                      for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd) if layernorm else nn.Identity()
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=not tie)  # tie=False: a matrix, a bias of its own
        if tie:  # as in GPT-2: one matrix reads the tokens and writes them
            self.lm_head.weight = self.token_embedding.weight
        for name, p in self.named_parameters() if init == "gpt2" else []:  # else PyTorch's defaults stay
            if name.endswith("bias"):  # GPT-2's initialisation
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
            logits = logits[:, -1, :].float()  # (B, vocab_size): the last position, in float32 always
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
    """optimizer=muon: Muon for the matrices inside the blocks, AdamW for the rest (README.md says why);
    optimizer=adamw: AdamW for every parameter, as the lecture. Weight decay on matrices only."""
    in_blocks = [p for name, p in model.named_parameters() if name.startswith("blocks.") and p.dim() == 2]
    muon = in_blocks if optimizer == "muon" else []
    matrices = [p for p in model.parameters() if p.dim() == 2 and all(p is not m for m in muon)]
    others = [p for p in model.parameters() if p.dim() < 2]  # biases and norms
    groups = [{"params": matrices, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}]
    fused = not device.startswith("mps")  # one kernel for the whole update, on CUDA and the CPU
    adamw = torch.optim.AdamW(groups, lr=learning_rate, betas=(0.9, beta2), fused=fused)
    return [Muon(muon, lr=learning_rate, weight_decay=weight_decay), adamw] if muon else [adamw]

# ------------------------------------------------------------------------------------------ training
def get_batch(data, generator=None):
    """batch_size random windows of data: inputs x and targets y, y shifted by one. Each (B, T)."""
    ix = torch.randint(len(data) - block_size, (batch_size, 1), generator=generator)
    window = data[ix + torch.arange(block_size + 1)]  # (B, T+1)
    return window[:, :-1].to(device), window[:, 1:].to(device)

@torch.no_grad()
def estimate_loss(model, data, ctx):
    """Mean loss per token: of every val token once (in windows of block_size, the first read after the
    last training token), and of eval_iters random batches of the train split, the same at every call."""
    model.eval()
    stream = torch.cat([data["train"][-1:], data["val"]])  # every val token a target once: stream[1:]
    pad = -(len(stream) - 1) % block_size  # the last window filled up with targets -1, which do not count
    x = F.pad(stream[:-1], (0, pad)).view(-1, block_size).to(device)  # (n, T)
    y = F.pad(stream[1:], (0, pad), value=-1).view(-1, block_size).to(device)  # (n, T)
    generator = torch.Generator().manual_seed(seed)
    batches = {"train": [get_batch(data["train"], generator) for _ in range(eval_iters)],
               "val": list(zip(x.split(batch_size), y.split(batch_size)))}
    losses = {}
    for split, pairs in batches.items():
        with ctx:
            total = sum(model(x, y)[1].float() * (y >= 0).sum() for x, y in pairs)
        losses[split] = total.item() / sum((y >= 0).sum().item() for _, y in pairs)
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
    eval_interval steps and at the end. run is what the checkpoint keeps besides the model and optimizers."""
    first, started, last = run["step"], time.time(), time.time()
    tokens, recent = 0, []
    for step in range(first, max_iters + 1):  # a resumed run has evaluated its first step already
        evaluating = (step % eval_interval == 0 or step == max_iters) and (step > first or not run["history"])
        if evaluating or (step % log_interval == 0 and step > first):
            now, line = time.time(), f"step {step}/{max_iters}"
            if recent:  # the mean loss of the batches since the last line, for the loss picture too
                run["progress"].append((step, torch.stack(recent).mean().item()))
            if evaluating:
                losses, report = evaluate(model, data, ctx)
                line += f" | {report}"
            else:
                line += f" | loss {run['progress'][-1][1]:.4f}"
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
def sample(model, encode):
    """The prompt start= continued by max_new_tokens tokens, with dropout off, in float32 (no autocast: the
    temperature and top_k work on exact logits): ids (1, T)."""
    model.eval()
    idx = torch.tensor([encode(start)], dtype=torch.long, device=device)  # (1, T)
    return model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k or None)

# ---------------------------------------------------------------------------------------------- main
def main():
    given = configure(sys.argv)
    checkpoint = load_checkpoint(given) if resume or max_iters == 0 else None  # it sets the model's sizes
    ctx, scaler = set_up_device()
    named = [TEXTS[dataset]] if dataset in TEXTS else []  # else a file of one's own, read as it is
    gpt2 = [] if tokenizer == "trained" else ["gpt2/encoder.json", "gpt2/vocab.bpe"]  # GPT-2's two files
    files = data_files(*named, *gpt2)
    text = load_text(files[0] if named else dataset)
    train_text, val_text = split_text(text)
    merges = checkpoint["vocab"]["merges"] if checkpoint else []
    if tokenizer == "trained" and not checkpoint:  # from the training text alone
        started = time.time()
        merges = train_bpe(train_text, vocab_size)
        print(f"{SCRIPT}: {len(merges):,} merges learned from the training text in "
              f"{time.time() - started:.1f} s")
    bpe = load_bpe(merges, *files[len(named):])
    known = set(bpe.encode_ordinary(train_text)) | {bpe.encode_single_token(bytes([b])) for b in range(256)}
    ids = sorted(known) if compact_vocab else list(range(bpe.n_vocab))  # the BPE ids the model knows
    encode, decode = make_tokenizer(ids, bpe)
    data = {"train": torch.tensor(encode(train_text)), "val": torch.tensor(encode(val_text)),
            "val_characters": len(val_text)}
    check_prompt([], data)  # every prompt has ids (make_tokenizer)
    model = GPT(len(ids), block_size, n_embd, n_head, n_layer, dropout, mlp, residual, layernorm, init, tie)
    optimizers = make_optimizers(model.to(device))
    tokens = len(data["train"]) + len(data["val"])
    print(f"{SCRIPT}: device {device} | {sum(p.numel() for p in model.parameters()):,} parameters | "
          f"{dataset}: {len(text):,} characters, {tokens:,} tokens of {tokenizer} ({len(text) / tokens:.2f} "
          f"characters a token), vocabulary {len(ids)} | val {len(val_text):,} characters")
    vocab = {"ids": ids, "merges": merges}  # what decoding needs, in the checkpoint
    run = restore(checkpoint, model, optimizers, scaler, vocab)
    if max_iters > run["step"]:
        train(model, optimizers, scaler, ctx, data, run)
        plot_losses(run)
    out = sample(model, encode)
    print(f"--- sample, prompt {start!r}, temperature {temperature} ---\n{decode(out[0].tolist())}")

# ===================================================================================================
# Plumbing, the same in every script: settings, errors, device, data files, checkpoints, pictures.
# ===================================================================================================
SCRIPT = "gpt_bpe"
MODEL_KEYS = ("dataset", "tokenizer", "encoding", "vocab_size", "compact_vocab", "block_size", "n_embd",
              "n_head", "n_layer", "mlp", "residual", "layernorm", "tie", "optimizer")  # its model
KEEP = ("device", "out_dir", "resume", "start", "max_new_tokens", "temperature", "top_k")  # never from it

def setting_problems():
    return [message for ok, message in [
        (device in devices(), f"device={device!r} is not one of this machine's: {', '.join(devices())}"),
        (dataset in TEXTS or os.path.isfile(dataset),
         f"dataset={dataset!r} is not one of {', '.join(TEXTS)}, nor the path of a text file"),
        (tokenizer in ("tiktoken", "scratch", "trained"),
         f"tokenizer={tokenizer!r} is not tiktoken, scratch or trained"),
        (tokenizer != "scratch" or encoding == "gpt2",
         "tokenizer=scratch is GPT-2's BPE: it needs encoding=gpt2"),
        (vocab_size >= 256, f"vocab_size={vocab_size} is less than the 256 bytes"),
        (min(batch_size, block_size, n_layer, n_head, n_embd, eval_interval, eval_iters, log_interval) > 0,
         "batch_size, block_size, n_layer, n_head, n_embd, eval_iters and the intervals must be > 0"),
        (n_embd % n_head == 0, f"n_embd={n_embd} is not divisible by n_head={n_head}"),
        (0 <= dropout < 1, f"dropout={dropout} is not in [0, 1)"),
        (0 <= min_lr <= learning_rate and learning_rate > 0, "learning_rate must be > 0, min_lr in [0, it]"),
        (min(max_iters, max_new_tokens, top_k, temperature, warmup_iters, grad_clip) >= 0,
         "max_iters, max_new_tokens, top_k, temperature, warmup_iters and grad_clip must be >= 0"),
        (optimizer in ("muon", "adamw") and init in ("gpt2", "pytorch") and 0 <= beta2 < 1,
         f"optimizer={optimizer!r} init={init!r} beta2={beta2}: muon or adamw, gpt2 or pytorch, in [0, 1)"),
        (start != "", "the prompt start= must not be empty"),
        (0 <= seed < 2**63, f"seed={seed} is not in [0, 2**63)"),
    ] if not ok]

def devices():
    gpus = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    apple = ["mps"] if torch.backends.mps.is_available() else []
    return ["cpu", *(["cuda", *gpus] if gpus else []), *apple]

def check_prompt(unknown, data):
    if unknown:
        die(f"the prompt start={start!r} has characters that never occur in {dataset}: "
            f"{', '.join(map(repr, unknown))}; set start= to a prompt of its characters")
    if block_size >= min(len(data["train"]), len(data["val"])):
        die(f"dataset={dataset} is too short for block_size={block_size}: {len(data['train']):,} tokens to "
            f"train on, {len(data['val']):,} to validate on; each needs more than block_size")

class Stopped(Exception):  # a mistake, in a notebook: IPython shows _render_traceback_, not a traceback
    _render_traceback_ = lambda self: [str(self)]  # noqa: E731

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
        die(f"interrupted; {checkpoint_path()} holds the last evaluation: resume=true{where} goes on from it"
            if os.path.isfile(checkpoint_path()) else "interrupted; no checkpoint was written", 130)
    except RuntimeError as e:  # torch.cuda.OutOfMemoryError is one
        if "out of memory" not in str(e) and "can't allocate memory" not in str(e):
            raise
        die(f"out of memory on {device}: make batch_size, block_size or the model smaller")

def configure(argv):
    """Set the hyperparameters from name=value arguments; return the names set. device= picks the sizes()
    and lecture= a preset of LECTURE, where a script has them; the others win. A notebook sets all."""
    notebook = "kernel_launcher" in os.path.basename(argv[0] if argv else "") or "__file__" not in globals()
    args, given = ([], set(SETTINGS)) if notebook else (argv[1:], set())
    values, valid = {}, "valid settings: " + " ".join(f"{k}={globals()[k]!r}" for k in SETTINGS)
    for arg in (a for a in args if a not in ("-h", "--help")):
        name, eq, text = arg.lstrip("-").partition("=")
        if not eq or name not in SETTINGS:
            close = difflib.get_close_matches(name, SETTINGS, 1)
            die(f"unknown setting {arg!r}{f' (did you mean {close[0]}=...?)' if close else ''}; {valid}", 2)
        kind, words = type(globals()[name]), ("false", "0", "true", "1")  # a bool's, in any case
        try:
            values[name] = words.index(text.lower()) > 1 if kind is bool else kind(text)
        except ValueError:
            die(f"{name}={text!r} is not a valid {kind.__name__}{f' {words}' * (kind is bool)}; {valid}", 2)
        if kind is float and not math.isfinite(values[name]):
            die(f"{name}={text!r} is not a finite number", 2)
    if "device" in values and "sizes" in globals():
        sizes(values["device"])
    globals().update(values)  # first: a checkpoint's settings (resume, max_iters=0) replace a preset's
    rungs = {} if (resume or max_iters == 0) and not notebook else globals().get("LECTURE", {})
    rung = rungs.get(name := globals().get("lecture"), {})  # in a notebook, over the lines above
    globals().update({**rung, **values})
    if (own := globals().get("dataset", "")) not in globals().get("TEXTS", {}) and os.path.isfile(own):
        globals()["dataset"] = os.path.abspath(own)  # a text of one's own: a checkpoint finds it anywhere
    given |= set(rung) | set(values)
    if {"-h", "--help"} & set(args):  # the docstring, then the settings as they would be used, explained
        with open(__file__, encoding="utf-8") as f:
            notes = dict(reversed(re.findall(r"^ *(\w+) = .*?  # (.*)$", f.read(), re.M)))  # a name's first
        print(__doc__.strip(), "\nSettings (name=value), as they would be used here:",
              *(f"  {f'{k}={globals()[k]!r}':<26} {notes.get(k, '')}" for k in SETTINGS),
              *(f"lecture={n} sets {' '.join(f'{k}={v}' for k, v in preset.items())}"
                for n, preset in globals().get("LECTURE", {}).items()), sep="\n")
        sys.exit(0)
    if rung:  # said: in a notebook it replaces the lines above
        print(f"lecture={name} sets", *(f"{k}={v}" for k, v in rung.items() if k not in values))
    for problem in [] if resume or max_iters == 0 else setting_problems()[:1]:  # else in load_checkpoint
        die(problem, 2)
    parent = os.path.abspath(out_dir)  # out_dir, or the folder that will hold it: a folder one can write in
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    writable = os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK)
    if not writable or os.path.isdir(checkpoint_path()) or os.path.isfile(os.path.join(out_dir, "previous")):
        die(f"out_dir={out_dir!r} is not a folder this script can write {SCRIPT}.pt and previous/ in", 2)
    return given

def set_up_device():
    """Seed; on CUDA: TF32, and bf16 autocast where the GPU has bf16 in hardware (8.0+), else fp16 (a T4)."""
    torch.manual_seed(seed)
    kind, dtype = device.split(":")[0], torch.float32
    if kind == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        dtype = torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
    ctx = nullcontext() if dtype == torch.float32 else torch.autocast(kind, dtype=dtype)
    return ctx, torch.amp.GradScaler(kind, enabled=dtype == torch.float16)

HERE = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else "."  # a notebook: ./
DATA_DIR = os.path.join(HERE, "data")
DATA_FILES = {  # name in data/: (download URL, SHA-256, which a download must match)
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
    """The paths of data/NAME, each checked against its SHA-256, downloaded if missing; else every problem."""
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

def sha256_of(path):  # None for what is not a readable file: a folder, say
    if os.path.isfile(path) and os.access(path, os.R_OK):
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

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

def read_text(path):
    """A file's text, or one sentence: a file that cannot be read, is empty, binary or not UTF-8."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:  # UnicodeDecodeError: a binary file, or another encoding
        die(f"{path} is not UTF-8 text" if isinstance(e, UnicodeError) else f"could not read {path} ({e})")
    if "\x00" in text or not text.strip():
        die(f"{path} is {'a binary file, not text' if text.strip() else 'empty, or only white space'}")
    return text

def read_atticus(path):
    """Cicero's letters from a Perseus TEI file, EpiDoc or the older hopper markup: dateline, salute, body."""
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
        tags = [letter.find(attrs={"rend": name}) or letter.find(name) for name in ("dateline", "salute")]
        parts = [" ".join(tag.extract().get_text().split()) if tag else "" for tag in tags]
        letters.append("\n".join([*parts, " ".join(letter.get_text().split())]))  # then the rest
    return "\n\n".join(letters)

def regex_module():
    """The regex module: re with \\p{L} (any letter) and \\p{N} (any number). tiktoken depends on it."""
    try:
        import regex
    except ImportError:
        die(f"tokenizer={tokenizer} needs the regex module: pip install regex")
    return regex

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
    die(f"{checkpoint_path()} is not a checkpoint {SCRIPT}.py can use ({why}): train anew, or change out_dir")

def load_checkpoint(given):
    """The checkpoint for resume=true or max_iters=0: its settings replace those not given, but KEEP's."""
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
    clash = [f"{k}={config[k]!r}" for k in MODEL_KEYS if k in given and config[k] != globals()[k]
             and not (k == "dataset" and os.path.isfile(dataset))]  # one's own text: its vocabulary tells
    if clash:
        die(f"{path} was trained with {' '.join(clash)}: leave those settings out (or set them so), "
            f"or set out_dir= another folder")
    globals().update({k: v for k, v in config.items() if k not in given and k not in KEEP})
    for problem in setting_problems()[:1]:  # the checkpoint's settings and the ones given, together
        die(problem, 2)
    return checkpoint

def restore(checkpoint, model, optimizers, scaler, vocab):
    """The run so far: a new one, or the checkpoint's (model; to resume, optimizers, scaler, random state)."""
    path, kept = checkpoint_path(), os.path.join(out_dir, "previous")
    if checkpoint is None:  # a new run: the checkpoint of the run before, unless it trained nothing, is kept
        try:
            step = os.path.isfile(path) and torch.load(path, map_location="cpu", weights_only=True)["step"]
        except Exception:  # not a checkpoint this script can read: kept all the same
            step = "?"
        if step:  # 0, or False: no file
            os.renames(path, os.path.join(kept, f"{SCRIPT}.pt"))  # making the folder first
            print(f"the previous run's checkpoint (step {step}) is now {kept}/{SCRIPT}.pt: resume=true "
                  f"out_dir={kept} goes on from it (one run back is kept, no more)")
        return {"vocab": vocab, "step": 0, "history": [], "progress": [], "best_val_loss": math.inf}
    try:
        if checkpoint["vocab"] != vocab:
            raise ValueError("its text had another vocabulary")
        model.load_state_dict(checkpoint["model"])
        if resume:
            for optimizer, state in zip(optimizers, checkpoint["optimizer"], strict=True):
                state["param_groups"] = [{**old, **{k: v for k, v in new.items() if k != "params"}}
                                         for old, new in zip(state["param_groups"], optimizer.param_groups)]
                optimizer.load_state_dict(state)  # with this run's settings, not the saved ones
            if checkpoint["scaler"]:  # empty unless it was trained in fp16
                scaler.load_state_dict(checkpoint["scaler"])
            torch.set_rng_state(checkpoint["rng"]["cpu"])
            if (kind := device.split(":")[0]) in checkpoint["rng"] and kind != "cpu":  # dropout on a GPU
                getattr(torch, kind).set_rng_state(checkpoint["rng"][kind], device)
        run = {k: checkpoint[k] for k in "vocab step history progress val_loss best_val_loss".split()}
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        unusable(e if isinstance(e, ValueError) else type(e).__name__)
    print(f"loaded {path}: step {run['step']}, val {run['val_loss']:.4f}")
    if resume and run["step"] >= max_iters:
        print(f"max_iters={max_iters} is reached already: nothing to train; set max_iters= higher to go on")
    return run

def save_checkpoint(model, optimizers, scaler, run, step, val_loss):
    """All an exact resume needs, to a temporary file then renamed: never half a checkpoint."""
    path = checkpoint_path()
    kept = f"{path} keeps the last evaluation" if os.path.isfile(path) else "no checkpoint was written"
    if not math.isfinite(val_loss):
        die(f"the val loss is {val_loss} at step {step}: lower learning_rate ({kept})")
    run.update(step=step, val_loss=val_loss, best_val_loss=min(run["best_val_loss"], val_loss))
    rng = {"cpu": torch.get_rng_state()}  # the batches, and dropout on the CPU
    if (kind := device.split(":")[0]) != "cpu":  # dropout on a GPU
        rng[kind] = getattr(torch, kind).get_rng_state(device)
    try:
        os.makedirs(out_dir, exist_ok=True)
        torch.save({**run, "script": SCRIPT, "config": {k: globals()[k] for k in SETTINGS}, "rng": rng,
                    "model": model.state_dict(), "optimizer": [o.state_dict() for o in optimizers],
                    "scaler": scaler.state_dict()}, path + ".tmp")
        os.replace(path + ".tmp", path)
    except (OSError, RuntimeError) as e:  # a full disk, say
        die(f"could not write {path} ({e}); {kept}")
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
    """To out_dir/SCRIPT_NAME.png; in a notebook, shown in the cell too."""
    path = os.path.join(out_dir, f"{SCRIPT}_{name}.png")
    try:
        os.makedirs(out_dir, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
        print(f"{name} picture saved to {path}")
    except OSError as e:
        return print(f"could not save {path} ({e})")
    if hasattr(getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)(), "kernel"):  # a notebook
        from IPython.display import Image, display
        display(Image(filename=path))

def plot_losses(run):
    """The loss of the batches of every progress line, and the train and val loss of every evaluation."""
    if not (fig := figure(figsize=(6, 4))):
        return
    ax = fig.subplots()
    ax.plot(*zip(*run["progress"]), color="C0", alpha=0.35)
    steps, train, val = zip(*run["history"])
    ax.plot(steps, train, "o-C0", steps, val, "o-C1")
    ax.set(xlabel="step", ylabel="loss (nats per token)")
    ax.set_title(f"{SCRIPT}.py " + " ".join(f"{k}={globals()[k]!r}" for k in MODEL_KEYS), size=8, wrap=True)
    ax.legend(["train, the batches of each line", "train", "val"])
    save_figure(fig, "loss")

if __name__ == "__main__":
    with clear_errors():
        main()
