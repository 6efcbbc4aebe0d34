"""PyTorch Lightning integration: dropout-schedule and dynamics callbacks, an R-Drop step.

Needs lightning (``pip install '.[lightning]'`` in a dropkit checkout).

```python
import lightning
import dropkit
from dropkit.integrations.lightning import DropoutScheduleCallback

cb = DropoutScheduleCallback(dropout=dropkit.schedules.early(p=0.1, cutoff=0.15, shape="linear"))
lightning.Trainer(callbacks=[cb], ...).fit(module)
```
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dropkit._optional import optional_imports

with optional_imports("lightning", "lightning", "for dropkit.integrations.lightning"):
    import lightning.pytorch as pl
import torch
from torch import Tensor

from dropkit.diagnostics import DynamicsRecorder
from dropkit.diagnostics.tracking import Cadence
from dropkit.dropout_scheduler import DropoutScheduler, ScheduleLike
from dropkit.integrations import GlobalStepSchedule, TrialLike
from dropkit.rdrop import rdrop_forward, rdrop_terms

__all__ = ["DropoutScheduleCallback", "DynamicsCallback", "TrialCallback", "rdrop_training_step"]


class DropoutScheduleCallback(pl.Callback):
    """Drive the LightningModule's dropout / drop-path sites with schedules over the fit.

    A [`DropoutScheduler`][dropkit.DropoutScheduler] run by the trainer. The run length is
    ``trainer.estimated_stepping_batches`` (optimizer steps), read at fit start. Before every
    training batch the rates of ``trainer.global_step`` are applied, so all micro-batches of a
    gradient-accumulation window share one rate and every rank derives the same rate. The rates
    are logged as ``dropout/p`` and ``drop_path/p``; the schedule's position is saved in
    checkpoints, so ``Trainer.fit(ckpt_path=...)`` continues it exactly.

    Args:
        dropout: Schedule for dropout sites, or None (see
            [`ScheduleLike`][dropkit.dropout_scheduler.ScheduleLike]).
        drop_path: Schedule for stochastic-depth sites, or None.
        budget: The share of the run to train, in (0, 1] (default 1): stop the fit after
            ``ceil(budget * estimated_stepping_batches)`` optimizer steps, the schedule still
            laid over the whole run (what a dropkit advise probe's ``trial.budget`` asks).
        **options: Further [`DropoutScheduler`][dropkit.DropoutScheduler] options
            (``depth_rule``, ``on_missing``, ``compile_levels``).

    Raises:
        ValueError: If neither ``dropout`` nor ``drop_path`` is given, or ``budget`` is not in
            (0, 1]. At fit start: if the
            trainer cannot tell the run length (set a finite ``max_steps``, or ``max_epochs``
            with a dataloader that has a length), or the model has no controllable site of a
            scheduled kind.
        TypeError: If ``options`` holds ``model``, ``total_steps`` or a keyword that
            [`DropoutScheduler`][dropkit.DropoutScheduler] does not take.

    Examples:
        ```python
        import lightning
        import dropkit
        from dropkit.integrations.lightning import DropoutScheduleCallback

        early = dropkit.schedules.early(p=0.1, cutoff=0.15, shape="linear")
        callback = DropoutScheduleCallback(dropout=early)
        lightning.Trainer(max_epochs=10, callbacks=[callback]).fit(module)  # your LightningModule
        ```
    """

    def __init__(
        self,
        dropout: ScheduleLike | None = None,
        drop_path: ScheduleLike | None = None,
        *,
        budget: float = 1.0,
        **options: Any,
    ) -> None:
        super().__init__()
        self._schedule = GlobalStepSchedule(dropout, drop_path, options, budget)

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

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        """Stop the fit once the budget's optimizer steps are done."""
        if self._schedule.spent(trainer.global_step):
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        """The schedule's position, saved in the checkpoint."""
        return self._schedule.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the schedule from a checkpoint's position (``fit(ckpt_path=...)``)."""
        self._schedule.load_state_dict(state_dict)


def _stable_name(spec: ScheduleLike | None) -> str:
    return getattr(spec, "__qualname__", None) or repr(spec)


class TrialCallback(DropoutScheduleCallback):
    """All a dropkit training function needs from a Lightning fit, in one callback.

    For a function that ``dropkit run`` / ``dropkit advise`` calls with a
    [`Trial`][dropkit.experiments.Trial]: it drives the trial's dropout and drop-path schedules
    over the whole run (it is a
    [`DropoutScheduleCallback`][dropkit.integrations.lightning.DropoutScheduleCallback]), stops
    after ``trial.budget`` of it (an advise probe), sends each
    epoch's mean training loss (``train_loss``) and the ``val_loss`` the module logs in its
    validation loop to ``trial.log`` at the global step, and at each epoch's end saves a
    checkpoint in the trial's folder (atomically) that holds the global torch RNG state as well
    (every rank's, in a data-parallel trial), so a fit resumed from it
    (``fit(..., ckpt_path=callback.ckpt_path)``) draws the same data order and dropout masks as
    one never stopped. Logs and checkpoints are global rank 0's.

    Args:
        trial: The trial the function was called with.
        val_metric: The name of the validation metric the module logs with ``self.log`` and the
            trial records (default ``val_loss``, what ``dropkit advise`` reads).
        **options: Further [`DropoutScheduler`][dropkit.DropoutScheduler] options.

    Attributes:
        trial: The trial, as given.
        checkpoint_path: Where the checkpoint goes: ``trial.dir / "lightning.ckpt"``.

    Examples:
        ```python
        import lightning
        from dropkit.integrations.lightning import TrialCallback


        def train(trial):
            callback = TrialCallback(trial)
            trainer = lightning.Trainer(max_epochs=10, callbacks=[callback])
            trainer.fit(module, loader, val_loader, ckpt_path=callback.ckpt_path)
            return {"val_loss": float(trainer.callback_metrics["val_loss"])}
        ```
    """

    def __init__(self, trial: TrialLike, *, val_metric: str = "val_loss", **options: Any) -> None:
        super().__init__(trial.dropout, trial.drop_path, budget=trial.budget, **options)
        self.trial, self.val_metric = trial, val_metric
        self.checkpoint_path = Path(trial.dir) / "lightning.ckpt"
        self._losses: list[float] = []

    @property
    def ckpt_path(self) -> str | None:
        """The checkpoint to resume from (``fit(ckpt_path=...)``), None for a fresh trial."""
        return str(self.checkpoint_path) if self.checkpoint_path.exists() else None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, *args: Any
    ) -> None:
        """Collect the batch's loss, and stop once the budget is spent."""
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if loss is not None:
            self._losses.append(float(loss))
        super().on_train_batch_end(trainer, pl_module, outputs, *args)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the epoch's mean training loss and save the trial's checkpoint."""
        if self._losses and trainer.is_global_zero:
            self.trial.log(trainer.global_step, train_loss=sum(self._losses) / len(self._losses))
        self._losses = []
        partial = self.checkpoint_path.with_name(self.checkpoint_path.name + ".partial")
        trainer.save_checkpoint(partial)
        if trainer.is_global_zero:  # a kill mid-save leaves the last whole checkpoint
            os.replace(partial, self.checkpoint_path)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the validation metric the module logged (not during the sanity check)."""
        value = trainer.callback_metrics.get(self.val_metric)
        if value is not None and not trainer.sanity_checking and trainer.is_global_zero:
            self.trial.log(trainer.global_step, **{self.val_metric: float(value)})

    def state_dict(self) -> dict[str, Any]:
        """The schedule's position and the global torch RNG state of every rank (gathered from
        the ranks of a data-parallel fit, where Lightning asks each rank for its state)."""
        return {**super().state_dict(), "torch_rng": _every_rank(torch.get_rng_state())}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore this rank's RNG state and the schedule's position from a checkpoint."""
        state = dict(state_dict)
        if "torch_rng" in state:
            saved = state.pop("torch_rng")
            if isinstance(saved, list):  # one per rank (a checkpoint of one rank holds one)
                rank = _rank()
                saved = saved[rank if rank < len(saved) else 0]
            torch.set_rng_state(saved)
        super().load_state_dict(state)


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _every_rank(value: Any) -> list[Any]:
    """``value`` of every rank of the default process group, in rank order ([value] alone)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


class DynamicsCallback(pl.Callback):
    """Run dropkit's training-dynamics instruments on their tracking schedules during fit.

    A thin wrapper of [`DynamicsRecorder`][dropkit.diagnostics.DynamicsRecorder]: the recorder
    is built on
    the LightningModule at fit start and stepped with ``trainer.global_step`` once per optimizer
    step, after the (accumulated, all-reduced) gradients exist and before the optimizer uses
    them. Each value goes to the trainer's loggers at the step it was measured, as
    ``dynamics/<instrument>`` (dict values as ``dynamics/<instrument>/<key>``). Under DDP only
    global rank 0 runs the instruments.

    Args:
        instruments: Names from [`INSTRUMENTS`][dropkit.diagnostics.INSTRUMENTS], or a mapping
            of name to cadence (None for the default cadence); by default ``grad_norm`` and
            ``distance``.
        **options: Further [`DynamicsRecorder`][dropkit.diagnostics.DynamicsRecorder] options
            (``cadence``, ``batches``, ``path``, ...). ``distance`` measures from the weights at
            fit start; when resuming, pass the run's initial weights as ``init_params``.

    Attributes:
        instruments: The instruments, as given.
        options: The recorder options, as given.
        recorder: The recorder of the current fit; None before fit start and on ranks other
            than 0.

    Raises:
        TypeError: If ``options`` holds a keyword that
            [`DynamicsRecorder`][dropkit.diagnostics.DynamicsRecorder] does not take. The
            recorder's other checks (an unknown instrument, for one) raise at fit start.

    Examples:
        ```python
        import lightning
        from dropkit.integrations.lightning import DynamicsCallback

        dynamics = DynamicsCallback(["grad_norm", "distance"], cadence=10)  # every 10 steps
        lightning.Trainer(max_epochs=10, callbacks=[dynamics]).fit(module)
        ```
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

    One forward of ``module`` on the doubled batch (see [`rdrop_forward`][dropkit.rdrop_forward];
    each rank doubles its own batch, so a pair never straddles devices), then paper Eq. 4
    (``ce1 + ce2 + alpha/2 (KL12 + KL21)``, see [`rdrop_terms`][dropkit.rdrop_terms]). Logs
    ``rdrop/ce`` (the two passes' mean cross-entropy) and ``rdrop/kl`` at each step. Lightning
    divides the returned loss by ``accumulate_grad_batches`` itself, so each micro-batch weighs
    the same.

    Args:
        module: The LightningModule, usually ``self``; ``module(*inputs)`` must return logits
            shaped ``target.shape + (classes,)``.
        *inputs: The model inputs, batch first, repeated for the two passes.
        target: Class indices shaped like the logits without the class dimension.
        alpha: The weight of the KL term, a finite number >= 0 (the paper uses 0.5 to 5).
        ignore_index: The target value of positions to leave out of CE and KL (-100).

    Returns:
        The R-Drop loss, a 0-dim tensor with its graph, to return from ``training_step``.

    Raises:
        TypeError: If ``alpha`` is not a number.
        ValueError: If ``alpha`` is negative or not finite, or the shapes do not fit (see
            [`rdrop_forward`][dropkit.rdrop_forward] and [`rdrop_terms`][dropkit.rdrop_terms]).

    Examples:
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
