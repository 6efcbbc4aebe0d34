"""Dropout schedules: pure functions of the optimizer step.

Each schedule is a callable ``(step, total_steps) -> rate``. ``cutoff`` is either a fraction of the
run (float in (0, 1], turned into ``C = round(cutoff * total_steps)`` steps) or a step count (int).
With ``C`` cutoff steps:

- ``standard(p)``: p at every step;
- ``early(p, cutoff, "constant")``: p for steps ``[0, C)``, then 0;
- ``early(p, cutoff, "linear")``: ``linspace(p, 0, C)[k]`` for ``k < C`` (exactly p at 0, exactly 0
  at ``C - 1``), then 0;
- ``late(p, cutoff)``: 0 for steps ``[0, C)``, then p.

:func:`drop_schedule` builds the whole per-step array with the semantics of the official
``drop_scheduler`` of "Dropout Reduces Underfitting" and validates what that code does not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from dropkit._checks import check_int
from dropkit.layers import check_rate

__all__ = [
    "ArraySchedule",
    "Early",
    "Late",
    "Schedule",
    "Standard",
    "cutoff_steps",
    "depth_profile",
    "drop_schedule",
    "early",
    "from_array",
    "late",
    "standard",
]

Schedule = Callable[[int, int], float]
"""A dropout schedule: any callable ``(step, total_steps) -> rate``."""
Shape = Literal["constant", "linear"]
SHAPES: tuple[str, ...] = ("constant", "linear")


def _check_step(step: int, total_steps: int) -> None:
    check_int(total_steps, "total_steps", 1, " (optimizer steps)")
    check_int(step, "step", 0, " (the optimizer step index)")


def _check_cutoff(cutoff: float | int) -> None:
    if isinstance(cutoff, bool) or not isinstance(cutoff, (int, float, np.integer)):
        raise TypeError(
            f"cutoff must be a float fraction in (0, 1] or an int step count, got {cutoff!r}"
        )
    if isinstance(cutoff, (int, np.integer)):
        if cutoff < 1:
            raise ValueError(f"cutoff={cutoff} steps must be >= 1 (or pass a fraction in (0, 1])")
    elif not (0.0 < cutoff <= 1.0):
        raise ValueError(
            f"cutoff={cutoff} is a float, so it is read as a fraction of the run and must lie in "
            "(0, 1]; pass an int to give a step count"
        )


def cutoff_steps(cutoff: float | int, total_steps: int) -> int:
    """The cutoff in steps: an int as is, a fraction ``f`` as ``round(f * total_steps)``."""
    _check_cutoff(cutoff)
    if isinstance(cutoff, (int, np.integer)):
        if cutoff > total_steps:
            raise ValueError(f"cutoff={cutoff} steps exceeds total_steps={total_steps}")
        return int(cutoff)
    return round(cutoff * total_steps)


@dataclass(frozen=True)
class Standard:
    """The same rate at every step."""

    p: float

    def __post_init__(self) -> None:
        check_rate(self.p)

    def __call__(self, step: int, total_steps: int) -> float:
        _check_step(step, total_steps)
        return float(self.p)


@dataclass(frozen=True)
class Early:
    """Dropout during the first ``cutoff`` of the run, constant or decaying linearly to 0."""

    p: float
    cutoff: float | int
    shape: Shape = "constant"

    def __post_init__(self) -> None:
        check_rate(self.p)
        _check_cutoff(self.cutoff)
        if self.shape not in SHAPES:
            raise ValueError(f"shape={self.shape!r} is not one of {SHAPES}")

    def __call__(self, step: int, total_steps: int) -> float:
        _check_step(step, total_steps)
        c = cutoff_steps(self.cutoff, total_steps)
        if c == 0:
            raise ValueError(
                f"early cutoff={self.cutoff} of total_steps={total_steps} rounds to 0 steps, so "
                "dropout would never be on; use a larger cutoff or an int step count"
            )
        if step >= c:
            return 0.0
        if self.shape == "constant" or c == 1:
            return float(self.p)
        if step == c - 1:
            return 0.0
        # The same arithmetic as numpy.linspace(p, 0, c)[step], so both forms agree bit for bit
        # (numpy switches formula when the increment underflows to zero, so we do too).
        delta = 0.0 - self.p
        increment = delta / (c - 1)
        if increment == 0.0:
            return step / (c - 1) * delta + self.p
        return step * increment + self.p


@dataclass(frozen=True)
class Late:
    """No dropout for the first ``cutoff`` of the run, then a constant rate."""

    p: float
    cutoff: float | int

    def __post_init__(self) -> None:
        check_rate(self.p)
        _check_cutoff(self.cutoff)

    def __call__(self, step: int, total_steps: int) -> float:
        _check_step(step, total_steps)
        return 0.0 if step < cutoff_steps(self.cutoff, total_steps) else float(self.p)


@dataclass(frozen=True)
class ArraySchedule:
    """Rates given one per step (e.g. from :func:`drop_schedule`); the last rate holds after."""

    rates: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.rates:
            raise ValueError("an array schedule needs at least one rate")
        for i, rate in enumerate(self.rates):
            check_rate(rate, f"rates[{i}]")

    def __call__(self, step: int, total_steps: int) -> float:
        _check_step(step, total_steps)
        return self.rates[min(step, len(self.rates) - 1)]


def standard(p: float) -> Standard:
    """Rate ``p`` throughout: ordinary dropout."""
    return Standard(p)


def early(p: float, cutoff: float | int, shape: Shape = "constant") -> Early:
    """Early dropout: rate ``p`` (constant, or linear down to 0) until ``cutoff``, then 0."""
    return Early(p, cutoff, shape)


def late(p: float, cutoff: float | int) -> Late:
    """Late dropout / late stochastic depth: 0 until ``cutoff``, then ``p``."""
    return Late(p, cutoff)


def from_array(rates: Sequence[float] | np.ndarray) -> ArraySchedule:
    """A schedule reading one rate per step from ``rates``."""
    return ArraySchedule(tuple(float(r) for r in np.asarray(rates, dtype=float).ravel()))


def drop_schedule(
    drop_rate: float,
    epochs: int,
    iters_per_epoch: int,
    cutoff_epoch: int = 0,
    mode: Literal["standard", "early", "late"] = "standard",
    schedule: Shape = "constant",
) -> np.ndarray:
    """One rate per optimizer step, ``epochs * iters_per_epoch`` long, as the official code has it.

    ``standard`` ignores ``cutoff_epoch`` and ``schedule``. Inputs that the official code silently
    mishandles or crashes on raise a ``ValueError`` saying what to change.
    """
    drop_rate = check_rate(drop_rate, "drop_rate")
    epochs = check_int(epochs, "epochs", 1)
    iters_per_epoch = check_int(iters_per_epoch, "iters_per_epoch", 1)
    cutoff_epoch = check_int(cutoff_epoch, "cutoff_epoch", 0)
    if mode not in ("standard", "early", "late"):
        raise ValueError(f"mode={mode!r} must be 'standard', 'early' or 'late'")
    if schedule not in SHAPES:
        raise ValueError(f"schedule={schedule!r} must be 'constant' or 'linear'")
    total = epochs * iters_per_epoch
    if mode == "standard":
        return np.full(total, drop_rate)
    if cutoff_epoch > epochs:
        raise ValueError(
            f"cutoff_epoch={cutoff_epoch} exceeds epochs={epochs}; pick a cutoff within the run"
        )
    if mode == "early" and cutoff_epoch == 0:
        raise ValueError(
            "mode='early' with cutoff_epoch=0 would mean no dropout at all; "
            "set cutoff_epoch >= 1 (the paper's recommendation is about 1/6 of the epochs)"
        )
    if mode == "late" and schedule == "linear":
        raise ValueError("mode='late' supports schedule='constant' only (as in the official code)")
    n_on = cutoff_epoch * iters_per_epoch
    n_rest = total - n_on
    if mode == "late":
        return np.concatenate([np.zeros(n_on), np.full(n_rest, drop_rate)])
    head = np.linspace(drop_rate, 0.0, n_on) if schedule == "linear" else np.full(n_on, drop_rate)
    return np.concatenate([head, np.zeros(n_rest)])


def depth_profile(n_blocks: int, rule: Literal["linear", "uniform"] = "linear") -> list[float]:
    """Per-block multipliers for stochastic depth.

    ``linear``: block ``i`` of ``L`` gets ``i / (L - 1)`` (timm's rule; block 0 always 0);
    ``uniform``: every block gets 1.
    """
    n_blocks = check_int(n_blocks, "n_blocks", 1)
    if rule == "uniform":
        return [1.0] * n_blocks
    if rule != "linear":
        raise ValueError(f"depth rule={rule!r} must be 'linear' or 'uniform'")
    if n_blocks == 1:
        return [0.0]
    return [i / (n_blocks - 1) for i in range(n_blocks)]
