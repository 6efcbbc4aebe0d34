"""Hugging Face Transformers integration: a dropout-schedule callback and an R-Drop Trainer.

Needs transformers and accelerate (``pip install '.[hf]'`` in a dropkit checkout).

```python
import dropkit
from dropkit.integrations.transformers import DropoutScheduleCallback, RDropTrainer

cb = DropoutScheduleCallback(dropout=dropkit.schedules.early(p=0.1, cutoff=0.15, shape="linear"))
RDropTrainer(model=model, args=args, train_dataset=ds, callbacks=[cb], rdrop_alpha=1.0).train()
```

Rates are written into the modules (``nn.Dropout.p`` and attention floats such as Llama's
``attention_dropout``), which is what the forward reads; editing ``model.config`` after the model
is built changes nothing, and the ``model.train()`` the Trainer calls every step leaves rates alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dropkit._optional import optional_imports

with optional_imports("transformers", "hf", "for dropkit.integrations.transformers"):
    from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState
    from transformers.trainer_pt_utils import nested_gather
    from transformers.training_args import TrainingArguments
import torch
from torch import Tensor, nn

from dropkit.dropout_scheduler import DropoutScheduler, ScheduleLike
from dropkit.integrations import GlobalStepSchedule, TrialLike
from dropkit.rdrop import RDropTerms, check_alpha, rdrop_forward, rdrop_terms
from dropkit.rdrop_linear import rdrop_linear_terms
from dropkit.sites import unwrap

__all__ = ["DropoutScheduleCallback", "RDropTrainer", "TrialCallback"]


class DropoutScheduleCallback(TrainerCallback):
    """Drive the model's dropout / drop-path sites from ``state.global_step`` / ``state.max_steps``.

    A [`DropoutScheduler`][dropkit.DropoutScheduler] run by the ``Trainer``, laid out over
    ``state.max_steps`` optimizer steps at the start of training. The rates of optimizer step
    ``state.global_step`` are applied at the start of each step, so the micro-batches of a
    gradient-accumulation window share them, every process derives the same rates, and a run
    resumed with ``resume_from_checkpoint`` continues the schedule. Each training log gets
    ``dropout/p`` / ``drop_path/p`` (also kept in ``state.log_history``). Rates are written into
    the modules; editing ``model.config`` after the model is built changes nothing.

    Args:
        dropout: Schedule for dropout sites, or None (see
            [`ScheduleLike`][dropkit.dropout_scheduler.ScheduleLike]).
        drop_path: Schedule for stochastic-depth sites, or None.
        budget: The share of the run to train, in (0, 1] (default 1): stop training after
            ``ceil(budget * max_steps)`` optimizer steps (logging there), the schedule still
            laid over the whole run (what a dropkit advise probe's ``trial.budget`` asks).
        **options: Further [`DropoutScheduler`][dropkit.DropoutScheduler] options
            (``depth_rule``, ``on_missing``, ``compile_levels``).

    Raises:
        ValueError: If neither ``dropout`` nor ``drop_path`` is given. At the start of
            training: if the model has no controllable site of a scheduled kind.
        TypeError: If ``options`` holds ``model``, ``total_steps`` or a keyword that
            [`DropoutScheduler`][dropkit.DropoutScheduler] does not take.

    Examples:
        ```python
        import dropkit
        from transformers import Trainer
        from dropkit.integrations.transformers import DropoutScheduleCallback

        early = dropkit.schedules.early(p=0.1, cutoff=0.15, shape="linear")
        callback = DropoutScheduleCallback(dropout=early)
        Trainer(model=model, args=args, train_dataset=ds, callbacks=[callback]).train()
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
        self._schedule = GlobalStepSchedule(dropout, drop_path, options, budget)

    @property
    def scheduler(self) -> DropoutScheduler | None:
        """The scheduler of the current run (None before training begins)."""
        return self._schedule.scheduler

    def rates(self) -> dict[str, float]:
        """The current rates keyed for logs: ``{"dropout/p": ..., "drop_path/p": ...}``.

        Returns:
            Each scheduled kind's rate at the current step (before depth multipliers), keyed
                ``"dropout/p"`` / ``"drop_path/p"``; empty before training begins.
        """
        return self._schedule.rates() if self._schedule.scheduler is not None else {}

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        """Lay the schedule out over ``state.max_steps`` and apply the current step's rates."""
        if model is None:
            raise ValueError("the Trainer passed no model to DropoutScheduleCallback")
        self._schedule.start(model, state.max_steps)
        self._schedule.go_to(state.global_step)

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Apply the rates of ``state.global_step`` before the step's first micro-batch."""
        self._schedule.go_to(state.global_step)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Stop training once the budget's optimizer steps are done (logging that step)."""
        if self._schedule.spent(state.global_step):
            control.should_training_stop = True
            control.should_log = True

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        """Add the current rates to each training log (and to ``state.log_history``)."""
        if logs is None or "loss" not in logs:  # training logs only
            return
        rates = self.rates()
        logs.update(rates)  # seen by the callbacks after this one
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(rates)  # saved in trainer_state.json


class TrialCallback(DropoutScheduleCallback):
    """All a dropkit training function needs from a Hugging Face ``Trainer``, in one callback.

    For a function that ``dropkit run`` / ``dropkit advise`` calls with a
    [`Trial`][dropkit.experiments.Trial]: it drives the trial's dropout and drop-path schedules
    over ``max_steps`` (it is a
    [`DropoutScheduleCallback`][dropkit.integrations.transformers.DropoutScheduleCallback]),
    stops after ``trial.budget`` of the run (an advise probe), and
    sends each training log's loss (``train_loss``: R-Drop's mean cross-entropy ``rdrop/ce``
    when logged, so variants compare) and each evaluation's ``eval_loss`` (``val_loss``) to
    ``trial.log``. Checkpoints are the Trainer's own, which hold the RNG state: point
    ``TrainingArguments(output_dir=callback.output_dir)`` at the trial's folder and resume with
    ``trainer.train(resume_from_checkpoint=callback.resume_from)``.

    Args:
        trial: The trial the function was called with.
        **options: Further [`DropoutScheduler`][dropkit.DropoutScheduler] options.

    Attributes:
        trial: The trial, as given.
        output_dir: ``trial.dir / "checkpoints"``, as a string for ``TrainingArguments``.

    Examples:
        ```python
        import transformers
        from dropkit.integrations.transformers import TrialCallback


        def train(trial):
            callback = TrialCallback(trial)
            args = transformers.TrainingArguments(output_dir=callback.output_dir, max_steps=600,
                                                  save_steps=100, logging_steps=20)
            trainer = transformers.Trainer(model=model, args=args, train_dataset=data,
                                           callbacks=[callback])
            trainer.train(resume_from_checkpoint=callback.resume_from)
            return {"val_loss": trainer.evaluate(val_data)["eval_loss"]}
        ```
    """

    def __init__(self, trial: TrialLike, **options: Any) -> None:
        super().__init__(trial.dropout, trial.drop_path, budget=trial.budget, **options)
        self.trial = trial
        self.output_dir = str(Path(trial.dir) / "checkpoints")

    @property
    def resume_from(self) -> str | None:
        """The Trainer's last checkpoint in ``output_dir``, None for a fresh trial."""
        from transformers.trainer_utils import get_last_checkpoint

        return get_last_checkpoint(self.output_dir) if Path(self.output_dir).is_dir() else None

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        """Add the rates to training logs, and send the losses to ``trial.log``."""
        super().on_log(args, state, control, logs=logs, **kwargs)
        if not logs or not state.is_world_process_zero:
            return
        values = {}
        if "loss" in logs:
            values["train_loss"] = logs.get("rdrop/ce", logs["loss"])
        if "eval_loss" in logs:
            values["val_loss"] = logs["eval_loss"]
        if values:
            self.trial.log(state.global_step, **values)


class RDropTrainer(Trainer):
    """A ``Trainer`` whose training loss is R-Drop's (paper Eq. 4), from one doubled forward.

    Each process doubles its own micro-batch (pairs never straddle devices). Causal LMs are
    scored on next tokens (logits shifted against labels); labels equal to -100 are ignored;
    ``label_smoothing_factor`` applies to the cross-entropy terms as in the Trainer. The
    loss is normalised as the Trainer normalises its own: over all non-ignored labels of the
    accumulated batch where the Trainer counts them (``num_items_in_batch``, e.g. causal LMs),
    otherwise per micro-batch and divided by the accumulation steps. Training logs get
    ``rdrop/ce`` (mean cross-entropy of the two passes) and ``rdrop/kl``, averaged since the
    last log and over processes, and the rates of any
    [`DropoutScheduleCallback`][dropkit.integrations.transformers.DropoutScheduleCallback].
    Batches without ``labels`` and evaluation use the model's ordinary loss.

    With ``rdrop_fused_linear=True`` (causal LMs with large vocabularies) the model runs once on
    the doubled batch with its output layer passed through, and the loss comes from the final
    hidden states and ``model.get_output_embeddings()`` by
    [`rdrop_linear_loss`][dropkit.rdrop_linear_loss], so
    neither pass's logits are ever held in full; the value and gradients are the unfused ones.
    The first training batch checks, in eval mode on one sample, that the model's logits are
    exactly its output layer applied to those hidden states, and refuses models that change them
    afterwards (logit soft-capping, scaling, an extra bias). Under DDP set
    ``ddp_find_unused_parameters=False`` unless the output layer is tied to the embeddings (the
    forward does not reach it, the loss does).

    Args:
        rdrop_alpha: The weight of the KL term, a finite number >= 0 (the paper uses 0.5 to 5).
        rdrop_fused_linear: Compute the loss chunked from hidden states (see above); False by
            default.
        *args: As for ``transformers.Trainer``.
        **kwargs: As for ``transformers.Trainer``.

    Attributes:
        rdrop_alpha: The weight of the KL term.
        rdrop_fused_linear: Whether the loss is computed from hidden states.

    Raises:
        TypeError: If ``rdrop_alpha`` is not a number or ``rdrop_fused_linear`` not a bool; with
            ``rdrop_fused_linear=True``, at the first training batch, if the output layer is not
            a plain ``nn.Linear`` or the model does not return its result as the logits.
        ValueError: If ``rdrop_alpha`` is negative or not finite; with
            ``rdrop_fused_linear=True``, at the first training batch, if the model changes its
            logits after the output layer.

    Examples:
        ```python
        from dropkit.integrations.transformers import RDropTrainer

        trainer = RDropTrainer(model=model, args=args, train_dataset=ds, rdrop_alpha=1.0)
        trainer.train()  # logs loss, rdrop/ce and rdrop/kl
        ```
    """

    def __init__(
        self,
        *args: Any,
        rdrop_alpha: float = 1.0,
        rdrop_fused_linear: bool = False,
        **kwargs: Any,
    ) -> None:
        rdrop_alpha = check_alpha(rdrop_alpha, "rdrop_alpha")
        if not isinstance(rdrop_fused_linear, bool):
            raise TypeError(f"rdrop_fused_linear must be True or False, got {rdrop_fused_linear!r}")
        super().__init__(*args, **kwargs)
        self.rdrop_alpha = rdrop_alpha
        self.rdrop_fused_linear = rdrop_fused_linear
        self._head_checked = False
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
        """R-Drop's loss from one forward on the doubled batch (see the class docstring)."""
        if not model.training or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        shift_labels = inputs.pop("shift_labels", None)
        if self.rdrop_fused_linear:
            terms, target = self._fused_terms(model, inputs, labels, shift_labels)
            outputs = None  # the passes' "logits" were hidden states: nothing to hand back
        else:
            outputs = rdrop_forward(model, **inputs)
            logits = tuple(out["logits"] if isinstance(out, dict) else out[0] for out in outputs)
            logits, target = self._scored(logits, labels, shift_labels)
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
        if return_outputs:
            return loss, None if outputs is None else outputs[0]
        return loss

    def _scored(
        self, per_pass: tuple[Tensor, ...], labels: Tensor, shift_labels: Tensor | None
    ) -> tuple[tuple[Tensor, ...], Tensor]:
        """Each pass's logits (or hidden states) at the scored positions, and their targets."""
        if shift_labels is not None:
            return per_pass, shift_labels
        if self._shifts_labels():  # causal LM: position t predicts token t + 1
            return tuple(z[..., :-1, :] for z in per_pass), labels[..., 1:]
        return per_pass, labels

    def _shifts_labels(self) -> bool:
        """Whether labels are shifted for scoring, as the Trainer decides when it counts
        ``num_items_in_batch``: its private ``_loss_shifts_labels`` (transformers >= 5.10), else
        the same rule (module-level ``_shifts_labels``)."""
        known = getattr(self, "_loss_shifts_labels", None)
        if known is None:
            return self.model is not None and _shifts_labels(self.model)
        return bool(known)

    def _fused_terms(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        labels: Tensor,
        shift_labels: Tensor | None,
    ) -> tuple[RDropTerms, Tensor]:
        head = _linear_head(unwrap(model))
        if not self._head_checked:
            _check_logits_are_the_head(unwrap(model), head, inputs)
            self._head_checked = True
        with _passed_through(head):
            outputs = rdrop_forward(model, **inputs)
        hidden = tuple(out["logits"] if isinstance(out, dict) else out[0] for out in outputs)
        hidden, target = self._scored(hidden, labels, shift_labels)
        terms = rdrop_linear_terms(
            hidden[0],
            hidden[1],
            head.weight,
            target,
            self.rdrop_alpha,
            bias=head.bias,
            ignore_index=-100,
            label_smoothing=self.args.label_smoothing_factor,
        )
        return terms, target

    def _accumulate_parts(self, ce: tuple[Tensor, ...], kl: Tensor) -> None:
        parts = torch.stack([(ce[0] + ce[1]).detach() / 2, kl.detach()])
        self._rdrop_sums = parts if self._rdrop_sums is None else self._rdrop_sums + parts
        self._rdrop_count += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean ``rdrop/ce`` and ``rdrop/kl`` since the last log to a training log."""
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


def _shifts_labels(model: nn.Module) -> bool:
    """Whether ``model``'s own loss scores position t against label t + 1 (a causal LM).

    The rule of the Trainer's ``_loss_shifts_labels``, for a Trainer without it: the loss that
    ``model.loss_type`` selects in ``LOSS_MAPPING`` (what the model's own ``loss_function`` uses)
    is the causal LM loss, which also covers causal vision-language models named
    ``...ForConditionalGeneration``, and the model is not an encoder-decoder (those score
    unshifted decoder targets). Without ``loss_type`` or ``LOSS_MAPPING``: the class name ends
    in ``ForCausalLM``.
    """
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        return False
    loss_type = getattr(model, "loss_type", None)  # PEFT wrappers forward it to the base model
    try:
        from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss
    except ImportError:  # a private module: moved or gone
        loss_type = None
    if loss_type is not None:
        return LOSS_MAPPING.get(loss_type) is ForCausalLMLoss
    return type(unwrap(model)).__name__.endswith("ForCausalLM")


_FALLBACK = "use RDropTrainer(..., rdrop_fused_linear=False), which scores the model's own logits"


def _linear_head(model: nn.Module) -> nn.Linear:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if type(head) is not nn.Linear:
        raise TypeError(
            f"rdrop_fused_linear=True needs an output layer that is a plain nn.Linear "
            f"(model.get_output_embeddings()), but {type(model).__name__} has "
            f"{type(head).__name__}; {_FALLBACK}"
        )
    return head


@contextlib.contextmanager
def _passed_through(head: nn.Linear) -> Iterator[None]:
    """Make ``head`` return its input, so the model's "logits" are its final hidden states."""
    # an instance attribute shadows nn.Linear.forward (what mypy flags is the point)
    head.forward = lambda hidden: hidden  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        del head.forward


def _check_logits_are_the_head(model: nn.Module, head: nn.Linear, inputs: dict[str, Any]) -> None:
    """Refuse models whose logits are not ``head(final hidden states)`` (checked on one sample)."""
    one = {k: v[:1] if isinstance(v, Tensor) and v.dim() > 0 else v for k, v in inputs.items()}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(**one)["logits"]
            with _passed_through(head):
                hidden = model(**one)["logits"]
            if hidden.shape[-1] != head.in_features:
                raise TypeError(
                    f"{type(model).__name__} does not return its output layer's result as its "
                    f"logits (their last dim is {hidden.shape[-1]} when the layer is skipped, not "
                    f"the hidden size {head.in_features}); {_FALLBACK}"
                )
            recomputed = head(hidden).to(logits.dtype)
    finally:
        model.train(was_training)
    gap = (recomputed - logits).abs().max().item()
    scale = logits.abs().max().item()
    if gap > 1e-4 * max(scale, 1.0):
        raise ValueError(
            f"{type(model).__name__}'s logits are not its output layer applied to the final "
            f"hidden states (they differ by up to {gap:.3g}): the model transforms them after "
            f"the layer (e.g. logit soft-capping, scaling, an extra bias); {_FALLBACK}"
        )
