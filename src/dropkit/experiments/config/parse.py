"""Experiment configs: YAML in, validated `dropkit.experiments.config.specs` out, errors that
name the bad field (`ConfigError`).

A config names settings (a dataset, a model, a training budget and the variants to compare),
optional dynamics measurements, and the claims to decide; the demo's configs ship in
``dropkit/experiments/builtin/configs/``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, overload

from dropkit import _optional
from dropkit.experiments.config.claim import DIRECTIONS, SWEEP_AXES, Claim
from dropkit.experiments.config.specs import (
    EXECUTORS,
    MIN_WINDOW_CHECKPOINTS,
    REGIMES,
    ConfigError,
    DynamicsSpec,
    ExecutorSpec,
    ExperimentConfig,
    ScheduleSpec,
    SettingSpec,
    ValidationSpec,
    VariantSpec,
)
from dropkit.experiments.config.training import TrainConfig

__all__ = ["load_config", "load_settings", "parse_config"]


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
        params=_json_mapping(value.get("params", {}), f"{where}.params"),
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


def _validation(value: Any, where: str) -> ValidationSpec:
    """``validation: {metric, better}``; ``better`` defaults to ``higher`` for a metric named
    like an accuracy (``*acc``, ``*accuracy``), else ``lower``."""
    value = _mapping(value, where)
    _only(value, {"metric", "better"}, where)
    metric = value.get("metric", "val_loss")
    if not isinstance(metric, str) or not metric:
        raise ConfigError(f"{where}.metric: expected the name of a returned metric, got {metric!r}")
    if metric.startswith("test"):
        raise ConfigError(
            f"{where}.metric: {metric!r} reads the test split; advise decides from a validation "
            "metric (return e.g. val_loss computed on a split held out of the training data)"
        )
    accuracy = metric.endswith(("acc", "accuracy"))
    better = value.get("better", "higher" if accuracy else "lower")
    if better not in ("lower", "higher"):
        raise ConfigError(f"{where}.better: expected 'lower' or 'higher', got {better!r}")
    return ValidationSpec(metric, better)


def _setting(name: str, value: Any) -> SettingSpec:
    where = f"settings.{name}"
    value = _mapping(value, where)
    _only(
        value,
        {
            "variants",
            "regime",
            "regime_claim",
            "seeds",
            "function",
            "params",
            "validation",
            *_BUILTIN_KEYS,
        },
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
        for key in ("params", "validation"):
            if key in value:
                raise ConfigError(
                    f"{where}.{key}: only a setting with a `function` takes {key} (a built-in "
                    "setting is advised from its validation loss)"
                )
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
    if seeds is not None:
        _seeds(seeds, f"{where}.seeds")
    common = {
        "name": name,
        "variants": variants,
        "regime": regime,
        "regime_claim": None if regime_claim is None else str(regime_claim),
        "seeds": seeds,
    }
    if function is not None:
        params = _json_mapping(value.get("params", {}), f"{where}.params")
        validation = _validation(value.get("validation", {}), f"{where}.validation")
        return SettingSpec(
            data=None, model=None, train=None, function=function, params=params,
            validation=validation, **common,
        )  # fmt: skip
    return SettingSpec(
        data=value["data"],
        model=_json_mapping(model, f"{where}.model"),
        train=_train(value["train"], f"{where}.train"),
        dynamics=None if dynamics is None else _dynamics(dynamics, f"{where}.dynamics", variants),
        mc_passes=_number(
            value.get("mc_passes", 8), f"{where}.mc_passes", integer=True, low_open=False
        ),
        **common,
    )


_JSON_SCALARS = (str, int, float, bool, type(None))


def _json_value(value: Any, where: str) -> None:
    """Refuse what ``config.json`` cannot hold as it is (a YAML date, a set, a tag's object):
    a run folder's identity must read back as the config that made it."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, _JSON_SCALARS):
                raise ConfigError(f"{where}: the key {key!r} is a {type(key).__name__}; use a "
                                  "string or a number")  # fmt: skip
            _json_value(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _json_value(item, f"{where}[{index}]")
    elif not isinstance(value, _JSON_SCALARS):
        raise ConfigError(
            f"{where}: {value!r} is a {type(value).__name__}, which a run folder's config.json "
            "cannot hold; give a string (quote it in YAML, e.g. '2026-12-07'), a number, true / "
            "false, a list or a mapping"
        )


def _json_mapping(value: Any, where: str) -> dict[str, Any]:
    mapping = dict(_mapping(value, where))
    _json_value(mapping, where)
    return mapping


def _name(value: Any, where: str) -> str:
    """A field that names something (a setting, a variant, a metric): a string."""
    if not isinstance(value, str):
        raise ConfigError(
            f"{where}: expected a name (a string), got {type(value).__name__} {value!r}"
        )
    return value


def _seeds(value: Any, where: str) -> int:
    seeds = _number(value, where, integer=True)
    if seeds < 2:
        raise ConfigError(f"{where}: claims are paired comparisons, give >= 2 seeds")
    return seeds


def _claim(index: int, value: Any, settings: Mapping[str, SettingSpec]) -> Claim:
    where = f"claims[{index}]"
    value = _mapping(value, where)
    optional = {"margin", "paper", "target", "sweep"}
    keys = {"id", "statement", "setting", "metric", "a", "b", "direction", *optional}
    _only(value, keys, where)
    missing = sorted(keys - optional - set(value))
    if missing:
        raise ConfigError(f"{where}: missing field(s) {missing}")
    for name in ("setting", "metric", "a", "b", "direction"):
        _name(value[name], f"{where}.{name}")
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
        seeds=_seeds(raw.get("seeds", 5), "seeds"),
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
