"""Which regime is a model in, and which dropout schedule should it train with?

The early-dropout paper's rule: a model in the *underfitting* regime (it generalizes better
without standard dropout) gains from early dropout / early stochastic depth; one in the
*overfitting* regime (standard dropout helps) gains from late stochastic depth. The advisor finds
the regime from short probe trainings of the user's model and data (the first ``budget`` of the
intended run, its LR schedule unchanged), with and without dropout, on a validation split carved
from the training data (the test split is never touched):

- **generalization gap** of the no-dropout probe, ``validation loss - training loss`` per seed,
  projected to the end of the run linearly in passes over the data and divided by the probe's
  validation loss. Above ``threshold`` the model is heading for overfitting; below it the run
  ends before overfitting sets in. Its 95% t-interval over seeds sets the confidence.
- **dropout's effect so far**: validation loss and gap with standard dropout minus without.
- a probe that ends inside the learning-rate warm-up never trained at the peak rate: its
  confidence is capped at *low*.
- **gradient direction error** (the paper's mechanism) at the end of the probe, with and without
  dropout: lower with dropout supports early dropout.

The numbers are evidence about the probe, not about the full run: the projection is a straight
line, and the advice says so ([`Advice.limits`][dropkit.experiments.advise.Advice]).
"""

from __future__ import annotations

import math
import numbers
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from dropkit import diagnostics as dd
from dropkit import schedules
from dropkit._checks import check_int
from dropkit._deprecation import renamed_keyword
from dropkit._optional import require
from dropkit.experiments.advise.advice import PAPER_CUTOFF, Advice
from dropkit.experiments.advise.judge import judge, probe_entry
from dropkit.experiments.base.lock import one_writer
from dropkit.experiments.builtin.data import Dataset, load_dataset, split_validation
from dropkit.experiments.builtin.train import TrainResult, Variant, train_variant
from dropkit.experiments.config.specs import SettingSpec
from dropkit.experiments.config.training import TrainConfig
from dropkit.sites import find_sites


def default_budget(warmup_frac: float) -> float:
    """The probe's default share of the run: 5% past the learning-rate warm-up (at least 5%).

    A probe that ends inside the warm-up never trains at the peak rate and misreads the regime
    (with the paper's warm-up of 1/6, a 5% probe read an underfitting model as overfitting; a
    20% probe read it right, with high confidence).

    Args:
        warmup_frac: The run's warm-up as a fraction of its steps (e.g.
            ``TrainConfig.warmup_frac``).

    Returns:
        ``min(1, max(0.05, warmup_frac + 0.05))``, a fraction of the run.
    """
    return min(1.0, max(0.05, warmup_frac + 0.05))


def _gde(
    result: TrainResult, data: Dataset, batch_size: int, n_batches: int, step: int
) -> list[float]:
    """Per seed: GDE of ``n_batches`` mini-batch gradients against the whole-data (dropout-off)
    gradient at ``step``, measured as everywhere else (``dd.step_seed`` seeds G and its masks)."""
    full_batches = dd.whole_data_batches(data.x, data.y)
    population = result.population
    if population is None:  # a result read back from JSON holds no models
        raise ValueError(f"{result.variant}: the result holds no trained models to measure")
    values = []
    for i, seed in enumerate(result.seeds):
        model = population.member(i).train()
        stream = dd.step_seed(seed, step)
        batches = dd.sample_batches(data.x, data.y, n_batches, batch_size, seed=stream)
        gde = dd.measure_gradient_set(model, batches, full_batches, seed=stream).gde
        assert gde is not None  # measured whenever full batches are given
        values.append(gde)
    return values


def _probe_seeds(seeds: int | Sequence[int], threshold: float) -> list[int]:
    """The probes' seeds (a count gives 0..n-1), refused below 2, and the threshold checked:
    both before anything trains."""
    if isinstance(seeds, (int, numbers.Integral)):  # bool is an int
        seed_list = list(range(check_int(seeds, "seeds", 2)))
    else:
        seed_list = [check_int(s, "each seed", 0) for s in seeds]
    if len(seed_list) < 2:
        raise ValueError(f"seeds={seeds!r}: give >= 2 seeds, the confidence needs a spread")
    if not threshold > 0:
        raise ValueError(f"threshold={threshold} must be > 0")
    return seed_list


def advise(
    model_fn: Callable[[], nn.Module],
    data: Dataset | str,
    train: TrainConfig | None = None,
    *,
    budget: float | None = None,
    seeds: int | Sequence[int] = 3,
    p: float = 0.1,
    drop_path_p: float = 0.1,
    validation_fraction: float = 0.1,
    threshold: float = 0.1,
    n_batches: int | None = None,
    figure: str | Path | None = None,
    gde_batches: int | None = None,
) -> Advice:
    """Probe ``model_fn()`` on ``data`` for ``budget`` of the run ``train`` lays out; advise.

    Finds the model's regime (underfitting or overfitting) from short probe trainings and
    recommends the early-dropout paper's schedule for it. Trains ``seeds`` seeds each of: no
    dropout, and standard dropout ``p`` (or, for a model with drop-path sites only, standard
    stochastic depth ``drop_path_p``), for the first ``ceil(budget * total_steps)`` optimizer
    steps of the run ``train`` lays out, its learning-rate schedule unchanged. They train on
    the training split minus a validation split (its last ``validation_fraction``) and are
    evaluated on that; the test split is never used. The regime is read from the no-dropout
    probe's validation-minus-training loss gap, projected linearly to the end of the run and
    divided by the validation loss: above ``threshold``, overfitting. The gradient direction
    error of both probes at their last step is reported as further evidence. Each variant's
    seeds train together as one population; a model with no dropout or drop-path site gets
    only the no-dropout probe (and the advice ``no_dropout``).

    Args:
        model_fn: Builds a fresh model with no arguments; it is called for every probe model
            (under ``torch.manual_seed(seed)``) and once more to find the dropout and drop-path
            sites. The rates it builds with do not matter: every probe sets its own.
        data: A [`Dataset`][dropkit.experiments.Dataset], or a dataset name (``"mnist1d"``,
            ``"mnist1d-large"``, ``"mnist1d:N:SEED"``, ``"digits"``) or a path to an ``.npz``
            file with arrays ``x``, ``y``, ``x_test``, ``y_test``.
        train: The intended run (epochs, batch size, learning-rate schedule); default
            ``TrainConfig()``.
        budget: The fraction of the run each probe trains, in (0, 1]; default
            [`default_budget`][dropkit.experiments.advise.default_budget] of
            ``train.warmup_frac`` (5% past the warm-up), so the probe ends past the warm-up.
        seeds: How many seeds (at least 2; default 3, seeds 0, 1, 2), or the seeds themselves
            (at least 2 distinct non-negative ints). More seeds narrow the intervals.
        p: The standard dropout rate probed, and the rate of a recommended early or standard
            dropout schedule (default 0.1).
        drop_path_p: The stochastic-depth rate probed for a model with drop-path sites only,
            and the rate of a recommended early s.d. schedule (default 0.1).
        validation_fraction: The share of the training split held out for validation, in
            (0, 1) (default 0.1).
        threshold: The projected relative gap that separates the regimes (> 0; default 0.1, set
            on MNIST-1D settings: a heuristic).
        n_batches: Mini-batch gradients behind each GDE measurement (at least 2; default 8),
            of ``train.batch_size`` samples each.
        figure: A path for a figure of the probes' training-loss curves (needs matplotlib);
            None (default): no figure.
        gde_batches: Deprecated name of ``n_batches``.

    Returns:
        The recommendation, the regime and confidence, and the evidence and limits behind them.

    Raises:
        ValueError: If ``budget``, ``validation_fraction``, ``threshold`` or ``n_batches`` is
            out of range, fewer than 2 (distinct) seeds are given, ``data`` names an unknown
            dataset, the validation split leaves no training sample, or ``train.batch_size``
            exceeds the remaining training samples.
        TypeError: If ``seeds`` or ``n_batches`` is not an int (or a seed is not), or both
            ``n_batches`` and ``gde_batches`` are given.
        ImportError: If scipy (for the intervals), matplotlib (for ``figure``) or the package
            a named dataset needs is not installed; checked before any probe trains (the
            message names the ``pip install`` line).
        FileNotFoundError: If ``data`` is an ``.npz`` path that does not exist.
        KeyError: If that ``.npz`` lacks one of ``x``, ``y``, ``x_test``, ``y_test``.

    Examples:
        ```python
        import dropkit
        from torch import nn
        from dropkit.experiments import TrainConfig


        def model_fn():
            return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Dropout(0.0), nn.Linear(128, 10))


        advice = dropkit.advise(model_fn, "digits", TrainConfig(epochs=20, batch_size=64), seeds=2)
        print(advice.recommendation, advice.regime, advice.confidence)
        print(advice.to_markdown())
        ```
    """
    n_batches = renamed_keyword(
        "advise", "gde_batches", "n_batches", gde_batches, n_batches, default=8
    )
    n_batches = check_int(n_batches, "n_batches", 2, " (mini-batch gradients for GDE)")
    train = train or TrainConfig()
    budget = default_budget(train.warmup_frac) if budget is None else budget
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"budget={budget} must lie in (0, 1]: the fraction of the run to probe")
    seed_list = _probe_seeds(seeds, threshold)
    # the packages used after the probes have trained, checked before they start
    require("scipy", "data", "for the advice's confidence intervals")
    if figure is not None:
        require("matplotlib", "plot", "for the probes' training-loss figure")
    data = load_dataset(data) if isinstance(data, str) else data
    started = time.perf_counter()
    probe_data = split_validation(data, validation_fraction)
    steps_per_epoch = len(probe_data.x) // train.batch_size
    total = train.epochs * steps_per_epoch
    probe_steps = max(1, math.ceil(budget * total))
    with torch.random.fork_rng(devices=[]):  # building a model draws: the caller's RNG is kept
        sites = [site for site in find_sites(model_fn()) if site.controllable]
    kinds = {site.kind for site in sites}
    off = {kind: 0.0 for kind in kinds}
    variants = [Variant("none", dropout=off.get("dropout"), drop_path=off.get("drop_path"))]
    if "dropout" in kinds:
        variants.append(
            Variant("dropout", dropout=schedules.standard(p), drop_path=off.get("drop_path"))
        )
    elif "drop_path" in kinds:  # the regulariser the regime test uses: dropout where it can
        variants.append(
            Variant("sd", dropout=off.get("dropout"), drop_path=schedules.standard(drop_path_p))
        )
    results = {
        v.name: train_variant(model_fn, probe_data, v, seed_list, train, max_steps=probe_steps)
        for v in variants
    }
    probe_epochs = probe_steps / steps_per_epoch
    evidence: dict[str, Any] = {
        "probe_steps": probe_steps,
        "total_steps": total,
        "budget": probe_steps / total,
        "probe_epochs": probe_epochs,
        "seeds": seed_list,
        "variants": {
            name: probe_entry(r.final_train_loss, r.test_loss, r.test_acc)
            for name, r in results.items()
        },
    }
    regulariser = "dropout" if "dropout" in results else "sd" if "sd" in results else None
    if regulariser is not None:
        evidence["gde"] = {
            name: _gde(results[name], probe_data, train.batch_size, n_batches, probe_steps)
            for name in ("none", regulariser)
        }
    warmup_steps = round(train.warmup_frac * total)
    probe = (
        f"Probe: {probe_steps} of {total} optimizer steps ({100 * probe_steps / total:.1f}% of "
        f"the run), {len(seed_list)} seeds, validation = last {validation_fraction:.0%} of the "
        "training data"
    )
    if figure is not None:
        _draw(results, Path(figure))
    return judge(
        evidence,
        run_over_probe=train.epochs / probe_epochs,
        progress=f"after {probe_epochs:.2f} of {train.epochs} epochs",
        inside_warmup=(f"step {probe_steps} of {warmup_steps}", train.warmup_frac)
        if probe_steps < warmup_steps
        else None,
        kinds=kinds,
        p=p,
        drop_path_p=drop_path_p,
        threshold=threshold,
        probe=probe,
        started=started,
    )


def _probe_error(outcome: Any) -> str | None:
    """Why a probe trial gave no usable metrics (None when it did)."""
    from dropkit.experiments.engine.executors import JobFailure

    if isinstance(outcome, JobFailure):
        return outcome.reason
    return outcome.error if outcome.metrics is None or outcome.error else None


def _draw(results: Mapping[str, TrainResult], path: Path) -> None:
    from dropkit.experiments.evidence.figures import loss_curves

    curves = {
        name: (r.log_steps, np.asarray(r.train_loss, dtype=np.float64))
        for name, r in results.items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    loss_curves(curves, path, "advisor probes: training loss")


def advise_function(
    setting: SettingSpec,
    root: str | None,
    out: Path,
    *,
    budget: float | None = None,
    seeds: int | Sequence[int] = 3,
    p: float = 0.1,
    threshold: float = 0.1,
    executor: str = "local",
    executor_parameters: Mapping[str, Any] | None = None,
    workers: int = 1,
) -> Advice:
    """Probe a training function's setting: ``none`` and standard dropout ``p`` for ``budget``
    of the run each, over ``seeds`` seeds, as trials (``trial.budget < 1``) on ``executor``.

    What ``dropkit advise`` does for a setting with ``function: module:name``. The function
    must return ``train_loss`` and ``test_loss``; the regime is read from their gap as
    [`advise`][dropkit.experiments.advise.advise] reads it for built-in settings (no GDE:
    dropkit cannot reach the function's gradients). The run's warm-up is
    ``params.warmup_frac`` when the setting gives one, else the paper's 1/6.

    Args:
        setting: A setting with a training function (``setting.function`` set), e.g. one of
            ``load_settings(path)``.
        root: The folder the function imports from (the config's folder), or None for
            ``sys.path`` alone.
        out: The folder for the probes' trials (``out/probes``, emptied first) and the
            executor's state (``out/<executor>``).
        budget: The fraction of the run each probe trains (``trial.budget``), in (0, 1];
            default [`default_budget`][dropkit.experiments.advise.default_budget] of the
            warm-up.
        seeds: Seeds per arm: a count (default 3: seeds 0, 1, 2) or the seeds; give at least 2,
            the intervals need a spread.
        p: The standard dropout rate of the probe's dropout arm, and of the recommended
            schedule (default 0.1).
        threshold: The projected relative gap that separates the regimes (default 0.1).
        executor: Where the trials run: ``"local"`` (default, a process pool) or ``"slurm"``.
        executor_parameters: For ``"slurm"``, submitit's ``update_parameters`` (e.g.
            ``{"timeout_min": 60, "slurm_partition": "gpu"}``); None: none.
        workers: Processes of the local executor (default 1).

    Returns:
        The advice, with the probes' numbers as its evidence.

    Raises:
        ValueError: If the setting is a built-in one, ``budget`` is not in (0, 1],
            ``executor`` is unknown, or a probe failed (raised, diverged, was cancelled, or
            returned no ``train_loss`` / ``test_loss``; its traceback is in ``out/probes``).
        ImportError: If scipy (for the intervals) is not installed; checked before any probe
            runs.
    """
    from dropkit.experiments.engine.executors import JobFailure, make_executor
    from dropkit.experiments.engine.trial import Trial, TrialJob, TrialOutcome

    if setting.function is None:
        raise ValueError(f"settings.{setting.name} is a built-in setting; use advise()")
    seed_list = _probe_seeds(seeds, threshold)
    warmup = float(setting.params.get("warmup_frac", PAPER_CUTOFF))
    budget = default_budget(warmup) if budget is None else budget
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"budget={budget} must lie in (0, 1]: the fraction of the run to probe")
    require("scipy", "data", "for the advice's confidence intervals")
    out.mkdir(parents=True, exist_ok=True)
    with one_writer(out):  # two advise runs on one folder would empty each other's probes
        started = time.perf_counter()
        probes = out / "probes"
        # fresh probes: never a checkpoint of another budget
        shutil.rmtree(probes, ignore_errors=True)
        arms = {"none": schedules.standard(0.0), "dropout": schedules.standard(p)}
        jobs = [
            TrialJob(
                setting.function,
                root,
                Trial(
                    setting=setting.name,
                    variant=name,
                    seed=seed,
                    dropout=schedule,
                    drop_path=None,
                    rdrop_alpha=0.0,
                    double_batch=False,
                    params=dict(setting.params),
                    budget=budget,
                    dir=probes / name / f"seed-{seed}",
                ),
                ("train_loss", "test_loss"),
            )
            for name, schedule in arms.items()
            for seed in seed_list
        ]
        outcomes: dict[str, TrialOutcome | JobFailure] = {}

        def collect(job: Any, outcome: Any) -> None:
            outcomes[job.label] = outcome

        make_executor(
            executor,
            out / executor,
            workers=workers,
            parameters=dict(executor_parameters or {}),
            name=f"dropkit-advise-{setting.name}",
        ).run(jobs, collect, lambda label, done, total: None)
        failed = {label: err for label, o in outcomes.items() if (err := _probe_error(o))}
        if failed:
            listed = "; ".join(
                f"{label}: {error.splitlines()[0]}" for label, error in failed.items()
            )
            raise ValueError(
                f"settings.{setting.name}: {len(failed)} probe(s) failed, no advice "
                f"({listed}); tracebacks are in {probes}"
            )
        evidence: dict[str, Any] = {"budget": budget, "warmup_frac": warmup, "variants": {}}
        evidence["seeds"] = seed_list
        for name in arms:
            metrics = [
                cast(TrialOutcome, outcomes[job.label]).metrics or {}
                for job in jobs
                if job.trial.variant == name
            ]
            has_acc = all("test_acc" in m for m in metrics)
            accs = [m["test_acc"] for m in metrics] if has_acc else None
            evidence["variants"][name] = probe_entry(
                [m["train_loss"] for m in metrics], [m["test_loss"] for m in metrics], accs
            )
        assumed = (
            "" if "warmup_frac" in setting.params else " (the paper's; set params.warmup_frac)"
        )
        probe = (
            f"Probe: {budget:.0%} of the run (trial.budget = {budget:.3g}; warm-up taken as "
            f"{warmup:.3g} of the run{assumed}), {seeds} seeds; the gap is the function's "
            "test_loss minus its train_loss (no GDE: the function's gradients are out of "
            "dropkit's reach)"
        )
        return judge(
            evidence,
            run_over_probe=1.0 / budget,
            progress=f"after {budget:.0%} of the run",
            inside_warmup=(None if budget > warmup else (f"{budget:.0%} of {warmup:.0%}", warmup)),
            kinds={"dropout"},
            p=p,
            drop_path_p=p,
            threshold=threshold,
            probe=probe,
            started=started,
            measured_on="held-out",
        )
