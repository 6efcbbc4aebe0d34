"""From the probes' numbers to advice: the regime by the paper's definition and the gap's
interval, the confidence it supports, and the schedule it recommends."""

from __future__ import annotations

import time
from collections.abc import Sequence, Set
from typing import Any

import numpy as np

from dropkit.experiments.advise.advice import LATE_SD_P, PAPER_CUTOFF, Advice
from dropkit.experiments.base.stats import mean_interval


def _summary(values: list[float]) -> dict[str, float]:
    """Mean over seeds and its 95% t-interval."""
    mean, low, high = mean_interval(values)
    return {"mean": mean, "ci_low": low, "ci_high": high}


def probe_entry(
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


def judge(
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
