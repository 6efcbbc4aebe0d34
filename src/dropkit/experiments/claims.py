"""The papers' claims as paired comparisons over seeds, with effect sizes and 95% intervals.

A claim compares one metric between two variants of one setting, seed by seed (variants share
seeds, so seed ``s`` of both arms saw the same initialisation stream and data order). The effect
is the mean paired difference ``A - B``; its 95% interval is Student's t over the seed-wise
differences. A claim is *confirmed* only when the interval clears the claimed direction:

- ``"<"``: the whole interval is below 0;  ``">"``: the whole interval is above 0;
- ``">="``: non-inferiority, the interval's low end is above ``-margin``.

A claim that is not confirmed reads *inconclusive* when the interval straddles the line (with few
seeds: not shown here, not refuted) and *opposite* when the interval lies wholly on the wrong
side (here the data contradict the claim).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

__all__ = ["Claim", "ClaimResult", "evaluate_claim", "paired_t_interval", "t_quantile"]

Direction = Literal["<", ">", ">="]


@dataclass(frozen=True)
class Claim:
    """In ``setting``, ``metric`` of variant ``a`` minus variant ``b`` is ``direction`` 0."""

    id: str
    statement: str
    setting: str
    metric: str
    a: str
    b: str
    direction: Direction
    margin: float = 0.0  # for ">=": how far below 0 the interval may reach


@dataclass(frozen=True)
class ClaimResult:
    """What the report prints and ``report.json`` stores for one claim."""

    id: str
    statement: str
    confirmed: bool | None  # None when the claim could not be measured (variant missing)
    verdict: str  # "confirmed", "inconclusive", "opposite" or "not measured"
    effect: float | None
    ci_low: float | None
    ci_high: float | None
    n_seeds: int
    metric: str
    comparison: str

    def to_json(self) -> dict:
        return asdict(self)


def t_quantile(level: float, dof: int) -> float:
    from scipy.stats import t  # experiments depend on scikit-learn, which brings scipy

    return float(t.ppf(0.5 + level / 2, dof))


def paired_t_interval(
    a: Sequence[float], b: Sequence[float], level: float = 0.95
) -> tuple[float, float, float]:
    """Mean of ``a - b`` (paired by position) and its Student-t interval at ``level``."""
    diffs = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if diffs.ndim != 1 or len(diffs) < 2:
        raise ValueError(f"need at least 2 paired values per arm, got {len(diffs)}")
    mean = float(diffs.mean())
    half = t_quantile(level, len(diffs) - 1) * float(diffs.std(ddof=1)) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


def _is_confirmed(claim: Claim, low: float, high: float) -> bool:
    if claim.direction == "<":
        return high < 0
    if claim.direction == ">":
        return low > 0
    return low > -claim.margin


def _is_opposite(claim: Claim, low: float, high: float) -> bool:
    if claim.direction == "<":
        return low > 0
    if claim.direction == ">":
        return high < 0
    return high < -claim.margin


def evaluate_claim(claim: Claim, values: Mapping[str, Mapping[int, float]]) -> ClaimResult:
    """Evaluate ``claim`` on ``values[variant][seed]`` (the metric per seed) for its setting."""
    comparison = f"{claim.a} - {claim.b} {claim.direction} " + (
        f"-{claim.margin:g}" if claim.direction == ">=" and claim.margin else "0"
    )
    a, b = values.get(claim.a, {}), values.get(claim.b, {})
    seeds = sorted(set(a) & set(b))
    pairs = [(a[s], b[s]) for s in seeds if math.isfinite(a[s]) and math.isfinite(b[s])]
    if len(pairs) < 2:
        return ClaimResult(
            claim.id,
            claim.statement,
            None,
            "not measured",
            None,
            None,
            None,
            len(pairs),
            claim.metric,
            comparison,
        )
    effect, low, high = paired_t_interval([p[0] for p in pairs], [p[1] for p in pairs])
    confirmed = _is_confirmed(claim, low, high)
    opposite = _is_opposite(claim, low, high)
    return ClaimResult(
        id=claim.id,
        statement=claim.statement,
        confirmed=confirmed,
        verdict="confirmed" if confirmed else "opposite" if opposite else "inconclusive",
        effect=effect,
        ci_low=low,
        ci_high=high,
        n_seeds=len(pairs),
        metric=claim.metric,
        comparison=comparison,
    )
