"""One thread count for a job wherever it runs, so that it computes the same numbers anywhere."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["fixed_threads"]


@contextmanager
def fixed_threads(threads: int) -> Iterator[None]:
    """Run with ``threads`` intra-op threads: a job computes the same numbers anywhere."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
