"""The papers' claims as paired comparisons over seeds, with effect sizes and 95% intervals.

This module decides every verdict: `evaluate_claim` for one claim on per-seed values,
`evaluate_claims` for a run folder's results (regime claims first, gating the others; a
dynamics metric is averaged over its window here). `dropkit.experiments.evidence.report` only
formats and writes what it returns.

A claim compares one metric between two variants ``a`` and ``b`` of one setting, seed by seed
(variants share seeds, so seed ``s`` of both arms saw the same initialisation stream and data
order). The effect is the mean paired difference ``A - B``; its 95% interval ``[low, high]`` is
Student's t over the seed-wise differences (`dropkit.experiments.stats.paired_t_interval`).
A seed whose value is non-finite (NaN, inf) in either arm is a failure: it is listed in
``failed_seeds`` and the reason, never silently dropped, and the interval is computed on the rest.

Superiority, the paper's direction (``margin`` must be 0):

- ``">"``: *confirmed* if ``low > 0``; *opposite* if ``high < 0``; else *inconclusive*;
- ``"<"``: *confirmed* if ``high < 0``; *opposite* if ``low > 0``; else *inconclusive*.

Non-inferiority, with a ``margin > 0`` in the metric's units:

- ``">="``: *confirmed* if ``low > 0`` (superiority shown); else *opposite* if
  ``high < -margin`` (worse than the margin allows); else *non-inferior* if ``low > -margin``
  (not worse by the margin; when ``high < 0`` too, the reason says A is worse than B, within
  the margin); else *inconclusive*;
- ``"<="``: mirrored: *confirmed* if ``high < 0``; else *opposite* if ``low > margin``; else
  *non-inferior* if ``high < margin``; else *inconclusive*.

Failed seeds: a seed that fails is rarely a random one (a diverged run is the arm's worst), so the
survivors are a selected sample. When more than ``MAX_FAILED_SHARE`` (20%) of the paired seeds
failed, a verdict of *confirmed*, *opposite* or *non-inferior* is capped at *inconclusive*, and
the reason says so; at 20% or fewer the verdict stands and the failures are listed.

Zero spread: when every seed gives the same paired difference, the interval has zero width and
would "confirm" on two seeds; such a claim reads *inconclusive* (no MDE), with the reason. "The
same" is up to float rounding: a spread of the differences at most ``ZERO_SPREAD_RTOL`` (1e-9)
times the largest value's magnitude (rounding leaves about 1e-16 of it; a real spread between
seeds is many orders larger).

Minimum seeds: a verdict of *confirmed*, *opposite* or *non-inferior* needs at least
``MIN_SEEDS`` (3) finite paired seeds. On 2 the t interval exists (1 degree of freedom) but rests
on a single estimate of the spread; such a claim reads *inconclusive*, still with its effect,
interval and MDE, and the reason says how many seeds it had.

Looking, then adding seeds: a fixed-n t interval read again after each extension is no longer
a 95% interval (read after every seed up to 64, with no true effect, it "confirms" about 18% of
the time). A claim whose seeds grew after a report was read, or that is trained until decided,
is judged with `dropkit.experiments.stats.confidence_sequence` instead (``interval``:
``"confidence sequence"``), valid however often it is read; its ``mde`` is the sequence's.
`futile` says when such an interval already excludes the paper's effect.

``confirmed`` is True only for the verdict *confirmed*. With fewer than 2 finite pairs the claim
is *not measured*; `not_applicable` marks a claim whose setting's regime claim was not
confirmed. Both carry a ``reason`` and no effect, interval or mde. ``mde`` is the minimum
detectable effect (`dropkit.experiments.stats.min_detectable_effect`) at the observed sd
of the paired differences: an effect this large would have been shown 80% of the time.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dropkit.experiments.base.record import RunRecord
from dropkit.experiments.base.stats import (
    confidence_sequence,
    min_detectable_effect,
    paired_t_interval,
    sequential_min_detectable_effect,
)
from dropkit.experiments.config.claim import Claim
from dropkit.experiments.config.specs import DynamicsSpec, ExperimentConfig, SettingSpec

__all__ = [
    "MAX_FAILED_SHARE",
    "MIN_SEEDS",
    "ClaimResult",
    "evaluate_claim",
    "evaluate_claims",
    "futile",
    "not_applicable",
]

MAX_FAILED_SHARE = 0.2  # above this share of failed seeds, a verdict is capped at inconclusive
MIN_SEEDS = 3  # fewer finite paired seeds than this: a verdict is capped at inconclusive
# a spread of the paired differences at most this share of the values' magnitude is rounding
ZERO_SPREAD_RTOL = 1e-9


@dataclass(frozen=True)
class ClaimResult:
    """What the report prints and ``report.json`` stores for one claim."""

    id: str
    statement: str
    paper: str
    test: str  # "superiority" or "non-inferiority"
    verdict: str  # confirmed, non-inferior, inconclusive, opposite, not measured, not applicable
    confirmed: bool  # True only when verdict == "confirmed"
    effect: float | None  # mean of A - B over the finite pairs
    ci_low: float | None
    ci_high: float | None
    n_seeds: int  # finite pairs the interval is computed on
    mde: float | None  # minimum detectable effect at 80% power
    metric: str
    comparison: str
    margin: float
    failed_seeds: list[int]  # seeds non-finite in either arm (excluded from the interval)
    reason: str  # why not measured / not applicable, or the failures; else ""
    interval: str = "student-t"  # or "confidence sequence" (valid after looking, see SEQUENTIAL)
    sd: float | None = None  # sd of the finite paired differences

    def to_json(self) -> dict:
        return asdict(self)


def _verdict(claim: Claim, low: float, high: float) -> str:
    direction, margin = claim.direction, claim.margin
    if direction == ">":
        return "confirmed" if low > 0 else "opposite" if high < 0 else "inconclusive"
    if direction == "<":
        return "confirmed" if high < 0 else "opposite" if low > 0 else "inconclusive"
    if direction == ">=":
        if low > 0:
            return "confirmed"
        if high < -margin:
            return "opposite"
        return "non-inferior" if low > -margin else "inconclusive"
    if high < 0:  # "<="
        return "confirmed"
    if low > margin:
        return "opposite"
    return "non-inferior" if high < margin else "inconclusive"


def _worse_within_margin(claim: Claim, low: float, high: float) -> bool:
    """A non-inferior row whose interval lies wholly on the wrong side of 0: A is worse than B,
    by less than the margin."""
    return (claim.direction == ">=" and high < 0) or (claim.direction == "<=" and low > 0)


def _result(claim: Claim, verdict: str, reason: str, **measured) -> ClaimResult:
    fields: dict[str, Any] = dict(
        effect=None, ci_low=None, ci_high=None, n_seeds=0, mde=None, failed_seeds=[]
    )
    fields.update(measured)
    return ClaimResult(
        id=claim.id,
        statement=claim.statement,
        paper=claim.paper,
        test=claim.test,
        verdict=verdict,
        confirmed=verdict == "confirmed",
        metric=claim.metric,
        comparison=claim.comparison,
        margin=claim.margin,
        reason=reason,
        **fields,
    )


def not_applicable(claim: Claim, reason: str) -> ClaimResult:
    """``claim`` reads *not applicable* with ``reason`` (e.g. its setting's regime not shown)."""
    return _result(claim, "not applicable", reason)


def _seeds_text(seeds: list[int]) -> str:
    return ", ".join(str(s) for s in seeds)


def _zero_spread(sd: float, x: np.ndarray, y: np.ndarray) -> bool:
    """Whether the paired differences' spread is float rounding, relative to the values."""
    scale = max(float(np.max(np.abs(x))), float(np.max(np.abs(y))))
    return sd <= ZERO_SPREAD_RTOL * scale


def evaluate_claim(
    claim: Claim, values: Mapping[str, Mapping[int, float]], sequential: bool = False
) -> ClaimResult:
    """Evaluate ``claim`` on ``values[variant][seed]`` (the metric per seed) for its setting;
    ``sequential`` judges it with the `confidence_sequence` instead of the fixed-n t
    interval (its seeds were added after looking, or are added until it is decided)."""
    a, b = values.get(claim.a, {}), values.get(claim.b, {})
    seeds = sorted(set(a) & set(b))
    failed = [s for s in seeds if not (math.isfinite(a[s]) and math.isfinite(b[s]))]
    good = [s for s in seeds if s not in failed]
    failures = f"{len(failed)} of {len(seeds)} seeds failed (non-finite): {_seeds_text(failed)}"
    if len(good) < 2:
        missing = [name for name, arm in ((claim.a, a), (claim.b, b)) if not arm]
        if missing:
            reason = "no values for variant(s) " + ", ".join(repr(m) for m in missing)
        elif not seeds:
            reason = (
                f"no seed measured in both arms ({claim.a!r}: seeds {_seeds_text(sorted(a))}; "
                f"{claim.b!r}: seeds {_seeds_text(sorted(b))})"
            )
        else:
            reason = f"{len(good)} finite paired seed(s), need 2"
            if failed:
                reason += f"; {failures}"
        return _result(claim, "not measured", reason, n_seeds=len(good), failed_seeds=failed)
    x = np.array([a[s] for s in good], dtype=np.float64)
    y = np.array([b[s] for s in good], dtype=np.float64)
    effect, low, high = paired_t_interval(x, y)
    sd = float(np.std(x - y, ddof=1))
    mde: float | None
    if sequential:
        low, high = confidence_sequence(x - y)
        mde = sequential_min_detectable_effect(sd, len(good))
        mde = mde if math.isfinite(mde) else None
    else:
        try:
            mde = min_detectable_effect(sd, len(good))
        except ValueError:
            mde = None
    verdict = _verdict(claim, low, high)
    notes = [failures] if failed else []
    if sequential and not math.isfinite(low):
        notes.append(
            f"the confidence sequence excludes nothing yet at {len(good)} seeds (it needs 5 or "
            "more)"
        )
    if _zero_spread(sd, x, y):  # a zero-width interval is no evidence: the seeds did not vary
        verdict, mde = "inconclusive", None
        notes.append(
            f"every seed gave the same difference ({effect:+.6g}), so the interval has zero "
            "width: the seeds do not vary (are they all seeded alike?); no verdict on zero spread"
        )
    if verdict == "non-inferior" and _worse_within_margin(claim, low, high):
        notes.append(f"{claim.a} is worse than {claim.b}, by less than the margin")
    if len(good) < MIN_SEEDS and verdict != "inconclusive":
        notes.append(
            f"a verdict needs at least {MIN_SEEDS} finite paired seeds, this claim had "
            f"{len(good)}: {verdict} capped at inconclusive"
        )
        verdict = "inconclusive"
    if failed and len(failed) > MAX_FAILED_SHARE * len(seeds) and verdict != "inconclusive":
        notes.append(
            f"more than {MAX_FAILED_SHARE:.0%} of the seeds failed, so the survivors are a "
            f"selected sample: {verdict} capped at inconclusive"
        )
        verdict = "inconclusive"
    return _result(
        claim,
        verdict,
        "; ".join(notes),
        effect=effect,
        ci_low=low,
        ci_high=high,
        n_seeds=len(good),
        mde=mde,
        failed_seeds=failed,
        interval="confidence sequence" if sequential else "student-t",
        sd=sd,
    )


def futile(claim: Claim, low: float | None, high: float | None) -> bool:
    """Whether the interval ``[low, high]`` excludes the effect the claim targets (the
    paper's), on the paper's side: more seeds could still confirm a smaller effect, not the
    paper's."""
    if claim.target is None or low is None or high is None:
        return False
    if claim.direction in (">", ">="):
        return high < claim.target
    return low > -abs(claim.target)


def _window_mean(
    results: Mapping[str, RunRecord], instrument: str, dynamics: DynamicsSpec
) -> dict[str, dict[int, float]]:
    """Per variant and seed: mean of an instrument over the window's checkpoints (step 0 out)."""
    out: dict[str, dict[int, float]] = {}
    for variant, record in results.items():
        series = record.dynamics
        if series is None or instrument not in series.values:
            continue
        inside = np.isin(series.steps, dynamics.window_steps(record.total_steps))
        values = np.asarray(series.values[instrument], dtype=np.float64)  # [seed, checkpoint]
        out[variant] = {
            seed: float(values[i, inside].mean()) for i, seed in enumerate(record.seeds)
        }
    return out


def _claim_values(
    claim: Claim, setting: SettingSpec, results: Mapping[str, RunRecord]
) -> dict[str, dict[int, float]]:
    """``values[variant][seed]`` of the claim's metric: a final metric as recorded, a
    ``dynamics:`` instrument as its mean over the setting's window."""
    if claim.metric.startswith("dynamics:"):
        assert setting.dynamics is not None  # the config parser checks it
        instrument = claim.metric.removeprefix("dynamics:")
        return _window_mean(results, instrument, setting.dynamics)
    return {name: record.per_seed(claim.metric) for name, record in results.items()}


def evaluate_claims(
    config: ExperimentConfig,
    results: Mapping[str, Mapping[str, RunRecord]],
    sequential: Collection[str] = (),
) -> list[ClaimResult]:
    """Every claim's verdict; a claim whose setting's regime is not established is not applicable.
    Claims on the settings named in ``sequential`` are judged with the confidence sequence.

    Regime claims are decided first. When a setting's regime claim is not ``confirmed``, the
    setting is not shown to be in the regime the other claims presuppose, so they read
    ``not applicable`` with the reason instead of a verdict.
    """
    settings = {s.name: s for s in config.settings}
    regime_ids = {s.regime_claim for s in config.settings if s.regime_claim}
    decided: dict[str, ClaimResult] = {}
    for claim in sorted(config.claims, key=lambda c: c.id not in regime_ids):
        setting = settings[claim.setting]
        regime = decided.get(setting.regime_claim or "")
        if claim.id != setting.regime_claim and regime is not None and not regime.confirmed:
            reason = (
                f"the {setting.regime} regime is not established: {regime.id} "
                f"({regime.statement.lower()}) is {regime.verdict}"
            )
            decided[claim.id] = not_applicable(claim, reason)
        else:
            values = _claim_values(claim, setting, results.get(claim.setting, {}))
            decided[claim.id] = evaluate_claim(claim, values, claim.setting in sequential)
    return [decided[c.id] for c in config.claims]
