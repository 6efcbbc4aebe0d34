"""A small character-level transformer language model on generated text: a training function
for `benchmarks/advise_accuracy.py` (and a realistic user model: nothing here was tuned for
dropkit).

The text is a made-up language: 400 words of 1-3 syllables, sentences drawn from a word-bigram
model (a Zipf unigram mixed with five favourite successors per word). ``params.shift`` draws the
held-out end of the corpus (validation and test) from a second style of the same language
(other favourites, another frequency order), as the end of a real corpus, a later period or
another site differs from what came before. The model is a 2-layer pre-norm GPT (width 64,
4 heads, context 64) with dropout after attention and the MLP, driven by the trial's schedule.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import dropkit
from dropkit.experiments import Trial

CONTEXT = 64


def _language(rng: np.random.RandomState) -> list[str]:
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    words: set[str] = set()
    while len(words) < 400:
        words.add("".join(rng.choice(syllables, size=rng.randint(1, 4))))
    return sorted(words)


def _style(rng: np.random.RandomState, n: int) -> tuple[np.ndarray, np.ndarray]:
    unigram = 1.0 / np.arange(1, n + 1) ** 1.1
    unigram = unigram[rng.permutation(n)]
    unigram /= unigram.sum()
    favourites = np.stack([rng.choice(n, size=5, replace=False) for _ in range(n)])
    return unigram, favourites


def _text(n_chars: int, words: list[str], style, rng: np.random.RandomState) -> str:
    unigram, favourites = style
    out: list[str] = []
    length = 0
    word = rng.choice(len(words), p=unigram)
    while length < n_chars:
        sentence = []
        for _ in range(rng.randint(4, 13)):
            sentence.append(words[word])
            word = (
                favourites[word, rng.randint(5)]
                if rng.rand() < 0.6
                else rng.choice(len(words), p=unigram)
            )
        text = " ".join(sentence).capitalize() + (". " if rng.rand() < 0.8 else ", ")
        out.append(text)
        length += len(text)
    return "".join(out)[:n_chars]


def corpus(n_chars: int, shift: bool) -> str:
    """The corpus: its last 20% (validation then test) in a second style when ``shift``."""
    rng = np.random.RandomState(0)
    words = _language(rng)
    first = _style(rng, len(words))
    second = _style(rng, len(words)) if shift else first
    head = round(0.8 * n_chars)
    return _text(head, words, first, rng) + _text(n_chars - head, words, second, rng)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.drop_attn, self.drop_mlp = nn.Dropout(0.0), nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        attn = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        x = x + self.drop_attn(self.proj(attn.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop_mlp(self.mlp(self.norm2(x)))


class CharGPT(nn.Module):
    def __init__(self, vocab: int, dim: int = 64, depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.position = nn.Parameter(torch.zeros(CONTEXT, dim))
        self.blocks = nn.Sequential(*(Block(dim, heads) for _ in range(depth)))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.position[: tokens.shape[1]]
        return self.head(self.norm(self.blocks(x)))


def _windows(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows of the context's length: inputs and next-character targets."""
    n = (len(ids) - 1) // CONTEXT
    return ids[: n * CONTEXT].view(n, CONTEXT), ids[1 : n * CONTEXT + 1].view(n, CONTEXT)


def _loss(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    model.eval()
    with torch.no_grad():
        x, y = data
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
    model.train()
    return loss


def train(trial: Trial) -> dict[str, float]:
    params = {"chars": 200_000, "shift": False, "steps": 600, "batch_size": 32, "lr": 3e-3,
              "warmup_frac": 1 / 6, "dim": 64, "depth": 2, **trial.params}  # fmt: skip
    text = corpus(params["chars"], params["shift"])
    alphabet = sorted(set(text))
    ids = torch.tensor([alphabet.index(c) for c in text])
    cut_val, cut_test = round(0.8 * len(ids)), round(0.9 * len(ids))
    train_ids = ids[:cut_val]
    val, test = _windows(ids[cut_val:cut_test]), _windows(ids[cut_test:])
    train_eval = _windows(train_ids[: len(ids) - cut_test])  # as many characters as the test
    torch.manual_seed(trial.seed)
    model = CharGPT(len(alphabet), params["dim"], params["depth"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=params["lr"], weight_decay=0.05)
    total = params["steps"]
    warmup = max(1, round(params["warmup_frac"] * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / warmup if s < warmup
        else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))),
    )  # fmt: skip
    dropout = dropkit.DropoutScheduler(model, total, dropout=trial.dropout)
    order = torch.Generator().manual_seed(trial.seed)
    stop = max(1, round(trial.budget * total))
    every = max(1, total // 40)
    for step in range(1, stop + 1):
        start = torch.randint(0, len(train_ids) - CONTEXT - 1, (params["batch_size"],),
                              generator=order)  # fmt: skip
        x = torch.stack([train_ids[s : s + CONTEXT] for s in start.tolist()])
        y = torch.stack([train_ids[s + 1 : s + CONTEXT + 1] for s in start.tolist()])
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        dropout.step()
        if step % every == 0 or step == stop:
            trial.log(step, train_loss=loss.item(), val_loss=_loss(model, val))
    return {"train_loss": _loss(model, train_eval), "val_loss": _loss(model, val),
            "test_loss": _loss(model, test)}  # fmt: skip
