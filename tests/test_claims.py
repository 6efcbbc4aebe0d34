"""Claim statistics: the paired t-interval against scipy's paired t-test, and the decision rule."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dropkit.experiments.claims import Claim, evaluate_claim, paired_t_interval

scipy_stats = pytest.importorskip("scipy.stats")

paired = st.integers(2, 12).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(-100, 100), min_size=n, max_size=n),
        st.lists(st.floats(-100, 100), min_size=n, max_size=n),
    )
)


@settings(max_examples=50, deadline=None)
@given(paired)
def test_interval_matches_scipy_paired_t_test(data):
    a, b = data
    diffs = np.subtract(a, b)
    if np.ptp(diffs) < 1e-6:  # scipy's interval is undefined for constant differences
        return
    mean, low, high = paired_t_interval(a, b)
    ci = scipy_stats.ttest_rel(a, b).confidence_interval(0.95)
    assert math.isclose(mean, float(np.mean(diffs)), rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(low, ci.low, rel_tol=1e-7, abs_tol=1e-7)
    assert math.isclose(high, ci.high, rel_tol=1e-7, abs_tol=1e-7)


def test_interval_by_hand():
    # diffs 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.302652729911275
    mean, low, high = paired_t_interval([2, 4, 6], [1, 2, 3])
    half = 4.302652729911275 / math.sqrt(3)
    assert (mean, round(low, 9), round(high, 9)) == (2.0, round(2 - half, 9), round(2 + half, 9))


def claim(direction, margin=0.0):
    return Claim("C", "a vs b", "s", "m", "a", "b", direction, margin)


def test_decision_rule_per_direction():
    clearly_lower = {"a": {0: 1.0, 1: 1.1, 2: 0.9}, "b": {0: 2.0, 1: 2.05, 2: 1.95}}
    verdicts = {
        (direction, margin): evaluate_claim(claim(direction, margin), clearly_lower)
        for direction, margin in [("<", 0.0), (">", 0.0), (">=", 0.5), (">=", 2.0)]
    }
    assert {key: (r.confirmed, r.verdict) for key, r in verdicts.items()} == {
        ("<", 0.0): (True, "confirmed"),
        (">", 0.0): (False, "opposite"),  # the interval lies wholly below 0
        (">=", 0.5): (False, "opposite"),  # wholly below -0.5
        (">=", 2.0): (True, "confirmed"),
    }
    noisy = {"a": {0: 1.0, 1: 3.0, 2: 2.0}, "b": {0: 2.0, 1: 1.0, 2: 2.0}}
    result = evaluate_claim(claim("<"), noisy)
    assert result.confirmed is False and result.ci_low < 0 < result.ci_high
    assert result.verdict == "inconclusive"


def test_pairs_by_seed_and_reports_missing_variants():
    values = {"a": {0: 1.0, 1: 2.0, 5: 9.0}, "b": {1: 1.0, 0: 0.0, 7: 3.0}}
    result = evaluate_claim(claim(">"), values)
    assert result.n_seeds == 2 and result.effect == 1.0
    missing = evaluate_claim(claim(">"), {"a": values["a"]})
    assert missing.confirmed is None and missing.n_seeds == 0
    assert missing.verdict == "not measured"
