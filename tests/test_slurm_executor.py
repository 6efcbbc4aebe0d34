"""The SLURM executor end to end on the test cluster (``make slurm-up``): the same numbers as the
local executor, preemption -> requeue -> resume from the trial's checkpoint, a cancelled job
recorded as failed and retrained alone, and detach -> status -> collect.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from dropkit.cli import main
from dropkit.experiments.config.parse import load_config
from dropkit.experiments.engine.executors.slurm import NO_TIME_LIMIT, SlurmExecutor
from dropkit.experiments.runner import run_experiment
from dropkit.experiments.status import job_status
from tests.slurm_cluster import cancel_jobs, recorded_job_ids, require_cluster, submitted_as
from tests.user_project import (
    data_parallel_config,
    data_parallel_folder,
    held_config_and_reference,
    project_folder,
    run_result,
    trial_calls,
    user_config,
    write_config,
)
from tests.waiting import wait_for

pytest.importorskip("submitit")
pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[None]:
    """A live cluster; every job submitted from this test's folders is gone afterwards."""
    require_cluster()
    yield
    cancel_jobs(tmp_path)


@pytest.fixture
def ddp_project(tmp_path: Path) -> Iterator[Path]:
    yield from data_parallel_folder(tmp_path)


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    yield from project_folder(tmp_path)


def _driver(config: Path, out: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "dropkit.cli", "run", str(config), "--out", str(out),
               "--executor", "slurm"]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _job_id(out: Path, label: str) -> str:
    return recorded_job_ids(out / "slurm").get(label, "")


def _metrics(out: Path) -> dict[str, dict]:
    return {
        str(path.relative_to(out)): json.loads(path.read_text())["metrics"]
        for path in sorted(out.glob("runs/*/*/result.json"))
    }


def test_a_training_function_gives_the_same_numbers_on_slurm_as_here(cluster, project, tmp_path):
    config_path = write_config(project, user_config(project / "flags", seeds=2))
    local = run_experiment(load_config(config_path), tmp_path / "local", progress=False)
    assert main(["run", str(config_path), "--out", str(tmp_path / "slurm"),
                 "--executor", "slurm"]) == 0  # fmt: skip
    assert _metrics(tmp_path / "slurm") == _metrics(tmp_path / "local")
    for variant in ("none", "dropout", "early"):
        assert (
            run_result(tmp_path / "slurm", variant)["curve"]
            == run_result(tmp_path / "local", variant)["curve"]
        )
    report = json.loads((tmp_path / "slurm" / "report.json").read_text())
    assert report["claims"] == local["claims"] if local else False
    ids = recorded_job_ids(tmp_path / "slurm/slurm")
    assert len(ids) == 6 and len({i.split("_")[0] for i in ids.values()}) == 1  # one job array
    # named after the config; no timeout_min given, so submitit's default of 5 minutes
    assert submitted_as(ids.values()) == ["dropkit-userfn|00:05:00"] * 6


def _outcomes(out: Path) -> dict[str, dict]:
    return {
        str(path.parent.relative_to(out)): json.loads(path.read_text())
        for path in sorted(out.glob("runs/*/*/seed-*/outcome.json"))
    }


def test_a_two_task_job_trains_its_trial_as_two_ranks_with_the_numbers_of_one_process(
    cluster, ddp_project, tmp_path
):
    local = load_config(data_parallel_config(ddp_project))
    run_experiment(local, tmp_path / "local", threads=1, progress=False)
    executor = {"kind": "slurm", "timeout_min": 5, "tasks_per_node": 2, "cpus_per_task": 1}
    two = load_config(data_parallel_config(ddp_project, executor=executor))
    report = run_experiment(two, tmp_path / "slurm", progress=False)
    assert report["failed_jobs"] == []
    here, there = _outcomes(tmp_path / "local"), _outcomes(tmp_path / "slurm")
    assert sorted(here) == sorted(there) and len(here) == 4
    for key in here:
        assert there[key]["metrics"]["train_loss"] == pytest.approx(
            here[key]["metrics"]["train_loss"], abs=1e-6
        )
        assert there[key]["metrics"]["rank"] == 0  # task 0's result is the trial's
        assert there[key]["where"] == {"device": "cpu", "threads": 1, "world_size": 2}
    # one task given two CPUs: its trial trains with two threads
    executor = {"kind": "slurm", "timeout_min": 5, "cpus_per_task": 2}
    wide = load_config(data_parallel_config(ddp_project, executor=executor, early=False))
    run_experiment(wide, tmp_path / "wide", progress=False)
    threads = {o["where"]["threads"] for o in _outcomes(tmp_path / "wide").values()}
    assert threads == {2}


def test_a_rank_that_fails_on_slurm_fails_the_trial_with_its_error(cluster, ddp_project, tmp_path):
    executor = {"kind": "slurm", "timeout_min": 5, "tasks_per_node": 2}
    config = load_config(data_parallel_config(ddp_project, executor=executor, early=False,
                                              fail="rank1"))  # fmt: skip
    report = run_experiment(config, tmp_path / "out", progress=False)
    assert len(report["failed_jobs"]) == 2
    outcome = _outcomes(tmp_path / "out")["runs/mine/none/seed-0"]
    assert outcome["error"] == "rank 1 of 2 failed: ValueError: rank one broke at step 5"


def test_advise_probes_a_function_as_ranks_of_the_slurm_tasks(cluster, ddp_project, tmp_path):
    from dropkit.experiments.advise import advise_function
    from dropkit.experiments.config.parse import load_settings

    (setting,) = load_settings(data_parallel_config(ddp_project, early=False))
    parameters = {"timeout_min": 5, "tasks_per_node": 2}
    advise_function(setting, str(ddp_project), tmp_path / "advice", seeds=2, executor="slurm",
                    executor_parameters=parameters)  # fmt: skip
    for arm in ("none", "dropout"):
        log = (tmp_path / f"advice/probes/{arm}/seed-0/log.jsonl").read_text().splitlines()
        assert {json.loads(line)["ranks"] for line in log} == {2.0}


def test_a_preempted_data_parallel_trial_resumes_on_every_rank(cluster, ddp_project, tmp_path):
    reference = tmp_path / "reference"
    run_experiment(load_config(data_parallel_config(ddp_project, early=False)), reference,
                   ranks=2, threads=1, progress=False)  # fmt: skip
    held = tmp_path / "held"
    held.mkdir()
    executor = {"kind": "slurm", "timeout_min": 5, "tasks_per_node": 2}
    config = data_parallel_config(ddp_project, executor=executor, early=False,
                                  hold_after_checkpoint=str(held))  # fmt: skip
    out = tmp_path / "run"
    driver = _driver(config, out)
    label, checkpoint = "mine/none/seed 0", out / "runs/mine/none/seed-0/checkpoint.pt"
    wait_for(lambda: len(list(held.iterdir())) == 2 and checkpoint.exists()
             and _job_id(out, label), 120, "both ranks wait after the checkpoint")  # fmt: skip
    job = _job_id(out, label)
    # preempted as in the one-rank test: SIGTERM (ignored by submitit), then USR2, on which task
    # 0 checkpoints and requeues the job (task 1 leaves it to task 0)
    subprocess.run(["scancel", "--signal=TERM", job], check=True)
    logs = [out / "slurm" / f"{job}_{task}_log.err" for task in (0, 1)]
    wait_for(lambda: all(log.exists() and "Bypassing signal SIGTERM" in log.read_text()
                         for log in logs), 30, "SIGTERM delivered")  # fmt: skip
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    _, stderr = driver.communicate(timeout=180)
    assert driver.returncode == 0, stderr
    states = subprocess.check_output(["sacct", "-n", "-X", "-D", "-P", "-o", "State", "-j", job],
                                     text=True).split()  # fmt: skip
    assert states == ["REQUEUED", "COMPLETED"]
    # both ranks went on from the checkpoint (a rank that started afresh would have waited
    # again, past the driver's timeout): the numbers of the uninterrupted 2-rank trial
    assert _metrics(out) == _metrics(reference)


def test_jobs_are_named_safely_for_sbatch_unless_the_parameters_name_them(tmp_path):
    assert SlurmExecutor(tmp_path, {}, scope="s", name="dropkit-my run/v2").parameters == {
        "name": "dropkit-my-run-v2"
    }
    assert SlurmExecutor(tmp_path, {"name": "mine"}, scope="s", name="dropkit-x").parameters == {
        "name": "mine"
    }


def test_the_quick_demo_gives_the_same_results_on_slurm_as_here(cluster, tmp_path):
    base = ["demo", "--quick", "--seeds", "2"]
    assert main([*base, "--out", str(tmp_path / "local")]) == 0
    started = time.perf_counter()
    assert main([*base, "--out", str(tmp_path / "slurm"), "--executor", "slurm"]) == 0
    print(f"quick demo (2 seeds) through SLURM: {time.perf_counter() - started:.1f} s")
    local, slurm = _metrics(tmp_path / "local"), _metrics(tmp_path / "slurm")
    assert slurm == local and len(local) >= 8


def test_a_preempted_trial_is_requeued_and_resumes_from_its_checkpoint(cluster, project, tmp_path):
    flags = project / "flags"
    reference = tmp_path / "reference"
    # the trial waits after its first checkpoint until it is preempted: no race with its end
    config_path = held_config_and_reference(project, 2, reference, held="early-0")
    out = tmp_path / "run"
    driver = _driver(config_path, out)
    label = "mine/early/seed 0"
    checkpoint = out / "runs/mine/early/seed-0/checkpoint.pt"
    wait_for(lambda: checkpoint.exists() and _job_id(out, label), 120, "the trial checkpoints")
    job = _job_id(out, label)
    # what SLURM sends on preemption, as submitit's own tests do: SIGTERM (submitit's job
    # ignores it), then USR2, on which it checkpoints and requeues; USR2 waits until the SIGTERM
    # has been seen, as in test_slurm_cluster.py (a late SIGTERM kills the requeue)
    log = out / "slurm" / f"{job}_0_log.err"
    subprocess.run(["scancel", "--signal=TERM", job], check=True)
    wait_for(lambda: log.exists() and "Bypassing signal SIGTERM" in log.read_text(), 30,
             "SIGTERM delivered")  # fmt: skip
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    _, stderr = driver.communicate(timeout=180)
    assert driver.returncode == 0, stderr
    assert NO_TIME_LIMIT in stderr  # the config sets no timeout_min: submitit's 5 minutes
    restored = (flags / "restored.txt").read_text().split()
    assert len(restored) == 1 and restored[0].startswith("early/0@")
    assert trial_calls(project).count("early/0") == 2
    states = subprocess.check_output(["sacct", "-n", "-X", "-D", "-P", "-o", "State", "-j", job],
                                     text=True).split()  # fmt: skip
    assert states == ["REQUEUED", "COMPLETED"]
    assert _metrics(out) == _metrics(reference)
    assert run_result(out, "early")["curve"] == run_result(reference, "early")["curve"]


def test_a_cancelled_job_is_recorded_as_failed_and_a_rerun_trains_only_it(
    cluster, project, tmp_path
):
    flags = project / "flags"
    # the trial waits after its first checkpoint, outliving SLURM's KillWait (5 s) after scancel
    config_path = write_config(project, user_config(flags, seeds=2))
    (flags / "hold-dropout-0").touch()
    out = tmp_path / "run"
    driver = _driver(config_path, out)
    label = "mine/dropout/seed 0"
    checkpoint = out / "runs/mine/dropout/seed-0/checkpoint.pt"
    wait_for(lambda: checkpoint.exists() and _job_id(out, label), 120, "the trial checkpoints")
    subprocess.run(["scancel", _job_id(out, label)], check=True)
    _, stderr = driver.communicate(timeout=180)
    assert driver.returncode == 1, stderr  # a job failed
    assert "1 job(s) failed (mine/dropout/seed 0)" in stderr
    error = run_result(out, "dropout")["errors"][0]
    assert error.startswith(f"SLURM job {_job_id(out, label)} ended CANCELLED")
    assert job_status(out)[label].startswith("failed: ")
    # a failed trial starts again from scratch (its checkpoint is gone), this time unheld
    (flags / "calls.txt").unlink()
    (flags / "hold-dropout-0").unlink()
    assert main(["run", str(config_path), "--out", str(out), "--executor", "slurm"]) == 0
    assert trial_calls(project) == ["dropout/0"]
    assert not (flags / "restored.txt").exists()
    assert run_result(out, "dropout")["errors"] == [None, None]


def test_detach_then_status_then_the_same_command_collects(cluster, project, tmp_path, capsys):
    raw = user_config(project / "flags", seeds=2, sleep=0.02)
    config_path = write_config(project, raw | {"executor": {"kind": "slurm", "timeout_min": 10}})
    out = tmp_path / "run"
    command = ["run", str(config_path), "--out", str(out)]
    # the command line's submitit parameters go over the block's, typed as submitit checks them
    params = ["--executor-param", "timeout_min=7", "--executor-param", "name=dk-detach"]
    assert main([*command, *params, "--detach"]) == 0
    printed = capsys.readouterr()
    assert "submitted; `dropkit status" in printed.out
    assert "SLURM: 6 job(s) submitted" in printed.err and NO_TIME_LIMIT not in printed.err
    ids = recorded_job_ids(out / "slurm").values()
    assert submitted_as(ids) == ["dk-detach|00:07:00"] * 6
    assert not (out / "report.json").exists()
    labels = {f"mine/{v}/seed {s}" for v in ("none", "dropout", "early") for s in (0, 1)}
    assert set(job_status(out)) == labels
    wait_for(lambda: all(s.startswith("finished, not collected") for s in job_status(out).values()),
          120, "the detached jobs finish")  # fmt: skip
    assert main(["status", str(out)]) == 0
    assert "6 finished, not collected yet" in capsys.readouterr().out
    assert main(command) == 0  # collects: nothing is submitted again
    assert sorted(trial_calls(project)) == [f"{v}/{s}" for v in ("dropout", "early", "none")
                                            for s in (0, 1)]  # fmt: skip
    assert set(job_status(out).values()) == {"done"}
    assert (out / "report.json").exists()


def test_a_driver_killed_while_jobs_run_reattaches_instead_of_resubmitting(
    cluster, project, tmp_path
):
    config_path = write_config(project, user_config(project / "flags", seeds=2, sleep=0.05))
    out = tmp_path / "run"
    driver = _driver(config_path, out)
    wait_for(lambda: recorded_job_ids(out / "slurm"), 60, "the jobs are submitted")
    driver.send_signal(signal.SIGTERM)
    _, stderr = driver.communicate(timeout=60)
    assert driver.returncode == 128 + signal.SIGTERM and "run the same command again" in stderr
    ids = recorded_job_ids(out / "slurm")
    assert main(["run", str(config_path), "--out", str(out), "--executor", "slurm"]) == 0
    assert recorded_job_ids(out / "slurm") == ids
    assert sorted(trial_calls(project)) == [f"{v}/{s}" for v in ("dropout", "early", "none")
                                            for s in (0, 1)]  # fmt: skip


def test_two_runs_sharing_an_executor_folder_never_exchange_jobs(cluster, project, tmp_path):
    # re-attaching matched jobs by label alone: the second run submitted nothing and reported
    # the first's numbers; so did a run folder deleted and made again
    shared = tmp_path / "shared-slurm"
    raw = user_config(project / "flags", seeds=2)
    raw["executor"] = {"kind": "slurm", "folder": str(shared), "timeout_min": 5}
    config_path = write_config(project, raw)
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["run", str(config_path), "--out", str(first)]) == 0
    assert main(["run", str(config_path), "--out", str(second)]) == 0
    assert len(trial_calls(project)) == 12  # each run trained its own six trials
    assert len(list(shared.glob("jobs-*.json"))) == 2
    assert _metrics(second) == _metrics(first)  # the same numbers, trained twice
    shutil.rmtree(first)
    assert main(["run", str(config_path), "--out", str(first)]) == 0
    assert len(trial_calls(project)) == 18


def test_a_failed_trial_is_trained_again_on_slurm(cluster, project, tmp_path, capsys):
    # the rerun re-attached to the failed job and recorded the same error, while status said
    # "finished, not collected yet: run the same command again", forever
    flags = project / "flags"
    (flags / "fail-dropout-0").touch()
    config_path = write_config(project, user_config(flags, seeds=2))
    out = tmp_path / "run"
    command = ["run", str(config_path), "--out", str(out), "--executor", "slurm"]
    assert main(command) == 1
    assert job_status(out)["mine/dropout/seed 0"] == "failed: RuntimeError: asked to fail seed 0"
    (flags / "fail-dropout-0").unlink()
    capsys.readouterr()
    assert main(command) == 0
    assert "SLURM: 1 job(s) submitted, 0 re-attached" in capsys.readouterr().err
    assert trial_calls(project).count("dropout/0") == 2
    assert run_result(out, "dropout")["errors"] == [None, None]
    assert set(job_status(out).values()) == {"done"}


def test_seeds_added_to_a_finished_built_in_run_train_on_slurm(cluster, tmp_path):
    # --seeds on a finished built-in run re-attached to the old jobs: the new seeds never
    # trained, though config.json recorded the extension
    raw = {
        "name": "grow", "seeds": 2,
        "settings": {"digits": {
            "data": "digits", "model": {"kind": "mlp", "width": 16, "depth": 1},
            "train": {"epochs": 1, "batch_size": 128}, "mc_passes": 0,
            "variants": {"none": {}, "dropout": {"dropout": {"schedule": "standard", "p": 0.1}}},
        }},
        "executor": {"kind": "slurm", "timeout_min": 5},
    }  # fmt: skip
    config_path = tmp_path / "grow.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    assert main(["run", str(config_path), "--out", str(out)]) == 0
    assert main(["run", str(config_path), "--out", str(out), "--seeds", "3"]) == 0
    for variant in ("none", "dropout"):
        result = json.loads((out / "runs/digits" / variant / "result.json").read_text())
        assert result["seeds"] == [0, 1, 2]
    local = tmp_path / "local"
    raw["seeds"] = 3
    config_path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(config_path), "--out", str(local), "--executor", "local"]) == 0
    assert _metrics(out) == _metrics(local)
