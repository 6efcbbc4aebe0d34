"""The advisor's decision rule on synthetic learning curves: the paper's definition (does
standard dropout lower the held-out loss?), read now and along its trend, with "cannot tell"
when the evidence disagrees or does not separate."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dropkit.experiments.advise.judge import judge, read_effect

FRACTIONS = np.linspace(0.2 / 12, 0.2, 12)  # 12 checkpoints over a probe of 20% of the run
BUDGET = 0.2


def _evidence(none, dropout, train_none=None, train_dropout=None, better="lower"):
    """Evidence as the probes record it, from per-seed curves (seed x checkpoint)."""
    none, dropout = np.asarray(none), np.asarray(dropout)
    variants = {}
    for name, curve, train in (("none", none, train_none), ("dropout", dropout, train_dropout)):
        entry = {"held_out": curve[:, -1].tolist()}
        if train is not None:
            entry["train_loss"] = list(train)
            entry["gap"] = (curve[:, -1] - np.asarray(train)).tolist()
        variants[name] = entry
    return {
        "metric": {"name": "val_loss", "better": better},
        "seeds": list(range(len(none))),
        "variants": variants,
        "curve": {"fractions": FRACTIONS.tolist(), "none": none.tolist(),
                  "dropout": dropout.tolist()},
    }  # fmt: skip


def _judge(evidence):
    return judge(evidence, budget=BUDGET, progress="after 20% of the run", inside_warmup=None,
                 kinds={"dropout"}, p=0.1, drop_path_p=0.1, probe="Probe: synthetic",
                 started=time.perf_counter())  # fmt: skip


def _curves(harm, seeds=4, noise=0.002, seed=0):
    """A falling no-dropout validation curve and dropout's, ``harm(fraction)`` above it."""
    rng = np.random.default_rng(seed)
    base = 2.3 * np.exp(-8 * FRACTIONS) + 0.6
    none = base + rng.normal(0, noise, (seeds, len(FRACTIONS)))
    dropout = none + harm(FRACTIONS) + rng.normal(0, noise, (seeds, len(FRACTIONS)))
    return none, dropout


def test_a_saturating_gap_from_shifted_held_out_data_reads_underfitting():
    # held-out data unlike the training data: its loss sits a constant 0.5 above the training
    # loss from the start (the gap saturates at once), and dropout raises it throughout
    none, dropout = _curves(lambda f: 0.03 + 0 * f)
    train = none[:, -1] - 0.5
    advice = _judge(_evidence(none, dropout, train, train + 0.02))
    assert advice.regime == "underfitting" and advice.recommendation == "early_dropout"
    # the gap projected linearly reads overfitting (5x the 0.5 gap): it may only lower the
    # confidence, never decide
    assert advice.evidence["projected_relative_gap"]["ci_low"] > 0.1
    assert advice.confidence == "medium"
    assert any("Confidence lowered" in r for r in advice.reasons)


def test_two_contradictions_take_a_high_reading_back_to_cannot_tell():
    none, dropout = _curves(lambda f: 0.03 + 0 * f)
    train = none[:, -1] - 0.5  # the gap reads overfitting ...
    evidence = _evidence(none, dropout, train, train + 0.02)
    evidence["gde"] = {"none": [0.10, 0.11, 0.10, 0.12], "dropout": [0.2, 0.21, 0.22, 0.2]}
    advice = _judge(evidence)  # ... and dropout raised the gradient direction error
    assert advice.regime == "cannot tell" and advice.confidence is None
    assert any("reads underfitting, but the other evidence contradicts it" in r
               for r in advice.reasons)  # fmt: skip


def test_a_gap_that_opens_late_in_the_probe_reads_overfitting():
    # dropout slows the fit at first (harm > 0), then the no-dropout model starts to overfit
    # and dropout's held-out loss ends below it
    none, dropout = _curves(lambda f: 0.04 - 0.5 * np.maximum(0, f - 0.1) * 4)
    advice = _judge(_evidence(none, dropout))
    assert advice.evidence["effect_now"]["ci_high"] < 0
    assert advice.regime == "overfitting" and advice.confidence == "high"
    assert advice.recommendation == "standard_dropout"


def test_a_clear_effect_its_trend_overturns_cannot_be_told_yet():
    # dropout hurts now, but its harm falls fast: along the trend it is negative by the end
    none, dropout = _curves(lambda f: 0.05 - 0.05 * np.log(f / FRACTIONS[5]).clip(0))
    advice = _judge(_evidence(none, dropout))
    assert advice.evidence["effect_now"]["ci_low"] > 0  # clear now ...
    assert advice.evidence["effect_trend"]["ci_high"] < 0  # ... and clearly falling
    assert advice.regime == "cannot tell" and advice.confidence is None
    assert advice.recommendation == "undecided" and advice.schedule is None
    assert any("--budget" in r and "reaches zero" in r for r in advice.reasons)
    # past the point where the mean trend reaches zero: log(0.2 / 0.1) + 0.015 / 0.05 ...
    crossing = FRACTIONS[5] * math.exp(math.log(2) + advice.evidence["effect_now"]["mean"] / 0.05)
    assert advice.evidence["decide_with"]["budget"] == pytest.approx(crossing + 0.05, abs=0.03)


def test_an_effect_lost_in_the_noise_cannot_be_told_and_names_the_seeds_or_budget():
    none, dropout = _curves(lambda f: 0.002 + 0 * f, noise=0.01)
    advice = _judge(_evidence(none, dropout))
    assert advice.regime == "cannot tell"
    assert any("--seeds" in r or "--budget" in r for r in advice.reasons)


def test_a_clear_harm_the_trend_does_not_overturn_reads_underfitting_high():
    none, dropout = _curves(lambda f: 0.02 + 0.1 * f)
    advice = _judge(_evidence(none, dropout))
    assert (advice.regime, advice.confidence) == ("underfitting", "high")


def test_without_a_logged_curve_only_a_benefit_seen_now_decides():
    hurts = _evidence(*_curves(lambda f: 0.02 + 0.1 * f))
    helps = _evidence(*_curves(lambda f: -0.02 - 0.1 * f))
    for evidence in (hurts, helps):
        del evidence["curve"]
    # dropout slows early training in either regime: a harm now, with no trend, decides nothing
    advice = _judge(hurts)
    assert advice.regime == "cannot tell"
    assert any("trial.log" in r for r in advice.reasons)
    assert (_judge(helps).regime, _judge(helps).confidence) == ("overfitting", "medium")


def test_a_harm_now_whose_trend_does_not_carry_it_is_no_evidence_of_underfitting():
    # dropout clearly slows the fit now (as early in an overfitting run too), and the seeds'
    # trends disagree: nothing says the harm lasts to the end of the run
    none, _ = _curves(lambda f: 0 * f)
    slopes = np.array([[0.03], [-0.05], [0.01], [-0.04]])
    harm = 0.03 + slopes * (np.log(FRACTIONS) - math.log(BUDGET))
    advice = _judge(_evidence(none, none + harm))
    assert advice.evidence["effect_now"]["ci_low"] > 0
    projected = advice.evidence["effect_projected"]
    assert projected["ci_low"] < 0 < projected["ci_high"]
    assert advice.regime == "cannot tell"
    assert any("as it does early in training" in r for r in advice.reasons)


def test_a_metric_where_higher_is_better_reads_the_other_way():
    none, dropout = _curves(lambda f: 0.02 + 0.1 * f)  # dropout's accuracy is higher
    advice = _judge(_evidence(none, dropout, better="higher"))
    assert advice.regime == "overfitting"


def test_read_effect_projects_along_the_slope_in_log_fraction():
    harm = np.array([[0.1 + 0.05 * math.log(f) for f in FRACTIONS]] * 2) + np.array([[0.0], [0.01]])
    reading = read_effect(FRACTIONS, harm, harm[:, -1], BUDGET)
    assert reading.trend["mean"] == pytest.approx(0.05)
    # from the last checkpoint (log 0.2) to the run's end (log 1): + 0.05 * log 5
    assert reading.projected["mean"] == pytest.approx(harm[:, -1].mean() + 0.05 * math.log(5))


harms = st.lists(st.floats(-1, 1, allow_nan=False), min_size=12, max_size=12)


def _clear(summary):
    return 1 if summary["ci_low"] > 0 else -1 if summary["ci_high"] < 0 else 0


@settings(max_examples=80, deadline=None)
@given(st.lists(harms, min_size=2, max_size=5), st.floats(0.01, 100))
def test_the_rule_is_scale_free_and_asks_more_of_underfitting(rows, scale):
    harm = np.asarray(rows)
    reading = read_effect(FRACTIONS, harm, harm[:, -1], BUDGET)
    flipped = read_effect(FRACTIONS, -harm, -harm[:, -1], BUDGET)
    scaled = read_effect(FRACTIONS, scale * harm, scale * harm[:, -1], BUDGET)
    assert scaled.sign == reading.sign and scaled.level == reading.level  # units do not matter
    if reading.sign > 0:  # underfitting: a harm clear now and clear at the end of the run ...
        assert _clear(reading.now) == _clear(reading.projected) == 1 and reading.level == 2
        assert flipped.sign == -1 and flipped.level == 2  # ... whose mirror reads overfitting
    if reading.sign:  # a decided reading is never against what is clear now
        assert _clear(reading.now) in (0, reading.sign)
