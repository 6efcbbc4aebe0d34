"""The experiment runner end to end on a tiny config: outputs, reproducibility, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from dropkit.cli import main
from dropkit.diagnostics import train_test_inconsistency
from dropkit.experiments.builtin import data as datasets
from dropkit.experiments.builtin.demo_configs import builtin_config
from dropkit.experiments.builtin.models import model_factory
from dropkit.experiments.builtin.population import PopulationJob, PopulationJobs, train_variant_spec
from dropkit.experiments.builtin.train import train_variant
from dropkit.experiments.config.parse import parse_config
from dropkit.experiments.config.specs import ConfigError
from dropkit.experiments.engine.plan import make_plan
from dropkit.experiments.evidence.report import summary_table

TINY = {
    "name": "tiny",
    "seeds": 2,
    "settings": {
        "digits": {
            "data": "digits",
            "model": {"kind": "mlp", "width": 32, "depth": 1},
            "train": {"epochs": 2, "batch_size": 64, "lr": 0.003, "log_every": 5},
            "variants": {
                "none": {},
                "dropout": {"dropout": {"schedule": "standard", "p": 0.2}},
                "early": {
                    "dropout": {"schedule": "early", "p": 0.2, "cutoff": 0.5, "shape": "linear"}
                },
            },
            "dynamics": {
                "variants": ["none", "dropout"],
                "every": 2,
                "window": 16,
                "until": 24,
                "n_batches": 4,
            },
            "mc_passes": 3,
        }
    },
    "claims": [
        {
            "id": "T1",
            "statement": "early lowers training loss",
            "setting": "digits",
            "metric": "train_loss",
            "a": "early",
            "b": "none",
            "direction": "<",
        },
        {
            "id": "T2",
            "statement": "dropout lowers GDE early",
            "setting": "digits",
            "metric": "dynamics:gde",
            "a": "dropout",
            "b": "none",
            "direction": "<",
        },
    ],
}


def write_config(path: Path, raw: dict = TINY) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("name", ["demo", "demo-quick", "demo-full"])
def test_builtin_configs_parse_and_cover_the_claims(name):
    config = builtin_config(name)
    assert config.seeds >= 5 or name == "demo-quick"
    assert [c.id for c in config.claims][:4] == ["C1", "C2", "C3", "C3n"]
    by_id = {c.id: c for c in config.claims}
    for setting in config.settings:
        # every setting has a none arm and a declared regime, established by its own claim
        assert "none" in {v.name for v in setting.variants}
        assert setting.regime in ("underfitting", "overfitting")
        assert by_id[setting.regime_claim].setting == setting.name
        swept = {c.a for c in config.claims if "cutoff" in c.sweep and c.setting == setting.name}
        for variant in setting.variants:  # the paper's recipe: warm-up ends at the cutoff
            for spec in (variant.dropout, variant.drop_path):
                if spec is not None and spec.kind == "early" and variant.name not in swept:
                    assert spec.cutoff == setting.train.warmup_frac
    early_sd = builtin_config(name).settings[0].variant("early_sd").drop_path
    assert (early_sd.p, early_sd.shape) == (0.5, "linear")  # the paper's ViT-T rate
    # the paper's improvement claims are superiority tests; non-inferiority only sits beside them
    late_sd = ("C7r", "C7", "C7n")  # the default demo leaves late s.d. to demo-full
    assert all((c in by_id) is (name != "demo") for c in late_sd)
    for claim_id in ("C3", "C4", "C7", "C8", "C8c"):
        assert claim_id not in by_id or by_id[claim_id].test == "superiority"
    for claim_id in ("C3n", "C4n", "C7n"):
        assert claim_id not in by_id or (
            by_id[claim_id].test == "non-inferiority" and by_id[claim_id].margin <= 0.001
        )


def test_demo_full_sweeps_the_papers_cutoffs_and_rates_on_the_default_vit_setting():
    demo, full = builtin_config("demo"), builtin_config("demo-full")
    sweep = next(s for s in full.settings if s.name == "underfit_vit")
    assert sweep.recipe() == next(s for s in demo.settings if s.name == "underfit").recipe()
    points = {
        axis: sorted(sweep.variant(c.a).swept(axis) for c in full.claims if axis in c.sweep)
        for axis in ("cutoff", "p")
    }
    assert points == {"cutoff": [0.01, 0.05, 0.1667, 0.3333, 0.5], "p": [0.05, 0.1, 0.2]}
    for claim in (c for c in full.claims if c.sweep):
        assert (claim.b, claim.metric, claim.direction) == ("none", "test_acc", ">")
        early = sweep.variant(claim.a).dropout
        assert early is not None and (early.kind, early.shape) == ("early", "linear")


def two_points_at_one_rate(raw: dict) -> None:
    raw["claims"][0]["sweep"] = "p"
    raw["claims"].append({**raw["claims"][0], "id": "T3", "a": "dropout"})


def a_sweep_point_against_another_baseline(raw: dict) -> None:
    raw["claims"][0]["sweep"] = "p"
    raw["claims"].append({**raw["claims"][0], "id": "T3", "a": "dropout", "b": "early"})


def inconsistency_claimed_without_passes(raw: dict) -> None:
    raw["settings"]["digits"]["mc_passes"] = 0
    raw["claims"][0].update(metric="inconsistency_kl", a="dropout")


def without_none_arm(raw: dict) -> None:
    setting = raw["settings"]["digits"]
    del setting["variants"]["none"]
    setting.update(regime="underfitting", regime_claim="T1")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["settings"]["digits"]["train"].update(lr=-1), "settings.digits.train"),
        (
            lambda c: c["settings"]["digits"]["variants"]["early"]["dropout"].update(p=2),
            "settings.digits.variants.early.dropout.p",
        ),
        (
            lambda c: c["settings"]["digits"]["variants"]["early"]["dropout"].update(cutoff="x"),
            "settings.digits.variants.early.dropout",
        ),
        (lambda c: c["settings"]["digits"].update(colour="red"), "unknown field"),
        (
            lambda c: c["settings"]["digits"]["dynamics"].update(variants=["nope"]),
            "settings.digits.dynamics.variants",
        ),
        (lambda c: c["claims"][0].update(a="ghost"), "claims[0].a"),
        (lambda c: c["claims"][1].update(direction="!="), "claims[1].direction"),
        (lambda c: c.update(seeds="five"), "seeds"),
        (lambda c: c["settings"]["digits"]["dynamics"].update(every=3), "dynamics.every"),
        (lambda c: c["settings"]["digits"]["dynamics"].update(window=30), "dynamics.window"),
        (lambda c: c["settings"]["digits"]["dynamics"].pop("until"), "dynamics.until"),
        (
            lambda c: c["settings"]["digits"]["dynamics"].update(reference_samples=0),
            "dynamics.reference_samples",
        ),
        (lambda c: c["settings"]["digits"].update(regime="underfitting"), "regime_claim"),
        (lambda c: c["settings"]["digits"].update(regime="hungry", regime_claim="T1"), "regime"),
        (
            lambda c: c["settings"]["digits"].update(regime="underfitting", regime_claim="T9"),
            "settings.digits.regime_claim",
        ),
        (without_none_arm, "needs a `none` arm"),
        (
            lambda c: c["settings"]["digits"]["variants"]["dropout"].update(
                rdrop_alpha=1.0, double_batch=True
            ),
            "double_batch",
        ),
        (lambda c: c["claims"][0].update(direction=">="), "claims[0].margin"),
        (lambda c: c["claims"][0].update(margin=0.1), "claims[0].margin"),
        (lambda c: c["settings"]["digits"].update(seeds=1), "settings.digits.seeds"),
        (lambda c: c["claims"][0].update(sweep="depth"), "claims[0].sweep: expected axes"),
        (lambda c: c["claims"][1].update(sweep="cutoff"), "'dropout' has no cutoff"),
        (two_points_at_one_rate, "two points sit at the same p"),
        (a_sweep_point_against_another_baseline, "must share metric, b, direction and margin"),
        (lambda c: c["settings"]["digits"].update(mc_passes=-1), "settings.digits.mc_passes"),
        (inconsistency_claimed_without_passes, "claims[0].metric: 'inconsistency_kl' is not"),
        # malformed claim fields were an AttributeError / TypeError; top-level seeds: 1 passed
        (lambda c: c["claims"][0].update(metric=3), "claims[0].metric: expected a name"),
        (lambda c: c["claims"][0].update(a=["none"]), "claims[0].a: expected a name"),
        (lambda c: c["claims"][0].update(setting=["digits"]), "claims[0].setting: expected"),
        (lambda c: c["claims"][1].update(direction=None), "claims[1].direction: expected"),
        (lambda c: c.update(seeds=1), "seeds: claims are paired comparisons, give >= 2"),
    ],
)
def test_config_errors_name_the_field(edit, message):
    raw = json.loads(json.dumps(TINY))
    edit(raw)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config(raw)


def test_cli_reports_config_errors_without_traceback(tmp_path, capsys):
    raw = json.loads(json.dumps(TINY))
    raw["seeds"] = 0
    assert main(["run", str(write_config(tmp_path / "bad.yaml", raw))]) == 2
    assert "seeds" in capsys.readouterr().err


@pytest.mark.slow
def test_run_writes_report_figures_records_and_is_reproducible(tmp_path):
    config = write_config(tmp_path / "tiny.yaml")
    assert main(["run", str(config), "--out", str(tmp_path / "a")]) == 0
    run = tmp_path / "a"
    report = json.loads((run / "report.json").read_text())
    assert [c["id"] for c in report["claims"]] == ["T1", "T2"]
    for claim in report["claims"]:
        assert set(claim) >= {
            "id",
            "statement",
            "confirmed",
            "effect",
            "ci_low",
            "ci_high",
            "n_seeds",
        }
        assert claim["n_seeds"] == 2 and claim["ci_low"] <= claim["effect"] <= claim["ci_high"]
    for figure in ("digits_train_loss.png", "digits_test_acc.png", "digits_dynamics.png"):
        assert (run / "figures" / figure).stat().st_size > 1000
        assert f"figures/{figure}" in (run / "report.md").read_text()
    records = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    assert {r["instrument"] for r in records} >= {"gdv", "gde", "batch_grad_norm", "distance"}
    assert {r["variant"] for r in records} == {"none", "dropout"}
    assert all(0 <= r["value"] <= 1 for r in records if r["instrument"] in ("gdv", "gde"))
    assert (run / "runs" / "digits" / "early" / "metrics.jsonl").exists()
    # the same command elsewhere gives the same numbers
    assert main(["run", str(config), "--out", str(tmp_path / "b")]) == 0
    again = json.loads((tmp_path / "b" / "report.json").read_text())
    assert again["claims"] == report["claims"] and again["dynamics"] == report["dynamics"]
    for name, setting in report["settings"].items():
        for variant, result in setting["variants"].items():
            rerun = again["settings"][name]["variants"][variant]
            assert {**result, "wall_s": rerun["wall_s"]} == rerun
    # `dropkit report` rebuilds the same claims from the folder
    assert main(["report", str(run)]) == 0
    assert json.loads((run / "report.json").read_text())["claims"] == report["claims"]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_report(tmp_path):
    config = write_config(tmp_path / "tiny.yaml")
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    command = [
        sys.executable,
        "-m",
        "dropkit.cli",
        "run",
        str(config),
        "--out",
        str(tmp_path / "k"),
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    runs = tmp_path / "k" / "runs"

    def finished() -> set[str]:
        return {p.parent.name for p in runs.rglob("result.json")} if runs.exists() else set()

    deadline = time.monotonic() + 120
    while not finished() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # as soon as the first run of three has finished
    process.wait()
    assert not (tmp_path / "k" / "report.json").exists()
    assert 1 <= len(finished()) < 3  # killed part-way through the grid
    subprocess.run(command, env=env, check=True, capture_output=True)
    assert main(["run", str(config), "--out", str(tmp_path / "whole")]) == 0
    resumed = json.loads((tmp_path / "k" / "report.json").read_text())
    whole = json.loads((tmp_path / "whole" / "report.json").read_text())
    assert resumed["claims"] == whole["claims"]


def test_more_seeds_extend_a_finished_run_folder_training_only_the_new_ones(tmp_path, capsys):
    config = write_config(tmp_path / "tiny.yaml", {**TINY, "seeds": 3})
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out)]) == 0
    runs = out / "runs" / "digits"
    variants = ("none", "dropout", "early")
    before = {v: json.loads((runs / v / "result.json").read_text()) for v in variants}
    extended = parse_config(yaml.safe_load(config.read_text())).with_seeds(4)
    todo = make_plan(extended, out, PopulationJobs()).todo()
    assert [job.seeds for job in todo] == [(3,)] * 3  # only seed 3
    assert main(["run", str(config), "--out", str(out), "--seeds", "4"]) == 0
    assert main(["run", str(config), "--out", str(tmp_path / "whole"), "--seeds", "4"]) == 0
    for v in variants:
        after = json.loads((runs / v / "result.json").read_text())
        whole = json.loads((tmp_path / "whole" / "runs" / "digits" / v / "result.json").read_text())
        assert after["seeds"] == [0, 1, 2, 3]
        for metric, values in after["metrics"].items():
            assert values[:3] == before[v]["metrics"][metric]  # the old seeds, not retrained
            assert values == pytest.approx(whole["metrics"][metric], rel=1e-6, nan_ok=True)
        np.testing.assert_allclose(after["curve"]["train_loss"], whole["curve"]["train_loss"],
                                   rtol=1e-6)  # fmt: skip
        if after["dynamics"] is not None:
            for name, table in after["dynamics"]["values"].items():
                np.testing.assert_allclose(table, whole["dynamics"]["values"][name], rtol=1e-6)
        rows = [json.loads(line) for line in (runs / v / "metrics.jsonl").read_text().splitlines()]
        assert {row["seed"] for row in rows} == {0, 1, 2, 3}
    report = json.loads((out / "report.json").read_text())
    assert [c["n_seeds"] for c in report["claims"]] == [4, 4]
    [extension] = report["extensions"]
    assert extension["seeds"] == {"digits": [3, 4]} and extension["after_report"]
    text = (out / "report.md").read_text()
    assert "## Seeds added later" in text and "`digits` from 3 to 4 seeds" in text
    # the seeds grew after a report was read: its claims use the confidence sequence
    assert all(c["interval"] == "confidence sequence" for c in report["claims"])
    assert report["sequential_settings"] == ["digits"]
    assert "‡ A 95% confidence sequence" in text and "`digits` at 3, 4 seeds" in text
    # the same command again changes nothing; fewer seeds than the folder holds are refused
    assert main(["run", str(config), "--out", str(out), "--seeds", "4"]) == 0
    assert len(json.loads((out / "report.json").read_text())["extensions"]) == 1
    capsys.readouterr()
    assert main(["run", str(config), "--out", str(out), "--seeds", "2"]) == 2
    assert "can only add seeds" in capsys.readouterr().err


def test_inconsistency_is_zero_without_passes_where_every_site_ends_at_rate_0():
    """The MC passes are skipped for a model whose every site ends at rate 0 (no schedule,
    or an early one): each pass would be the deterministic forward, as measuring shows."""
    setting = parse_config(TINY).settings[0]
    outputs = {
        name: PopulationJob(setting, setting.variant(name), (0, 1), cache_dir=None, eager=True)()
        for name in ("none", "early", "dropout")
    }
    for name in ("none", "early"):
        assert outputs[name].record.metrics["inconsistency_kl"] == [0.0, 0.0]
    assert all(kl > 0 for kl in outputs["dropout"].record.metrics["inconsistency_kl"])
    data_name, model, train = setting.recipe()
    data = datasets.load_dataset(data_name)
    model_fn = model_factory(model, data.n_features, data.n_classes)
    trained = train_variant(
        model_fn, data, train_variant_spec(setting.variant("early")), [0], train
    ).population
    assert trained is not None
    measured = train_test_inconsistency(trained.member(0).train(), data.x_test, passes=3, seed=0)
    assert measured.kl == pytest.approx(0.0, abs=1e-6)


def test_a_setting_without_mc_passes_measures_and_shows_no_inconsistency():
    raw = json.loads(json.dumps(TINY))
    raw["settings"]["digits"]["mc_passes"] = 0
    config = parse_config(raw)
    setting = config.settings[0]
    output = PopulationJob(setting, setting.variant("dropout"), (0, 1), None, eager=True)()
    assert set(output.record.metrics) == {"train_loss", "train_acc", "test_loss", "test_acc"}
    table = summary_table(config, {"digits": {"dropout": output.record}})
    assert "test loss |" in table and "inconsistency" not in table


def test_the_plan_runs_a_settings_heaviest_variants_first(tmp_path):
    # dynamics variants, then doubled batches, then config order: the demo's two workers end
    # together instead of one training R-Drop's control alone at the end
    plan = make_plan(builtin_config("demo"), tmp_path, PopulationJobs())
    assert [job.label for job in plan.jobs] == [
        "underfit/none", "underfit/dropout", "underfit/early_dropout", "underfit/early_sd",
        "overfit/rdrop", "overfit/rdrop_control", "overfit/none", "overfit/dropout",
    ]  # fmt: skip
