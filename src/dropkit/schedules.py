"""Dropout schedules: pure functions of the optimizer step.

Each schedule is a callable ``(step, total_steps) -> rate``. ``cutoff`` is either a fraction of the
run (float in (0, 1], turned into ``C = round(cutoff * total_steps)`` steps) or a step count (int).
With ``C`` cutoff steps:

- ``standard(p)``: p at every step;
- ``early(p, cutoff, "constant")``: p for steps ``[0, C)``, then 0;
- ``early(p, cutoff, "linear")``: ``linspace(p, 0, C)[k]`` for ``k < C`` (exactly p at 0, exactly 0
  at ``C - 1``), then 0;
- ``late(p, cutoff)``: 0 for steps ``[0, C)``, then p (``C`` inside the run, else it is refused).

[`drop_schedule`][dropkit.schedules.drop_schedule] builds the whole per-step array with the
semantics of the official ``drop_scheduler`` of "Dropout Reduces Underfitting" and validates what
that code does not. [`DropoutScheduler`][dropkit.DropoutScheduler] applies a schedule to a model.
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
    "Shape",
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
"""A dropout schedule: any callable ``(step, total_steps) -> rate``.

``step`` is the 0-based optimizer step, ``total_steps`` the number of optimizer steps in the run,
and the rate must lie in [0, 1]. The classes of this module are schedules, and so is any function
of that signature.
"""
Shape = Literal["constant", "linear"]
"""How an early-dropout rate behaves until the cutoff: ``"constant"`` (``p`` throughout) or
``"linear"`` (decaying from ``p`` to exactly 0 at the last step before the cutoff)."""
SHAPES: tuple[str, ...] = ("constant", "linear")
"""The values of [`Shape`][dropkit.schedules.Shape], for checks and messages."""


def _check_step(step: int, total_steps: int) -> None:
    check_int(total_steps, "total_steps", 1, " (optimizer steps)")
    check_int(step, "step", 0, " (the optimizer step index)")


def _check_cutoff(cutoff: float | int) -> None:
    if isinstance(cutoff, bool) or not isinstance(cutoff, (int, float, np.integer, np.floating)):
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
    """The cutoff in steps: an int as is, a fraction ``f`` as ``round(f * total_steps)``.

    How [`early`][dropkit.schedules.early] and [`late`][dropkit.schedules.late] read their
    ``cutoff``.

    Args:
        cutoff: A float fraction of the run in (0, 1], or an int number of optimizer steps
            (at least 1).
        total_steps: The number of optimizer steps in the run.

    Returns:
        The cutoff in optimizer steps. A fraction is rounded with Python's ``round`` (halves to
            even), so it may give 0 for a short run.

    Raises:
        TypeError: If ``cutoff`` is neither an int nor a float (a bool included).
        ValueError: If an int ``cutoff`` is below 1 or above ``total_steps``, or a float one
            lies outside (0, 1].

    Examples:
        >>> from dropkit.schedules import cutoff_steps
        >>> cutoff_steps(0.15, 1000), cutoff_steps(150, 1000)
        (150, 150)
    """
    _check_cutoff(cutoff)
    if isinstance(cutoff, (int, np.integer)):
        if cutoff > total_steps:
            raise ValueError(f"cutoff={cutoff} steps exceeds total_steps={total_steps}")
        return int(cutoff)
    return round(cutoff * total_steps)


@dataclass(frozen=True)
class Standard:
    """The same rate at every step: ordinary dropout, as a schedule.

    Built by [`standard`][dropkit.schedules.standard]. Called with ``(step, total_steps)`` it
    returns ``p``.

    Attributes:
        p: The rate, in [0, 1].

    Raises:
        TypeError: If ``p`` is not a number, or a call's ``step`` / ``total_steps`` is not an
            int.
        ValueError: If ``p`` lies outside [0, 1], or a call's ``step`` is negative or
            ``total_steps`` below 1.
    """

    p: float

    def __post_init__(self) -> None:
        check_rate(self.p)

    def __call__(self, step: int, total_steps: int) -> float:
        _check_step(step, total_steps)
        return float(self.p)


@dataclass(frozen=True)
class Early:
    """Dropout during the first ``cutoff`` of the run, constant or decaying linearly to 0.

    Built by [`early`][dropkit.schedules.early], which describes it. Called with
    ``(step, total_steps)`` it returns the rate of that optimizer step; with ``C`` the cutoff in
    steps (see [`cutoff_steps`][dropkit.schedules.cutoff_steps]) that is ``p`` (constant) or
    ``numpy.linspace(p, 0, C)[step]`` (linear) for ``step < C``, then 0.

    Attributes:
        p: The rate at step 0, in [0, 1].
        cutoff: Where dropout ends: a float fraction of the run in (0, 1], or an int number of
            optimizer steps.
        shape: ``"constant"`` or ``"linear"`` (see [`Shape`][dropkit.schedules.Shape]).

    Raises:
        TypeError: If ``p`` or ``cutoff`` has the wrong type, or a call's ``step`` /
            ``total_steps`` is not an int.
        ValueError: If ``p``, ``cutoff`` or ``shape`` has a value outside its range; at a call,
            if an int ``cutoff`` exceeds ``total_steps`` or a fractional one rounds to 0 steps.
    """

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
    """No dropout for the first ``cutoff`` of the run, then a constant rate.

    Built by [`late`][dropkit.schedules.late], which describes it. Called with
    ``(step, total_steps)`` it returns 0 for ``step < C`` (``C`` the cutoff in steps, see
    [`cutoff_steps`][dropkit.schedules.cutoff_steps]), then ``p``.

    Attributes:
        p: The rate from the cutoff on, in [0, 1].
        cutoff: Where dropout starts: a float fraction of the run in (0, 1), or an int number
            of optimizer steps.

    Raises:
        TypeError: If ``p`` or ``cutoff`` has the wrong type, or a call's ``step`` /
            ``total_steps`` is not an int.
        ValueError: If ``p`` or ``cutoff`` has a value outside its range or ``cutoff`` is 1.0
            (the end of the run); at a call, if ``cutoff`` falls at or past ``total_steps``.
    """

    p: float
    cutoff: float | int

    def __post_init__(self) -> None:
        check_rate(self.p)
        _check_cutoff(self.cutoff)
        if isinstance(self.cutoff, float) and self.cutoff == 1.0:
            raise ValueError(_never_on(self.cutoff, "the end of the run"))

    def __call__(self, step: int, total_steps: int) -> float:
        _check_step(step, total_steps)
        c = cutoff_steps(self.cutoff, total_steps)
        if c >= total_steps:
            raise ValueError(_never_on(self.cutoff, f"step {c} of total_steps={total_steps}"))
        return 0.0 if step < c else float(self.p)


def _never_on(cutoff: float | int, where: str) -> str:
    return (
        f"late cutoff={cutoff} is {where}, so dropout would never be on; use an earlier "
        "cutoff (or standard(p) for dropout throughout)"
    )


@dataclass(frozen=True)
class ArraySchedule:
    """Rates given one per step (e.g. from [`drop_schedule`][dropkit.schedules.drop_schedule]);
    the last rate holds after.

    Built by [`from_array`][dropkit.schedules.from_array]. Called with ``(step, total_steps)`` it
    returns ``rates[step]``, or the last rate for a step past the end; ``total_steps`` is only
    checked, not used.

    Attributes:
        rates: The rate of each optimizer step, in order, each in [0, 1].

    Raises:
        ValueError: If ``rates`` is empty or a rate lies outside [0, 1]; at a call, if ``step``
            is negative or ``total_steps`` below 1.
        TypeError: If a rate is not a number, or a call's ``step`` / ``total_steps`` is not an
            int.
    """

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
    """Rate ``p`` throughout: ordinary dropout.

    The baseline against which early and late dropout are compared.

    Args:
        p: The rate at every step, in [0, 1].

    Returns:
        A [`Standard`][dropkit.schedules.Standard] schedule.

    Raises:
        TypeError: If ``p`` is not a number (or is a bool).
        ValueError: If ``p`` lies outside [0, 1] or is NaN.

    Examples:
        >>> from dropkit import schedules
        >>> schedules.standard(0.1)(step=0, total_steps=100)
        0.1
    """
    return Standard(p)


def early(p: float, cutoff: float | int, shape: Shape = "constant") -> Early:
    """Early dropout: rate ``p`` (constant, or linear down to 0) until ``cutoff``, then 0.

    For underfitting models ("Dropout Reduces Underfitting", Liu et al., ICML 2023): dropout in
    the first part of training only, where it lowers the variance of mini-batch gradient
    directions, then none. The paper's ImageNet settings end it after 50 of 300 epochs
    (``cutoff=1 / 6``), linear, with ``p=0.1`` for dropout and ``p=0.5`` for stochastic depth; it
    reports the cutoff robust from 1% to 50% of training.

    Args:
        p: The rate at step 0, in [0, 1].
        cutoff: Where dropout ends: a float fraction of the run in (0, 1] (``C =
            round(cutoff * total_steps)`` steps) or an int number of optimizer steps ``C``.
        shape: ``"constant"``: ``p`` for steps ``[0, C)``. ``"linear"``:
            ``numpy.linspace(p, 0, C)[step]`` for ``step < C``, exactly ``p`` at step 0 and
            exactly 0 at step ``C - 1``.

    Returns:
        An [`Early`][dropkit.schedules.Early] schedule, 0 from step ``C`` on.

    Raises:
        TypeError: If ``p`` is not a number or ``cutoff`` neither an int nor a float.
        ValueError: If ``p`` lies outside [0, 1], an int ``cutoff`` is below 1, a float one lies
            outside (0, 1], or ``shape`` is not ``"constant"`` or ``"linear"``. When called:
            if an int ``cutoff`` exceeds ``total_steps``, or a fraction rounds to 0 steps.

    Examples:
        >>> from dropkit import schedules
        >>> rate = schedules.early(p=0.1, cutoff=0.5, shape="linear")
        >>> [round(rate(step, total_steps=10), 3) for step in range(10)]
        [0.1, 0.075, 0.05, 0.025, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        >>> rate = schedules.early(p=0.1, cutoff=2)  # constant, for 2 optimizer steps
        >>> [rate(step, total_steps=4) for step in range(4)]
        [0.1, 0.1, 0.0, 0.0]
    """
    return Early(p, cutoff, shape)


def late(p: float, cutoff: float | int) -> Late:
    """Late dropout / late stochastic depth: 0 until ``cutoff``, then ``p``.

    For overfitting models ("Dropout Reduces Underfitting", Liu et al., ICML 2023): no
    regularization at first, then dropout or stochastic depth from the cutoff on. The paper's
    late stochastic depth for ViT-B is ``p=0.4`` from epoch 50 of 300 (``cutoff=1 / 6``).

    Args:
        p: The rate from the cutoff on, in [0, 1].
        cutoff: Where dropout starts: a float fraction of the run in (0, 1) (``C =
            round(cutoff * total_steps)`` steps) or an int number of optimizer steps ``C``.

    Returns:
        A [`Late`][dropkit.schedules.Late] schedule: 0 for steps ``[0, C)``, then ``p``.

    Raises:
        TypeError: If ``p`` is not a number or ``cutoff`` neither an int nor a float.
        ValueError: If ``p`` lies outside [0, 1], an int ``cutoff`` is below 1 or a float one
            lies outside (0, 1) (at 1.0 dropout would never be on). When called: if ``cutoff``
            falls at or past ``total_steps``.

    Examples:
        >>> from dropkit import schedules
        >>> rate = schedules.late(p=0.1, cutoff=0.5)
        >>> [rate(step, total_steps=4) for step in range(4)]
        [0.0, 0.0, 0.1, 0.1]
    """
    return Late(p, cutoff)


def from_array(rates: Sequence[float] | np.ndarray) -> ArraySchedule:
    """A schedule reading one rate per step from ``rates``.

    For rates computed elsewhere, e.g. by [`drop_schedule`][dropkit.schedules.drop_schedule]
    or an existing training script. [`DropoutScheduler`][dropkit.DropoutScheduler] calls it for
    a list or array it is given.

    Args:
        rates: The rate of each optimizer step, each in [0, 1]; an array of any shape is
            flattened.

    Returns:
        An [`ArraySchedule`][dropkit.schedules.ArraySchedule]; past the last entry the last rate
            holds.

    Raises:
        ValueError: If ``rates`` is empty, or an entry lies outside [0, 1] or does not convert
            to a float.

    Examples:
        >>> from dropkit import schedules
        >>> rate = schedules.from_array([0.2, 0.1])
        >>> [rate(step, total_steps=3) for step in range(3)]
        [0.2, 0.1, 0.1]
    """
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

    A checked version of ``drop_scheduler`` from the code of "Dropout Reduces Underfitting", for
    porting a script that uses it: inputs that the official code silently mishandles or crashes
    on raise an error saying what to change. Pass the array to
    [`DropoutScheduler`][dropkit.DropoutScheduler] (or
    [`from_array`][dropkit.schedules.from_array]) to apply it.

    Args:
        drop_rate: The dropout rate while dropout is on, in [0, 1].
        epochs: The number of epochs in the run (at least 1).
        iters_per_epoch: Optimizer steps per epoch (at least 1).
        cutoff_epoch: The epoch at which dropout ends (``"early"``) or starts (``"late"``),
            from 0 to ``epochs``; at least 1 for ``"early"``. Ignored by ``"standard"``.
        mode: ``"standard"`` (``drop_rate`` throughout), ``"early"`` (on for the first
            ``cutoff_epoch`` epochs) or ``"late"`` (off for the first ``cutoff_epoch`` epochs).
        schedule: For ``"early"``: ``"constant"``, or ``"linear"`` from ``drop_rate`` to exactly
            0 at the last step before the cutoff (``numpy.linspace``). ``"late"`` supports
            ``"constant"`` only; ``"standard"`` ignores it.

    Returns:
        A float64 array of ``epochs * iters_per_epoch`` rates, one per optimizer step.

    Raises:
        TypeError: If ``drop_rate`` is not a number, or ``epochs``, ``iters_per_epoch`` or
            ``cutoff_epoch`` is not an int.
        ValueError: If a number is out of range, ``mode`` or ``schedule`` is unknown,
            ``cutoff_epoch`` exceeds ``epochs``, ``mode="early"`` has ``cutoff_epoch=0``, or
            ``mode="late"`` has ``schedule="linear"``.

    Examples:
        >>> from dropkit import drop_schedule
        >>> drop_schedule(0.1, epochs=3, iters_per_epoch=2, cutoff_epoch=1, mode="early")
        array([0.1, 0.1, 0. , 0. , 0. , 0. ])
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

    [`DropoutScheduler`][dropkit.DropoutScheduler] multiplies its drop-path rate by these, block
    by block (its ``depth_rule``), so deeper blocks are dropped more often.

    Args:
        n_blocks: The number of blocks (at least 1).
        rule: ``"linear"``: block ``i`` of ``L`` gets ``i / (L - 1)`` (timm's rule; block 0
            always 0, a single block 0). ``"uniform"``: every block gets 1.

    Returns:
        One multiplier in [0, 1] per block, in block order.

    Raises:
        TypeError: If ``n_blocks`` is not an int.
        ValueError: If ``n_blocks`` is below 1 or ``rule`` is unknown.

    Examples:
        >>> from dropkit.schedules import depth_profile
        >>> depth_profile(3)
        [0.0, 0.5, 1.0]
    """
    n_blocks = check_int(n_blocks, "n_blocks", 1)
    if rule == "uniform":
        return [1.0] * n_blocks
    if rule != "linear":
        raise ValueError(f"depth rule={rule!r} must be 'linear' or 'uniform'")
    if n_blocks == 1:
        return [0.0]
    return [i / (n_blocks - 1) for i in range(n_blocks)]
