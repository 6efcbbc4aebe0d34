"""Cadences: at which optimizer steps an instrument runs (Cockpit's tracking schedules).

A cadence is any callable ``step -> bool`` (not to be confused with a dropout schedule,
``(step, total) -> rate``, in [`dropkit.schedules`][dropkit.schedules]). Cheap instruments
(gradient norm) can run every step; the gradient-set instruments cost |G| extra backward passes,
so log-spaced steps (dense early, where the early-dropout paper looks, sparse later) are the usual
choice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from dropkit._checks import check_int
from dropkit._deprecation import renamed_attribute

__all__ = ["At", "Cadence", "Every", "at", "every", "log_spaced"]

Cadence = Callable[[int], bool]
"""When an instrument runs: any callable ``step -> bool``, called with the 0-based optimizer step.

[`every`][dropkit.diagnostics.every], [`at`][dropkit.diagnostics.at] and
[`log_spaced`][dropkit.diagnostics.log_spaced] build the usual ones; any function or object with
that call signature works too (e.g. ``lambda step: step % 100 == 0 or step < 10``).
[`DynamicsRecorder`][dropkit.diagnostics.DynamicsRecorder] also accepts a plain int ``n``, which
it reads as ``every(n)``.
"""


def __getattr__(name: str) -> object:
    return renamed_attribute(__name__, name, {"Schedule": ("Cadence", lambda: Cadence)})


@dataclass(frozen=True)
class Every:
    """Steps ``start, start + n, start + 2n, ...``; build with [`every`][dropkit.diagnostics.every].

    Calling it with a step returns whether the step is one of those.

    Attributes:
        n: The period in optimizer steps (a positive int).
        start: The first step it runs at (a non-negative int; default 0). Steps before it never
            run.

    Raises:
        TypeError: If ``n`` or ``start`` is not an int.
        ValueError: If ``n < 1`` or ``start < 0``.
    """

    n: int
    start: int = 0

    def __post_init__(self) -> None:
        check_int(self.n, "n", 1)
        check_int(self.start, "start", 0)

    def __call__(self, step: int) -> bool:
        return step >= self.start and (step - self.start) % self.n == 0


@dataclass(frozen=True)
class At:
    """Exactly the given steps; build with [`at`][dropkit.diagnostics.at] or
    [`log_spaced`][dropkit.diagnostics.log_spaced].

    Calling it with a step returns whether the step is in ``steps``. Built directly, the steps
    are not checked; the builders check them.

    Attributes:
        steps: The optimizer steps it runs at.
    """

    steps: frozenset[int]

    def __call__(self, step: int) -> bool:
        return step in self.steps


def every(n: int, start: int = 0) -> Every:
    """Run at steps ``start, start + n, start + 2n, ...``.

    Args:
        n: The period in optimizer steps (at least 1; ``every(1)`` runs at every step).
        start: The first step to run at (at least 0; default 0).

    Returns:
        The cadence, an [`Every`][dropkit.diagnostics.Every].

    Raises:
        TypeError: If ``n`` or ``start`` is not an int.
        ValueError: If ``n < 1`` or ``start < 0``.

    Examples:
        ```python
        from dropkit import diagnostics as dd

        cadence = dd.every(100, start=50)
        [cadence(s) for s in (0, 50, 100, 150)]  # [False, True, False, True]
        ```
    """
    return Every(n, start)


def at(steps: Iterable[int]) -> At:
    """Run exactly at the given steps.

    Args:
        steps: Optimizer steps (non-negative ints, numpy integers too); duplicates and order do
            not matter.

    Returns:
        The cadence, an [`At`][dropkit.diagnostics.At].

    Raises:
        TypeError: If a step is not an int.
        ValueError: If a step is negative, or ``steps`` is empty.
    """
    checked = frozenset(check_int(s, "step", 0) for s in steps)
    if not checked:
        raise ValueError("at() needs at least one step")
    return At(checked)


def log_spaced(end: int, num: int = 20, start: int = 1, include_zero: bool = True) -> At:
    """About ``num`` integer steps spaced evenly in log scale over ``[start, end]``, plus 0.

    Dense early, where the early-dropout paper's effects show, and sparse later, so the
    expensive instruments cost little over a long run. The steps are ``numpy.geomspace(start,
    end, num)`` rounded to integers; rounding merges close steps near ``start``, so fewer than
    ``num`` may come out.

    Args:
        end: The last step (at least ``start``); always included.
        num: How many log-spaced points to lay out (at least 1; default 20).
        start: The first log-spaced step (at least 1, since log scale cannot reach 0; default 1).
        include_zero: Also run at step 0, the initialisation (default True).

    Returns:
        The cadence, an [`At`][dropkit.diagnostics.At].

    Raises:
        TypeError: If ``end``, ``num`` or ``start`` is not an int.
        ValueError: If ``start < 1``, ``end < start`` or ``num < 1``.

    Examples:
        ```python
        from dropkit import diagnostics as dd

        sorted(dd.log_spaced(1000, num=5).steps)  # [0, 1, 6, 32, 178, 1000]
        ```
    """
    check_int(start, "start", 1)
    check_int(end, "end", start)
    check_int(num, "num", 1)
    steps = {int(s) for s in np.unique(np.rint(np.geomspace(start, end, num)))}
    return at(steps | ({0} if include_zero else set()))
