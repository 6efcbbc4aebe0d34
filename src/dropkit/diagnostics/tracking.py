"""Cadences: at which optimizer steps an instrument runs (Cockpit's tracking schedules).

A cadence is any callable ``step -> bool`` (not to be confused with a dropout schedule,
``(step, total) -> rate``, in :mod:`dropkit.schedules`). Cheap instruments (gradient norm) can
run every step; the gradient-set instruments cost |G| extra backward passes, so log-spaced steps
(dense early, where the early-dropout paper looks, sparse later) are the usual choice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from dropkit._checks import check_int
from dropkit._deprecation import renamed_attribute

__all__ = ["At", "Cadence", "Every", "at", "every", "log_spaced"]

Cadence = Callable[[int], bool]
"""When an instrument runs: any callable ``step -> bool`` (``every``, ``at``, ``log_spaced``)."""


def __getattr__(name: str) -> object:
    return renamed_attribute(__name__, name, {"Schedule": ("Cadence", lambda: Cadence)})


@dataclass(frozen=True)
class Every:
    """Steps ``start, start + n, start + 2n, ...``; build with :func:`every`."""

    n: int
    start: int = 0

    def __post_init__(self) -> None:
        check_int(self.n, "n", 1)
        check_int(self.start, "start", 0)

    def __call__(self, step: int) -> bool:
        return step >= self.start and (step - self.start) % self.n == 0


@dataclass(frozen=True)
class At:
    """Exactly the given steps; build with :func:`at` or :func:`log_spaced`."""

    steps: frozenset[int]

    def __call__(self, step: int) -> bool:
        return step in self.steps


def every(n: int, start: int = 0) -> Every:
    """Run at steps ``start, start + n, start + 2n, ...``."""
    return Every(n, start)


def at(steps: Iterable[int]) -> At:
    """Run exactly at the given steps."""
    checked = frozenset(check_int(s, "step", 0) for s in steps)
    if not checked:
        raise ValueError("at() needs at least one step")
    return At(checked)


def log_spaced(end: int, num: int = 20, start: int = 1, include_zero: bool = True) -> At:
    """About ``num`` integer steps spaced evenly in log scale over ``[start, end]``, plus 0.

    Rounding merges close steps near ``start``, so fewer than ``num`` may come out.
    """
    check_int(start, "start", 1)
    check_int(end, "end", start)
    check_int(num, "num", 1)
    steps = {int(s) for s in np.unique(np.rint(np.geomspace(start, end, num)))}
    return at(steps | ({0} if include_zero else set()))
