"""From the probes' numbers to advice, by the paper's definition of the regimes: a model
underfits when standard dropout *raises* its held-out loss and overfits when it lowers it.

The evidence is the paired difference over seeds, dropout minus none, in the held-out metric
(``harm``: positive when dropout made it worse), read twice with a 95% interval over seeds: at
the probe's end (``now``) and projected to the end of the run along its trend over the probe's
second half (``projected``, a straight line in log run-fraction: learning curves bend like
powers of the step, so a line in the step itself overshoots). The regime is decided only when
these agree; everything else (the no-dropout probe's generalization gap projected to the end,
the gradient direction error, a probe ending inside the warm-up) can only lower the confidence.
When nothing separates, or ``now`` and ``projected`` point opposite ways, the answer is "cannot
tell yet" with what would decide it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence, Set
from dataclasses import dataclass
from typing import Any

import numpy as np

from dropkit.experiments.advise.advice import (
    CANNOT_TELL,
    LATE_SD_P,
    PAPER_CUTOFF,
    Advice,
)
from dropkit.experiments.base.stats import mean_interval, seeds_for_power

GAP_THRESHOLD = 0.1
"""The projected relative gap above which the (secondary) gap projection reads overfitting: set
on MNIST-1D settings, a heuristic that may only lower the confidence."""
MAX_SUGGESTED_SEEDS = 20
"""Above this many seeds the advice suggests a longer probe instead of more seeds."""
TREND_POINTS = 3
"""Checkpoints in the probe's second half needed to read a trend."""
LEVELS = (None, "medium", "high")


def _summary(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Mean over seeds and its 95% t-interval."""
    mean, low, high = mean_interval(values)
    return {"mean": mean, "ci_low": low, "ci_high": high}


def _sign(summary: dict[str, float] | None) -> int:
    """+1 / -1 when the interval lies above / below zero, else 0."""
    if summary is None:
        return 0
    return 1 if summary["ci_low"] > 0 else -1 if summary["ci_high"] < 0 else 0


def _direction(value: float) -> int:
    return 1 if value > 0 else -1 if value < 0 else 0


def probe_entry(
    held_out: Sequence[float],
    train_loss: Sequence[float] | None = None,
    val_acc: Sequence[float] | None = None,
    *,
    gap: bool = True,
) -> dict[str, list[float]]:
    """One arm's per-seed numbers at the probe's end: the held-out metric, and when given the
    training loss, the gap (held-out minus training loss; only for a held-out *loss*, ``gap``)
    and the validation accuracy."""
    entry: dict[str, list[float]] = {"held_out": [float(v) for v in held_out]}
    if train_loss is not None:
        entry["train_loss"] = [float(t) for t in train_loss]
        if gap:
            entry["gap"] = [
                v - t for v, t in zip(entry["held_out"], entry["train_loss"], strict=True)
            ]
    if val_acc is not None:
        entry["val_acc"] = [float(a) for a in val_acc]
    return entry


@dataclass(frozen=True)
class EffectReading:
    """Standard dropout's effect on the held-out metric (``harm``: positive = it hurt).

    ``now`` is its interval at the probe's end; ``trend`` the interval of its slope per unit of
    log run-fraction over the probe's second half, and ``projected`` the interval of the effect
    carried along it to the end of the run (both None without enough checkpoints); ``budget``
    is the probe's share of the run.
    """

    now: dict[str, float]
    trend: dict[str, float] | None
    projected: dict[str, float] | None
    budget: float
    sd_now: float

    @property
    def regime(self) -> str:
        """``underfitting``, ``overfitting`` or ``cannot tell`` (`CANNOT_TELL`)."""
        sign = self.sign
        return "underfitting" if sign > 0 else "overfitting" if sign < 0 else CANNOT_TELL

    @property
    def overturned(self) -> bool:
        """The trend clearly runs against a clear effect and, by its mean, takes it through
        zero before the run ends: the evidence disagrees."""
        now = _sign(self.now)
        if not now or self.projected is None:
            return False
        if _sign(self.projected) == -now:
            return True
        return _sign(self.trend) == -now and _direction(self.projected["mean"]) == -now

    @property
    def sign(self) -> int:
        """+1 (dropout hurts: underfitting), -1 (it helps: overfitting) or 0 (cannot tell).

        Asymmetric on purpose: early in training dropout slows the fit in *either* regime, so a
        harm seen now is no evidence of underfitting unless its trend carries it, clearly, to
        the end of the run; a benefit seen now (dropout already lowers the held-out loss) is
        evidence of overfitting unless the trend clearly overturns it.
        """
        now, projected = _sign(self.now), _sign(self.projected)
        if self.overturned:
            return 0
        if now < 0 or (not now and projected < 0):
            return -1
        return 1 if now > 0 and projected > 0 else 0

    @property
    def level(self) -> int:
        """2 when the effect is clear both now and projected, 1 when only one of them is (or no
        trend could be read), 0 when the regime cannot be told."""
        if not self.sign:
            return 0
        both = _sign(self.now) == _sign(self.projected) == self.sign
        return 2 if both else 1

    def crossing(self) -> float | None:
        """Where, as a fraction of the run, the mean trend takes the effect through zero (when
        it heads there), else None."""
        if self.trend is None or self.trend["mean"] == 0:
            return None
        distance = -self.now["mean"] / self.trend["mean"]  # in log run-fraction
        if distance <= 0:
            return None
        return min(1.0, self.budget * math.exp(distance))


def read_effect(
    fractions: Sequence[float], harm: np.ndarray | None, now: Sequence[float], budget: float
) -> EffectReading:
    """Read standard dropout's effect from the probe.

    Args:
        fractions: The checkpoints' positions as fractions of the run, increasing (``harm``'s
            columns); may be empty.
        harm: ``harm[s, k]``: how much dropout worsened seed ``s``'s held-out metric at
            checkpoint ``k`` (dropout minus none for a loss); None without checkpoints.
        now: Per seed, the harm at the probe's end.
        budget: The probe's share of the run, in (0, 1].

    Returns:
        The reading: the interval now, and when the probe's second half holds at least
            `TREND_POINTS` checkpoints, the trend (per seed: the least-squares slope of harm
            against log fraction there) and the effect carried along it from the probe's end
            over ``log(1 / budget)``.
    """
    now_values = np.asarray(now, dtype=np.float64)
    summary = _summary(now_values)
    sd = float(now_values.std(ddof=1))
    if harm is None or budget >= 1.0:
        return EffectReading(summary, None, None, budget, sd)
    positions = np.log(np.asarray(fractions, dtype=np.float64))
    late = positions >= math.log(budget / 2)
    if late.sum() < TREND_POINTS:
        return EffectReading(summary, None, None, budget, sd)
    x = positions[late] - positions[late].mean()
    values = np.asarray(harm, dtype=np.float64)[:, late]
    slopes = (values - values.mean(1, keepdims=True)) @ x / float(x @ x)
    projected = now_values + slopes * math.log(1.0 / budget)
    return EffectReading(summary, _summary(slopes), _summary(projected), budget, sd)


DECIDE = "or run the experiment `--emit-config` writes (full-length runs decide it)"


def _next_step(reading: EffectReading, seeds: int) -> tuple[str, dict[str, Any]]:
    """What would decide a regime the probe could not tell: a sentence, and the ``budget`` (and
    ``seeds``, when more seeds would do) it suggests."""
    longer = round(min(1.0, 2 * reading.budget), 2)
    probe_longer = f"probe longer (`--budget {longer:g}`)"
    if reading.sign:  # the effect read a regime, the rest of the evidence took it back
        return (
            f"Dropout's effect reads {reading.regime}, but the other evidence contradicts it: "
            f"{probe_longer}, {DECIDE}.",
            {"budget": longer, "seeds": seeds},
        )
    if _sign(reading.now) > 0 and not _sign(reading.projected) and not reading.overturned:
        return (
            "Dropout hurts now, as it does early in training in either regime, but its trend "
            "does not show the harm lasting to the end of the run"
            + (" (log the validation metric with `trial.log` so its trend can be read)"
               if reading.projected is None else "")
            + f": {probe_longer}, {DECIDE}.",
            {"budget": longer, "seeds": seeds},
        )  # fmt: skip
    crossing = reading.crossing()
    if reading.overturned and crossing is not None:
        to = round(min(1.0, crossing + 0.05), 2)
        return (
            f"Dropout's effect is clear now but its trend reaches zero at about {crossing:.0%} "
            f"of the run: probe past it (`--budget {to:g}`), {DECIDE}.",
            {"budget": to, "seeds": seeds},
        )
    mean = abs(reading.now["mean"])
    if mean > 0 and reading.sd_now > 0:
        needed = seeds_for_power(reading.sd_now, mean)
        if needed <= MAX_SUGGESTED_SEEDS:
            return (
                f"Dropout's effect ({reading.now['mean']:+.4f}) does not yet separate from zero "
                f"over {seeds} seeds: about {needed} seeds would show an effect this size "
                f"(`--seeds {needed}`), or {probe_longer}.",
                {"budget": longer, "seeds": max(needed, seeds)},
            )
    return (
        "Dropout's effect is too small at this budget to separate from zero with a practical "
        f"number of seeds: {probe_longer}, {DECIDE}.",
        {"budget": longer, "seeds": seeds},
    )


def judge(
    evidence: dict[str, Any],
    *,
    budget: float,
    progress: str,
    inside_warmup: tuple[str, float] | None,
    kinds: Set[str],
    p: float,
    drop_path_p: float,
    probe: str,
    started: float,
    threshold: float = GAP_THRESHOLD,
    measured_on: str = "validation",
) -> Advice:
    """The regime, confidence and recommendation from the probes' per-seed evidence.

    ``evidence["variants"]`` holds ``none`` and optionally ``dropout`` or ``sd`` (per seed
    ``held_out``, and ``train_loss`` / ``gap`` when known); ``evidence["metric"]`` names the
    held-out metric and whether higher is better; ``evidence["curve"]``, when checkpoints were
    read, their ``fractions`` and per arm ``values[seed][checkpoint]``; ``evidence["gde"]``,
    when measured, the end-of-probe GDE of both arms. ``budget``: the probe's share of the run;
    ``threshold``: the secondary gap reading's.
    """
    variants = evidence["variants"]
    metric = evidence["metric"]
    name, sign = metric["name"], (-1.0 if metric["better"] == "higher" else 1.0)
    none = variants["none"]
    regulariser = "dropout" if "dropout" in variants else "sd" if "sd" in variants else None
    reasons: list[str] = []
    contradictions: list[str] = []
    label = "stochastic depth" if regulariser == "sd" else "dropout"
    if regulariser is None:
        reading = None
        regime, level = CANNOT_TELL, 0
    else:
        reg = variants[regulariser]
        now = sign * (np.asarray(reg["held_out"]) - np.asarray(none["held_out"]))
        curve = evidence.get("curve")
        harm = (
            sign * (np.asarray(curve[regulariser]) - np.asarray(curve["none"]))
            if curve is not None
            else None
        )
        reading = read_effect(curve["fractions"] if curve else [], harm, now, budget)
        evidence["effect_now"] = reading.now
        evidence["effect_trend"] = reading.trend
        evidence["effect_projected"] = reading.projected
        regime, level = reading.regime, reading.level
        reasons.append(_effect_sentence(reading, label, name, measured_on, progress))
        if reading.projected is None:
            reasons.append(
                f"No trend could be read (fewer than {TREND_POINTS} checkpoints of {name} in the "
                "probe's second half"
                + (": the function logged it at fewer than 2 steps of the probe; log it during "
                   "training with `trial.log(step, ...)`, often enough for the probe's length)."
                   if curve is None else ").")
            )  # fmt: skip
    gap_sign = _gap_reading(evidence, none, budget, threshold, reasons, measured_on)
    if reading is not None and reading.sign and gap_sign and gap_sign != reading.sign:
        contradictions.append("the generalization gap's projection points the other way")
    if regulariser is not None and "gde" in evidence:
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
            contradictions.append(f"{label} raised the gradient direction error")
    if inside_warmup is not None:  # the rest of the run is unlike the probe
        where, warmup_frac = inside_warmup
        contradictions.append("the probe ended inside the learning-rate warm-up")
        reasons.append(
            f"The probe ended inside the learning-rate warm-up ({where}): the model never "
            "trained at its peak rate, so the probe is a weak guide to the run. Rerun with a "
            f"budget above the warm-up ({warmup_frac:.3g})."
        )
    if level and contradictions:
        level = max(0, level - len(contradictions))
        reasons.append("Confidence lowered: " + "; ".join(contradictions) + ".")
        if not level:
            regime = CANNOT_TELL
    confidence = LEVELS[level]
    if regime == CANNOT_TELL and reading is not None:
        text, evidence["decide_with"] = _next_step(reading, len(evidence["seeds"]))
        reasons.append("Cannot tell yet. " + text)
    recommendation, schedule = _recommend(regime, kinds, p, drop_path_p)
    if recommendation == "no_dropout":
        reasons.append(
            "The model has no dropout or drop-path site dropkit can control; add one (e.g. "
            "dropkit.Dropout(0.0)) to try a schedule."
        )
    evidence["seconds"] = time.perf_counter() - started
    limits = [
        f"{probe}; it cost {evidence['seconds']:.0f} s.",
        "The regime is read from the probe: its trend is projected as a straight line in log "
        "run-fraction, so an effect that turns only after the probe can be missed. Dropout "
        "slows early training in either regime, so a harm counts as underfitting only when its "
        "trend carries it clearly to the end of the run; evidence that does not separate or "
        "disagrees reads 'cannot tell yet', never a guess.",
        "p and the cutoff are the paper's defaults, not tuned by the probe; the advice ranks "
        "regimes, it does not promise an accuracy.",
    ]
    if recommendation in ("early_dropout", "early_sd", "late_sd"):
        limits.append(SMALL_SCALE_NOTE)
    return Advice(
        recommendation, schedule, regime, confidence, tuple(reasons), evidence, tuple(limits)
    )


SMALL_SCALE_NOTE = (
    "What dropkit's own demo measured at small scale (MNIST-1D, residual MLP and ViT-style "
    "models, 8-12 seeds): early dropout and early s.d. did not beat no dropout there (opposite or "
    "inconclusive). The paper's gains were measured on ImageNet-scale models; test this "
    "recommendation on your model before adopting it (`--emit-config` writes that experiment)."
)


def _interval(summary: dict[str, float]) -> str:
    return f"{summary['mean']:+.4f} [{summary['ci_low']:+.4f}, {summary['ci_high']:+.4f}]"


def _effect_sentence(
    reading: EffectReading, label: str, name: str, measured_on: str, progress: str
) -> str:
    """What dropout did to the held-out metric, now and projected, and what that means."""
    words = {1: "raised", -1: "lowered", 0: "did not clearly change"}
    text = (
        f"Standard {label} {words[_sign(reading.now)]} {name} (on {measured_on} data) "
        f"{progress}: {_interval(reading.now)} (harm: dropout minus none, worse is positive; "
        "95% interval over seeds)"
    )
    if reading.projected is not None:
        text += (
            f"; along its trend over the probe's second half, {_interval(reading.projected)} at "
            "the end of the run"
        )
    if reading.overturned:
        return text + ": the trend runs against the effect seen now."
    meaning = {
        1: ": it hurts, the paper's underfitting regime.",
        -1: ": it helps, the paper's overfitting regime.",
        0: ".",
    }
    return text + meaning[reading.sign]


def _gap_reading(
    evidence: dict[str, Any],
    none: dict[str, list[float]],
    budget: float,
    threshold: float,
    reasons: list[str],
    measured_on: str,
) -> int:
    """The secondary reading: the no-dropout probe's relative gap projected linearly to the end
    of the run; +1 / -1 when its interval clears ``threshold`` (underfitting / overfitting
    side), 0 when it straddles it or is unknown."""
    if "gap" not in none:
        return 0
    projected = [g / budget / v for g, v in zip(none["gap"], none["held_out"], strict=True)]
    gap = evidence["projected_relative_gap"] = _summary(projected)
    reasons.append(
        f"Without dropout the {measured_on} loss exceeds the training loss by "
        f"{np.mean(none['gap']):+.4f}; projected linearly to the end of the run that is "
        f"{gap['mean']:+.2f} of the {measured_on} loss ({gap['ci_low']:+.2f} to "
        f"{gap['ci_high']:+.2f}); above {threshold:g} reads overfitting (secondary: held-out "
        "data unlike the training data opens a gap at once, so this may only lower the "
        "confidence)."
    )
    if gap["ci_low"] > threshold:
        return -1
    if gap["ci_high"] < threshold:
        return 1
    return 0


def _recommend(
    regime: str, kinds: Set[str], p: float, drop_path_p: float
) -> tuple[str, dict[str, Any] | None]:
    if not kinds:
        return "no_dropout", None
    if regime == CANNOT_TELL:
        return "undecided", None
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
