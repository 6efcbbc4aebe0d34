"""DropoutScheduler: drives dropout / stochastic-depth rates from schedules, step by step.

It behaves like a ``torch.optim.lr_scheduler`` in a user's hands: the constructor applies step
0, ``step()`` goes after ``optimizer.step()``, and ``state_dict()`` / ``load_state_dict()``
resume a run.

With ``compile_levels`` set it snaps each rate to a few levels, for models compiled with
``torch.compile`` whose dropout rates are Python floats (``nn.Dropout``, Hugging Face attention
floats, timm ``DropPath``): Dynamo guards on such floats and recompiles at every new value, so a
per-step schedule would exhaust its recompile limit and silently fall back to eager.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from dropkit._checks import check_int
from dropkit.layers import check_rate
from dropkit.schedules import (
    ArraySchedule,
    Early,
    Late,
    Schedule,
    Standard,
    depth_profile,
    from_array,
    standard,
)
from dropkit.sites import Site, describe, find_sites

__all__ = ["DropoutScheduler", "ScheduleLike"]

ScheduleLike = Schedule | float | Sequence[float] | np.ndarray
"""What [`DropoutScheduler`][dropkit.DropoutScheduler] and the integration callbacks accept as a
schedule: a [`Schedule`][dropkit.schedules.Schedule] (a callable ``(step, total_steps) -> rate``,
such as [`early`][dropkit.schedules.early], [`late`][dropkit.schedules.late] or
[`standard`][dropkit.schedules.standard]); a number, the same rate at every step (as
[`standard`][dropkit.schedules.standard]); or a sequence or array of rates, one per optimizer
step, the last holding after (as [`from_array`][dropkit.schedules.from_array]). Rates lie in
[0, 1]; a bool or a string is refused."""


def _as_schedule(spec: ScheduleLike, kind: str) -> Schedule:
    if isinstance(spec, bool):
        raise TypeError(f"{kind}={spec!r}: pass a schedule, a float rate or an array of rates")
    if isinstance(spec, (int, float, np.integer, np.floating)):
        return standard(float(spec))
    if isinstance(spec, (Sequence, np.ndarray)) and not isinstance(spec, str):
        return from_array(spec)
    if callable(spec):
        return spec
    raise TypeError(
        f"{kind}={spec!r} is not a schedule: pass dropkit.schedules.early(...)/late(...)/"
        "standard(...), any callable (step, total_steps) -> rate, a float, or an array of rates"
    )


def _peak(schedule: Schedule, total_steps: int, kind: str) -> float:
    """The largest rate ``schedule`` reaches in a run of ``total_steps``."""
    if isinstance(schedule, (Standard, Early, Late)):
        return float(schedule.p)
    if isinstance(schedule, ArraySchedule):
        return max(schedule.rates)
    return max(
        check_rate(schedule(step, total_steps), f"{kind} schedule at step {step}")
        for step in range(total_steps)
    )


def _check_compile_levels(levels: int) -> int:
    from torch._dynamo import config  # imported only here: Dynamo is slow to import

    levels = check_int(levels, "compile_levels", 2, " (0 and the peak rate)")
    # older torch calls the limit cache_size_limit (a private module: read it defensively)
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    limit = getattr(config, name, None)
    if isinstance(limit, int) and levels > limit:
        raise ValueError(
            f"compile_levels={levels} exceeds torch._dynamo.config.{name}="
            f"{limit}: each level costs one recompilation and past the limit "
            "torch.compile silently runs the model eagerly; use fewer levels or raise the limit"
        )
    return levels


def check_state(state_dict: dict[str, Any]) -> None:
    """Raise ``KeyError`` unless ``state_dict`` holds what a scheduler's state must."""
    missing = {"last_step", "total_steps"} - state_dict.keys()
    if missing:
        raise KeyError(f"state_dict lacks {sorted(missing)}; pass DropoutScheduler.state_dict()")


class DropoutScheduler:
    """Apply a dropout schedule and/or a drop-path schedule to every controllable site of a model.

    The way to run early or late dropout on a model you already have: the scheduler finds the
    model's sites once (see [`find_sites`][dropkit.find_sites]) and writes the scheduled rate into
    them as training advances, like a ``torch.optim.lr_scheduler``. The constructor applies the
    rates of step 0; call [`step`][dropkit.DropoutScheduler.step] after each
    ``optimizer.step()``. Dropout sites (modules and attention floats) all get the dropout
    schedule's rate. Drop-path sites get the drop-path schedule's rate times their block's depth
    multiplier (see [`depth_profile`][dropkit.schedules.depth_profile]). Steps are optimizer
    steps, counted from 0.

    Args:
        model: The model (DDP / ``torch.compile`` wrappers are fine). Its sites are found once,
            here: call [`replace_placeholders`][dropkit.replace_placeholders] before, not after.
        total_steps: Optimizer steps in the whole run (at least 1); past it the last rate holds
            (warns once).
        dropout: Schedule for dropout sites, or None to leave them alone: a schedule, a float
            or an array of rates (see
            [`ScheduleLike`][dropkit.dropout_scheduler.ScheduleLike]).
        drop_path: Schedule for stochastic-depth sites, or None to leave them alone.
        depth_rule: How the drop-path rate scales across blocks: ``"linear"`` (timm's rule: block
            ``i`` of ``L`` gets ``i / (L - 1)`` of it) or ``"uniform"`` (every block all of it).
        on_missing: ``"raise"`` (default) or ``"warn"`` when a scheduled kind has no
            controllable site in the model.
        compile_levels: For ``torch.compile``: snap each kind's rate to the nearest of this many
            (at least 2) evenly spaced values from 0 to the schedule's peak, so a compiled model
            recompiles at most this many times per kind. None (the default) writes the exact
            rates. Not needed when every site is a dropkit [`Dropout`][dropkit.Dropout] /
            [`DropPath`][dropkit.DropPath], which never recompile.

    Attributes:
        total_steps: The run length in optimizer steps.
        schedules: The schedule of each scheduled kind, keyed ``"dropout"`` / ``"drop_path"``
            (floats and arrays given to the constructor turned into schedules).
        compile_levels: The number of rate levels, or None.
        last_step: The optimizer step whose rates are applied (0 after construction).

    Raises:
        TypeError: If ``total_steps`` or ``compile_levels`` is not an int, or ``dropout`` /
            ``drop_path`` is not a schedule, a number or an array of rates.
        ValueError: If neither ``dropout`` nor ``drop_path`` is given, ``total_steps`` is below
            1, ``on_missing`` is unknown, ``depth_rule`` is unknown (checked when drop-path
            sites are scheduled), ``compile_levels`` is below 2 or above Dynamo's recompile
            limit, a scheduled kind has no controllable site (with ``on_missing="raise"``; the
            message shows [`describe`][dropkit.describe]), or a schedule gives a rate outside
            [0, 1].

    Warns:
        UserWarning: For sites of a scheduled kind that cannot be scheduled (they stay off),
            for a kind without sites under ``on_missing="warn"``, and once when stepped past
            ``total_steps``.

    Examples:
        ```python
        import torch
        from torch import nn

        import dropkit

        model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.0), nn.Linear(32, 2))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        total_steps = 100  # optimizer steps: epochs x batches per epoch
        scheduler = dropkit.DropoutScheduler(
            model, total_steps, dropout=dropkit.schedules.early(p=0.1, cutoff=0.2, shape="linear")
        )
        for step in range(total_steps):
            x, y = torch.randn(16, 8), torch.randint(0, 2, (16,))
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        print(scheduler.get_last_p())  # {'dropout': 0.0}: off after the first 20 steps
        ```
    """

    def __init__(
        self,
        model: nn.Module,
        total_steps: int,
        dropout: ScheduleLike | None = None,
        drop_path: ScheduleLike | None = None,
        *,
        depth_rule: Literal["linear", "uniform"] = "linear",
        on_missing: Literal["raise", "warn"] = "raise",
        compile_levels: int | None = None,
    ) -> None:
        total_steps = check_int(total_steps, "total_steps", 1, " (optimizer steps)")
        if dropout is None and drop_path is None:
            raise ValueError("nothing to schedule: pass dropout=... and/or drop_path=...")
        if on_missing not in ("raise", "warn"):
            raise ValueError(f"on_missing={on_missing!r} must be 'raise' or 'warn'")
        if depth_rule not in ("linear", "uniform"):  # refused even when nothing uses it yet
            raise ValueError(f"depth_rule={depth_rule!r} must be 'linear' or 'uniform'")
        self.total_steps = total_steps
        self.schedules: dict[str, Schedule] = {
            kind: _as_schedule(spec, kind)
            for kind, spec in (("dropout", dropout), ("drop_path", drop_path))
            if spec is not None
        }
        self.compile_levels = (
            None if compile_levels is None else _check_compile_levels(compile_levels)
        )
        self._peaks = (
            {kind: _peak(schedule, total_steps, kind) for kind, schedule in self.schedules.items()}
            if self.compile_levels is not None
            else {}
        )
        sites = find_sites(model)
        self._targets = {
            kind: self._targets_for(kind, sites, depth_rule, model, on_missing)
            for kind in self.schedules
        }
        self._built_rates = {
            site: site.p for targets in self._targets.values() for site, _ in targets
        }
        self._last_p: dict[str, float] = {}
        self._written: dict[str, float] = {}
        self._warned_past_end = False
        self._removed = False
        self.last_step = -1
        self.step()

    @staticmethod
    def _targets_for(
        kind: str,
        sites: list[Site],
        depth_rule: Literal["linear", "uniform"],
        model: nn.Module,
        on_missing: str,
    ) -> list[tuple[Site, float]]:
        of_kind = [site for site in sites if site.kind == kind]
        if kind == "dropout":
            multipliers = [1.0] * len(of_kind)
        else:  # one multiplier per block; placeholders count, so depth matches how timm built it
            blocks = list(dict.fromkeys(site.block for site in of_kind))
            by_block = dict(zip(blocks, depth_profile(len(blocks), depth_rule) if blocks else []))
            multipliers = [by_block[site.block] for site in of_kind]
        stuck = [s for s, m in zip(of_kind, multipliers) if not s.controllable and m > 0]
        if stuck:
            names = ", ".join(s.name for s in stuck[:5]) + (" ..." if len(stuck) > 5 else "")
            why = " ".join(dict.fromkeys(s.note for s in stuck if s.note))  # each reason once
            warnings.warn(
                f"{len(stuck)} {kind} site(s) cannot be scheduled and will stay off: "
                f"{names}. {why}",
                stacklevel=4,
            )
        targets = [(s, m) for s, m in zip(of_kind, multipliers) if s.controllable]
        if not targets:
            message = (
                f"a {kind} schedule was given but the model has no controllable {kind} site.\n"
                f"{describe(model)}"
            )
            if kind == "dropout":
                message += (
                    "\nTo add rate-0 dropout sites the schedule can switch on: "
                    "dropkit.add_dropout_sites(model) before building the scheduler."
                )
            if on_missing == "raise":
                raise ValueError(message + "\nPass on_missing='warn' to continue anyway.")
            warnings.warn(message, stacklevel=4)
        return targets

    def step(self) -> None:
        """Advance one optimizer step and write the new rates (only where they changed).

        Call it after ``optimizer.step()``, once per optimizer step (not per micro-batch under
        gradient accumulation).

        Raises:
            RuntimeError: If the scheduler was [`remove`][dropkit.DropoutScheduler.remove]d.
            ValueError: If a schedule gives a rate outside [0, 1].

        Warns:
            UserWarning: Once, when stepped past ``total_steps``: the last rates then hold.
        """
        self.last_step += 1
        self._apply(force=False)

    @contextlib.contextmanager
    def follow_optimizers(self) -> Iterator[DropoutScheduler]:
        """Step this scheduler after every optimizer step taken inside the ``with`` block.

        For a training loop you do not write (a library's ``train(model, ...)`` that builds its
        own optimizer): a global optimizer step post-hook
        (``torch.optim.optimizer.register_optimizer_step_post_hook``) calls
        [`step`][dropkit.DropoutScheduler.step] after each ``optimizer.step()`` of any optimizer
        in the process, and is removed when the block ends. A loop that steps several optimizers
        per training step steps the schedule once per optimizer: use ``step`` by hand there.

        Yields:
            This scheduler.

        Examples:
            ```python
            scheduler = dropkit.DropoutScheduler(model, total_steps, dropout=early)
            with scheduler.follow_optimizers():
                their_library.train(model, data, epochs=10)  # builds its own optimizer
            ```
        """

        def after_step(optimizer: object, args: object, kwargs: object) -> None:
            self.step()

        handle = register_optimizer_step_post_hook(after_step)
        try:
            yield self
        finally:
            handle.remove()

    def _apply(self, force: bool) -> None:
        if self._removed:
            raise RuntimeError(
                "this DropoutScheduler was removed; create a new one to schedule again"
            )
        step = self.last_step
        if step >= self.total_steps:
            # The step() after the last optimizer step lands on total_steps: that is the end of
            # the run, not past it. Only a step beyond that means the run is longer than declared.
            if step > self.total_steps and not self._warned_past_end:
                warnings.warn(
                    f"DropoutScheduler stepped past total_steps={self.total_steps}; "
                    "holding the last scheduled rates",
                    stacklevel=3,
                )
                self._warned_past_end = True
            step = self.total_steps - 1
        for kind, schedule in self.schedules.items():
            rate = check_rate(schedule(step, self.total_steps), f"{kind} schedule at step {step}")
            if self.compile_levels is not None:
                rate = self._snap(rate, self._peaks[kind], self.compile_levels)
            self._last_p[kind] = rate
            if force or self._written.get(kind) != rate:
                for site, multiplier in self._targets[kind]:
                    site.set_p(rate * multiplier)
                self._written[kind] = rate

    def _snap(self, rate: float, peak: float, levels: int) -> float:
        if peak == 0.0:
            return 0.0
        top = levels - 1
        level = min(max(round(rate / peak * top), 0), top)
        return peak * (level / top)  # exactly 0 and exactly the peak at the ends

    def get_last_p(self) -> dict[str, float]:
        """The rate each scheduled kind got at the current step (before depth multipliers).

        For logging, like ``lr_scheduler.get_last_lr()``.

        Returns:
            A new dict mapping each scheduled kind (``"dropout"``, ``"drop_path"``) to its rate,
                after ``compile_levels`` snapping.
        """
        return dict(self._last_p)

    def state_dict(self) -> dict[str, Any]:
        """Plain data to resume from: the current step and the run length.

        Save it in a checkpoint beside the optimizer's; the schedules themselves are not saved
        (build the scheduler with the same ones, then
        [`load_state_dict`][dropkit.DropoutScheduler.load_state_dict]).

        Returns:
            ``{"last_step": ..., "total_steps": ...}``.
        """
        return {"last_step": self.last_step, "total_steps": self.total_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the step and re-apply its rates at once.

        Args:
            state_dict: What [`state_dict`][dropkit.DropoutScheduler.state_dict] returned.

        Raises:
            KeyError: If ``state_dict`` lacks ``"last_step"`` or ``"total_steps"``.
            RuntimeError: If the scheduler was [`remove`][dropkit.DropoutScheduler.remove]d.

        Warns:
            UserWarning: If the saved ``total_steps`` differs from this scheduler's: the rates
                follow this scheduler's.
        """
        check_state(state_dict)
        if state_dict["total_steps"] != self.total_steps:
            warnings.warn(
                f"resuming a schedule saved with total_steps={state_dict['total_steps']} in a "
                f"scheduler with total_steps={self.total_steps}; rates follow the new length",
                stacklevel=2,
            )
        self.last_step = int(state_dict["last_step"])
        self._warned_past_end = False
        self._apply(force=True)

    def remove(self) -> None:
        """Restore the rates of the sites this scheduler drives, and stop scheduling.

        Each scheduled site gets back the rate it had when this scheduler was created; sites of
        a kind it does not schedule are left as they are (another scheduler's, or rates set by
        hand). Afterwards [`step`][dropkit.DropoutScheduler.step] and
        [`load_state_dict`][dropkit.DropoutScheduler.load_state_dict] raise ``RuntimeError``.
        """
        for site, rate in self._built_rates.items():
            site.set_p(rate)
        self._removed = True

    def __repr__(self) -> str:
        n_sites = {kind: len(targets) for kind, targets in self._targets.items()}
        return (
            f"DropoutScheduler(step={self.last_step}/{self.total_steps}, "
            f"schedules={self.schedules}, sites={n_sites})"
        )
