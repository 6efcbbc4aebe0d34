"""Check a config before anything trains or anything is written: every bad input is refused here.

`preflight` (``dropkit run`` / ``dropkit demo``) and `preflight_settings`
(``dropkit advise``) load each setting's dataset (which runs the data checks of
`dropkit.experiments.builtin.data`), check the batch size against the training split, build the
model once and run it on two samples, check that every variant's schedules have sites to drive
and fit the run, that a dynamics window fits the run, and that the optional packages the command
will import are installed. Problems are `ConfigError` naming
the setting and field (``settings.overfit.data: ...``), so the CLI answers them with its usual
``dropkit run: ...`` and exit code 2, before it creates a folder.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from pathlib import Path

import torch
from torch import Tensor, nn

from dropkit import _optional
from dropkit.experiments.builtin.data import Dataset, load_dataset
from dropkit.experiments.builtin.models import model_factory
from dropkit.experiments.config.specs import ConfigError, ExperimentConfig, SettingSpec
from dropkit.experiments.engine.trial import load_function
from dropkit.sites import find_sites

__all__ = ["MissingDependency", "check_function", "preflight", "preflight_settings", "require"]


class MissingDependency(ConfigError, _optional.MissingDependency):
    """An optional package a command needs is not installed; the message gives the pip line.

    A `ConfigError` (so the CLI answers it without a traceback) and a
    `dropkit._optional.MissingDependency` (an ``ImportError``), the error every lazy
    import of an optional package raises.
    """


def require(module: str, extra: str, purpose: str) -> None:
    """Raise `MissingDependency` unless ``module`` can be imported (it is not imported).

    ``require("matplotlib", "plot", "for the report's figures")`` fails with "matplotlib is not
    installed; dropkit needs it for the report's figures: pip install matplotlib (or ...)".
    """
    try:
        _optional.require(module, extra, purpose)
    except _optional.MissingDependency as err:
        error = MissingDependency(str(err))
        error.name = err.name
        raise error from None


def _require_common(need_plots: bool, figures: str) -> None:
    require("scipy", "data", "for the claims' confidence intervals (dropkit.experiments.stats)")
    if need_plots:
        require("matplotlib", "plot", figures)


def _message(err: BaseException) -> str:
    # str(KeyError) is the repr of its message; show the message itself
    return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)


def _dataset(
    setting: SettingSpec, cache_dir: str | Path | None, loaded: MutableMapping[str, Dataset]
) -> Dataset:
    """The setting's dataset, loaded once per spec (mnist1d is cached on disk by the loader)."""
    name = setting.recipe()[0]
    if name not in loaded:
        where = f"settings.{setting.name}.data"
        try:
            loaded[name] = load_dataset(name, cache_dir=cache_dir)
        except ImportError as err:  # mnist1d / scikit-learn; the loader's message has the pip line
            raise MissingDependency(f"{where}: {err}") from err
        except (ValueError, KeyError, OSError) as err:
            raise ConfigError(f"{where}: {_message(err)}") from err
    return loaded[name]


def _check_batch(setting: SettingSpec, n_train: int, data_name: str, split: str) -> None:
    batch_size = setting.recipe()[2].batch_size
    if batch_size > n_train:
        raise ConfigError(
            f"settings.{setting.name}.train.batch_size: {batch_size} exceeds the {n_train} "
            f"{split} samples of {data_name}; use batch_size <= {n_train}"
        )


def _check_model(setting: SettingSpec, data: Dataset) -> nn.Module:
    """Build the model as the runs will and push two training samples through it."""
    where = f"settings.{setting.name}.model"
    model_spec = setting.recipe()[1]
    sample = data.x[:2]
    # the caller's random stream is left as it was: a checked run draws what an unchecked one would
    with torch.random.fork_rng(devices=[]):
        try:
            model = model_factory(model_spec, data.n_features, data.n_classes)()
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where}: {err}") from err
        try:
            with torch.no_grad():
                logits = model.eval()(sample)
        except Exception as err:  # whatever the forward raises, it would raise inside training
            raise ConfigError(
                f"{where}: the {model_spec['kind']} model fails on inputs shaped "
                f"{tuple(sample.shape)} from {data.name}: {type(err).__name__}: {err}"
            ) from err
    shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != len(sample):
        raise ConfigError(
            f"{where}: the model maps inputs {tuple(sample.shape)} to {shape}; expected logits "
            f"({len(sample)}, n_classes)"
        )
    if logits.shape[1] < data.n_classes:
        raise ConfigError(
            f"{where}: the model has {logits.shape[1]} outputs but {data.name}'s labels go up to "
            f"{data.n_classes - 1} ({data.n_classes} classes); drop model.n_classes (it defaults "
            "to the data's) or raise it"
        )
    return model.train()


def _check_variants(setting: SettingSpec, model: nn.Module, total_steps: int) -> None:
    """Every scheduled kind has a site in the model; every cutoff falls inside the run."""
    kinds = {site.kind for site in find_sites(model) if site.controllable}
    for variant in setting.variants:
        for kind, schedule in (("dropout", variant.dropout), ("drop_path", variant.drop_path)):
            if schedule is None:
                continue
            where = f"settings.{setting.name}.variants.{variant.name}.{kind}"
            if kind not in kinds:
                raise ConfigError(
                    f"{where}: the {setting.recipe()[1]['kind']} model has no controllable {kind} "
                    f"site (it has: {sorted(kinds) or 'none'}); schedule a kind it has, or pick "
                    "a model with drop-path sites (resmlp, vit, mixer) for drop_path"
                )
            if schedule.kind in ("early", "late") and schedule.cutoff is not None:
                try:  # the schedule's own checks: in the run, on for at least one step
                    schedule.build()(0, total_steps)
                except ValueError as err:
                    raise ConfigError(
                        f"{where}.cutoff: {err} (the run has {total_steps} optimizer steps: "
                        "epochs * (training samples // batch_size)); give a fraction such as 0.2"
                    ) from err


def _check_dynamics(setting: SettingSpec, total_steps: int, steps_per_epoch: int) -> None:
    spec = setting.dynamics
    if spec is not None and spec.window > total_steps:
        epochs = setting.recipe()[2].epochs
        raise ConfigError(
            f"settings.{setting.name}.dynamics.window: the window ends at step {spec.window} but "
            f"the run has only {total_steps} optimizer steps ({epochs} epochs of "
            f"{steps_per_epoch}); train longer or make window (and every, until) smaller"
        )


def check_function(setting: SettingSpec, root: str | None) -> None:
    """The setting's training function imports (from ``root`` first) and takes one argument."""
    assert setting.function is not None
    try:
        load_function(setting.function, root)
    except (ImportError, TypeError) as err:
        raise ConfigError(f"settings.{setting.name}.function: {err}") from err


def preflight(
    config: ExperimentConfig, cache_dir: str | Path | None = None, *, need_plots: bool = True
) -> None:
    """Refuse ``config`` before training (``dropkit run`` / ``demo``): raise ConfigError or
    `MissingDependency` naming the setting and field, or return None when it can run.

    ``need_plots=False`` skips the matplotlib check (a caller that draws no figures).
    """
    require("yaml", "data", "to read experiment configs")
    require("tqdm", "data", "for the progress bars")
    _require_common(need_plots, "for the report's figures")
    if config.executor.kind == "slurm":
        require("submitit", "slurm", "to submit jobs to SLURM")
    loaded: dict[str, Dataset] = {}
    for setting in config.settings:
        if setting.function is not None:
            check_function(setting, config.root)
            continue
        train = setting.recipe()[2]
        data = _dataset(setting, cache_dir, loaded)
        _check_batch(setting, len(data.x), data.name, "training")
        model = _check_model(setting, data)
        steps_per_epoch = len(data.x) // train.batch_size
        total_steps = train.epochs * steps_per_epoch
        _check_variants(setting, model, total_steps)
        _check_dynamics(setting, total_steps, steps_per_epoch)


def preflight_settings(
    settings: Iterable[SettingSpec],
    cache_dir: str | Path | None = None,
    *,
    need_plots: bool = True,
    validation_fraction: float = 0.1,
) -> None:
    """Refuse what ``dropkit advise`` cannot probe, before it writes anything.

    The probes train on the training split less its last ``validation_fraction`` (advise's
    validation split), so the batch size is checked against that; the settings' variants and
    dynamics play no part in advise and are not checked.
    """
    from dropkit.experiments.builtin.data import split_validation

    _require_common(need_plots, "for the probes' training-loss figure")
    loaded: dict[str, Dataset] = {}
    for setting in settings:
        data = _dataset(setting, cache_dir, loaded)
        try:
            probe_data = split_validation(data, validation_fraction)
        except ValueError as err:
            raise ConfigError(f"settings.{setting.name}.data: {err}") from err
        _check_batch(setting, len(probe_data.x), data.name, "training (less validation)")
        _check_model(setting, data)
