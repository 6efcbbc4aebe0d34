"""Shared pieces of the benchmarks: the small transformer classifier and a step timer."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn


class TinyTransformerClassifier(nn.Module):
    """A ViT-sized-down classifier over token sequences: encoder, mean pool, linear head."""

    def __init__(self, dim: int = 64, depth: int = 4, classes: int = 10, p: float = 0.1) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            dim, nhead=4, dim_feedforward=2 * dim, dropout=p, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(dim=1))


def time_calls(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall seconds of each of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times
