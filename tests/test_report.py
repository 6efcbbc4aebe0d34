"""On hand-made run records: the claims' regime gating and window means (decided in
``claims.py``), and the report's crossover, power and held lines."""

from __future__ import annotations

import dataclasses
import math

import pytest

from dropkit.experiments.base.io import write_json
from dropkit.experiments.base.record import Curve, DynamicsSeries, RunRecord
from dropkit.experiments.base.stats import min_detectable_effect, seeds_for_power, seeds_needed
from dropkit.experiments.config.parse import parse_config
from dropkit.experiments.evidence.claims import evaluate_claims, not_applicable
from dropkit.experiments.evidence.report import (
    _fractions,
    _held_paragraph,
    _power_lines,
    build_report,
    paired_curves,
)

T_975_2 = 4.302652729749462  # t quantile (0.975, 2 dof): (2p - 1) / sqrt(2p(1 - p))

RAW = {
    "name": "hand",
    "seeds": 3,
    "settings": {
        "s": {
            "data": "digits",
            "model": {"kind": "mlp"},
            "train": {"epochs": 1},
            "regime": "overfitting",
            "regime_claim": "R",
            "variants": {"none": {}, "dropout": {"dropout": {"p": 0.1}}},
            "dynamics": {"variants": ["none", "dropout"], "every": 1, "window": 8, "until": 10},
        }
    },
    "claims": [
        {"id": "R", "statement": "Dropout raises accuracy", "setting": "s", "metric": "test_acc",
         "a": "dropout", "b": "none", "direction": ">", "target": 0.5},
        {"id": "D", "statement": "Dropout lowers GDE", "setting": "s", "metric": "dynamics:gde",
         "a": "dropout", "b": "none", "direction": "<"},
    ],
}  # fmt: skip


def record(variant: str, test_acc: list[float], gde: list[list[float]]) -> RunRecord:
    return RunRecord(
        setting="s",
        variant=variant,
        seeds=[0, 1, 2],
        total_steps=100,
        cutoff_step=None,
        metrics={"test_acc": test_acc},
        curve=Curve([100], [[1.0], [1.0], [1.0]], {}),
        dynamics=DynamicsSeries(list(range(11)), {"gde": gde}),
        wall_s=1.0,
        diverged_at=[None, None, None],
    )


def gde_rows(offsets: list[float]) -> list[list[float]]:
    """Per seed: 0.5 at step 0, then 0.3 + offset in the window (1..8) and 0.6 at steps 9, 10."""
    return [[0.5] + [0.3 + o] * 8 + [0.6, 0.6] for o in offsets]


def two_arms(
    none_acc: list[float], dropout_acc: list[float], none_gde: list[float]
) -> dict[str, dict[str, RunRecord]]:
    """The setting's results: dropout's GDE offsets are 0, none's are ``none_gde``."""
    return {
        "s": {
            "none": record("none", none_acc, gde_rows(none_gde)),
            "dropout": record("dropout", dropout_acc, gde_rows([0.0] * len(dropout_acc))),
        }
    }


def test_a_failed_regime_makes_the_dependent_claims_not_applicable() -> None:
    config = parse_config(RAW)
    results = two_arms([0.5, 0.6, 0.7], [0.5, 0.8, 0.6], [0.1, 0.1, 0.1])
    regime, dependent = evaluate_claims(config, results)
    # diffs 0, 0.2, -0.1: mean 1/30, sd sqrt(7/300); the interval straddles 0
    half = T_975_2 * math.sqrt(7 / 300) / math.sqrt(3)
    assert regime.verdict == "inconclusive"
    assert regime.ci_low == pytest.approx(1 / 30 - half) and regime.ci_high == pytest.approx(
        1 / 30 + half
    )
    assert dependent.verdict == "not applicable" and dependent.confirmed is False
    assert "overfitting regime is not established" in dependent.reason and "R" in dependent.reason
    assert dependent.effect is None


def test_an_established_regime_lets_the_window_mean_decide() -> None:
    config = parse_config(RAW)
    results = two_arms([0.5, 0.6, 0.7], [0.6, 0.8, 0.9], [0.1, 0.15, 0.2])
    regime, dependent = evaluate_claims(config, results)
    assert regime.verdict == "confirmed"  # diffs 0.1, 0.2, 0.2: all positive, small spread
    # the window (0, 8] excludes step 0 (0.5 in both arms) and steps 9-10 (0.6 in both)
    assert dependent.effect == pytest.approx(-0.15)
    half = T_975_2 * 0.05 / math.sqrt(3)  # diffs -0.1, -0.15, -0.2: sd 0.05
    assert (dependent.ci_low, dependent.ci_high) == (
        pytest.approx(-0.15 - half),
        pytest.approx(-0.15 + half),
    )
    assert dependent.verdict == "confirmed"


def test_paired_curves_report_the_crossover_step() -> None:
    config = parse_config(RAW)
    none = [[0.5] * 11 for _ in range(3)]
    dropout = [[0.5] + [0.4] * 4 + [0.5] + [0.55] * 5 for _ in range(3)]  # step 5: a tie
    results = {
        "s": {
            "none": record("none", [0.5] * 3, none),
            "dropout": record("dropout", [0.5] * 3, dropout),
        }
    }
    curve = paired_curves(config.settings[0], results["s"])["gde"]
    assert curve["comparison"] == "dropout - none"
    assert curve["steps"] == list(range(1, 11))  # step 0 left out
    assert curve["mean"][:4] == pytest.approx([-0.1] * 4)
    assert curve["crossover_step"] == 6  # from 6 on the sign stays flipped; a tie is no flip
    for seed in dropout:  # a one-checkpoint dip at step 2 is not a crossover
        seed[2] = 0.6
    assert paired_curves(config.settings[0], results["s"])["gde"]["crossover_step"] == 6
    for seed in dropout:  # a flip that does not last to the end of the curve is none
        seed[10] = 0.3
    assert paired_curves(config.settings[0], results["s"])["gde"]["crossover_step"] is None


def test_power_lines_say_which_claims_are_not_powered() -> None:
    config = parse_config(RAW)
    results = two_arms([0.5, 0.6, 0.7], [0.6, 0.8, 0.9], [0.1] * 3)
    claims = evaluate_claims(config, results)
    (line,) = _power_lines(config, claims, _fractions(results))
    # diffs 0.1, 0.2, 0.2: sd 0.0577, MDE at 3 seeds = 0.30 (80% power) <= the target 0.5
    mde = min_detectable_effect(math.sqrt(1 / 300), 3)
    assert line.startswith(f"- R: MDE {100 * mde:.3g} pt ≤ the paper's effect 50 pt")
    assert line.endswith("(powered).")


def test_not_powered_advises_the_seeds_that_give_80_percent_power() -> None:
    # the case: sd 1, the paper's effect 0.5: the half-width rule said 18 seeds
    assert seeds_needed(1.0, 0.5) == 18
    need = seeds_for_power(1.0, 0.5)
    assert need == 34
    assert min_detectable_effect(1.0, need) <= 0.5 < min_detectable_effect(1.0, need - 1)
    config = parse_config(RAW)
    results = two_arms([0.5, 0.6, 0.7], [0.5, 0.9, 0.6], [0.1] * 3)
    (line,) = _power_lines(config, evaluate_claims(config, results), _fractions(results))
    assert "**not powered**" in line and "80% of the time (here 3)" in line


def test_the_multiplicity_line_counts_one_sided_chance_by_test() -> None:
    from dropkit.experiments.evidence.report import _multiplicity_line

    sup = evaluate_claims(parse_config(RAW), two_arms([0.5] * 3, [0.6, 0.7, 0.8], [0.1] * 3))
    line = _multiplicity_line(sup * 4)  # 8 superiority claims
    assert "8 superiority claims" in line and "2.5% of the time" in line
    assert "about 0.20 chance confirmations" in line


def test_non_finite_seeds_are_failures_and_unmeasured_claims_are_named_in_power() -> None:
    config = parse_config(RAW)
    results = two_arms([0.5, 0.6, 0.7], [math.nan, 0.8, 0.9], [0.1] * 3)
    regime, _ = evaluate_claims(config, results)
    assert regime.failed_seeds == [0] and regime.n_seeds == 2  # listed, not silently dropped
    assert "1 of 3 seeds failed" in regime.reason
    gated = not_applicable(config.claims[0], "the regime is not established")
    assert _power_lines(config, [gated], _fractions(results)) == [
        "- R: not applicable, so not powered here: the regime is not established."
    ]


def test_a_diverged_seed_drops_out_of_the_dynamics_curve_instead_of_blanking_it() -> None:
    config = parse_config(RAW)
    results = two_arms([0.5, 0.6, 0.7], [0.6, 0.7, 0.8], [0.1, 0.12, 0.08])
    diverged = results["s"]["dropout"].dynamics
    diverged.values["gde"][2] = [math.nan] * 11  # seed 2 of the dropout arm diverged
    curve = paired_curves(config.settings[0], results["s"])["gde"]
    # dropout - none over seeds 0 and 1 only: -0.1 and -0.12 in the window
    assert curve["mean"][0] == pytest.approx(-0.11)
    assert all(math.isfinite(m) for m in curve["mean"])
    text = "\n".join(
        _held_paragraph(
            config, evaluate_claims(config, results), {"s": {"gde": curve}}, _fractions(results)
        )
    )
    assert "gradient direction error starts below zero" in text


def _first_two_seeds(run: RunRecord) -> RunRecord:
    assert run.dynamics is not None
    return dataclasses.replace(
        run,
        seeds=run.seeds[:2],
        metrics={k: v[:2] for k, v in run.metrics.items()},
        curve=Curve(run.curve.steps, run.curve.train_loss[:2], {}),
        dynamics=DynamicsSeries(
            run.dynamics.steps, {k: v[:2] for k, v in run.dynamics.values.items()}
        ),
        diverged_at=run.diverged_at[:2],
    )


def test_the_report_states_the_minimum_seeds_and_caps_a_two_seed_claim(tmp_path) -> None:
    # issue 20: a verdict needs 3 seeds; the report says so beside its other rules, and a claim
    # whose 2-seed interval clears 0 (diffs 0.30, 0.35: [0.007, 0.643]) reads inconclusive
    config = parse_config(RAW)
    write_json(tmp_path / "config.json", {"config": config.to_dict()})
    results = two_arms([0.5, 0.6, 0.7], [0.8, 0.95, 0.9], [0.1] * 3)["s"]
    for name, run in results.items():
        (tmp_path / "runs/s" / name).mkdir(parents=True)
        write_json(tmp_path / "runs/s" / name / "result.json", _first_two_seeds(run).to_dict())
    report = build_report(tmp_path)
    regime, dependent = report["claims"]
    assert regime["n_seeds"] == 2 and regime["ci_low"] > 0
    assert regime["verdict"] == "inconclusive"
    assert "a verdict needs at least 3 finite paired seeds, this claim had 2" in regime["reason"]
    assert dependent["verdict"] == "not applicable"
    text = (tmp_path / "report.md").read_text()
    assert "A verdict needs at least 3 finite paired seeds" in text
    assert text.index("A verdict needs at least 3") < text.index("## Claims")


SWEEP = {
    "name": "sweep",
    "seeds": 3,
    "settings": {
        "s": {
            "data": "digits",
            "model": {"kind": "mlp"},
            "train": {"epochs": 1},
            "variants": {
                "none": {},
                "c10": {"dropout": {"schedule": "early", "p": 0.1, "cutoff": 0.1}},
                "c01": {"dropout": {"schedule": "early", "p": 0.1, "cutoff": 0.01}},
                "c50": {"dropout": {"schedule": "early", "p": 0.1, "cutoff": 0.5}},
                "p20": {"dropout": {"schedule": "early", "p": 0.2, "cutoff": 0.1}},
            },
        }
    },
    "claims": [
        {"id": f"S{name}", "statement": f"{name} beats none", "setting": "s", "metric": "test_acc",
         "a": name, "b": "none", "direction": ">", "target": 0.004, "sweep": sweep}
        for name, sweep in (("c10", ["cutoff", "p"]), ("c01", "cutoff"), ("c50", "cutoff"),
                            ("p20", "p"))
    ],
}  # fmt: skip


def test_a_sweep_reports_each_point_in_axis_order_with_its_figure(tmp_path) -> None:
    # the paper's sensitivity panels: effect against the swept value, each point its own claim;
    # c50 never ran, so its point is listed as not measured and left out of the figure
    config = parse_config(SWEEP)
    write_json(tmp_path / "config.json", {"config": config.to_dict()})
    accuracies = {
        "none": [0.50, 0.60, 0.70],
        "c10": [0.60, 0.72, 0.80],  # +0.10, +0.12, +0.10: confirmed
        "c01": [0.49, 0.62, 0.69],  # -0.01, +0.02, -0.01: inconclusive
        "p20": [0.40, 0.49, 0.61],  # -0.10, -0.11, -0.09: opposite
    }
    for name, acc in accuracies.items():
        run = dataclasses.replace(record(name, acc, gde_rows([0.0] * 3)), dynamics=None)
        (tmp_path / "runs/s" / name).mkdir(parents=True)
        write_json(tmp_path / "runs/s" / name / "result.json", run.to_dict())
    report = build_report(tmp_path)
    sweeps = report["sweeps"]["s"]
    assert [(p["claim"], p["value"]) for p in sweeps["cutoff"]] == [
        ("Sc01", 0.01), ("Sc10", 0.1), ("Sc50", 0.5)
    ]  # fmt: skip
    assert [(p["claim"], p["value"]) for p in sweeps["p"]] == [("Sc10", 0.1), ("Sp20", 0.2)]
    by_claim = {p["claim"]: p for points in sweeps.values() for p in points}
    for name in ("c10", "c01", "p20"):
        diffs = [a - b for a, b in zip(accuracies[name], accuracies["none"])]
        assert by_claim[f"S{name}"]["effect"] == pytest.approx(sum(diffs) / 3)
    verdicts = {claim: p["verdict"] for claim, p in by_claim.items()}
    assert verdicts == {"Sc10": "confirmed", "Sc01": "inconclusive", "Sc50": "not measured",
                        "Sp20": "opposite"}  # fmt: skip
    assert (tmp_path / "figures/s_sweep.png").stat().st_size > 0
    text = (tmp_path / "report.md").read_text()
    assert "![s_sweep.png](figures/s_sweep.png)" in text
    assert (
        "`s` cutoff sweep (each point − none, test_acc): inconclusive at 0.01; confirmed at 0.1; "
        "not measured at 0.5." in text
    )
    assert "`s` p sweep (each point − none, test_acc): confirmed at 0.1; opposite at 0.2." in text


def test_an_accuracy_recorded_in_percent_is_not_scaled_again() -> None:
    # an upstream loop returns test_acc in percent: the table read "6472.00" and effects x100
    config = parse_config(RAW)
    fractions = two_arms([0.5, 0.6, 0.7], [0.6, 0.8, 0.9], [0.1] * 3)
    assert _fractions(fractions) == {"test_acc"}
    percent = two_arms([50.0, 60.0, 70.0], [60.0, 80.0, 90.0], [0.1] * 3)
    assert _fractions(percent) == set()
    (line,) = _power_lines(config, evaluate_claims(config, percent), _fractions(percent))
    assert line.startswith("- R: MDE ") and " pt" not in line
