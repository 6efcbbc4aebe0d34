"""PyTorch Lightning integration: dropout-schedule and dynamics callbacks, an R-Drop step.

```python
from dropkit.integrations.lightning import DropoutScheduleCallback

cb = DropoutScheduleCallback(dropout=dropkit.schedules.early(p=0.1, cutoff=0.15, shape="linear"))
lightning.Trainer(callbacks=[cb], ...).fit(module)
```
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from dropkit._optional import optional_imports

with optional_imports("lightning", "lightning", "for dropkit.integrations.lightning"):
    import lightning.pytorch as pl
from torch import Tensor

from dropkit.diagnostics import DynamicsRecorder
from dropkit.diagnostics.tracking import Cadence
from dropkit.dropout_scheduler import DropoutScheduler, ScheduleLike
from dropkit.integrations import GlobalStepSchedule
from dropkit.rdrop import rdrop_forward, rdrop_terms

__all__ = ["DropoutScheduleCallback", "DynamicsCallback", "rdrop_training_step"]


class DropoutScheduleCallback(pl.Callback):
    """Drive the LightningModule's dropout / drop-path sites with schedules over the fit.

    The run length is ``trainer.estimated_stepping_batches`` (optimizer steps). Before every
    training batch the rates of ``trainer.global_step`` are applied, so all micro-batches of a
    gradient-accumulation window share one rate and every rank derives the same rate. The rates
    are logged as ``dropout/p`` and ``drop_path/p``; the schedule's position is saved in
    checkpoints, so ``Trainer.fit(ckpt_path=...)`` continues it exactly.

    Args:
        dropout: schedule for dropout sites (see :class:`dropkit.DropoutScheduler`), or None.
        drop_path: schedule for stochastic-depth sites, or None.
        **options: further :class:`dropkit.DropoutScheduler` options (``depth_rule``,
            ``on_missing``, ``compile_levels``).
    """

    def __init__(
        self,
        dropout: ScheduleLike | None = None,
        drop_path: ScheduleLike | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        self._schedule = GlobalStepSchedule(dropout, drop_path, options)

    @property
    def state_key(self) -> str:
        """The key of this callback's state in a checkpoint, stable across processes."""
        # Unique per configuration (so several such callbacks can share a checkpoint) and the
        # same in the process that resumes: functions are named, not shown with their address.
        return self._generate_state_key(
            dropout=_stable_name(self._schedule.dropout),
            drop_path=_stable_name(self._schedule.drop_path),
        )

    @property
    def scheduler(self) -> DropoutScheduler | None:
        """The scheduler of the current fit (None before the first fit starts)."""
        return self._schedule.scheduler

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Lay the schedule out over ``trainer.estimated_stepping_batches`` optimizer steps."""
        self._schedule.start(pl_module, trainer.estimated_stepping_batches)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Apply the rates of ``trainer.global_step`` and log them (``dropout/p``, ...)."""
        self._schedule.go_to(trainer.global_step)
        for name, rate in self._schedule.rates().items():
            pl_module.log(name, rate, on_step=True, on_epoch=False)

    def state_dict(self) -> dict[str, Any]:
        """The schedule's position, saved in the checkpoint."""
        return self._schedule.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the schedule from a checkpoint's position (``fit(ckpt_path=...)``)."""
        self._schedule.load_state_dict(state_dict)


def _stable_name(spec: ScheduleLike | None) -> str:
    return getattr(spec, "__qualname__", None) or repr(spec)


class DynamicsCallback(pl.Callback):
    """Run dropkit's training-dynamics instruments on their tracking schedules during fit.

    A thin wrapper of :class:`dropkit.diagnostics.DynamicsRecorder`: the recorder is built on
    the LightningModule at fit start and stepped with ``trainer.global_step`` once per optimizer
    step, after the (accumulated, all-reduced) gradients exist and before the optimizer uses
    them. Each value goes to the trainer's loggers at the step it was measured, as
    ``dynamics/<instrument>`` (dict values as ``dynamics/<instrument>/<key>``). Under DDP only
    global rank 0 runs the instruments.

    Args:
        instruments: names from ``dropkit.diagnostics.INSTRUMENTS`` (or name -> cadence).
        **options: further ``DynamicsRecorder`` options (``cadence``, ``batches``, ``path``, ...).
            ``distance`` measures from the weights at fit start; when resuming, pass the run's
            initial weights as ``init_params``.
    """

    def __init__(
        self,
        instruments: Sequence[str] | Mapping[str, Cadence | int | None] = (
            "grad_norm",
            "distance",
        ),
        **options: Any,
    ) -> None:
        super().__init__()
        try:  # fail now, not at the start of training
            inspect.signature(DynamicsRecorder).bind(None, instruments, **options)
        except TypeError as err:
            raise TypeError(
                f"{err} (DynamicsCallback passes options to DynamicsRecorder)"
            ) from None
        self.instruments, self.options = instruments, options
        self.recorder: DynamicsRecorder | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Build the recorder on the LightningModule (global rank 0 only)."""
        if trainer.is_global_zero:
            self.recorder = DynamicsRecorder(pl_module, self.instruments, **self.options)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        """Run the instruments due at ``trainer.global_step`` and send them to the loggers."""
        if self.recorder is None:
            return
        metrics: dict[str, float] = {}
        for record in self.recorder.step(trainer.global_step):
            name, value = f"dynamics/{record['instrument']}", record["value"]
            scalars = value if isinstance(value, dict) else {"": value}
            metrics.update(
                {
                    f"{name}/{key}" if key else name: float(v)
                    for key, v in scalars.items()
                    if v is not None
                }
            )
        if metrics:  # straight to the loggers: LightningModule.log would repeat stale values
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Close the recorder's file."""
        if self.recorder is not None:
            self.recorder.close()


def rdrop_training_step(
    module: pl.LightningModule,
    *inputs: Any,
    target: Tensor,
    alpha: float = 1.0,
    ignore_index: int = -100,
) -> Tensor:
    """R-Drop for ``LightningModule.training_step``: return the loss and log its parts.

    One forward of ``module`` on the doubled batch (each rank doubles its own batch, so a pair
    never straddles devices), then paper Eq. 4 (``ce1 + ce2 + alpha/2 (KL12 + KL21)``). Logs
    ``rdrop/ce`` (the two passes' mean cross-entropy) and ``rdrop/kl``. ``module(*inputs)`` must
    return logits shaped ``target.shape + (classes,)``. Lightning divides the returned loss by
    ``accumulate_grad_batches`` itself, so each micro-batch weighs the same.

    ```python
    def training_step(self, batch, batch_idx):
        x, y = batch
        return rdrop_training_step(self, x, target=y, alpha=1.0)
    ```
    """
    logits = rdrop_forward(module, *inputs)
    terms = rdrop_terms(logits, target, alpha=alpha, ignore_index=ignore_index)
    batch_size = int(target.shape[0])
    ce = (terms.ce[0] + terms.ce[1]).detach() / 2
    module.log("rdrop/ce", ce, on_step=True, on_epoch=False, batch_size=batch_size)
    module.log("rdrop/kl", terms.kl.detach(), on_step=True, on_epoch=False, batch_size=batch_size)
    return terms.loss
