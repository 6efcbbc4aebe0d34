"""Thin adapters from training frameworks to dropkit's core.

Import the one you use; this package itself imports neither framework:

- ``dropkit.integrations.lightning``: PyTorch Lightning callbacks and an R-Drop training step
  (``pip install lightning``, or ``pip install '.[lightning]'`` in a dropkit checkout);
- ``dropkit.integrations.transformers``: a Hugging Face ``Trainer`` callback and ``RDropTrainer``
  (``pip install '.[hf]'`` in a dropkit checkout: transformers and accelerate).

Every schedule callback takes the arguments of [`DropoutScheduler`][dropkit.DropoutScheduler]
except the model and the run length, which come from the trainer, and follows the trainer's global
optimizer step.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any, Protocol

from torch import nn

from dropkit.dropout_scheduler import DropoutScheduler, ScheduleLike, check_state

__all__ = ["GlobalStepSchedule"]


class TrialLike(Protocol):
    """What the frameworks' ``TrialCallback`` reads from a
    [`dropkit.experiments.Trial`][dropkit.experiments.Trial] (the integrations sit below the
    experiments tier, so they name the shape, not the class)."""

    dropout: ScheduleLike | None
    drop_path: ScheduleLike | None
    budget: float
    dir: Path

    def log(self, step: int, **values: float) -> None:
        """Record ``values`` at optimizer ``step`` (``Trial.log``)."""


class GlobalStepSchedule:
    """A [`DropoutScheduler`][dropkit.DropoutScheduler] built once the run length is known, driven
    by a global step.

    The framework adapters share it, and an adapter for another framework can too:
    [`start`][dropkit.integrations.GlobalStepSchedule.start] at the beginning of fit,
    [`go_to(global_step)`][dropkit.integrations.GlobalStepSchedule.go_to] before every forward
    (so all micro-batches of an accumulation window share one rate), and
    [`state_dict`][dropkit.integrations.GlobalStepSchedule.state_dict] /
    [`load_state_dict`][dropkit.integrations.GlobalStepSchedule.load_state_dict] for
    checkpoints, in whichever order the framework calls them. The options are checked against
    [`DropoutScheduler`][dropkit.DropoutScheduler]'s signature here, so a typo fails before
    training starts.

    Args:
        dropout: Schedule for dropout sites, or None (see
            [`ScheduleLike`][dropkit.dropout_scheduler.ScheduleLike]).
        drop_path: Schedule for stochastic-depth sites, or None.
        options: Keyword options of [`DropoutScheduler`][dropkit.DropoutScheduler]
            (``depth_rule``, ``on_missing``, ``compile_levels``); not ``model`` or
            ``total_steps``, which come from the trainer.
        budget: The share of the run to train, in (0, 1] (default 1): the adapters stop the
            trainer after ``ceil(budget * total_steps)`` optimizer steps, the schedule still
            laid over the whole run (a dropkit advise probe's ``trial.budget``).

    Attributes:
        dropout: The dropout schedule, as given.
        drop_path: The drop-path schedule, as given.
        options: The scheduler options, as given.
        budget: The share of the run to train, as given.
        scheduler: The current [`DropoutScheduler`][dropkit.DropoutScheduler], None before
            [`start`][dropkit.integrations.GlobalStepSchedule.start].

    Raises:
        ValueError: If neither ``dropout`` nor ``drop_path`` is given, or ``budget`` is not in
            (0, 1].
        TypeError: If ``options`` holds ``model`` or ``total_steps``, or a keyword that
            [`DropoutScheduler`][dropkit.DropoutScheduler] does not take.
    """

    def __init__(
        self,
        dropout: ScheduleLike | None,
        drop_path: ScheduleLike | None,
        options: dict[str, Any],
        budget: float = 1.0,
    ) -> None:
        if dropout is None and drop_path is None:
            raise ValueError("nothing to schedule: pass dropout=... and/or drop_path=...")
        if not 0.0 < budget <= 1.0:
            raise ValueError(f"budget={budget} must lie in (0, 1]: the share of the run to train")
        for reserved in ("model", "total_steps"):
            if reserved in options:
                raise TypeError(f"{reserved}= comes from the trainer; do not pass it")
        try:  # fail now, not at the start of training
            inspect.signature(DropoutScheduler).bind(None, 1, dropout, drop_path, **options)
        except TypeError as err:
            known = [
                p.name
                for p in inspect.signature(DropoutScheduler).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY
            ]
            raise TypeError(f"{err}; DropoutScheduler options are {', '.join(known)}") from None
        self.dropout, self.drop_path, self.options = dropout, drop_path, options
        self.budget = budget
        self.scheduler: DropoutScheduler | None = None
        self._pending_state: dict[str, Any] | None = None

    def start(self, model: nn.Module, total_steps: float) -> DropoutScheduler:
        """Build the scheduler for a run of ``total_steps`` optimizer steps.

        A state loaded before (a checkpoint restored ahead of fit) is applied at once; a
        scheduler from an earlier start is removed first, so a second fit starts from the
        model's built rates.

        Args:
            model: The model to schedule.
            total_steps: Optimizer steps in the run, as the trainer reports them (a float is
                accepted and truncated to an int, as trainers may report ``inf``).

        Returns:
            The new [`DropoutScheduler`][dropkit.DropoutScheduler], at step 0 or at the loaded
                state's step.

        Raises:
            ValueError: If ``total_steps`` is not finite or is below 1 (set a finite
                ``max_steps``), or [`DropoutScheduler`][dropkit.DropoutScheduler] refuses the
                model or options.
        """
        if not math.isfinite(total_steps) or total_steps < 1:
            raise ValueError(
                f"the trainer reports {total_steps} optimizer steps for this run, so a schedule "
                "cannot be laid out over it; set a finite max_steps (or max_epochs with a "
                "dataloader that has a length)"
            )
        if self.scheduler is not None:  # a second fit starts from the model's built rates
            self.scheduler.remove()
        self.scheduler = DropoutScheduler(
            model, int(total_steps), self.dropout, self.drop_path, **self.options
        )
        if self._pending_state is not None:
            self.scheduler.load_state_dict(self._pending_state)
            self._pending_state = None
        return self.scheduler

    def go_to(self, step: int) -> None:
        """Apply the rates of optimizer step ``step`` (a no-op if they are already applied).

        The next step advances the scheduler by one; any other step (a resume, a jump) re-applies
        that step's rates at once.

        Args:
            step: The trainer's global optimizer step, counted from 0.

        Raises:
            RuntimeError: If [`start`][dropkit.integrations.GlobalStepSchedule.start] was not
                called.
        """
        scheduler = self._started()
        if step == scheduler.last_step + 1:
            scheduler.step()
        elif step != scheduler.last_step:  # a resume or a jump: re-apply at once
            scheduler.load_state_dict({"last_step": step, "total_steps": scheduler.total_steps})

    def spent(self, steps_done: int) -> bool:
        """Whether ``steps_done`` optimizer steps use up the budget:
        ``steps_done >= ceil(budget * total_steps)`` (at least 1); always False at budget 1,
        where the trainer's own end stops the run.

        Args:
            steps_done: Optimizer steps done (the trainer's global step after a step).

        Returns:
            True once the trainer should stop.

        Raises:
            RuntimeError: If [`start`][dropkit.integrations.GlobalStepSchedule.start] was not
                called.
        """
        total = self._started().total_steps
        return self.budget < 1.0 and steps_done >= max(1, math.ceil(self.budget * total))

    def rates(self) -> dict[str, float]:
        """The current rate of each scheduled kind, keyed for loggers: ``{"dropout/p": ...}``.

        Returns:
            ``"dropout/p"`` and/or ``"drop_path/p"`` mapped to the rate of the current step
                (before depth multipliers).

        Raises:
            RuntimeError: If [`start`][dropkit.integrations.GlobalStepSchedule.start] was not
                called.
        """
        return {f"{kind}/p": rate for kind, rate in self._started().get_last_p().items()}

    def state_dict(self) -> dict[str, Any]:
        """The schedule's position, for a checkpoint (plain data).

        Returns:
            The scheduler's [`state_dict`][dropkit.DropoutScheduler.state_dict]; before
                [`start`][dropkit.integrations.GlobalStepSchedule.start], a copy of the state
                loaded so far (empty if none).
        """
        if self.scheduler is not None:
            return self.scheduler.state_dict()
        return dict(self._pending_state or {})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint's position, now or when the scheduler starts.

        Args:
            state: What [`state_dict`][dropkit.integrations.GlobalStepSchedule.state_dict]
                returned.

        Raises:
            KeyError: If ``state`` lacks ``"last_step"`` or ``"total_steps"``; before the start,
                an empty ``state`` (what ``state_dict`` gives then) restores nothing.
        """
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state)
        elif state:
            check_state(state)
            self._pending_state = dict(state)
        else:  # saved before any start: no position to restore
            self._pending_state = None

    def _started(self) -> DropoutScheduler:
        if self.scheduler is None:
            raise RuntimeError("the dropout schedule has not started: training has not begun")
        return self.scheduler
