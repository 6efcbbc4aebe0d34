"""Experiment configs: YAML in, validated frozen dataclasses out, errors that name the bad field.

A config names settings (a dataset, a model, a training budget and the variants to compare),
optional dynamics measurements, and the claims to decide. ``configs/demo.yaml`` is the demo.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, cast, overload

from dropkit import _optional, schedules
from dropkit.experiments.claims import DIRECTIONS, SWEEP_AXES, Claim
from dropkit.experiments.train import TrainConfig

__all__ = [
    "ConfigError",
    "DynamicsSpec",
    "ExecutorSpec",
    "ExperimentConfig",
    "ScheduleSpec",
    "SettingSpec",
    "VariantSpec",
    "builtin_config",
    "load_config",
    "load_settings",
    "parse_config",
    "setting_dict",
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


# --- parsing ---------------------------------------------------------------------------------


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
    return value


def _only(value: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(allowed)}")


@overload
def _number(value: Any, where: str, *, integer: Literal[True], low: float = ...,
            low_open: bool = ..., high: float | None = ...) -> int: ...  # fmt: skip
@overload
def _number(value: Any, where: str, *, integer: Literal[False] = ..., low: float = ...,
            low_open: bool = ..., high: float | None = ...) -> float: ...  # fmt: skip
def _number(value: Any, where: str, *, integer: bool = False, low: float = 0.0,
            low_open: bool = True, high: float | None = None) -> float:  # fmt: skip
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        expected = "an int" if integer else "a number"
        raise ConfigError(f"{where}: expected {expected}, got {value!r}")
    if (value <= low if low_open else value < low) or (high is not None and value > high):
        bounds = f"{'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}" if high else "")
        raise ConfigError(f"{where}: must be {bounds}, got {value!r}")
    return value


def _schedule(value: Any, where: str) -> ScheduleSpec:
    value = _mapping(value, where)
    _only(value, {"schedule", "p", "cutoff", "shape"}, where)
    kind = value.get("schedule", "standard")
    if kind not in ("standard", "early", "late"):
        raise ConfigError(f"{where}.schedule: expected standard, early or late, got {kind!r}")
    if "p" not in value:
        raise ConfigError(f"{where}.p: missing (the dropout / drop-path rate)")
    spec = ScheduleSpec(
        kind=kind,
        p=_number(value["p"], f"{where}.p", low=0.0, low_open=False, high=1.0),
        cutoff=value.get("cutoff"),
        shape=value.get("shape", "constant"),
    )
    try:  # the schedule's own validation (cutoff form, shape) with the field named
        spec.build()
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from err
    return spec


def _variant(name: str, value: Any, where: str) -> VariantSpec:
    value = _mapping(value or {}, where)
    _only(value, {"dropout", "drop_path", "rdrop_alpha", "double_batch", "params"}, where)
    double = value.get("double_batch", False)
    if not isinstance(double, bool):
        raise ConfigError(f"{where}.double_batch: expected true or false, got {double!r}")
    if double and value.get("rdrop_alpha"):
        raise ConfigError(
            f"{where}.double_batch: R-Drop (rdrop_alpha > 0) already doubles the batch; "
            "double_batch is the alpha = 0 control, drop one of the two"
        )
    return VariantSpec(
        name=name,
        dropout=_schedule(value["dropout"], f"{where}.dropout") if "dropout" in value else None,
        drop_path=(
            _schedule(value["drop_path"], f"{where}.drop_path") if "drop_path" in value else None
        ),
        rdrop_alpha=_number(
            value.get("rdrop_alpha", 0.0), f"{where}.rdrop_alpha", low=0.0, low_open=False
        ),
        double_batch=double,
        params=dict(_mapping(value.get("params", {}), f"{where}.params")),
    )


def _train(value: Any, where: str) -> TrainConfig:
    value = _mapping(value, where)
    _only(value, {f.name for f in dataclasses.fields(TrainConfig)}, where)
    try:
        return TrainConfig(**value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from err


def _dynamics(value: Any, where: str, variants: tuple[VariantSpec, ...]) -> DynamicsSpec:
    value = _mapping(value, where)
    _only(value, {f.name for f in dataclasses.fields(DynamicsSpec)}, where)
    names = {v.name for v in variants}
    chosen = value.get("variants")
    if not isinstance(chosen, list) or not chosen:
        raise ConfigError(f"{where}.variants: list the variants to measure, e.g. [none, dropout]")
    for name in chosen:
        if name not in names:
            raise ConfigError(f"{where}.variants: {name!r} is not a variant ({sorted(names)})")
    for key in ("every", "window", "until"):
        if key not in value:
            raise ConfigError(
                f"{where}.{key}: missing; the checkpoints are the steps 0, every, 2*every, ... up "
                "to until, and claims summarise those in (0, window]"
            )
    ints = {
        key: _number(value[key], f"{where}.{key}", integer=True)
        for key in ("every", "window", "until")
    }
    n_batches = _number(value.get("n_batches", 16), f"{where}.n_batches", integer=True)
    if n_batches < 2:
        raise ConfigError(f"{where}.n_batches: direction variance needs >= 2 gradients")
    reference = value.get("reference_samples")
    if reference is not None:
        reference = _number(reference, f"{where}.reference_samples", integer=True)
        if reference < 1:
            raise ConfigError(f"{where}.reference_samples: must be >= 1 (or left out: all)")
    if ints["window"] > ints["until"]:
        raise ConfigError(f"{where}.window: {ints['window']} exceeds until={ints['until']}")
    inside = ints["window"] // ints["every"]
    if inside < MIN_WINDOW_CHECKPOINTS:
        raise ConfigError(
            f"{where}.every: only {inside} checkpoints fall in the window (0, {ints['window']}]; "
            f"a curve needs >= {MIN_WINDOW_CHECKPOINTS}: make every <= "
            f"{ints['window'] // MIN_WINDOW_CHECKPOINTS}"
        )
    return DynamicsSpec(
        variants=tuple(chosen), n_batches=n_batches, reference_samples=reference, **ints
    )


_BUILTIN_KEYS = ("data", "model", "train", "dynamics", "mc_passes")


def _function_ref(value: Any, where: str) -> str:
    module, _, attr = value.partition(":") if isinstance(value, str) else ("", "", "")
    if not module or not attr:
        raise ConfigError(
            f"{where}: expected MODULE:NAME of a training function (e.g. mytrain:train, the "
            f"module beside the config), got {value!r}"
        )
    return str(value)


def _setting(name: str, value: Any) -> SettingSpec:
    where = f"settings.{name}"
    value = _mapping(value, where)
    _only(
        value,
        {"variants", "regime", "regime_claim", "seeds", "function", "params", *_BUILTIN_KEYS},
        where,
    )
    function = None
    if "function" in value:
        function = _function_ref(value["function"], f"{where}.function")
        mixed = [key for key in _BUILTIN_KEYS if key in value]
        if mixed:
            raise ConfigError(
                f"{where}: {mixed} belong to built-in settings; a setting with a `function` "
                "trains what the function builds (pass its options as params:)"
            )
        if "variants" not in value:
            raise ConfigError(f"{where}.variants: missing")
    else:
        if "params" in value:
            raise ConfigError(f"{where}.params: only a setting with a `function` takes params")
        for key in ("data", "model", "train", "variants"):
            if key not in value:
                raise ConfigError(
                    f"{where}.{key}: missing (or give `function: module:name` to train with "
                    "your own training function)"
                )
        if not isinstance(value["data"], str):
            raise ConfigError(
                f"{where}.data: expected a dataset name or .npz path, got {value['data']!r}"
            )
        model = _mapping(value["model"], f"{where}.model")
        if "kind" not in model:
            raise ConfigError(f"{where}.model.kind: missing (vit, mixer, mlp or resmlp)")
    raw_variants = _mapping(value["variants"], f"{where}.variants")
    if not raw_variants:
        raise ConfigError(f"{where}.variants: name at least one variant")
    variants = tuple(
        _variant(str(v), spec, f"{where}.variants.{v}") for v, spec in raw_variants.items()
    )
    dynamics = value.get("dynamics")
    regime, regime_claim = value.get("regime"), value.get("regime_claim")
    if regime is not None:
        if regime not in REGIMES:
            raise ConfigError(f"{where}.regime: expected one of {REGIMES}, got {regime!r}")
        if regime_claim is None:
            raise ConfigError(
                f"{where}.regime_claim: missing; name the claim that establishes the {regime} "
                "regime (standard dropout vs none), e.g. regime_claim: C1"
            )
        if "none" not in {v.name for v in variants}:
            raise ConfigError(
                f"{where}.variants: a setting that declares a regime needs a `none` arm (no "
                "dropout), the baseline the regime claim compares against"
            )
    elif regime_claim is not None:
        raise ConfigError(f"{where}.regime: missing; regime_claim needs underfitting/overfitting")
    seeds = value.get("seeds")
    if seeds is not None and _number(seeds, f"{where}.seeds", integer=True) < 2:
        raise ConfigError(f"{where}.seeds: claims are paired comparisons, give >= 2 seeds")
    common = {
        "name": name,
        "variants": variants,
        "regime": regime,
        "regime_claim": None if regime_claim is None else str(regime_claim),
        "seeds": seeds,
    }
    if function is not None:
        params = dict(_mapping(value.get("params", {}), f"{where}.params"))
        return SettingSpec(
            data=None, model=None, train=None, function=function, params=params, **common
        )
    return SettingSpec(
        data=value["data"],
        model=dict(model),
        train=_train(value["train"], f"{where}.train"),
        dynamics=None if dynamics is None else _dynamics(dynamics, f"{where}.dynamics", variants),
        mc_passes=_number(
            value.get("mc_passes", 8), f"{where}.mc_passes", integer=True, low_open=False
        ),
        **common,
    )


def _claim(index: int, value: Any, settings: Mapping[str, SettingSpec]) -> Claim:
    where = f"claims[{index}]"
    value = _mapping(value, where)
    optional = {"margin", "paper", "target", "sweep"}
    keys = {"id", "statement", "setting", "metric", "a", "b", "direction", *optional}
    _only(value, keys, where)
    missing = sorted(keys - optional - set(value))
    if missing:
        raise ConfigError(f"{where}: missing field(s) {missing}")
    if value["setting"] not in settings:
        raise ConfigError(f"{where}.setting: {value['setting']!r} is not one of {sorted(settings)}")
    setting = settings[value["setting"]]
    metric = value["metric"]
    names = {v.name for v in setting.variants}
    if metric.startswith("dynamics:"):
        if setting.dynamics is None:
            raise ConfigError(f"{where}.metric: {metric!r} needs a dynamics block in the setting")
        names = set(setting.dynamics.variants)
    if metric == "inconsistency_kl" and setting.function is None and not setting.mc_passes:
        raise ConfigError(
            f"{where}.metric: {metric!r} is not measured where the setting's mc_passes is 0; "
            "give the setting Monte-Carlo passes (8 by default) or claim another metric"
        )
    for side in ("a", "b"):
        if value[side] not in names:
            raise ConfigError(f"{where}.{side}: {value[side]!r} is not one of {sorted(names)}")
    direction = value["direction"]
    if direction not in DIRECTIONS:
        raise ConfigError(
            f"{where}.direction: expected '<' or '>' (superiority) or '>=' / '<=' "
            f"(non-inferiority with a margin), got {direction!r}"
        )
    margin = _number(value.get("margin", 0.0), f"{where}.margin", low_open=False)
    if (direction in ("<=", ">=")) != (margin > 0):
        raise ConfigError(
            f"{where}.margin: non-inferiority ('>=', '<=') needs a margin > 0 and superiority "
            f"('<', '>') none; got direction {direction!r} with margin {margin!r}"
        )
    target = value.get("target")
    variant = next(v for v in setting.variants if v.name == value["a"])
    sweep = _sweep(value.get("sweep", []), variant, f"{where}.sweep")
    return Claim(
        id=str(value["id"]),
        statement=str(value["statement"]),
        setting=value["setting"],
        metric=metric,
        a=value["a"],
        b=value["b"],
        direction=direction,
        margin=margin,
        paper=str(value.get("paper", "")),
        target=None if target is None else _number(target, f"{where}.target"),
        sweep=sweep,
    )


def _sweep(value: Any, variant: VariantSpec, where: str) -> tuple[str, ...]:
    """The sweep axes of a claim: its variant ``a`` schedules one of dropout / drop path and
    sets every swept field, the point's place on the axis."""
    axes = [value] if isinstance(value, str) else value
    if not isinstance(axes, list) or any(axis not in SWEEP_AXES for axis in axes):
        raise ConfigError(f"{where}: expected axes among {list(SWEEP_AXES)}, got {value!r}")
    if not axes:
        return ()
    schedules = variant.schedules
    if len(schedules) != 1:
        raise ConfigError(
            f"{where}: a sweep point's variant a ({variant.name!r}) must schedule exactly one of "
            f"dropout / drop_path, the one whose {' and '.join(axes)} the sweep varies; "
            f"it schedules {len(schedules)}"
        )
    if "cutoff" in axes and schedules[0].cutoff is None:
        raise ConfigError(
            f"{where}: {variant.name!r} has no cutoff (a standard schedule); a cutoff sweep's "
            "points are early or late schedules"
        )
    return tuple(axes)


def _check_sweeps(claims: tuple[Claim, ...], settings: Mapping[str, SettingSpec]) -> None:
    """The points of one sweep (setting, axis) compare one metric against one baseline, in one
    direction, at distinct values: one curve of effect against the swept value."""
    sweeps: dict[tuple[str, str], list[Claim]] = {}
    for claim in claims:
        for axis in claim.sweep:
            sweeps.setdefault((claim.setting, axis), []).append(claim)
    for (setting, axis), points in sweeps.items():
        where = f"claims: the {axis} sweep of {setting!r} ({', '.join(c.id for c in points)})"
        shared = {(c.metric, c.b, c.direction, c.margin) for c in points}
        if len(shared) > 1:
            raise ConfigError(
                f"{where}: its points must share metric, b, direction and margin, got "
                f"{sorted(shared)}"
            )
        variants = {v.name: v for v in settings[setting].variants}
        values = [variants[c.a].swept(axis) for c in points]
        if len(set(values)) != len(values):
            raise ConfigError(f"{where}: two points sit at the same {axis} ({values})")


def _check_regimes(settings: Mapping[str, SettingSpec], claims: tuple[Claim, ...]) -> None:
    """Each declared regime claim is a claim of its own setting comparing standard vs none."""
    by_id = {c.id: c for c in claims}
    if len(by_id) != len(claims):
        raise ConfigError(f"claims: ids must be unique, got {[c.id for c in claims]}")
    for setting in settings.values():
        if setting.regime_claim is None:
            continue
        where = f"settings.{setting.name}.regime_claim"
        claim = by_id.get(setting.regime_claim)
        if claim is None or claim.setting != setting.name:
            raise ConfigError(
                f"{where}: {setting.regime_claim!r} is not a claim of this setting; "
                f"its claims: {[c.id for c in claims if c.setting == setting.name]}"
            )
        if claim.b != "none":
            raise ConfigError(
                f"{where}: {claim.id} compares {claim.a} with {claim.b}; a regime claim compares "
                "standard dropout (or s.d.) with the `none` arm"
            )


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


def _executor(value: Any) -> ExecutorSpec:
    value = dict(_mapping(value, "executor"))
    kind = value.pop("kind", "local")
    if kind not in EXECUTORS:
        raise ConfigError(f"executor.kind: expected one of {list(EXECUTORS)}, got {kind!r}")
    folder = value.pop("folder", None)
    if folder is not None and not isinstance(folder, str):
        raise ConfigError(f"executor.folder: expected a path, got {folder!r}")
    if kind == "local" and value:
        raise ConfigError(
            f"executor: {sorted(value)} are submitit parameters, for kind: slurm; the local "
            "executor takes none (its worker count is --workers)"
        )
    return ExecutorSpec(kind=kind, folder=folder, parameters=value)


def parse_config(raw: Any, root: str | Path | None = None) -> ExperimentConfig:
    """Validate a config mapping (e.g. from ``yaml.safe_load``); ``root``: the folder a
    setting's training function is imported from (the config file's folder)."""
    raw = _mapping(raw, "config")
    _only(raw, {"name", "seeds", "settings", "claims", "executor"}, "config")
    settings_raw = _mapping(raw.get("settings"), "settings")
    settings = {str(name): _setting(str(name), spec) for name, spec in settings_raw.items()}
    claims_raw = raw.get("claims", [])
    if not isinstance(claims_raw, list):
        raise ConfigError("claims: expected a list of claims")
    claims = tuple(_claim(i, c, settings) for i, c in enumerate(claims_raw))
    _check_regimes(settings, claims)
    _check_sweeps(claims, settings)
    return ExperimentConfig(
        name=str(raw.get("name", "experiment")),
        seeds=_number(raw.get("seeds", 5), "seeds", integer=True),
        settings=tuple(settings.values()),
        claims=claims,
        executor=_executor(raw.get("executor", {})),
        root=None if root is None else str(Path(root).resolve()),
    )


def _yaml() -> ModuleType:
    return _optional.import_optional("yaml", "data", "to read experiment configs")


def _read_yaml(path: Path) -> Any:
    yaml = _yaml()
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate a YAML config file (its folder is where training functions import from)."""
    return parse_config(_read_yaml(Path(path)), root=Path(path).parent)


def load_settings(path: str | Path) -> tuple[SettingSpec, ...]:
    """The settings of a YAML file: an experiment config, or one setting's ``data`` / ``model`` /
    ``train`` at the top level (what ``dropkit advise`` needs; variants are optional there)."""
    path = Path(path)
    raw = _mapping(_read_yaml(path), "config")
    if "settings" not in raw:
        setting = {"variants": {"none": {}}, **raw}
        raw = {"name": path.stem, "settings": {path.stem: setting}}
    return parse_config(raw, root=path.parent).settings


def builtin_config(name: str) -> ExperimentConfig:
    """A config shipped with dropkit: ``demo``, ``demo-quick`` or ``demo-full``."""
    yaml = _yaml()
    files = resources.files("dropkit.experiments") / "configs"
    available = sorted(
        p.name.removesuffix(".yaml") for p in files.iterdir() if p.name.endswith(".yaml")
    )
    if name not in available:
        raise ValueError(f"no built-in config {name!r}; available: {available}")
    return parse_config(yaml.safe_load((files / f"{name}.yaml").read_text(encoding="utf-8")))
