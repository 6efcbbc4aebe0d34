import json
import math
import re
import statistics
from pathlib import Path

import pytest

import dropkit
from dropkit.cli import _executor_param, main
from dropkit.experiments.builtin.demo_configs import builtin_config
from dropkit.experiments.config.specs import SettingSpec
from dropkit.experiments.evidence.claims import MIN_SEEDS


def test_sites_command_prints_the_table(capsys) -> None:
    assert main(["sites", "tests.lookalikes:TimmViT"]) == 0
    out = capsys.readouterr().out
    assert (
        out.startswith("TimmViT: 13 sites (5 dropout, 8 drop_path), 2 not controllable")
        and "blocks.3.drop_path2" in out
    )


@pytest.mark.parametrize("spec", ["no_colon", "tests.lookalikes:Missing", "no.such.module:f"])
def test_sites_command_bad_factory(spec: str) -> None:
    with pytest.raises(SystemExit, match="dropkit sites"):
        main(["sites", spec])


def test_version_flag_prints_the_package_version(capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out == f"dropkit {dropkit.__version__}\n"


def test_demo_refuses_fewer_than_two_seeds(capsys) -> None:
    assert main(["demo", "--seeds", "1"]) == 2
    assert "--seeds must be >= 2" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "value"),
    [("timeout_min=60", 60), ("mem_gb=2.5", 2.5), ("slurm_partition=gpu", "gpu"),
     ("slurm_time=08:00:00", "08:00:00"), ("slurm_use_srun=false", False),
     ("slurm_partition=inf", "inf"), ("slurm_account=0042", "0042"),
     ("slurm_partition=1_0", "1_0"), ("slurm_partition=nan", "nan"), ("mem_gb=1e3", 1000.0),
     ("nice=-5", -5), ("slurm_comment= 7", " 7"), ("slurm_partition=٣", "٣")],
)  # fmt: skip
def test_executor_param_values_are_typed_as_submitit_checks_them(text: str, value) -> None:
    key, parsed = _executor_param(text)
    assert key == text.partition("=")[0]
    assert parsed == value and type(parsed) is type(value)


EXAMPLE_CONFIG = Path(__file__).resolve().parents[1] / "examples/plain_pytorch/config.yaml"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--executor-param", "timeout_min=60"], "add --executor slurm"),
        (["run", str(EXAMPLE_CONFIG), "--executor", "local", "--executor-param", "mem_gb=4"],
         "add --executor slurm"),
        (["demo", "--executor", "slurm", "--executor-param", "folder=logs"],
         "not a submitit parameter"),
        (["advise", "missing.yaml", "--executor-param", "timeout_min=60"], "add --executor slurm"),
    ],
)  # fmt: skip
def test_executor_params_are_refused_where_submitit_does_not_run(argv, message, capsys) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_malformed_executor_param_names_the_form(capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["demo", "--executor", "slurm", "--executor-param", "timeout_min"])
    assert caught.value.code == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


VERDICTS = {"confirmed", "non-inferior", "inconclusive", "opposite", "not applicable"}
PNG = b"\x89PNG\r\n\x1a\n"


def _per_seed(out: Path, setting: SettingSpec, variant: str, metric: str) -> dict[int, float]:
    """A metric per seed, read from the run's result file alone: a final metric as stored, a
    ``dynamics:`` one as the mean over the checkpoints in (0, window]."""
    result = json.loads((out / "runs" / setting.name / variant / "result.json").read_text())
    if not metric.startswith("dynamics:"):
        return dict(zip(result["seeds"], result["metrics"][metric]))
    assert setting.dynamics is not None
    steps = result["dynamics"]["steps"]
    inside = [k for k, step in enumerate(steps) if 0 < step <= setting.dynamics.window]
    rows = result["dynamics"]["values"][metric.removeprefix("dynamics:")]
    assert inside and all(len(row) == len(steps) for row in rows)
    return {s: statistics.fmean(row[k] for k in inside) for s, row in zip(result["seeds"], rows)}


@pytest.mark.slow
def test_quick_demo_runs_every_claim_of_the_builtin_config(tmp_path, capsys) -> None:
    # the quick demo as shipped (3 seeds: the least a verdict needs). What must hold whatever the
    # seeds' noise: every claim measured or gated, its effect the mean of the per-seed
    # differences in the run's own files, inside its interval, its verdict on the interval's
    # side, the regime gates consistent, and every figure a PNG. No measured number is fixed.
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--workers", "1", "--out", str(out)]) == 0
    config = builtin_config("demo-quick")
    seeds = list(range(config.seeds))
    assert len(seeds) >= MIN_SEEDS
    report = json.loads((out / "report.json").read_text())
    ids = [claim["id"] for claim in report["claims"]]
    assert ids == [
        *("C1", "C2", "C3", "C3n", "C4", "C4n", "C5a", "C5b", "C5c", "C5d"),
        *("C6", "C8", "C8c", "C9", "C7r", "C7", "C7n"),
    ]
    settings = {s.name: s for s in config.settings}
    rows = dict(zip(ids, report["claims"]))
    measured = 0
    for claim in config.claims:
        row, setting = rows[claim.id], settings[claim.setting]
        assert row["verdict"] in VERDICTS, row  # never "not measured": every seed trains
        assert row["confirmed"] is (row["verdict"] == "confirmed")
        regime = rows[setting.regime_claim]
        if claim.id != setting.regime_claim and not regime["confirmed"]:
            assert row["verdict"] == "not applicable", row
            assert f"{regime['id']} " in row["reason"] and regime["verdict"] in row["reason"]
            assert row["effect"] is None and row["n_seeds"] == 0
            continue
        assert row["verdict"] != "not applicable", row  # regime claims, or an established regime
        a = _per_seed(out, setting, claim.a, claim.metric)
        b = _per_seed(out, setting, claim.b, claim.metric)
        assert sorted(a) == sorted(b) == seeds
        finite = [s for s in seeds if math.isfinite(a[s]) and math.isfinite(b[s])]
        assert row["failed_seeds"] == [s for s in seeds if s not in finite]
        assert row["n_seeds"] == len(finite)
        if finite == seeds:  # no seed diverged: the claim rests on every configured seed
            assert row["n_seeds"] == config.seeds
        effect = statistics.fmean(a[s] - b[s] for s in finite)
        assert row["effect"] == pytest.approx(effect, rel=1e-9, abs=1e-12)
        low, high = row["ci_low"], row["ci_high"]
        assert low <= row["effect"] <= high
        up = claim.direction in (">", ">=")  # the paper's side of 0
        if row["verdict"] == "confirmed":
            assert low > 0 if up else high < 0
        elif row["verdict"] == "opposite":
            assert high < -claim.margin if up else low > claim.margin
        elif row["verdict"] == "non-inferior":
            assert low > -claim.margin if up else high < claim.margin
        measured += 1
    assert measured >= len(config.settings)  # at least every regime claim was decided
    figures = re.findall(r"!\[[^]]*\]\(figures/([^)]+)\)", (out / "report.md").read_text())
    assert {"underfit_dynamics.png", "underfit_dynamics_difference.png"} <= set(figures)
    assert {f"{s}_{kind}.png" for s in settings for kind in ("train_loss", "test_acc")} <= set(
        figures
    )
    for name in figures:
        data = (out / "figures" / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 1000, name
    printed = capsys.readouterr().out
    assert f"| early_dropout | {config.seeds} |" in printed and "C9" in printed
