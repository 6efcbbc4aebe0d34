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

import dataclasses
import math
import numbers
import shutil
import time
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass
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
from dropkit.experiments.config import SettingSpec, setting_dict
from dropkit.experiments.data import Dataset, load_dataset
from dropkit.experiments.stats import mean_interval
from dropkit.experiments.train import TrainConfig, TrainResult, Variant, train_variant
from dropkit.sites import find_sites

__all__ = [
    "RECOMMENDATIONS",
    "Advice",
    "advise",
    "advise_function",
    "default_budget",
    "emit_config",
    "split_validation",
]

RECOMMENDATIONS = ("early_dropout", "early_sd", "late_sd", "standard_dropout", "no_dropout")
"""The values ``Advice.recommendation`` takes.

``early_dropout`` (underfitting, dropout sites), ``early_sd`` (underfitting, drop-path sites
only), ``late_sd`` (overfitting, drop-path sites), ``standard_dropout`` (overfitting, dropout
sites only) and ``no_dropout`` (the model has no site dropkit can control).
"""
PAPER_CUTOFF = 1 / 6  # 50 of 300 epochs; the paper finds 1% to 50% of the run works
LATE_SD_P = 0.4  # the paper's late stochastic depth rate (ViT-B)


@dataclass(frozen=True)
class Advice:
    """A recommendation, the regime behind it, and the evidence and limits of the probe.

    What [`advise`][dropkit.experiments.advise.advise] and
    [`advise_function`][dropkit.experiments.advise.advise_function] return; ``dropkit advise``
    writes it as ``advice.json`` ([`to_dict`][dropkit.experiments.advise.Advice.to_dict]) and
    ``advice.md`` ([`to_markdown`][dropkit.experiments.advise.Advice.to_markdown]).

    Attributes:
        recommendation: One of [`RECOMMENDATIONS`][dropkit.experiments.advise.RECOMMENDATIONS]:
            ``early_dropout`` or ``early_sd`` for an underfitting model, ``late_sd`` or
            ``standard_dropout`` for an overfitting one, ``no_dropout`` when the model has no
            dropout or drop-path site dropkit can control.
        schedule: The recommended schedule, ``{"sites", "schedule", "p", "cutoff", "shape"}``:
            ``sites`` is ``"dropout"`` or ``"drop_path"``, ``schedule`` ``"early"``,
            ``"late"`` or ``"standard"``, ``p`` the rate (the probed ``p`` or ``drop_path_p``;
            0.4 for late s.d., the paper's), ``cutoff`` the fraction of the run where an early
            or late schedule switches (1/6, the paper's; None for standard), ``shape``
            ``"linear"`` for early schedules (else None). None for ``no_dropout``.
        regime: ``"underfitting"`` or ``"overfitting"``: whether the no-dropout probe's
            projected relative generalization gap is below or above the threshold.
        confidence: ``"high"`` (the gap's 95% interval clears the threshold and no evidence
            contradicts the regime), ``"medium"`` (it clears it, with a contradiction) or
            ``"low"`` (the interval straddles the threshold, or the probe ended inside the
            learning-rate warm-up).
        reasons: The findings behind the advice, as sentences.
        evidence: The measurements, as plain data: per variant and seed the probes'
            ``train_loss``, ``val_loss``, ``gap`` (and ``val_acc``), the
            ``projected_relative_gap`` and the effects of the regulariser (``effect_on_*``)
            with their intervals (``mean``, ``ci_low``, ``ci_high``), GDE per seed when
            measured (``gde``), the probe's length and the seeds, and ``seconds``, its cost.
        limits: What the probe cannot tell, as sentences.
    """

    recommendation: str  # one of RECOMMENDATIONS
    schedule: dict[str, Any] | None  # {"sites", "schedule", "p", "cutoff", "shape"}
    regime: str  # "underfitting" or "overfitting"
    confidence: str  # "high", "medium" or "low"
    reasons: tuple[str, ...]
    evidence: dict[str, Any]
    limits: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """The advice as plain data (what ``advice.json`` holds).

        Returns:
            A dict with the seven fields, tuples turned into lists, ready for ``json.dump``.
        """
        return dataclasses.asdict(self)

    def to_markdown(self, figure: str | None = None) -> str:
        """The advice as Markdown (``advice.md``), with ``figure`` embedded if given.

        Args:
            figure: A path or URL of the probes' training-loss figure, relative to where the
                Markdown will be read; embedded as an image at the end. None (default): none.

        Returns:
            The recommendation (with its schedule), the regime and confidence, the reasons and
                the limits, as Markdown text ending in a newline.
        """
        lines = [
            f"**Recommendation: {self.recommendation.replace('_', ' ')}**"
            + (f" — `{_schedule_text(self.schedule)}`" if self.schedule else ""),
            "",
            f"Regime: {self.regime} (confidence: {self.confidence}).",
            "",
            "Why:",
            *(f"- {reason}" for reason in self.reasons),
            "",
            "Limits:",
            *(f"- {limit}" for limit in self.limits),
        ]
        if figure:
            lines += ["", f"![probe training loss]({figure})"]
        return "\n".join(lines) + "\n"


def _schedule_text(schedule: Mapping[str, Any]) -> str:
    parts = [f"{schedule['sites']}: {schedule['schedule']} p={schedule['p']:g}"]
    if schedule.get("cutoff") is not None:
        parts.append(f"cutoff={schedule['cutoff']:.3g} of the run")
    if schedule.get("shape"):
        parts.append(f"shape={schedule['shape']}")
    return ", ".join(parts)


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


def split_validation(data: Dataset, fraction: float) -> Dataset:
    """The last ``fraction`` of the training split as the test split (the real one stays unseen).

    How [`advise`][dropkit.experiments.advise.advise] carves its validation split: the probes
    train on the rest and are evaluated on it, so the real test split is never touched. The
    split is by position (no shuffling), so shuffle a dataset whose order means something.

    Args:
        data: The dataset.
        fraction: The share of the training samples held out, in (0, 1); at least one sample.

    Returns:
        A dataset named ``"<name>[train-<n>]"`` whose training split is the first samples and
            whose test split is the last ``round(fraction * N)`` (at least 1).

    Raises:
        ValueError: If ``fraction`` is not in (0, 1), or leaves no training sample.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation_fraction={fraction} must lie in (0, 1)")
    n_val = max(1, round(fraction * len(data.x)))
    if n_val >= len(data.x):
        raise ValueError(f"{data.name} has too few training samples to hold out a validation split")
    return Dataset(
        f"{data.name}[train-{n_val}]",
        data.x[:-n_val],
        data.y[:-n_val],
        data.x[-n_val:],
        data.y[-n_val:],
        data.n_classes,
    )


def _summary(values: list[float]) -> dict[str, float]:
    """Mean over seeds and its 95% t-interval."""
    mean, low, high = mean_interval(values)
    return {"mean": mean, "ci_low": low, "ci_high": high}


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
            message names the ``pip install 'dropkit[...]'`` line).
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
            name: _probe_entry(r.final_train_loss, r.test_loss, r.test_acc)
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
    return _judge(
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
    from dropkit.experiments.executors import JobFailure

    if isinstance(outcome, JobFailure):
        return outcome.reason
    return outcome.error if outcome.metrics is None or outcome.error else None


def _probe_entry(
    train_loss: Sequence[float], val_loss: Sequence[float], val_acc: Sequence[float] | None
) -> dict[str, list[float]]:
    entry = {
        "train_loss": list(train_loss),
        "val_loss": list(val_loss),
        "gap": [v - t for v, t in zip(val_loss, train_loss, strict=True)],
    }
    if val_acc is not None:
        entry["val_acc"] = list(val_acc)
    return entry


SMALL_SCALE_NOTE = (
    "What dropkit's own demo measured at small scale (MNIST-1D, residual MLP and ViT-style "
    "models, 8-12 seeds): early dropout and early s.d. did not beat no dropout there (opposite or "
    "inconclusive). The paper's gains were measured on ImageNet-scale models; test this "
    "recommendation on your model before adopting it (`--emit-config` writes that experiment)."
)


def _judge(
    evidence: dict[str, Any],
    *,
    run_over_probe: float,
    progress: str,
    inside_warmup: tuple[str, float] | None,
    kinds: Set[str],
    p: float,
    drop_path_p: float,
    threshold: float,
    probe: str,
    started: float,
    measured_on: str = "validation",
) -> Advice:
    """The regime, confidence and recommendation from the probes' per-seed evidence.

    ``evidence["variants"]`` holds ``none`` and optionally ``dropout`` or ``sd`` (per seed
    ``train_loss``, ``val_loss``, ``gap``); ``evidence["gde"]``, when measured, the end-of-probe
    GDE of both. ``run_over_probe``: how many times longer the run is than the probe.
    """
    none = evidence["variants"]["none"]
    projected = [
        gap * run_over_probe / val for gap, val in zip(none["gap"], none["val_loss"], strict=True)
    ]
    gap = evidence["projected_relative_gap"] = _summary(projected)
    mean, low, high = gap["mean"], gap["ci_low"], gap["ci_high"]
    regime = "overfitting" if mean > threshold else "underfitting"
    clear = low > threshold or high < threshold
    reasons = [
        f"Without dropout the {measured_on} loss exceeds the training loss by "
        f"{np.mean(none['gap']):+.4f} {progress}; projected to the end of the run that is "
        f"{mean:+.2f} of the {measured_on} loss (95% CI [{low:+.2f}, {high:+.2f}]), "
        f"{'above' if mean > threshold else 'below'} the {threshold:g} that separates the "
        f"regimes: {regime} regime."
    ]
    contradictions = 0
    variants = evidence["variants"]
    regulariser = "dropout" if "dropout" in variants else "sd" if "sd" in variants else None
    if regulariser is not None:
        with_reg = variants[regulariser]
        d_val = [a - b for a, b in zip(with_reg["val_loss"], none["val_loss"], strict=True)]
        d_gap = [a - b for a, b in zip(with_reg["gap"], none["gap"], strict=True)]
        evidence["effect_on_val_loss"] = _summary(d_val)
        evidence["effect_on_gap"] = _summary(d_gap)
        label = "dropout" if regulariser == "dropout" else "stochastic depth"
        reasons.append(
            f"Standard {label} changed the probe's {measured_on} loss by {np.mean(d_val):+.4f} "
            f"and its gap by {np.mean(d_gap):+.4f} (mean over seeds)."
        )
        if regime == "overfitting" and evidence["effect_on_gap"]["ci_low"] > 0:
            contradictions += 1  # overfitting, yet the regulariser widened the gap
        if "gde" in evidence:
            gde_none, gde_reg = evidence["gde"]["none"], evidence["gde"][regulariser]
            d_gde = [a - b for a, b in zip(gde_reg, gde_none, strict=True)]
            evidence["effect_on_gde"] = _summary(d_gde)
            lower = evidence["effect_on_gde"]["ci_high"] < 0
            reasons.append(
                f"Gradient direction error at the end of the probe: {np.mean(gde_none):.3f} "
                f"without, {np.mean(gde_reg):.3f} with {label}"
                + (" (lower: the paper's mechanism for early dropout)." if lower else ".")
            )
            if regime == "underfitting" and evidence["effect_on_gde"]["ci_low"] > 0:
                contradictions += 1  # the paper's mechanism runs the other way here
    confidence = "high" if clear and not contradictions else "medium" if clear else "low"
    if not clear:
        reasons.append(
            f"The interval straddles {threshold:g}: the regime is not settled at this budget. "
            "Rerun with a larger budget or more seeds before acting on this."
        )
    if inside_warmup is not None:  # the rest of the run is unlike the probe: confidence low
        where, warmup_frac = inside_warmup
        confidence = "low"
        reasons.append(
            f"The probe ended inside the learning-rate warm-up ({where}): the model never "
            "trained at its peak rate, so its gap is no guide to the run's. Rerun with a budget "
            f"above the warm-up ({warmup_frac:.3g})."
        )
    recommendation, schedule = _recommend(regime, kinds, p, drop_path_p)
    if recommendation == "no_dropout":
        reasons.append(
            "The model has no dropout or drop-path site dropkit can control; add one (e.g. "
            "dropkit.Dropout(0.0)) to try a schedule."
        )
    evidence["seconds"] = time.perf_counter() - started
    limits = [
        f"{probe}; it cost {evidence['seconds']:.0f} s.",
        "The end-of-run gap is a straight-line projection in passes over the data; models whose "
        "gap opens late (after the probe) look underfitting here. The threshold "
        f"({threshold:g}) was set on MNIST-1D settings; it is a heuristic, not a law.",
        "p and the cutoff are the paper's defaults, not tuned by the probe; the advice ranks "
        "regimes, it does not promise an accuracy.",
    ]
    if recommendation in ("early_dropout", "early_sd", "late_sd"):
        limits.append(SMALL_SCALE_NOTE)
    return Advice(
        recommendation, schedule, regime, confidence, tuple(reasons), evidence, tuple(limits)
    )


def _recommend(
    regime: str, kinds: Set[str], p: float, drop_path_p: float
) -> tuple[str, dict[str, Any] | None]:
    if not kinds:
        return "no_dropout", None
    if regime == "underfitting":
        if "dropout" in kinds:
            return "early_dropout", _schedule("dropout", "early", p, PAPER_CUTOFF, "linear")
        return "early_sd", _schedule("drop_path", "early", drop_path_p, PAPER_CUTOFF, "linear")
    if "drop_path" in kinds:
        return "late_sd", _schedule("drop_path", "late", LATE_SD_P, PAPER_CUTOFF, None)
    return "standard_dropout", _schedule("dropout", "standard", p, None, None)


def _schedule(
    sites: str, kind: str, p: float, cutoff: float | None, shape: str | None
) -> dict[str, Any]:
    return {"sites": sites, "schedule": kind, "p": p, "cutoff": cutoff, "shape": shape}


def _draw(results: Mapping[str, TrainResult], path: Path) -> None:
    from dropkit.experiments.figures import loss_curves

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
    from dropkit.experiments.executors import JobFailure, make_executor
    from dropkit.experiments.trial import Trial, TrialJob, TrialOutcome

    if setting.function is None:
        raise ValueError(f"settings.{setting.name} is a built-in setting; use advise()")
    seed_list = _probe_seeds(seeds, threshold)
    warmup = float(setting.params.get("warmup_frac", PAPER_CUTOFF))
    budget = default_budget(warmup) if budget is None else budget
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"budget={budget} must lie in (0, 1]: the fraction of the run to probe")
    require("scipy", "data", "for the advice's confidence intervals")
    started = time.perf_counter()
    probes = out / "probes"
    shutil.rmtree(probes, ignore_errors=True)  # fresh probes: never a checkpoint of another budget
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
    failed = {label: error for label, o in outcomes.items() if (error := _probe_error(o))}
    if failed:
        listed = "; ".join(f"{label}: {error.splitlines()[0]}" for label, error in failed.items())
        raise ValueError(
            f"settings.{setting.name}: {len(failed)} probe(s) failed, no advice ({listed}); "
            f"tracebacks are in {probes}"
        )
    evidence: dict[str, Any] = {"budget": budget, "warmup_frac": warmup, "variants": {}}
    evidence["seeds"] = seed_list
    for name in arms:
        metrics = [
            cast(TrialOutcome, outcomes[job.label]).metrics or {}
            for job in jobs
            if job.trial.variant == name
        ]
        accs = [m["test_acc"] for m in metrics] if all("test_acc" in m for m in metrics) else None
        evidence["variants"][name] = _probe_entry(
            [m["train_loss"] for m in metrics], [m["test_loss"] for m in metrics], accs
        )
    assumed = "" if "warmup_frac" in setting.params else " (the paper's; set params.warmup_frac)"
    probe = (
        f"Probe: {budget:.0%} of the run (trial.budget = {budget:.3g}; warm-up taken as "
        f"{warmup:.3g} of the run{assumed}), {seeds} seeds; the gap is the function's test_loss "
        "minus its train_loss (no GDE: the function's gradients are out of dropkit's reach)"
    )
    return _judge(
        evidence,
        run_over_probe=1.0 / budget,
        progress=f"after {budget:.0%} of the run",
        inside_warmup=None if budget > warmup else (f"{budget:.0%} of {warmup:.0%}", warmup),
        kinds={"dropout"},
        p=p,
        drop_path_p=p,
        threshold=threshold,
        probe=probe,
        started=started,
        measured_on="held-out",
    )


def emit_config(advice: Advice, setting: SettingSpec, *, p: float = 0.1, seeds: int = 5) -> dict:
    """The experiment that tests ``advice`` on ``setting``: its recommendation against ``none``
    and standard dropout (or s.d.), with claims in the paper's direction, for ``dropkit run``.

    What ``dropkit advise --emit-config`` writes. The regime claim A1 (standard vs none) comes
    first and gates the others, as in the demo; for an early schedule A2 claims a lower final
    training loss than ``none``, and A3 a better test metric than ``none`` (than standard s.d.
    for late s.d.). The test metric is ``test_acc`` when the probes reported an accuracy, else
    ``test_loss``. A ``no_dropout`` or ``standard_dropout`` advice gets the regime claim only.

    Args:
        advice: The advice to test.
        setting: The setting it was given for; its data, model and train block (or function
            and params) are copied, its variants replaced, its dynamics and seeds dropped.
        p: The standard dropout rate of the ``dropout`` arm (default 0.1; ``dropkit advise``
            passes its ``--p``).
        seeds: Seeds of the experiment (default 5).

    Returns:
        The config as a dict in the YAML schema of ``dropkit run`` (``name``, ``seeds``,
            ``settings``, ``claims``), ready for ``yaml.safe_dump``.
    """
    regulariser = "sd" if "sd" in advice.evidence["variants"] else "dropout"
    reg_kind = "drop_path" if regulariser == "sd" else "dropout"
    reg_p = p if regulariser == "dropout" else float(advice.schedule["p"] if advice.schedule else p)
    variants: dict[str, Any] = {
        "none": {},
        regulariser: {reg_kind: {"schedule": "standard", "p": reg_p}},
    }
    has_acc = "val_acc" in advice.evidence["variants"]["none"]
    metric = "test_acc" if has_acc else "test_loss"
    better, worse = (">", "<") if has_acc else ("<", ">")
    under = advice.regime == "underfitting"
    label = "dropout" if regulariser == "dropout" else "stochastic depth"
    claims = [
        {
            "id": "A1",
            "setting": setting.name,
            "metric": metric,
            "a": regulariser,
            "b": "none",
            "direction": worse if under else better,
            "statement": f"{advice.regime.capitalize()} regime: standard {label} "
            f"{'hurts' if under else 'helps'} {metric}",
            "paper": "regime definition (Liu et al. 2023, §4): standard dropout hurts models that "
            "underfit (ViT-T) and helps those that overfit (ViT-B)",
        }
    ]
    schedule = advice.schedule
    name = advice.recommendation
    if schedule is not None and name in ("early_dropout", "early_sd", "late_sd"):
        spec = {k: schedule[k] for k in ("schedule", "p", "cutoff", "shape") if schedule.get(k)}
        if name == "late_sd":
            variants["sd"] = {"drop_path": {"schedule": "standard", "p": schedule["p"]}}
        variants[name] = {schedule["sites"]: spec}
        base = "sd" if name == "late_sd" else "none"
        if name != "late_sd":
            claims.append({
                "id": "A2", "setting": setting.name, "metric": "train_loss", "a": name,
                "b": "none", "direction": "<",
                "statement": f"{name.replace('_', ' ').capitalize()} ends with a lower training "
                "loss than no dropout",
                "paper": "Liu et al. 2023: lower final training loss (ViT-T, ImageNet-1K)",
            })  # fmt: skip
        claims.append({
            "id": "A3", "setting": setting.name, "metric": metric, "a": name, "b": base,
            "direction": better,
            "statement": f"{name.replace('_', ' ').capitalize()} improves {metric} over {base}",
            "paper": "Liu et al. 2023, Table 1 / 3: +0.3 to +0.9 pt top-1 on ImageNet-1K",
        })  # fmt: skip
    entry = setting_dict(setting)
    entry["variants"] = variants
    entry["regime"] = advice.regime
    entry["regime_claim"] = "A1"
    entry.pop("dynamics", None)
    entry.pop("seeds", None)
    return {"name": f"test-{name}-{setting.name}", "seeds": seeds,
            "settings": {setting.name: entry}, "claims": claims}  # fmt: skip
