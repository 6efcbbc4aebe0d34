"""Hugging Face Transformers integration: a dropout-schedule callback and an R-Drop Trainer.

```python
from dropkit.integrations.transformers import DropoutScheduleCallback, RDropTrainer

cb = DropoutScheduleCallback(dropout=dropkit.schedules.early(p=0.1, cutoff=0.15, shape="linear"))
RDropTrainer(model=model, args=args, train_dataset=ds, callbacks=[cb], rdrop_alpha=1.0).train()
```

Rates are written into the modules (``nn.Dropout.p`` and attention floats such as Llama's
``attention_dropout``), which is what the forward reads; editing ``model.config`` after the model
is built changes nothing, and the ``model.train()`` the Trainer calls every step leaves rates alone.
"""

from __future__ import annotations

from typing import Any

try:
    from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState
    from transformers.trainer_pt_utils import nested_gather
    from transformers.training_args import TrainingArguments
except ImportError as err:  # optional dependency
    raise ImportError(
        "dropkit.integrations.transformers needs transformers: pip install 'dropkit[hf]'"
    ) from err
import torch
from torch import Tensor, nn

from dropkit.integrations import GlobalStepSchedule
from dropkit.rdrop import rdrop_forward, rdrop_terms
from dropkit.scheduler import DropoutScheduler, ScheduleLike

__all__ = ["DropoutScheduleCallback", "RDropTrainer"]


class DropoutScheduleCallback(TrainerCallback):
    """Drive the model's dropout / drop-path sites from ``state.global_step`` / ``state.max_steps``.

    The rates of optimizer step ``state.global_step`` are applied at the start of each step, so
    the micro-batches of a gradient-accumulation window share them, every process derives the
    same rates, and a run resumed with ``resume_from_checkpoint`` continues the schedule. Each
    training log gets ``dropout/p`` / ``drop_path/p`` (also kept in ``state.log_history``).

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
        self._schedule = GlobalStepSchedule(dropout, drop_path, options)

    @property
    def scheduler(self) -> DropoutScheduler | None:
        """The scheduler of the current run (None before training begins)."""
        return self._schedule.scheduler

    def rates(self) -> dict[str, float]:
        """The current rates keyed for logs: ``{"dropout/p": ..., "drop_path/p": ...}``."""
        return self._schedule.rates() if self._schedule.scheduler is not None else {}

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if model is None:
            raise ValueError("the Trainer passed no model to DropoutScheduleCallback")
        self._schedule.start(model, state.max_steps)
        self._schedule.go_to(state.global_step)

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._schedule.go_to(state.global_step)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if logs is None or "loss" not in logs:  # training logs only
            return
        rates = self.rates()
        logs.update(rates)  # seen by the callbacks after this one
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(rates)  # saved in trainer_state.json


class RDropTrainer(Trainer):
    """A ``Trainer`` whose training loss is R-Drop's (paper Eq. 4), from one doubled forward.

    Each process doubles its own micro-batch (pairs never straddle devices). Causal LMs are
    scored on next tokens (logits shifted against labels); labels equal to -100 are ignored;
    ``label_smoothing_factor`` applies to the cross-entropy terms as in the Trainer. The
    loss is normalised as the Trainer normalises its own: over all non-ignored labels of the
    accumulated batch where the Trainer counts them (``num_items_in_batch``, e.g. causal LMs),
    otherwise per micro-batch and divided by the accumulation steps. Training logs get
    ``rdrop/ce`` (mean cross-entropy of the two passes) and ``rdrop/kl``, averaged since the
    last log and over processes, and the rates of any :class:`DropoutScheduleCallback`.
    Evaluation uses the model's ordinary loss.

    Args:
        rdrop_alpha: weight of the KL term (the paper uses 0.5 to 5).
        *args, **kwargs: as for ``transformers.Trainer``.
    """

    def __init__(self, *args: Any, rdrop_alpha: float = 1.0, **kwargs: Any) -> None:
        if isinstance(rdrop_alpha, bool) or not isinstance(rdrop_alpha, (int, float)):
            raise TypeError(f"rdrop_alpha must be a float >= 0, got {rdrop_alpha!r}")
        if rdrop_alpha < 0:
            raise ValueError(f"rdrop_alpha={rdrop_alpha} must be >= 0 (the paper uses 0.5 to 5)")
        super().__init__(*args, **kwargs)
        self.rdrop_alpha = float(rdrop_alpha)
        self._rdrop_sums: Tensor | None = None  # (ce, kl) summed over micro-batches since a log
        self._rdrop_count = 0

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
        **kwargs: Any,
    ) -> Tensor | tuple[Tensor, Any]:
        if not model.training or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        shift_labels = inputs.pop("shift_labels", None)
        outputs = rdrop_forward(model, **inputs)
        logits = tuple(out["logits"] if isinstance(out, dict) else out[0] for out in outputs)
        target = labels
        if shift_labels is not None:
            target = shift_labels
        elif self._loss_shifts_labels:  # causal LM: position t predicts token t + 1
            logits = tuple(z[..., :-1, :] for z in logits)
            target = labels[..., 1:]
        terms = rdrop_terms(
            logits,
            target,
            alpha=self.rdrop_alpha,
            ignore_index=-100,
            label_smoothing=self.args.label_smoothing_factor,
        )
        self._accumulate_parts(terms.ce, terms.kl)
        loss = terms.loss
        if num_items_in_batch is not None:
            # mean over this micro-batch's labels -> sum over them / labels in the whole window
            loss = loss * (target != -100).sum() / num_items_in_batch
            if self.args.average_tokens_across_devices:  # the count spans every process
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
            self.loss_is_scaled_for_ga = True
        else:
            self.loss_is_scaled_for_ga = False  # the Trainer divides by the accumulation steps
        return (loss, outputs[0]) if return_outputs else loss

    def _accumulate_parts(self, ce: tuple[Tensor, ...], kl: Tensor) -> None:
        parts = torch.stack([(ce[0] + ce[1]).detach() / 2, kl.detach()])
        self._rdrop_sums = parts if self._rdrop_sums is None else self._rdrop_sums + parts
        self._rdrop_count += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            if self._rdrop_sums is not None:
                mean = self._rdrop_sums / self._rdrop_count
                ce, kl = nested_gather(mean, self.args.parallel_mode).view(-1, 2).mean(0).tolist()
                logs.update({"rdrop/ce": ce, "rdrop/kl": kl})
                self._rdrop_sums, self._rdrop_count = None, 0
            for callback in self.callback_handler.callbacks:  # reach the report_to integrations
                if isinstance(callback, DropoutScheduleCallback):
                    logs.update(callback.rates())
        super().log(logs, start_time)
