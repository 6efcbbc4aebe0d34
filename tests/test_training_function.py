"""A user's training function as a setting: claims, figures, failures, refusals and resume."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from dropkit.cli import main
from dropkit.experiments import Trial
from dropkit.experiments.config.parse import load_config
from dropkit.experiments.config.specs import ConfigError
from dropkit.experiments.engine.trial import read_log
from dropkit.experiments.evidence.report import build_report
from dropkit.experiments.runner import run_experiment
from tests.user_project import (
    held_config_and_reference,
    project_folder,
    run_result,
    trial_calls,
    user_config,
    write_config,
)
from tests.waiting import wait_for

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    yield from project_folder(tmp_path)


def test_a_function_setting_gets_claims_curves_figures_and_a_report(project, tmp_path):
    config = load_config(write_config(project, user_config(project / "flags")))
    out = tmp_path / "run"
    report = run_experiment(config, out, progress=False)
    assert report is not None
    by_id = {c["id"]: c for c in report["claims"]}
    u1 = by_id["U1"]
    assert u1["n_seeds"] == 3 and u1["failed_seeds"] == [] and u1["ci_low"] < u1["effect"]
    assert u1["comparison"] == "dropout - none < 0" and u1["mde"] > 0
    # the regime gate: U2 presupposes the regime U1 establishes
    assert (by_id["U2"]["verdict"] == "not applicable") == (u1["verdict"] != "confirmed")
    result = run_result(out, "early")
    assert result["seeds"] == [0, 1, 2]
    assert set(result["metrics"]) == {"train_loss", "train_acc"}
    assert result["curve"]["steps"] == [10, 20, 30, 40]
    assert result["total_steps"] == 40 and result["cutoff_step"] == 20
    assert all(len(row) == 4 and all(math.isfinite(v) for v in row)
               for row in result["curve"]["train_loss"])  # fmt: skip
    rows = [json.loads(line) for line in (out / "runs/mine/early/metrics.jsonl").open()]
    assert {(r["seed"], r["step"]) for r in rows if "train_acc" not in r} == {
        (s, k) for s in range(3) for k in (10, 20, 30, 40)
    }
    assert (out / "figures" / "mine_train_loss.png").stat().st_size > 0
    # every value logged is kept and drawn, also one logged in a second call at a step
    assert result["logged"]["val_loss"]["steps"] == [10, 20, 30, 40]
    assert all(math.isfinite(v) for row in result["logged"]["val_loss"]["values"] for v in row)
    assert (out / "figures" / "mine_val_loss.png").stat().st_size > 0
    assert "mine_val_loss.png" in (out / "report.md").read_text()
    assert "function `usertrain:train`" in (out / "report.md").read_text()
    # the variant's params overlay the setting's; each trial had a folder of its own
    assert sorted(trial_calls(project)) == sorted(f"{v}/{s}" for v in ("none", "dropout", "early")
                                             for s in range(3))  # fmt: skip
    assert read_log(out / "runs/mine/none/seed-1")[-1]["step"] == 40
    # `dropkit report` rebuilds the same claims from the folder alone
    assert build_report(out)["claims"] == report["claims"]


def test_the_same_numbers_in_this_process_and_in_worker_processes(project, tmp_path):
    config = load_config(write_config(project, user_config(project / "flags", seeds=2)))
    run_experiment(config, tmp_path / "one", progress=False, workers=1)
    run_experiment(config, tmp_path / "two", progress=False, workers=2)
    for variant in ("none", "dropout", "early"):
        one = json.loads((tmp_path / "one/runs/mine" / variant / "result.json").read_text())
        two = json.loads((tmp_path / "two/runs/mine" / variant / "result.json").read_text())
        assert one["metrics"] == two["metrics"]
        assert one["curve"] == two["curve"]


def test_a_raising_trial_fails_alone_and_a_rerun_trains_only_it(project, tmp_path, capsys):
    flags = project / "flags"
    (flags / "fail-dropout-1").touch()
    path = write_config(project, user_config(flags))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--workers", "1"]) == 1  # a job failed
    printed = capsys.readouterr()
    assert f"({out}/runs/mine/dropout/seed-1/)" in printed.out  # a path the user can open
    assert "1 job(s) failed (exit 1)" in printed.err
    trace = (out / "runs/mine/dropout/seed-1/traceback.txt").read_text()
    assert "RuntimeError: asked to fail seed 1" in trace and "usertrain.py" in trace
    failed = run_result(out, "dropout")
    assert failed["errors"] == [None, "RuntimeError: asked to fail seed 1", None]
    assert math.isnan(failed["metrics"]["train_acc"][1])
    report = json.loads((out / "report.json").read_text())
    u1 = next(c for c in report["claims"] if c["id"] == "U1")
    assert u1["failed_seeds"] == [1] and u1["n_seeds"] == 2
    report_md = (out / "report.md").read_text()
    assert "seed 1 **failed**: RuntimeError: asked to fail seed 1" in report_md
    assert "(runs/mine/dropout/seed-1/)" in report_md  # beside the report, relative to it
    assert "1 job(s) failed (mine/dropout/seed 1)" in printed.err

    (flags / "fail-dropout-1").unlink()
    (flags / "calls.txt").unlink()
    assert main(["run", str(path), "--out", str(out), "--workers", "1"]) == 0
    assert trial_calls(project) == ["dropout/1"]
    assert not (out / "runs/mine/dropout/seed-1/traceback.txt").exists()
    assert run_result(out, "dropout")["errors"] == [None, None, None]
    u1 = next(c for c in json.loads((out / "report.json").read_text())["claims"] if c["id"] == "U1")
    assert u1["failed_seeds"] == [] and u1["n_seeds"] == 3


def test_a_trial_changing_process_state_reaches_neither_the_driver_nor_a_later_setting(
    project, tmp_path, monkeypatch
):
    # the function chdirs into its trial folder and sets float64 as torch's default dtype:
    # the driver wrote the run's files under the trial folder (a relative --out resolved again)
    # and the built-in setting after it crashed on float64 tensors
    (project / "flags" / "leak").touch()
    raw = user_config(project / "flags", seeds=2)
    raw["settings"]["digits"] = {
        "data": "digits", "model": {"kind": "mlp", "width": 16, "depth": 1},
        "train": {"epochs": 1, "batch_size": 128}, "mc_passes": 0,
        "variants": {"none": {}, "dropout": {"dropout": {"schedule": "standard", "p": 0.1}}},
    }  # fmt: skip
    path = write_config(project, raw)
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(path), "--out", "relative", "--workers", "1"]) == 0
    assert (tmp_path / "relative" / "report.json").exists()
    assert not list((tmp_path / "relative" / "runs").glob("mine/*/seed-*/relative"))
    digits = json.loads((tmp_path / "relative/runs/digits/dropout/result.json").read_text())
    assert digits["seeds"] == [0, 1] and all(e is None for e in digits.get("errors") or [None])
    assert torch.get_default_dtype() == torch.float32 and Path.cwd() == tmp_path


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("nosuchmodule:train", "cannot import 'nosuchmodule'"),
        ("usertrain:missing", "module 'usertrain' has no 'missing'"),
        ("usertrain:two_arguments", "cannot be called as two_arguments(trial)"),
        ("usertrain", "expected MODULE:NAME"),
    ],
)
def test_a_bad_function_is_refused_before_anything_runs(project, tmp_path, capsys, function,
                                                        message):  # fmt: skip
    raw = user_config(project / "flags")
    raw["settings"]["mine"]["function"] = function
    out = tmp_path / "run"
    assert main(["run", str(write_config(project, raw)), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "settings.mine.function" in err and message in err
    assert not out.exists() and trial_calls(project) == []


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        ("list", "returned a list; a training function returns its final metrics as a mapping"),
        ("no_acc", "returned ['train_loss'] but the config's claims need ['train_acc']"),
    ],
)
def test_a_function_breaking_the_contract_fails_its_seeds_naming_the_setting(
    project, tmp_path, returned, message
):
    raw = user_config(project / "flags", seeds=2, **{"return": returned})
    config = load_config(write_config(project, raw))
    run_experiment(config, tmp_path / "run", progress=False)
    result = run_result(tmp_path / "run", "none")
    assert all(e is not None and "settings.mine: usertrain:train" in e and message in e
               for e in result["errors"])  # fmt: skip
    if returned == "no_acc":  # what the function did return is kept
        assert all(math.isfinite(v) for v in result["metrics"]["train_loss"])


def test_run_exits_1_when_every_job_failed_and_says_why(project, tmp_path, capsys):
    # a claim naming a metric the function never returns: every seed failed, exit code was 0
    raw = user_config(project / "flags", seeds=2, **{"return": "no_acc"})
    path = write_config(project, raw)
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert "6 job(s) failed; claim(s) U1 not measured (exit 1)" in err
    report = json.loads((out / "report.json").read_text())
    assert {c["id"]: c["verdict"] for c in report["claims"]}["U1"] == "not measured"
    assert "failed_jobs" not in report  # report.json holds claims, not one invocation's jobs
    assert (out / "runs/mine/none/seed-0/outcome.json").exists()
    # the same command trains them again: the failure was a seed's, not a result
    (project / "flags" / "calls.txt").unlink()
    assert main(["run", str(path), "--out", str(out), "--workers", "1"]) == 1
    assert len(trial_calls(project)) == 6


def test_params_that_json_changes_still_resume_and_a_date_is_refused(project, tmp_path, capsys):
    # integer keys become strings in config.json and NaN != NaN: the same command was refused
    # as "a different config"; a date crashed with a raw TypeError
    raw = user_config(project / "flags", seeds=2)
    raw["settings"]["mine"]["params"].update(milestones={30: 0.1}, floor=math.nan)
    path = write_config(project, raw)
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--workers", "1"]) == 0
    assert main(["run", str(path), "--out", str(out), "--workers", "1"]) == 0
    assert "different config" not in capsys.readouterr().err
    text = path.read_text().replace("params:", "params:\n      start: 2026-12-07", 1)
    path.write_text(text)
    assert main(["run", str(path), "--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert "settings.mine.params.start: datetime.date(2026, 12, 7) is a date" in err
    assert "quote it in YAML" in err and not (tmp_path / "other").exists()


def _git(project: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(project), *args], capture_output=True, text=True,
                          check=True)  # fmt: skip
    return done.stdout.strip()


def test_a_changed_function_file_is_refused_unless_allowed_and_then_reported(
    project, tmp_path, capsys
):
    # the function's learning rate changed, then --seeds 3 on the old folder: the folder held
    # seeds of two versions of the code and nothing said so
    _git(project, "init", "-q")
    _git(project, "-c", "user.email=u@x", "-c", "user.name=u", "add", "usertrain.py")
    _git(project, "-c", "user.email=u@x", "-c", "user.name=u", "commit", "-qm", "first")
    path = write_config(project, user_config(project / "flags", seeds=2))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--workers", "1"]) == 0
    code = json.loads((out / "config.json").read_text())["code"]["mine"]
    module = project / "usertrain.py"
    assert code["file"] == str(module.resolve()) and len(code["sha256"]) == 64
    assert code["git"] == {"commit": _git(project, "rev-parse", "HEAD"), "dirty": False}
    assert "## Code" in (out / "report.md").read_text()

    module.write_text(module.read_text().replace("lr=0.1", "lr=0.05"))
    sys.modules.pop("usertrain", None)
    (project / "flags" / "calls.txt").unlink()
    capsys.readouterr()
    assert main(["run", str(path), "--out", str(out), "--workers", "1", "--seeds", "3"]) == 2
    err = capsys.readouterr().err
    assert f"settings.mine.function: {module.resolve()} changed since" in err
    assert "pass another --out" in err and "--allow-changed-code" in err
    assert "git commit" in err and trial_calls(project) == []
    assert "extensions" not in json.loads((out / "config.json").read_text())

    assert main(["run", str(path), "--out", str(out), "--workers", "1", "--seeds", "3",
                 "--allow-changed-code"]) == 0  # fmt: skip
    assert sorted(trial_calls(project)) == ["dropout/2", "early/2", "none/2"]
    stored = json.loads((out / "config.json").read_text())
    (change,) = stored["code_changes"]
    assert change["setting"] == "mine" and change["from"] == code["sha256"]
    assert stored["code"]["mine"]["git"]["dirty"] is True
    report = (out / "report.md").read_text()
    assert "The code changed during this run" in report and "with uncommitted changes" in report
    # the same command once more: nothing changed since, nothing to allow
    assert main(["run", str(path), "--out", str(out), "--workers", "1", "--seeds", "3"]) == 0


def test_built_in_fields_and_params_do_not_mix(project):
    raw = user_config(project / "flags")
    raw["settings"]["mine"]["model"] = {"kind": "mlp"}
    with pytest.raises(ConfigError, match=r"settings.mine: \['model'\] belong to built-in"):
        load_config(write_config(project, raw))
    raw = user_config(project / "flags")
    raw["settings"]["mine"]["variants"]["none"] = {"params": [1]}
    expected = r"settings\.mine\.variants\.none\.params: expected a mapping"
    with pytest.raises(ConfigError, match=expected):
        load_config(write_config(project, raw))


def test_trial_checkpoint_restore_and_log(tmp_path):
    trial = Trial("s", "v", 0, None, None, 0.0, False, {}, 1.0, tmp_path / "t")  # type: ignore[arg-type]
    assert trial.restore() is None
    trial.checkpoint({"step": 3, "values": [1, 2]})
    assert trial.restore() == {"step": 3, "values": [1, 2]}
    assert [p.name for p in trial.dir.iterdir()] == ["checkpoint.pt"]  # no temporary left
    trial.log(10, train_loss=1.5)
    trial.log(20, train_loss=1.0)
    trial.log(10, train_loss=1.25)  # logged again after a restore: the later value counts
    with (trial.dir / "log.jsonl").open("a") as handle:
        handle.write('{"step": 30, "train_lo')  # a line cut short by a kill
    assert read_log(trial.dir) == [
        {"step": 10, "train_loss": 1.25},
        {"step": 20, "train_loss": 1.0},
    ]


@pytest.mark.slow
def test_a_killed_run_resumes_trials_from_their_checkpoints_to_the_same_numbers(project, tmp_path):
    flags = project / "flags"
    reference = tmp_path / "reference"
    # seed 1 of dropout waits after its first checkpoint until the run is killed: no race
    config_path = held_config_and_reference(project, 2, reference, held="dropout-1")
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "dropkit.cli", "run", str(config_path), "--out", str(out),
               "--workers", "1"]  # fmt: skip
    driver = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    checkpoint = out / "runs/mine/dropout/seed-1/checkpoint.pt"
    wait_for(checkpoint.exists, 120, "the held trial checkpoints")
    driver.send_signal(signal.SIGTERM)
    _, err = driver.communicate(timeout=60)
    assert driver.returncode == 128 + signal.SIGTERM, err
    assert "run the same command again to resume" in err
    interrupted = [p.parent for p in out.glob("runs/mine/*/seed-*/checkpoint.pt")
                   if not (p.parent / "outcome.json").exists()]  # fmt: skip
    assert interrupted == [checkpoint.parent]
    done_before = {p.parent.name + p.parent.parent.name
                   for p in out.glob("runs/mine/*/seed-*/outcome.json")}  # fmt: skip
    (flags / "calls.txt").unlink()
    assert main(["run", str(config_path), "--out", str(out), "--workers", "1"]) == 0
    assert len(trial_calls(project)) == 6 - len(done_before)
    for variant in ("none", "dropout", "early"):
        got, want = run_result(out, variant), run_result(reference, variant)
        assert got["metrics"] == want["metrics"]
        assert got["curve"] == want["curve"]


def test_the_plain_pytorch_example_runs_as_documented(tmp_path):
    pytest.importorskip("sklearn")
    folder = tmp_path / "example"
    shutil.copytree(EXAMPLES / "plain_pytorch", folder)
    raw = yaml.safe_load((folder / "config.yaml").read_text())
    raw["seeds"] = 2
    raw["settings"]["digits"]["params"]["epochs"] = 2
    (folder / "config.yaml").write_text(yaml.safe_dump(raw))
    try:
        report = run_experiment(load_config(folder / "config.yaml"), tmp_path / "run",
                                progress=False)  # fmt: skip
    finally:
        sys.modules.pop("digits", None)
        while str(folder) in sys.path:
            sys.path.remove(str(folder))
    assert report is not None
    assert {c["id"] for c in report["claims"]} == {"D1", "D2"}
    assert all(c["verdict"] != "not measured" for c in report["claims"])
    assert os.path.exists(tmp_path / "run" / "figures" / "digits_train_loss.png")
