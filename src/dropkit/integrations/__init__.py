"""Thin adapters from training frameworks to dropkit's core.

Import the one you use; this package itself imports neither framework:

- ``dropkit.integrations.lightning``: PyTorch Lightning callbacks and an R-Drop training step
  (``pip install 'dropkit[lightning]'``);
- ``dropkit.integrations.transformers``: a Hugging Face ``Trainer`` callback and ``RDropTrainer``
  (``pip install 'dropkit[hf]'``).

Every schedule callback takes the arguments of :class:`dropkit.DropoutScheduler` except the model
and the run length, which come from the trainer, and follows the trainer's global optimizer step.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

from torch import nn

from dropkit.dropout_scheduler import DropoutScheduler, ScheduleLike

__all__ = ["GlobalStepSchedule"]


class GlobalStepSchedule:
    """A :class:`DropoutScheduler` built once the run length is known, driven by a global step.

    The framework adapters share it: ``start`` at the beginning of fit, ``go_to(global_step)``
    before every forward (so all micro-batches of an accumulation window share one rate), and
    ``state_dict`` / ``load_state_dict`` for checkpoints, in whichever order the framework calls
    them.
    """

    def __init__(
        self, dropout: ScheduleLike | None, drop_path: ScheduleLike | None, options: dict[str, Any]
    ) -> None:
        if dropout is None and drop_path is None:
            raise ValueError("nothing to schedule: pass dropout=... and/or drop_path=...")
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
        self.scheduler: DropoutScheduler | None = None
        self._pending_state: dict[str, Any] | None = None

    def start(self, model: nn.Module, total_steps: float) -> DropoutScheduler:
        """Build the scheduler for a run of ``total_steps`` optimizer steps (restoring a
        checkpoint's state if one was loaded first)."""
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
        """Apply the rates of optimizer step ``step`` (a no-op if they are already applied)."""
        scheduler = self._started()
        if step == scheduler.last_step + 1:
            scheduler.step()
        elif step != scheduler.last_step:  # a resume or a jump: re-apply at once
            scheduler.load_state_dict({"last_step": step, "total_steps": scheduler.total_steps})

    def rates(self) -> dict[str, float]:
        """The current rate of each scheduled kind, keyed for loggers: ``{"dropout/p": ...}``."""
        return {f"{kind}/p": rate for kind, rate in self._started().get_last_p().items()}

    def state_dict(self) -> dict[str, Any]:
        """The schedule's position, for a checkpoint (plain data)."""
        if self.scheduler is not None:
            return self.scheduler.state_dict()
        return dict(self._pending_state or {})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint's position, now or when the scheduler starts."""
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state)
        else:
            self._pending_state = dict(state)

    def _started(self) -> DropoutScheduler:
        if self.scheduler is None:
            raise RuntimeError("the dropout schedule has not started: training has not begun")
        return self.scheduler
