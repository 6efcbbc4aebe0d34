"""What an experiment config says, as frozen dataclasses: settings (built-in or a training
function's), their variants and dynamics, the claims, and where the jobs run.

`dropkit.experiments.config.parse` builds them from YAML, checking every field; everything
downstream (plan, engine, evidence) reads only these.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from dropkit import schedules
from dropkit.experiments.config.claim import Claim
from dropkit.experiments.config.training import TrainConfig

__all__ = [
    "EXECUTORS",
    "REGIMES",
    "ConfigError",
    "DynamicsSpec",
    "ExecutorSpec",
    "ExperimentConfig",
    "ScheduleSpec",
    "SettingSpec",
    "ValidationSpec",
    "VariantSpec",
    "cli_executor_parameters",
    "setting_dict",
    "trains_doubled",
]


REGIMES = ("underfitting", "overfitting")


class ConfigError(ValueError):
    """A config field is missing or invalid; the message names the field and what it expects."""


@dataclass(frozen=True)
class ScheduleSpec:
    """``standard`` / ``early`` / ``late`` with rate ``p``; ``cutoff`` as in dropkit.schedules."""

    kind: str
    p: float
    cutoff: float | int | None = None
    shape: schedules.Shape = "constant"

    def build(self) -> schedules.Schedule:
        if self.kind == "standard":
            return schedules.standard(self.p)
        cutoff = cast("float | int", self.cutoff)  # the schedule's own check refuses None
        if self.kind == "early":
            return schedules.early(self.p, cutoff, shape=self.shape)
        return schedules.late(self.p, cutoff)


def trains_doubled(rdrop_alpha: float, double_batch: bool) -> bool:
    """Whether a variant trains each step on ``[x; x]``: R-Drop, or its alpha = 0 control."""
    return rdrop_alpha > 0 or double_batch


@dataclass(frozen=True)
class VariantSpec:
    """``double_batch``: train on ``[x; x]`` (both CEs summed) without the KL term when
    ``rdrop_alpha`` is 0 — R-Drop's control, so a gain can be put on the consistency term.
    ``params``: overlaid on the setting's ``params`` for a training function's trials."""

    name: str
    dropout: ScheduleSpec | None = None
    drop_path: ScheduleSpec | None = None
    rdrop_alpha: float = 0.0
    double_batch: bool = False
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def schedules(self) -> tuple[ScheduleSpec, ...]:
        """The schedules the variant sets: of dropout, then of drop path."""
        return tuple(s for s in (self.dropout, self.drop_path) if s is not None)

    @property
    def doubled(self) -> bool:
        """Whether each step trains on ``[x; x]`` (R-Drop, or its alpha = 0 control)."""
        return trains_doubled(self.rdrop_alpha, self.double_batch)

    def cutoff_step(self, total_steps: int) -> int | None:
        """The step at which the variant's early / late schedule switches (None: it has none)."""
        for schedule in self.schedules:
            if schedule.kind != "standard" and schedule.cutoff is not None:
                return schedules.cutoff_steps(schedule.cutoff, total_steps)
        return None

    def swept(self, axis: str) -> float:
        """``axis`` (``"cutoff"`` or ``"p"``) of the variant's one schedule: where it sits in a
        sensitivity sweep (the config parser checks the variant has exactly one)."""
        (schedule,) = self.schedules
        return float(getattr(schedule, axis))


MIN_WINDOW_CHECKPOINTS = 8


@dataclass(frozen=True)
class DynamicsSpec:
    """The paper's analyses, measured inside the training runs of ``variants``.

    At optimizer steps ``0, every, 2 * every, ...`` up to ``until`` (linearly spaced, as the
    paper's curves), every seed's model gets ``n_batches`` mini-batch gradients (the set G) and
    the gradient over the whole training set with dropout off (ĝ), or over its first
    ``reference_samples`` when set (a fixed subset, for models whose full-set gradient at every
    checkpoint would cost more than their training). Claims average a measure over the
    checkpoints in the early-phase window, steps in ``(0, window]`` (step 0 is the shared
    initialisation and never counts); the figures show the whole curve.
    """

    variants: tuple[str, ...]
    every: int
    window: int
    until: int
    n_batches: int = 16
    reference_samples: int | None = None

    def checkpoint_steps(self, total_steps: int) -> tuple[int, ...]:
        """The measured steps of a run of ``total_steps`` optimizer steps (0 included)."""
        return tuple(range(0, min(self.until, total_steps) + 1, self.every))

    def window_steps(self, total_steps: int) -> tuple[int, ...]:
        """The checkpoints a claim summarises: those in ``(0, window]``."""
        return tuple(s for s in self.checkpoint_steps(total_steps) if 0 < s <= self.window)


@dataclass(frozen=True)
class ValidationSpec:
    """The held-out metric ``dropkit advise`` reads a function setting's regime from: a key the
    training function returns computed on a *validation* split (never the test split), and
    which way is ``better`` (``"lower"`` or ``"higher"``)."""

    metric: str = "val_loss"
    better: str = "lower"


@dataclass(frozen=True)
class SettingSpec:
    """One setting of an experiment config: what is trained, and the variants compared on it.

    Either a built-in setting (``data`` / ``model`` / ``train``: dropkit trains the population)
    or a training function's (``function: module:name``, called once per variant and seed with a
    [`Trial`][dropkit.experiments.Trial]; ``params`` reach it as ``trial.params``). Built by
    ``dropkit.experiments.config.load_settings`` (or ``load_config``) from YAML, which checks
    every field; [`advise_function`][dropkit.experiments.advise.advise_function] and
    [`emit_config`][dropkit.experiments.advise.emit_config] take one.

    Attributes:
        name: The setting's key under ``settings:``.
        data: A built-in setting's dataset: a name (``mnist1d``, ``mnist1d-large``,
            ``mnist1d:N:SEED``, ``digits``) or an ``.npz`` path; None for a function's.
        model: A built-in setting's model block (``kind``: ``vit``, ``mixer``, ``mlp`` or
            ``resmlp``, and its options); None for a function's.
        train: A built-in setting's [`TrainConfig`][dropkit.experiments.TrainConfig]; None for a
            function's.
        variants: The variants compared (``VariantSpec``: name, dropout / drop-path schedules,
            R-Drop alpha, ``double_batch``, ``params``), in config order; at least one.
        dynamics: The gradient-dynamics measurements of a built-in setting (``DynamicsSpec``),
            or None.
        mc_passes: Monte-Carlo dropout passes for the train/test inconsistency (default 8);
            0 skips the measurement, for a setting where no claim reads it.
        regime: ``"underfitting"`` or ``"overfitting"``, the regime the setting is meant to be
            in, or None.
        regime_claim: The id of the claim that establishes ``regime``; the setting's other
            claims depend on it. None without a regime.
        seeds: Seeds for this setting; None (default) uses the config's.
        function: ``"module:name"`` of a training function, or None for a built-in setting.
        params: A function setting's ``params:``, overlaid by each variant's (empty for a
            built-in setting).
        validation: What ``dropkit advise`` reads a function setting's regime from: the
            metric (a key of the function's return, default ``val_loss``; log it with
            ``trial.log`` too and the advice reads its trend) and which way is ``better``
            (``lower``, or ``higher`` for an accuracy). A built-in setting is always read from
            the validation loss on a split held out of its training data.
    """

    name: str
    data: str | None
    model: Mapping[str, Any] | None
    train: TrainConfig | None
    variants: tuple[VariantSpec, ...]
    dynamics: DynamicsSpec | None = None
    mc_passes: int = 8  # Monte-Carlo dropout passes for the train/test inconsistency; 0: none
    regime: str | None = None  # "underfitting" or "overfitting": the regime it is meant to be in
    regime_claim: str | None = None  # the claim that establishes it; the others depend on it
    seeds: int | None = None  # seeds for this setting (None: the config's)
    function: str | None = None  # "module:name" of a training function
    params: Mapping[str, Any] = field(default_factory=dict)
    validation: ValidationSpec = field(default_factory=ValidationSpec)

    def variant(self, name: str) -> VariantSpec:
        """The variant called ``name``.

        Args:
            name: A variant's name.

        Returns:
            Its spec.

        Raises:
            KeyError: If the setting has no such variant.
        """
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise KeyError(name)

    def recipe(self) -> tuple[str, Mapping[str, Any], TrainConfig]:
        """``(data, model, train)`` of a built-in setting; a function setting has none.

        Returns:
            The dataset name or path, the model block and the training config.

        Raises:
            ValueError: If the setting runs a training function.
        """
        if self.data is None or self.model is None or self.train is None:
            raise ValueError(
                f"settings.{self.name} runs the training function {self.function!r}; it has no "
                "built-in data, model or train block"
            )
        return self.data, self.model, self.train


@dataclass(frozen=True)
class ExecutorSpec:
    """Where the jobs run: ``local`` (a process pool on this machine) or ``slurm`` (submitit).

    ``folder``: submitit's log folder (default: ``slurm/`` in the run folder); ``parameters``:
    every other key of the config's ``executor:`` block, passed as they are to submitit's
    ``update_parameters`` (``timeout_min``, ``slurm_partition``, ``gpus_per_node``, ...).
    """

    kind: Literal["local", "slurm"] = "local"
    folder: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ranks(self) -> int:
        """The data-parallel ranks each training-function trial runs as on SLURM: its tasks
        per node times its nodes, as submitit's parameters give them (1 for ``local``, whose
        ranks are ``--ranks``)."""
        if self.kind != "slurm":
            return 1
        ranks = 1
        for names in (("tasks_per_node", "slurm_ntasks_per_node"), ("nodes", "slurm_nodes")):
            value = next((self.parameters[n] for n in names if n in self.parameters), 1)
            try:
                count = int(value)
            except (TypeError, ValueError):
                count = 0
            if count < 1 or str(count) != str(value).strip():
                raise ConfigError(
                    f"executor.{names[0]}: expected a whole number >= 1, got {value!r}"
                )
            ranks *= count
        return ranks


EXECUTORS = ("local", "slurm")


@dataclass(frozen=True)
class ExperimentConfig:
    """``root``: the folder training functions import from (the config file's folder)."""

    name: str
    seeds: int
    settings: tuple[SettingSpec, ...]
    claims: tuple[Claim, ...] = field(default_factory=tuple)
    executor: ExecutorSpec = field(default_factory=ExecutorSpec)
    root: str | None = None

    def seeds_of(self, setting: SettingSpec) -> tuple[int, ...]:
        """The seeds every variant of ``setting`` trains with (shared, so claims pair them)."""
        return tuple(range(setting.seeds or self.seeds))

    def with_seeds(self, seeds: int) -> ExperimentConfig:
        """The same experiment with ``seeds`` seeds in every setting (``--seeds``)."""
        settings = tuple(dataclasses.replace(s, seeds=None) for s in self.settings)
        return dataclasses.replace(self, seeds=seeds, settings=settings)

    def with_executor(self, kind: str) -> ExperimentConfig:
        """The same experiment on another executor (``--executor``); the block's parameters stay."""
        if kind not in EXECUTORS:
            raise ConfigError(f"--executor {kind!r}: expected one of {list(EXECUTORS)}")
        executor = dataclasses.replace(self.executor, kind=cast(Any, kind))
        return dataclasses.replace(self, executor=executor)

    def with_executor_parameters(self, parameters: Mapping[str, Any]) -> ExperimentConfig:
        """The same experiment with submitit ``parameters`` set over the executor block's
        (``--executor-param``); they need the slurm executor."""
        if not parameters:
            return self
        merged = {
            **self.executor.parameters,
            **cli_executor_parameters(self.executor.kind, parameters),
        }
        return dataclasses.replace(
            self, executor=dataclasses.replace(self.executor, parameters=merged)
        )

    def to_dict(self) -> dict[str, Any]:
        """The config in the YAML schema, every default filled in (``parse_config`` reads it).

        The executor is left out: where the jobs run never changes what they compute, so a run
        folder may be resumed on another executor.
        """
        return {
            "name": self.name,
            "seeds": self.seeds,
            "settings": {s.name: setting_dict(s) for s in self.settings},
            "claims": [dataclasses.asdict(c) for c in self.claims],
        }


def _schedule_dict(spec: ScheduleSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"schedule": spec.kind, "p": spec.p}
    if spec.cutoff is not None:
        out["cutoff"] = spec.cutoff
    if spec.kind == "early":
        out["shape"] = spec.shape
    return out


def setting_dict(setting: SettingSpec) -> dict[str, Any]:
    """One setting in the YAML schema (what ``to_dict`` writes under ``settings``)."""
    variants = {}
    for v in setting.variants:
        entry: dict[str, Any] = {}
        if v.dropout is not None:
            entry["dropout"] = _schedule_dict(v.dropout)
        if v.drop_path is not None:
            entry["drop_path"] = _schedule_dict(v.drop_path)
        if v.rdrop_alpha:
            entry["rdrop_alpha"] = v.rdrop_alpha
        if v.double_batch:
            entry["double_batch"] = True
        if v.params:
            entry["params"] = dict(v.params)
        variants[v.name] = entry
    out: dict[str, Any] = {"variants": variants}
    if setting.function is not None:
        out["function"] = setting.function
        if setting.params:
            out["params"] = dict(setting.params)
        if setting.validation != ValidationSpec():
            out["validation"] = dataclasses.asdict(setting.validation)
    else:
        data, model, train = setting.recipe()
        out |= {"data": data, "model": dict(model), "train": dataclasses.asdict(train),
                "mc_passes": setting.mc_passes}  # fmt: skip
    for key in ("regime", "regime_claim", "seeds"):
        if getattr(setting, key) is not None:
            out[key] = getattr(setting, key)
    if setting.dynamics is not None:
        out["dynamics"] = {**dataclasses.asdict(setting.dynamics),
                           "variants": list(setting.dynamics.variants)}  # fmt: skip
    return out


def cli_executor_parameters(kind: str, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """``--executor-param`` values for an executor of ``kind``, checked: submitit's parameters,
    so only for ``slurm``, and neither ``kind`` nor ``folder`` (``--executor``, the config)."""
    reserved = sorted({"kind", "folder"} & set(parameters))
    if reserved:
        raise ConfigError(
            f"--executor-param {reserved[0]}: not a submitit parameter; the executor is chosen "
            "with --executor, its folder in the config's executor block"
        )
    if parameters and kind != "slurm":
        raise ConfigError(
            f"--executor-param {', '.join(sorted(parameters))}: submitit parameters, for the "
            "slurm executor; add --executor slurm (the local executor takes none)"
        )
    return dict(parameters)
