"""`dropkit advise`: probes, evidence, and agreement with full runs on reduced demo settings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import dropkit
from dropkit import schedules
from dropkit.cli import main
from dropkit.experiments.advise import RECOMMENDATIONS, advise
from dropkit.experiments.builtin.data import load_dataset, split_validation
from dropkit.experiments.builtin.models import model_factory
from dropkit.experiments.builtin.train import Variant, train_variant
from dropkit.experiments.config.training import TrainConfig


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_validation_is_carved_from_the_end_of_the_training_split(digits):
    probe = split_validation(digits, 0.1)
    n_val = round(0.1 * len(digits.x))
    assert torch.equal(probe.x_test, digits.x[-n_val:]) and torch.equal(probe.y, digits.y[:-n_val])
    assert len(probe.x) + len(probe.x_test) == len(digits.x)  # the real test split is not used
    with pytest.raises(ValueError, match="validation_fraction"):
        split_validation(digits, 1.0)


def test_max_steps_trains_the_first_steps_of_the_intended_run(digits):
    model_fn = model_factory({"kind": "mlp", "width": 16, "depth": 1}, 64, 10)
    config = TrainConfig(epochs=3, batch_size=256)
    snapshots = {}

    def keep(step, population):
        if step == 7:
            snapshots["full"] = {k: v.detach().clone() for k, v in population.params.items()}

    train_variant(model_fn, digits, Variant("none"), [0, 1], config, on_step=keep)
    probe = train_variant(model_fn, digits, Variant("none"), [0, 1], config, max_steps=7)
    assert probe.log_steps[-1] == 7 and probe.total_steps == 3 * (len(digits.x) // 256)
    for name, value in probe.population.params.items():
        torch.testing.assert_close(value, snapshots["full"][name], rtol=0, atol=0)


def test_advice_carries_its_evidence_and_limits(digits, tmp_path):
    model_fn = model_factory({"kind": "resmlp", "width": 16, "depth": 2}, 64, 10)
    advice = advise(
        model_fn, digits, TrainConfig(epochs=4, batch_size=64), budget=0.25, seeds=[5, 6],
        figure=tmp_path / "probe.png",
    )  # fmt: skip
    assert advice.recommendation in RECOMMENDATIONS
    assert advice.regime in ("underfitting", "overfitting", "cannot tell")
    assert advice.confidence in ("high", "medium", None)
    assert (advice.confidence is None) == (advice.regime == "cannot tell")
    evidence = advice.evidence
    assert set(evidence["variants"]) == {"none", "dropout"}  # dropout where the model has it
    assert evidence["seeds"] == [5, 6] and evidence["probe_steps"] == 20  # 0.25 x 4 epochs x 20
    assert evidence["metric"] == {"name": "val_loss", "better": "lower"}
    none = evidence["variants"]["none"]
    assert none["gap"] == pytest.approx(np.subtract(none["held_out"], none["train_loss"]).tolist())
    curve = evidence["curve"]  # 12 checkpoints over the probe, the last at its end
    assert curve["fractions"][-1] == pytest.approx(20 / 80) and len(curve["fractions"]) == 12
    assert np.shape(curve["dropout"]) == (2, 12)
    assert [row[-1] for row in curve["none"]] == pytest.approx(none["held_out"])
    effect = np.subtract(evidence["variants"]["dropout"]["held_out"], none["held_out"])
    assert evidence["effect_now"]["mean"] == pytest.approx(effect.mean())
    for key in ("effect_now", "effect_projected", "projected_relative_gap"):
        assert evidence[key]["ci_low"] <= evidence[key]["mean"] <= evidence[key]["ci_high"]
    assert all(0.0 <= g <= 1.0 for g in evidence["gde"]["none"] + evidence["gde"]["dropout"])
    assert "20 of 80 optimizer steps" in advice.limits[0]
    assert (tmp_path / "probe.png").stat().st_size > 1000
    assert json.loads(json.dumps(advice.to_dict()))["recommendation"] == advice.recommendation


def test_a_model_without_sites_is_told_so(digits):
    advice = advise(lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), digits, budget=0.1)
    assert advice.recommendation == "no_dropout" and advice.schedule is None
    assert any("no dropout or drop-path site" in reason for reason in advice.reasons)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"budget": 0.0}, "budget"), ({"budget": 1.5}, "budget"), ({"seeds": 1}, "seeds")],
)
def test_invalid_arguments_name_the_fix(digits, kwargs, message):
    with pytest.raises(ValueError, match=message):
        advise(model_factory({"kind": "mlp"}, 64, 10), digits, **kwargs)


def test_python_entry_point_is_dropkit_advise():
    assert dropkit.advise is advise


def test_cli_writes_the_advice_for_a_top_level_setting(tmp_path, capsys):
    config = tmp_path / "mine.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": "digits",
                "model": {"kind": "mlp", "width": 32, "depth": 1},
                "train": {"epochs": 2, "batch_size": 64},
            }
        )
    )
    out = tmp_path / "advice"
    assert main(["advise", str(config), "--budget", "0.5", "--out", str(out)]) == 0
    saved = json.loads((out / "advice.json").read_text())
    assert saved["recommendation"] in RECOMMENDATIONS
    assert "Recommendation:" in (out / "advice.md").read_text()
    assert "Recommendation:" in capsys.readouterr().out
    assert main(["advise", str(config), "--setting", "nope"]) == 2


# The demo's two regimes at a cost a test can afford: the underfitting setting cut to 2 epochs
# (standard dropout hurts there even more), the overfitting one as in the demo; 3 seeds. The
# advisor must find the underfitting one at its default budget and may only answer "cannot
# tell" for the overfitting MLP, whose dropout effect turns only after the probe
# (benchmarks/advise_accuracy.py); a longer probe finds it.
REDUCED = {
    "underfit": (
        "mnist1d-large",
        {"kind": "resmlp", "width": 32, "depth": 4},
        TrainConfig(epochs=2, train_eval_samples=4000),
        None,
        ("underfitting", "early_dropout"),
    ),
    "overfit": (
        "mnist1d",
        {"kind": "mlp", "width": 256, "depth": 3},
        TrainConfig(epochs=30),
        0.6,
        ("overfitting", "standard_dropout"),
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REDUCED))
def test_advisor_agrees_with_the_full_runs_on_reduced_settings(name):
    data_name, model, config, budget, expected = REDUCED[name]
    data = load_dataset(data_name)
    model_fn = model_factory(model, data.n_features, data.n_classes)
    seeds = [0, 1, 2]
    none = train_variant(model_fn, data, Variant("none"), seeds, config)
    dropout = train_variant(
        model_fn, data, Variant("dropout", dropout=schedules.standard(0.1)), seeds, config
    )
    # the regime from the full runs: does standard dropout generalize better (lower test loss)?
    helps = np.mean(dropout.test_loss) < np.mean(none.test_loss)
    assert ("overfitting" if helps else "underfitting") == expected[0]
    advice = advise(model_fn, data, config, budget=budget, seeds=[3, 4, 5])  # unseen seeds
    assert (advice.regime, advice.recommendation) == expected
    for short in (0.05, 0.1):  # shorter probes: right or "cannot tell", never wrong
        assert advise(model_fn, data, config, budget=short, seeds=[3, 4, 5]).regime in (
            expected[0],
            "cannot tell",
        )


def test_a_probe_inside_the_warm_up_is_never_confident(digits):
    model_fn = model_factory({"kind": "mlp", "width": 32, "depth": 1}, 64, 10)
    inside = advise(model_fn, digits, TrainConfig(epochs=4, batch_size=64, warmup_frac=0.5),
                    budget=0.2)  # fmt: skip
    assert inside.confidence in ("medium", None)
    assert any("inside the learning-rate warm-up" in reason for reason in inside.reasons)
    after = advise(model_fn, digits, TrainConfig(epochs=4, batch_size=64, warmup_frac=0.1),
                   budget=0.2)  # fmt: skip
    assert not any("warm-up" in reason for reason in after.reasons)


class DropPathOnly(nn.Module):
    """A residual classifier whose only site is stochastic depth."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.branch, self.head = nn.Linear(64, 32), nn.Linear(32, 32), nn.Linear(32, 10)
        self.drop_path = dropkit.DropPath(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x.flatten(1))
        return self.head(h + self.drop_path(torch.relu(self.branch(h))))


def test_a_drop_path_only_model_is_probed_and_advised_with_stochastic_depth(digits):
    advice = advise(DropPathOnly, digits, TrainConfig(epochs=2, batch_size=64), budget=0.5)
    assert set(advice.evidence["variants"]) == {"none", "sd"}
    assert advice.recommendation in ("early_sd", "late_sd", "undecided")
    assert advice.schedule is None or advice.schedule["sites"] == "drop_path"
    assert advice.reasons[0].startswith("Standard stochastic depth")
