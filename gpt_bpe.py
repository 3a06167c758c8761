"""
Step 3 of "Let's build GPT": step 2's GPT made the way GPT-2, nanoGPT and nanochat make it, reading
subword tokens (BPE) of Cicero's Letters to Atticus.

Each change from step 2 sits where it lives, says why, and has a setting that takes it back, so that its
worth can be measured: every head from one projection, in one fused attention (CausalSelfAttention); the
output layer tied to the token embedding (tie=false); GPT-2's initialisation (init=pytorch); warm-up and
cosine decay (warmup_iters=0 min_lr=learning_rate: constant); gradient clipping (grad_clip=0); 16-bit
floats on a GPU; Muon for the blocks' matrices, AdamW with weight decay on matrices only for the rest
(optimizer=adamw).

The tokens: GPT-2's, through tiktoken or through GPT2Tokenizer below (the same ids, in some fifty lines),
or a BPE learned here from the training text (train_bpe). Only the ids of the training text and the 256
bytes get an embedding: a token the training text lacks is spelled in its bytes.

Run:   python gpt_bpe.py                      Cicero, GPT-2's BPE (dataset=shakespeare, or a text file)
       python gpt_bpe.py tokenizer=trained    a BPE of vocab_size=2048 ids learned from the letters
       python gpt_bpe.py dataset=shakespeare tokenizer=trained vocab_size=256   step 2's characters
       python gpt_bpe.py max_iters=0          only sample, from out/gpt_bpe.pt
       python gpt_bpe.py --help               every setting, its value here and its meaning

Expect: 2.064 bits per character in 189 s on 2 cores of an AMD EPYC CPU (tokenizer=trained: 1.978 in 162 s),
and a letter that begins "Scr. Romae" with a dateline and goes on in Latin.
"""

import collections
import heapq
import json
import math
import os
import time
from contextlib import nullcontext

import torch
import torch.nn as nn
from torch.nn import functional as F

# hyperparameters: the lecture's sizes, step 3's recipe -------------
batch_size = 64  # how many independent sequences will we process in parallel?
block_size = 256  # what is the maximum context length for predictions? In tokens
max_iters = 5000  # steps of the optimizers
eval_interval = 500  # steps between evaluations, and checkpoints
learning_rate = 1e-3  # the peak, after warm-up: Muon's and AdamW's
device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
eval_iters = 200  # train batches per loss estimate (the val loss reads all of val)
n_embd = 384  # the width of each position's vector
n_head = 6  # heads per block, each n_embd // n_head wide
n_layer = 6  # blocks
dropout = 0.2  # the share zeroed while training, 0 to < 1
# ... step 3's changes, each with the value that takes it back
min_lr = 1e-4  # where cosine decay ends, at max_iters; = learning_rate: constant
warmup_iters = 100  # steps of linear warm-up; 0: none
grad_clip = 1.0  # the largest gradient norm; 0: no clipping
optimizer = "muon"  # muon: Muon for the blocks' matrices, AdamW the rest | adamw: AdamW for all
weight_decay = 0.1  # on matrices only
tie = True  # the output layer is the token embedding's matrix; false: a matrix of its own
init = "gpt2"  # gpt2: normal(0, 0.02), projections to the residual smaller | pytorch: PyTorch's
# ... the tokens
tokenizer = "tiktoken"  # GPT-2's BPE: tiktoken, or scratch (GPT2Tokenizer) | trained: learned here
vocab_size = 2048  # tokenizer=trained: the 256 bytes, then a merge each
compact_vocab = True  # embed only the ids of the training text and the 256 bytes
# ... and the run's
dataset = "atticus"  # or shakespeare, or the path of a UTF-8 text
seed = 1337  # same seed and device, same losses
log_interval = 50  # steps between progress lines
out_dir = "out"  # for the checkpoint and the pictures
resume = False  # go on from out_dir/gpt_bpe.pt
start = "Scr. Romae"  # the prompt the sample continues: how a letter's dateline begins
max_new_tokens = 200  # tokens to sample
temperature = 0.8  # < 1 sharper, > 1 wilder; 0: always the likeliest
top_k = 0  # draw among the k likeliest only; 0: all
# on a CPU or an Apple GPU (mps) these replace the values above, to train in minutes:
LAPTOP = dict(batch_size=16, block_size=64, max_iters=1500, eval_interval=500, learning_rate=3e-3,
              min_lr=3e-4, eval_iters=20, n_embd=128, n_head=4, n_layer=4, dropout=0.0)

# data and tokenizer ------------------------------------------------
TEXTS = {"shakespeare": "tinyshakespeare.txt", "atticus": "atticus.xml"}  # dataset= -> data/NAME
GPT2 = ["gpt2/encoder.json", "gpt2/vocab.bpe"]  # GPT-2's ids and merges, the files tiktoken downloads

def read_atticus(path):  # Cicero's letters in Perseus TEI, EpiDoc or hopper: dateline, salute, body
    from bs4 import BeautifulSoup
    import lxml  # noqa: F401  the XML parser of BeautifulSoup(..., "xml")
    soup, letters = BeautifulSoup(open(path, encoding="utf-8"), "xml"), []
    for letter in soup.find_all("div", subtype="letter") or soup.find_all("div2"):
        for tag in letter.find_all(["del", "expan", "note"]):  # the editor's deletions, expansions, notes
            tag.decompose()
        for tag in letter.find_all(["p", "l"]):
            tag.append(" ")  # a paragraph or a verse ends a word, even with no space after it
        tags = [letter.find(attrs={"rend": name}) or letter.find(name) for name in ("dateline", "salute")]
        parts = [" ".join(tag.extract().get_text().split()) if tag else "" for tag in tags]
        letters.append("\n".join([*parts, " ".join(letter.get_text().split())]))  # then the rest
    return "\n\n".join(letters)

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
        import regex  # re, with \p{L} (a letter) and \p{N} (a number): tiktoken's own
        self.split = regex.compile(GPT2_SPLIT)
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
    import regex
    counted = collections.Counter(regex.findall(GPT2_SPLIT, text))
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

def tiktoken_gpt2(encoder_json):
    """tiktoken's "gpt2" encoding, built from data/gpt2/ (tiktoken would download the same files): GPT-2's
    ids are the ranks of its merges, and its split is GPT2_SPLIT written for tiktoken's regex engine."""
    import tiktoken
    from tiktoken_ext.openai_public import r50k_pat_str
    byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
    with open(encoder_json, encoding="utf-8") as f:
        ranks = {bytes(byte_decoder[c] for c in piece): i for piece, i in json.load(f).items() if i != 50256}
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})

def load_bpe(merges, encoder_json=None, vocab_bpe=None):
    """The BPE that tokenizer= chooses: tiktoken's GPT-2, GPT2Tokenizer with GPT-2's files, or with the
    merges learned here. All three have the same methods (encode_ordinary, decode, ...)."""
    if tokenizer == "trained":
        return learned_bpe(merges)
    if tokenizer == "scratch":
        return GPT2Tokenizer(*read_gpt2(encoder_json, vocab_bpe))
    return tiktoken_gpt2(encoder_json)

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

def train(model, optimizers, train_data, val_data, run, characters):
    """Step 2's loop, the GPT-2 way: the learning rate warms up, then decays; the gradient is clipped; on a
    GPU the forward pass runs in 16 bits. characters: the val text's, for the bits per character."""
    ctx, scaler = autocast()
    for iter in range(run.step, max_iters + 1):

        # every once in a while evaluate the loss on train and val sets (after the last step too; a resumed
        # run's first step has its evaluation in the checkpoint)
        if (iter % eval_interval == 0 or iter == max_iters) and iter != run.resumed:
            run.evaluating(iter)
            with ctx:
                losses = estimate_loss(model, train_data, val_data)
            bpc = losses["val"] / math.log(2) * len(val_data) / characters  # tokens are not characters
            run.evaluated(iter, losses, f"val bpc {bpc:.3f}")
        if iter == max_iters:
            break
        torch.manual_seed(seed + 1_000_003 * iter)  # the step's batch and dropout, from seed and step alone
        for optimizer in optimizers:  # warm-up, then cosine decay
            for group in optimizer.param_groups:
                group["lr"] = get_lr(iter)

        # sample a batch of data
        xb, yb = get_batch(train_data)

        # evaluate the loss, in 16 bits on a GPU
        with ctx:
            logits, loss = model(xb, yb)
        scaler.scale(loss).backward()  # in fp16, scaled up first, so that small gradients stay above 0
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
def sample(model, encode):  # the prompt start=, continued by max_new_tokens tokens, with dropout off
    model.eval()
    context = torch.tensor([encode(start)], dtype=torch.long, device=device)
    return model.generate(context, max_new_tokens, temperature, top_k)[0].tolist()

# main --------------------------------------------------------------
def main():
    checkpoint = configure(device=dict(cpu=LAPTOP, mps=LAPTOP))  # these functions (configure, data_files,
    torch.manual_seed(seed)  # load_text, check_data, Run) are below main()
    needed = [TEXTS[dataset]] if dataset in TEXTS else []
    if tokenizer != "trained":
        needed += GPT2  # GPT-2's ids and merges
    data_files(*needed)  # downloaded if missing, all at once
    text = load_text(dataset)
    n = int(0.9 * len(text))  # the first 90% of the characters to train on: the same cut as in step 2
    train_text, val_text = text[:n], text[n:]
    merges = checkpoint["vocab"]["merges"] if checkpoint else []
    if tokenizer == "trained" and not checkpoint:  # from the training text alone
        t = time.time()
        merges = train_bpe(train_text, vocab_size)
        print(f"{len(merges):,} merges learned from the training text in {time.time() - t:.1f} s")
    bpe = load_bpe(merges, *(os.path.join(DATA_DIR, name) for name in GPT2))
    known = set(bpe.encode_ordinary(train_text)) | {bpe.encode_single_token(bytes([b])) for b in range(256)}
    ids = sorted(known) if compact_vocab else list(range(bpe.n_vocab))  # the BPE ids the model knows
    encode, decode = make_tokenizer(ids, bpe)
    train_data = torch.tensor(encode(train_text), dtype=torch.long)
    val_data = torch.tensor(encode(val_text), dtype=torch.long)
    check_data(train_data, val_data)
    model = GPT(len(ids), block_size, n_embd, n_head, n_layer, dropout).to(device)
    tokens = len(train_data) + len(val_data)
    print(f"{sum(p.numel() for p in model.parameters()):,} parameters | device {device} | "
          f"{dataset}: {len(text):,} characters, {len(val_text):,} characters to validate")
    print(f"{tokens:,} tokens ({tokenizer}), {len(ids):,} distinct, {len(text) / tokens:.2f} characters each")
    optimizers = make_optimizers(model)
    run = Run(checkpoint, {"ids": ids, "merges": merges}, model, *optimizers)
    if run.step < max_iters:
        train(model, optimizers, train_data, val_data, run, len(val_text))
        run.plot()
    # generate from the model
    ids = sample(model, encode)
    print(f"--- sample, temperature {temperature} ---\n{decode(ids)}")

# Plumbing ========= the same in every script: settings, data, checkpoints, progress, pictures, errors
import datetime, difflib, os, re, socket, sys, tempfile, textwrap, time  # noqa: E401,E402

SCRIPT = "gpt_bpe"
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
        (tokenizer not in ("tiktoken", "scratch", "trained"),
         f"tokenizer={tokenizer!r} is not tiktoken, scratch or trained"),
        (vocab_size < 256, f"vocab_size={vocab_size} is less than the 256 bytes"),
        (min(batch_size, block_size, n_embd, n_head, eval_interval, eval_iters, log_interval) < 1,
         "batch_size, block_size, n_embd, n_head, eval_interval, eval_iters, log_interval: 1 or more"),
        (n_embd % max(1, n_head), f"n_embd={n_embd} is not divisible by n_head={n_head}"),
        (dropout >= 1, f"dropout={dropout} is not below 1"),
        (optimizer not in ("muon", "adamw") or init not in ("gpt2", "pytorch"),
         "optimizer= is muon or adamw, init= gpt2 or pytorch"),
        (min_lr > learning_rate, f"min_lr={min_lr} is above learning_rate={learning_rate}"),
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

DATA_FILES = {  # data/NAME: where it is downloaded from, and its SHA-256
    "tinyshakespeare.txt": (
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),
    "atticus.xml": (
        "https://raw.githubusercontent.com/PerseusDL/canonical-latinLit/1066a551aa5445ab165e9b490a6bb06ce"
        "72828da/data/phi0474/phi057/phi0474.phi057.perseus-lat1.xml",
        "82e361a4dcf554470eab9daba9cc02b0e0ea34d13dc4ae3bf35ea98d2b18f3fe"),
    "gpt2/encoder.json": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
                          "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
    "gpt2/vocab.bpe": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
                       "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
}

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

def load_text(dataset):  # Shakespeare's plays, Cicero's letters out of their XML, or a text file
    path = data_files(TEXTS[dataset])[0] if dataset in TEXTS else dataset
    if dataset == "atticus":
        return read_atticus(path)
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
