"""Which regime is a model in, and which dropout schedule should it train with?

The early-dropout paper's rule: a model in the *underfitting* regime (standard dropout raises
its held-out loss) gains from early dropout / early stochastic depth; one in the *overfitting*
regime (standard dropout lowers it) gains from standard dropout or late stochastic depth. The
advisor trains short probes of the user's model and data (the first ``budget`` of the intended
run, its LR schedule unchanged), with and without standard dropout, and measures that directly
on a validation split (the test split is never touched): the paired difference in validation
loss at the probe's end and along its trend (`judge` says how it decides, and when it cannot
tell yet). Built-in settings (`advise`) train each arm's seeds as one population and evaluate
at 12 checkpoints; a training function's setting (`advise_function`) is probed as trials with
``trial.budget < 1`` and read from the validation metric it returns and logs.
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
from dropkit.experiments.config.specs import ExecutorSpec, SettingSpec
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


CHECKPOINTS = 12
"""Evenly spaced held-out evaluations over a built-in probe: its curve and trend."""


def checkpoints(probe_steps: int, count: int = CHECKPOINTS) -> list[int]:
    """``count`` evenly spaced optimizer steps ending at ``probe_steps`` (fewer for a short
    probe: each step at most once)."""
    return sorted({max(1, round(probe_steps * (k + 1) / count)) for k in range(count)})


def _train_probe(
    model_fn: Callable[[], nn.Module],
    data: Dataset,
    variant: Variant,
    seeds: list[int],
    train: TrainConfig,
    probe_steps: int,
    marks: Sequence[int],
) -> tuple[TrainResult, list[list[float]]]:
    """One arm's probe, and its validation loss per seed at each of ``marks``."""
    wanted = set(marks)
    seen: dict[int, list[float]] = {}

    def evaluate(step: int, population: Any) -> None:
        if step in wanted:
            loss, _ = population.evaluate(data.x_test, data.y_test, train.eval_batch)
            seen[step] = loss.tolist()

    result = train_variant(
        model_fn, data, variant, seeds, train, max_steps=probe_steps, on_step=evaluate
    )
    per_mark = [seen.get(m, [math.nan] * len(seeds)) for m in marks]  # a run that stopped early
    return result, [list(row) for row in zip(*per_mark, strict=True)]


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
    progress: Callable[[str], None] | None = None,
) -> Advice:
    """Probe ``model_fn()`` on ``data`` for ``budget`` of the run ``train`` lays out; advise.

    Finds the model's regime (underfitting or overfitting) from short probe trainings and
    recommends the early-dropout paper's schedule for it. Trains ``seeds`` seeds each of: no
    dropout, and standard dropout ``p`` (or, for a model with drop-path sites only, standard
    stochastic depth ``drop_path_p``), for the first ``ceil(budget * total_steps)`` optimizer
    steps of the run ``train`` lays out, its learning-rate schedule unchanged. They train on
    the training split minus a validation split (its last ``validation_fraction``) and are
    evaluated on that, at 12 evenly spaced checkpoints; the test split is never used. The
    regime is the paper's: standard dropout raising the validation loss (dropout minus none,
    paired by seed) means underfitting, lowering it overfitting, read at the probe's end and
    along its trend to the end of the run; "cannot tell" when these do not agree or do not
    separate from zero (see [`Advice`][dropkit.experiments.advise.Advice]). The no-dropout
    probe's generalization gap and the gradient direction error of both probes at their last
    step can only lower the confidence. Each variant's
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
        threshold: The secondary gap reading's threshold: a no-dropout relative gap projected
            above it reads overfitting, and lowers the confidence of an underfitting reading
            (> 0; default 0.1, set on MNIST-1D settings: a heuristic).
        n_batches: Mini-batch gradients behind each GDE measurement (at least 2; default 8),
            of ``train.batch_size`` samples each.
        figure: A path for a figure of the probes' validation loss over the probe, per arm
            (needs matplotlib); None (default): no figure.
        gde_batches: Deprecated name of ``n_batches``.
        progress: Called with a line of text as each probe starts (``print`` shows them);
            None (default): silent.

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
        require("matplotlib", "plot", "for the probes' validation-loss figure")
    say = progress or (lambda line: None)
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
    marks = checkpoints(probe_steps)
    results, curves = {}, {}
    for v in variants:
        say(f"probe {v.name}: {len(seed_list)} seeds x {probe_steps} of {total} steps")
        results[v.name], curves[v.name] = _train_probe(
            model_fn, probe_data, v, seed_list, train, probe_steps, marks
        )
    probe_epochs = probe_steps / steps_per_epoch
    evidence: dict[str, Any] = {
        "metric": {"name": "val_loss", "better": "lower"},
        "probe_steps": probe_steps,
        "total_steps": total,
        "budget": probe_steps / total,
        "probe_epochs": probe_epochs,
        "seeds": seed_list,
        "variants": {
            name: probe_entry(r.test_loss, r.final_train_loss, r.test_acc)
            for name, r in results.items()
        },
        "curve": {"fractions": [m / total for m in marks], **curves},
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
        draw_probe(evidence, Path(figure), steps=marks)
    return judge(
        evidence,
        budget=probe_steps / total,
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


def draw_probe(evidence: Mapping[str, Any], path: Path, steps: Sequence[int] | None = None) -> None:
    """The held-out metric of each arm over the probe (mean +- s.e. over seeds): the evidence
    the regime is read from. ``steps`` label the axis in optimizer steps (else run fractions)."""
    from dropkit.experiments.evidence.figures import loss_curves

    curve = evidence["curve"]
    positions = list(steps) if steps is not None else curve["fractions"]
    arms = {name: (positions, np.asarray(curve[name])) for name in evidence["variants"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    loss_curves(
        arms, path, f"advisor probes: {evidence['metric']['name']} over the probe",
        ylabel=f"{evidence['metric']['name']} (mean ± s.e. over seeds)",
        xlabel="optimizer step" if steps is not None else "fraction of the run",
    )  # fmt: skip


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
    figure: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> Advice:
    """Probe a training function's setting: ``none`` and standard dropout ``p`` for ``budget``
    of the run each, over ``seeds`` seeds, as trials (``trial.budget < 1``) on ``executor``.

    What ``dropkit advise`` does for a setting with ``function: module:name``. The regime is
    read as [`advise`][dropkit.experiments.advise.advise] reads it, from the validation metric
    the setting names (``validation: {metric, better}``, default ``val_loss``, lower is
    better): the function must return it, computed on data held out of its training data
    (never the test split). When the function also logs it with ``trial.log(step, ...)``
    during the probe, its trend is read too (else the confidence is at most medium); a
    returned ``train_loss`` adds the secondary gap reading. No GDE: dropkit cannot reach the
    function's gradients. The run's warm-up is ``params.warmup_frac`` when the setting gives
    one, else the paper's 1/6.

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
        threshold: The secondary gap reading's threshold (default 0.1; see ``advise``).
        executor: Where the trials run: ``"local"`` (default, a process pool) or ``"slurm"``.
        executor_parameters: For ``"slurm"``, submitit's ``update_parameters`` (e.g.
            ``{"timeout_min": 60, "slurm_partition": "gpu"}``); None: none. With
            ``tasks_per_node`` x ``nodes`` above 1 each probe is a data-parallel trial of that
            many ranks, as in ``dropkit run``.
        workers: Processes of the local executor (default 1).
        figure: A path for a figure of the validation metric over the probe, per arm (needs
            matplotlib; drawn when the function logs the metric); None (default): none.
        progress: Called with a line of text as probes finish; None (default): silent.

    Returns:
        The advice, with the probes' numbers as its evidence.

    Raises:
        ValueError: If the setting is a built-in one, ``budget`` is not in (0, 1],
            ``executor`` is unknown, or a probe failed (raised, diverged, was cancelled, or
            did not return the validation metric; its traceback is in ``out/probes``).
        ImportError: If scipy (for the intervals) or matplotlib (for ``figure``) is not
            installed; checked before any probe runs.
    """
    from dropkit.experiments.engine.executors import JobFailure, make_executor
    from dropkit.experiments.engine.trial import Trial, TrialJob, TrialOutcome

    if setting.function is None:
        raise ValueError(f"settings.{setting.name} is a built-in setting; use advise()")
    root = None if root is None else str(Path(root).resolve())  # "." means here, now
    seed_list = _probe_seeds(seeds, threshold)
    warmup = float(setting.params.get("warmup_frac", PAPER_CUTOFF))
    budget = default_budget(warmup) if budget is None else budget
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"budget={budget} must lie in (0, 1]: the fraction of the run to probe")
    # on SLURM, tasks_per_node x nodes ranks per probe, as `dropkit run` trains a trial
    ranks = ExecutorSpec(cast(Any, executor), parameters=executor_parameters or {}).ranks
    require("scipy", "data", "for the advice's confidence intervals")
    if figure is not None:
        require("matplotlib", "plot", "for the probes' validation figure")
    say = progress or (lambda line: None)
    metric = setting.validation.metric
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
                (metric,),
                ranks,
            )
            for name, schedule in arms.items()
            for seed in seed_list
        ]
        outcomes: dict[str, TrialOutcome | JobFailure] = {}

        def collect(job: Any, outcome: Any) -> None:
            outcomes[job.label] = outcome
            say(f"probes: {len(outcomes)}/{len(jobs)} done")

        say(f"probes: {len(jobs)} trials ({len(arms)} arms x {len(seed_list)} seeds) at "
            f"budget {budget:.3g}")  # fmt: skip
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
        returned = {
            job.label: cast(TrialOutcome, outcomes[job.label]).metrics or {} for job in jobs
        }
        evidence: dict[str, Any] = {
            "metric": {"name": metric, "better": setting.validation.better},
            "budget": budget,
            "warmup_frac": warmup,
            "seeds": seed_list,
            "returned": sorted(set.intersection(*(set(m) for m in returned.values()))),
            "variants": {},
        }
        for name in arms:
            metrics = [returned[job.label] for job in jobs if job.trial.variant == name]
            has = {key: all(key in m for m in metrics) for key in ("train_loss", "val_acc")}
            evidence["variants"][name] = probe_entry(
                [m[metric] for m in metrics],
                [m["train_loss"] for m in metrics] if has["train_loss"] else None,
                [m["val_acc"] for m in metrics] if has["val_acc"] and metric != "val_acc" else None,
                gap=setting.validation.better == "lower",
            )
        curve = _logged_curve(
            {name: [job.trial.dir for job in jobs if job.trial.variant == name] for name in arms},
            metric,
            budget,
        )
        if curve is not None:
            evidence["curve"] = curve
            if figure is not None:
                draw_probe(evidence, Path(figure))
        assumed = (
            "" if "warmup_frac" in setting.params else " (the paper's; set params.warmup_frac)"
        )
        probe = (
            f"Probe: {budget:.0%} of the run (trial.budget = {budget:.3g}; warm-up taken as "
            f"{warmup:.3g} of the run{assumed}), {len(seed_list)} seeds; held-out metric: the "
            f"function's {metric} ({setting.validation.better} is better); no GDE (the "
            "function's gradients are out of dropkit's reach)"
        )
        return judge(
            evidence,
            budget=budget,
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


def _logged_curve(
    dirs: Mapping[str, Sequence[Path]], metric: str, budget: float
) -> dict[str, Any] | None:
    """The validation metric the probes logged, at the steps every probe logged it, as
    fractions of the run (a probe's last logged step is ``budget`` of it); None when fewer than
    two steps are shared."""
    from dropkit.experiments.engine.trial import read_log

    logs = {
        name: [{row["step"]: row for row in read_log(d)} for d in trial_dirs]
        for name, trial_dirs in dirs.items()
    }
    every = [log for arm in logs.values() for log in arm]
    if not every or not all(every):
        return None
    last = max(max(log) for log in every)
    shared = set.intersection(*({s for s, row in log.items() if metric in row} for log in every))
    steps = sorted(step for step in shared if step > 0)
    if len(steps) < 2:
        return None
    curve: dict[str, Any] = {"fractions": [budget * step / last for step in steps]}
    for name, arm in logs.items():
        curve[name] = [[log[step][metric] for step in steps] for log in arm]
    return curve
