"""`TrainConfig`: a built-in setting's optimisation (its ``train:`` block), and the intended run
that ``dropkit.advise`` probes the first part of."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from dropkit._checks import check_int

__all__ = ["EVAL_BATCH", "TrainConfig"]

EVAL_BATCH = 1024  # samples per forward when evaluating (TrainConfig.eval_batch's default)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by every variant of a comparison.

    AdamW with a linear warm-up over ``warmup_frac`` of the steps, then cosine decay to 0
    (``lr_schedule="cosine"``, as in the paper's recipe) or a constant rate. An epoch is
    ``len(train) // batch_size`` steps (the last partial batch is dropped), so a run is
    ``epochs * (len(train) // batch_size)`` optimizer steps. For
    [`dropkit.advise`][dropkit.experiments.advise.advise] it describes the intended run, which
    the probes train the first part of. In a config it is a setting's ``train:`` block, with the
    same field names.

    Attributes:
        epochs: Passes over the training split (at least 1; default 10).
        batch_size: Samples per optimizer step (at least 1, at most the training samples;
            default 128).
        lr: AdamW's peak learning rate (> 0; default 2e-3).
        weight_decay: AdamW's decoupled weight decay (>= 0; default 0.05).
        warmup_frac: The fraction of the run's steps spent in the linear warm-up from 0 to
            ``lr``, in [0, 1) (default 0.05).
        lr_schedule: ``"cosine"`` (default): cosine decay to 0 after the warm-up;
            ``"constant"``: ``lr`` after the warm-up.
        log_every: The training loss is logged as the mean over windows of this many steps
            (at least 1; default 10).
        eval_batch: Samples per forward when evaluating (at least 1; default 1024); speed and
            memory, not the result, depend on it. A larger chunk can be slower on a CPU: an
            8192-sample chunk made the demo's ViT1D evaluate 3x slower, its intermediate
            tensors outgrowing the caches (``benchmarks/eval_batch.py``).
        train_eval_samples: The final training loss and accuracy (dropout off) are measured on
            the first this many training samples; None (default) measures all of them. On a
            large set a fixed subset saves a full pass per variant.
        compile: Run each step of a population (forward and backward) through
            ``torch.compile``, with a fused AdamW (default False): the same masks and losses
            equal to the eager step's up to float rounding (1e-7 measured), 1.35x to 2.6x
            faster per step (``benchmarks/population_step.py``: the most where per-op overhead
            dominates, as on the demo's small ViT1D) after 5 to 60 s of compilation per
            variant, so it pays for runs of thousands of steps. Where compiling fails (no C++
            compiler, say) the run warns and goes on eagerly. Each compiled population starts
            from a fresh compiler state (``torch.compiler.reset()``), so functions compiled
            elsewhere in the process compile again on their next call.

    Raises:
        TypeError: If an int field is not an int.
        ValueError: If a field is out of its range, or ``lr_schedule`` is neither
            ``"cosine"`` nor ``"constant"``.

    Examples:
        ```python
        from dropkit.experiments import TrainConfig

        run = TrainConfig(epochs=40, batch_size=64, lr=1e-3, warmup_frac=1 / 6)
        ```
    """

    # fields that change no number, only speed and memory: a run recorded with other values
    # of them is the same run (the runner's check of a run folder's config ignores them)
    RESULT_NEUTRAL: ClassVar[frozenset[str]] = frozenset({"eval_batch"})

    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_frac: float = 0.05
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    log_every: int = 10
    eval_batch: int = EVAL_BATCH
    train_eval_samples: int | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "log_every", "eval_batch", "train_eval_samples"):
            value = getattr(self, name)
            if name == "train_eval_samples" and value is None:
                continue
            check_int(value, f"TrainConfig.{name}", 1)
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr={self.lr} must be > 0")
        if not self.weight_decay >= 0:
            raise ValueError(f"TrainConfig.weight_decay={self.weight_decay} must be >= 0")
        if not 0.0 <= self.warmup_frac < 1.0:
            raise ValueError(f"TrainConfig.warmup_frac={self.warmup_frac} must lie in [0, 1)")
        if not isinstance(self.compile, bool):
            raise TypeError(f"TrainConfig.compile={self.compile!r} must be true or false")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(
                f"TrainConfig.lr_schedule={self.lr_schedule!r} must be 'cosine' or 'constant'"
            )
