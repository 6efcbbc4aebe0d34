"""Claim statistics: the paired t-interval against scipy, and every branch of the decision rule."""

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dropkit.experiments.base.stats import (
    confidence_sequence,
    min_detectable_effect,
    paired_t_interval,
    sequential_min_detectable_effect,
)
from dropkit.experiments.config.claim import DIRECTIONS, Claim
from dropkit.experiments.evidence.claims import (
    MIN_SEEDS,
    ClaimResult,
    evaluate_claim,
    futile,
    not_applicable,
)

scipy_stats = pytest.importorskip("scipy.stats")

# t(0.975, 2) in closed form: for 2 dof, t_p = (2p - 1) / sqrt(2 p (1 - p)) = 0.95 / sqrt(0.04875)
T_975_2 = 4.302652729749462

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
    # diffs 1, 2, 3: mean 2, sd 1
    mean, low, high = paired_t_interval([2, 4, 6], [1, 2, 3])
    half = T_975_2 / math.sqrt(3)
    assert mean == 2.0
    assert math.isclose(low, 2 - half, abs_tol=1e-12)
    assert math.isclose(high, 2 + half, abs_tol=1e-12)


def claim(direction, margin=0.0, paper="", target=None):
    return Claim("C", "a vs b", "s", "m", "a", "b", direction, margin, paper, target)


# Three seeds with differences effect - 0.1, effect, effect + 0.1: sd 0.1, so the 95% interval is
# effect -+ HALF with HALF = t(0.975, 2) * 0.1 / sqrt(3) = 0.2484...
SD = 0.1
HALF = T_975_2 * SD / math.sqrt(3)


def three_seeds(effect, base=0.5):
    diffs = [effect - SD, effect, effect + SD]
    return {"a": {s: base + d for s, d in enumerate(diffs)}, "b": {s: base for s in range(3)}}


# (direction, margin, true effect, verdict); the interval is effect -+ 0.2484
BRANCHES = [
    # superiority ">": low > 0 / high < 0 / straddles
    (">", 0.0, 0.5, "confirmed"),  # [0.252, 0.748]
    (">", 0.0, -0.5, "opposite"),  # [-0.748, -0.252]
    (">", 0.0, 0.0, "inconclusive"),  # [-0.248, 0.248]
    # superiority "<": mirrored
    ("<", 0.0, -0.5, "confirmed"),
    ("<", 0.0, 0.5, "opposite"),
    ("<", 0.0, 0.0, "inconclusive"),
    # non-inferiority ">=" margin 0.3
    (">=", 0.3, 0.5, "confirmed"),  # low 0.252 > 0: superiority shown
    (">=", 0.3, 0.1, "non-inferior"),  # [-0.148, 0.348]: low > -0.3, not > 0
    (">=", 0.3, -0.1, "inconclusive"),  # [-0.348, 0.148]: low below -0.3
    (">=", 0.3, -0.5, "inconclusive"),  # [-0.748, -0.252]: straddles -0.3
    (">=", 0.2, -0.5, "opposite"),  # [-0.748, -0.252]: wholly below -0.2
    # wholly below zero yet wholly above -margin: non-inferior (worse, within the margin)
    (">=", 1.0, -0.5, "non-inferior"),
    # non-inferiority "<=" margin 0.3: mirrored
    ("<=", 0.3, -0.5, "confirmed"),  # high -0.252 < 0
    ("<=", 0.3, -0.1, "non-inferior"),  # [-0.348, 0.148]: high < 0.3, not < 0
    ("<=", 0.3, 0.1, "inconclusive"),  # [-0.148, 0.348]: high above 0.3
    ("<=", 0.3, 0.5, "inconclusive"),  # [0.252, 0.748]: straddles 0.3
    ("<=", 0.2, 0.5, "opposite"),  # [0.252, 0.748]: wholly above 0.2
    ("<=", 1.0, 0.5, "non-inferior"),  # wholly above zero yet below +margin
]
WORSE_WITHIN_MARGIN = {(">=", 1.0, -0.5), ("<=", 1.0, 0.5)}


@pytest.mark.parametrize(("direction", "margin", "effect", "verdict"), BRANCHES)
def test_every_verdict_branch(direction, margin, effect, verdict):
    result = evaluate_claim(claim(direction, margin), three_seeds(effect))
    assert result.verdict == verdict
    assert result.confirmed is (verdict == "confirmed")
    assert math.isclose(result.effect, effect, abs_tol=1e-12)
    assert math.isclose(result.ci_low, effect - HALF, abs_tol=1e-12)
    assert math.isclose(result.ci_high, effect + HALF, abs_tol=1e-12)
    assert result.n_seeds == 3 and result.failed_seeds == []
    if (direction, margin, effect) in WORSE_WITHIN_MARGIN:  # the row says which way it leans
        assert result.reason == "a is worse than b, by less than the margin"
    else:
        assert result.reason == ""
    assert result.test == ("non-inferiority" if direction in (">=", "<=") else "superiority")
    assert result.margin == margin
    assert math.isclose(result.mde, min_detectable_effect(SD, 3), rel_tol=1e-9)


def test_every_direction_and_verdict_is_covered():
    assert {b[0] for b in BRANCHES} == set(DIRECTIONS)
    for direction in DIRECTIONS:
        verdicts = {b[3] for b in BRANCHES if b[0] == direction}
        expected = {"confirmed", "opposite", "inconclusive"}
        if direction in (">=", "<="):
            expected.add("non-inferior")
        assert verdicts == expected


def test_non_inferior_is_not_confirmed():
    result = evaluate_claim(claim(">=", 0.3), three_seeds(0.1))
    assert (result.verdict, result.confirmed) == ("non-inferior", False)
    assert result.to_json()["confirmed"] is False


def test_comparison_strings():
    named = Claim("C3", "s", "u", "test_acc", "early_dropout", "none", ">")
    assert named.comparison == "early_dropout - none > 0"
    late = Claim("C7", "s", "o", "test_acc", "late_sd", "sd", ">=", 0.001)
    assert late.comparison == "late_sd - sd >= -0.001"
    assert claim("<=", 0.001).comparison == "a - b <= 0.001"
    assert claim("<").comparison == "a - b < 0"
    assert evaluate_claim(late, {}).comparison == "late_sd - sd >= -0.001"


def test_result_fields_in_order_and_json():
    names = [f.name for f in dataclasses.fields(ClaimResult)]
    assert names == [
        "id", "statement", "paper", "test", "verdict", "confirmed", "effect", "ci_low",
        "ci_high", "n_seeds", "mde", "metric", "comparison", "margin", "failed_seeds", "reason",
        "interval", "sd",
    ]  # fmt: skip
    result = evaluate_claim(claim(">", paper="+1.2 pt, Table 2"), three_seeds(0.5))
    payload = result.to_json()
    assert list(payload) == names
    assert payload["paper"] == "+1.2 pt, Table 2"
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.verdict = "opposite"


def test_pairs_by_seed():
    values = {"a": {0: 1.0, 1: 2.0, 5: 9.0}, "b": {1: 1.0, 0: 0.0, 7: 3.0}}
    result = evaluate_claim(claim(">"), values)
    assert result.n_seeds == 2 and result.effect == 1.0 and result.failed_seeds == []


def test_non_finite_seeds_are_listed_and_excluded():
    good = three_seeds(0.5)
    values = {
        "a": {**good["a"], 3: float("nan"), 4: 0.7, 6: float("inf")},
        "b": {**good["b"], 3: 0.5, 4: float("nan"), 6: 0.5},
    }
    result = evaluate_claim(claim(">"), values)
    clean = evaluate_claim(claim(">"), good)
    assert result.failed_seeds == [3, 4, 6]
    assert result.n_seeds == 3
    assert (result.effect, result.ci_low, result.ci_high) == (
        clean.effect,
        clean.ci_low,
        clean.ci_high,
    )
    # half the seeds failed and the survivors look better: never more than inconclusive
    assert clean.verdict == "confirmed" and result.verdict == "inconclusive"
    assert result.reason.startswith("3 of 6 seeds failed (non-finite): 3, 4, 6; more than 20%")
    assert result.reason.endswith("confirmed capped at inconclusive")
    assert clean.reason == ""


@pytest.mark.parametrize(("n_failed", "verdict"), [(2, "confirmed"), (3, "inconclusive")])
def test_a_verdict_stands_up_to_a_fifth_of_the_seeds_failed(n_failed, verdict):
    good = {
        "a": {s: 0.5 + 0.5 + 0.1 * (s % 3 - 1) for s in range(8)},
        "b": dict.fromkeys(range(8), 0.5),
    }
    for seed in range(8, 8 + n_failed):  # 2 of 10 (20%) or 3 of 11 (27%) failed
        good["a"][seed], good["b"][seed] = float("nan"), 0.5
    result = evaluate_claim(claim(">"), good)
    assert result.verdict == verdict and len(result.failed_seeds) == n_failed
    assert ("capped at inconclusive" in result.reason) is (verdict == "inconclusive")


def test_not_measured():
    missing = evaluate_claim(claim(">"), {"a": {0: 1.0, 1: 2.0}})
    assert (missing.verdict, missing.confirmed, missing.n_seeds) == ("not measured", False, 0)
    assert (missing.effect, missing.ci_low, missing.ci_high, missing.mde) == (None,) * 4
    assert "'b'" in missing.reason
    assert "'a'" in evaluate_claim(claim(">"), {}).reason

    disjoint = evaluate_claim(claim(">"), {"a": {0: 1.0, 1: 2.0}, "b": {2: 1.0, 3: 2.0}})
    assert disjoint.verdict == "not measured" and "both arms" in disjoint.reason

    one_left = {"a": {0: 1.0, 1: float("nan"), 2: 3.0}, "b": {0: 0.0, 1: 1.0, 2: float("inf")}}
    result = evaluate_claim(claim(">"), one_left)
    assert result.verdict == "not measured" and result.effect is None
    assert result.n_seeds == 1 and result.failed_seeds == [1, 2]
    assert "2 of 3 seeds failed (non-finite)" in result.reason


def test_not_applicable():
    reason = "the overfitting regime is not established: C6 is inconclusive"
    result = not_applicable(claim(">=", 0.005, paper="Table 3"), reason)
    assert (result.verdict, result.confirmed, result.reason) == ("not applicable", False, reason)
    assert (result.effect, result.ci_low, result.ci_high, result.mde) == (None,) * 4
    assert result.n_seeds == 0 and result.failed_seeds == []
    assert (result.test, result.paper, result.margin) == ("non-inferiority", "Table 3", 0.005)
    assert result.comparison == "a - b >= -0.005"


@pytest.mark.parametrize(
    ("direction", "margin", "message"),
    [
        (">=", 0.0, "margin > 0"),
        (">=", -0.01, "margin > 0"),
        (">=", float("nan"), "margin > 0"),
        ("<=", 0.0, "margin > 0"),
        ("<=", float("inf"), "margin > 0"),
        (">", 0.01, "no margin"),
        ("<", -0.01, "no margin"),
        ("!=", 0.0, "direction"),
    ],
)
def test_invalid_claims(direction, margin, message):
    with pytest.raises(ValueError, match=message):
        claim(direction, margin)


def test_test_property():
    assert claim(">").test == claim("<").test == "superiority"
    assert claim(">=", 0.1).test == claim("<=", 0.1).test == "non-inferiority"


def test_zero_spread_never_confirms():
    # three seeds (enough for a verdict) with identical differences: a zero-width interval that
    # used to read confirmed
    values = {"a": {0: 1.5, 1: 2.5, 2: 3.5}, "b": {0: 1.0, 1: 2.0, 2: 3.0}}
    result = evaluate_claim(claim(">"), values)
    assert result.verdict == "inconclusive" and result.confirmed is False
    assert result.ci_low == result.ci_high == result.effect == 0.5 and result.mde is None
    assert "zero width" in result.reason
    assert "at least 3" not in result.reason


def test_zero_spread_up_to_rounding_never_confirms():
    # differences all 0.1 but for float rounding (sd about 6e-17): read "confirmed +0.1
    # [+0.1, +0.1]" while only an exact 0.0 counted as zero spread
    values = {"a": {0: 0.3, 1: 0.7, 2: 1.1}, "b": {0: 0.2, 1: 0.6, 2: 1.0}}
    differences = np.array([0.3, 0.7, 1.1]) - np.array([0.2, 0.6, 1.0])
    assert 0 < np.std(differences, ddof=1) < 1e-15
    result = evaluate_claim(claim(">"), values)
    assert result.verdict == "inconclusive" and "zero width" in result.reason


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=3, max_size=12),
    st.floats(-1e3, 1e3, allow_nan=False),
)
def test_a_constant_difference_is_never_a_verdict(base, shift):
    values = {"a": {i: v + shift for i, v in enumerate(base)}, "b": dict(enumerate(base))}
    for direction in (">", "<"):
        assert evaluate_claim(claim(direction), values).verdict == "inconclusive"


def test_a_small_real_spread_still_decides():
    # differences 1e-6 apart around 1e-3 on values of order 1: far above rounding, a verdict
    values = {"a": {0: 1.001, 1: 1.001001, 2: 1.000999}, "b": {0: 1.0, 1: 1.0, 2: 1.0}}
    assert evaluate_claim(claim(">"), values).verdict == "confirmed"


def two_seeds(effect, base=0.5):
    """Seeds 0 and 1 of :func:`three_seeds`: differences effect - 0.1 and effect."""
    three = three_seeds(effect, base)
    return {arm: {s: v for s, v in values.items() if s < 2} for arm, values in three.items()}


# (direction, margin, effect, verdict): an interval that decides on 2 seeds as on 3. With
# t(0.975, 1) = 12.71 and sd 0.0707 the half-width on 2 seeds is 0.635 around effect - 0.05.
CLEAR_ON_TWO = [
    (">", 0.0, 3.0, "confirmed"),  # 2 seeds: [2.32, 3.59]; 3 seeds: [2.75, 3.25]
    (">", 0.0, -3.0, "opposite"),
    ("<", 0.0, -3.0, "confirmed"),
    (">=", 1.0, 0.1, "non-inferior"),  # 2 seeds: [-0.585, 0.685]; 3: [-0.148, 0.348]
    ("<=", 1.0, -0.1, "non-inferior"),  # 2 seeds: [-0.785, 0.485]; 3: [-0.348, 0.148]
]


@pytest.mark.parametrize(("direction", "margin", "effect", "verdict"), CLEAR_ON_TWO)
def test_a_verdict_needs_at_least_three_seeds(direction, margin, effect, verdict):
    # issue 20: two seeds give an interval (1 degree of freedom) but one estimate of the spread;
    # a verdict needs MIN_SEEDS = 3, below that the claim is inconclusive, still measured
    assert MIN_SEEDS == 3
    two = evaluate_claim(claim(direction, margin), two_seeds(effect))
    assert (two.verdict, two.confirmed, two.n_seeds) == ("inconclusive", False, 2)
    assert two.reason == (
        "a verdict needs at least 3 finite paired seeds, this claim had 2: "
        f"{verdict} capped at inconclusive"
    )
    assert math.isclose(two.effect, effect - SD / 2, abs_tol=1e-12)
    assert two.ci_low < two.effect < two.ci_high and two.mde is not None

    three = evaluate_claim(claim(direction, margin), three_seeds(effect))
    assert (three.verdict, three.n_seeds, three.reason) == (verdict, 3, "")
    assert three.confirmed is (verdict == "confirmed")


def test_two_seeds_that_straddle_zero_are_inconclusive_without_the_seed_note():
    result = evaluate_claim(claim(">"), two_seeds(0.0))
    assert result.verdict == "inconclusive" and result.reason == ""


def test_one_module_decides_verdicts():
    # issue 20: the report formats and writes; every verdict, regime gate and window mean is
    # decided in claims.py, so the report holds none of that code of its own
    from dropkit.experiments.evidence import claims, report

    assert report.evaluate_claims is claims.evaluate_claims
    for name in ("_window_mean", "_claim_values", "evaluate_claim", "not_applicable"):
        assert not hasattr(report, name), name


def test_a_sequential_claim_is_judged_by_the_confidence_sequence():
    rng = np.random.default_rng(3)
    b = rng.normal(size=16)
    a = b + 0.8 + rng.normal(scale=0.5, size=16)
    values = {"a": dict(enumerate(a)), "b": dict(enumerate(b))}
    fixed, sequential = evaluate_claim(claim(">"), values), evaluate_claim(claim(">"), values, True)
    assert (fixed.interval, sequential.interval) == ("student-t", "confidence sequence")
    assert (sequential.ci_low, sequential.ci_high) == confidence_sequence(a - b)
    assert sequential.effect == fixed.effect and sequential.ci_low < fixed.ci_low
    assert sequential.mde == pytest.approx(sequential_min_detectable_effect(sequential.sd, 16))
    few = {arm: {s: v for s, v in seeds.items() if s < 4} for arm, seeds in values.items()}
    early = evaluate_claim(claim(">"), few, True)
    assert early.verdict == "inconclusive" and "excludes nothing yet at 4 seeds" in early.reason


def test_futile_when_the_interval_excludes_the_papers_effect():
    values = three_seeds(0.1)
    r = evaluate_claim(claim(">"), values)
    assert futile(claim(">", target=5.0), r.ci_low, r.ci_high)  # far above what it allows
    assert not futile(claim(">", target=0.1), r.ci_low, r.ci_high)
    assert not futile(claim(">"), r.ci_low, r.ci_high)  # no target: never futile
    lower = evaluate_claim(claim("<"), {"a": values["b"], "b": values["a"]})
    assert futile(claim("<", target=5.0), lower.ci_low, lower.ci_high)
