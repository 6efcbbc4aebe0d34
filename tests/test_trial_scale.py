"""Where a trial runs: its device, its threads, and a data-parallel trial of several ranks (real
gloo process groups in separate processes), locally; the SLURM side is in
``test_slurm_executor.py``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from dropkit import schedules
from dropkit.experiments import Trial
from dropkit.experiments.config.parse import load_config, parse_config
from dropkit.experiments.config.specs import ConfigError
from dropkit.experiments.engine.executors import local
from dropkit.experiments.engine.trial import _onto
from dropkit.experiments.runner import run_experiment
from tests.user_project import data_parallel_config, data_parallel_folder
from tests.waiting import wait_for


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    yield from data_parallel_folder(tmp_path)


def _outcomes(out: Path) -> dict[str, dict]:
    return {
        str(path.parent.relative_to(out)): json.loads(path.read_text())
        for path in sorted(out.glob("runs/mine/*/seed*/outcome.json"))
    }


def _trial(tmp_path: Path, **where) -> Trial:
    return Trial(
        setting="s", variant="v", seed=0, dropout=schedules.standard(0.0), drop_path=None,
        rdrop_alpha=0.0, double_batch=False, params={}, budget=1.0, dir=tmp_path / "t", **where,
    )  # fmt: skip


def test_a_two_rank_trial_equals_the_one_process_trial_on_the_same_global_batch(project, tmp_path):
    config = load_config(data_parallel_config(project))
    run_experiment(config, tmp_path / "one", threads=1, progress=False)
    run_experiment(config, tmp_path / "two", ranks=2, workers=2, threads=1, progress=False)
    one, two = _outcomes(tmp_path / "one"), _outcomes(tmp_path / "two")
    assert sorted(one) == sorted(two) and len(one) == 4
    for key in one:
        assert one[key]["error"] is None and two[key]["error"] is None, two[key]["error"]
        assert two[key]["metrics"]["train_loss"] == pytest.approx(
            one[key]["metrics"]["train_loss"], abs=1e-6
        )
        assert one[key]["metrics"]["train_loss"] < 0.5  # it trained
        assert (one[key]["metrics"]["ranks"], two[key]["metrics"]["ranks"]) == (1, 2)
        assert two[key]["metrics"]["rank"] == 0  # rank 0's return is the trial's
        assert two[key]["where"] == {"device": "cpu", "threads": 1, "world_size": 2}
    # only rank 0 logs: every logged row is rank 0's
    logged = (tmp_path / "two/runs/mine/none/seed-0/log.jsonl").read_text().splitlines()
    assert len(logged) == 30 and {json.loads(line)["rank"] for line in logged} == {0.0}


def test_a_rank_that_fails_fails_the_trial_with_its_error(project, tmp_path):
    config = load_config(data_parallel_config(project, early=False, fail="rank1"))
    report = run_experiment(config, tmp_path / "out", ranks=2, workers=2, threads=1,
                            progress=False)  # fmt: skip
    assert len(report["failed_jobs"]) == 2
    outcome = _outcomes(tmp_path / "out")["runs/mine/none/seed-0"]
    assert outcome["metrics"] is None
    assert outcome["error"] == "rank 1 of 2 failed: ValueError: rank one broke at step 5"
    text = (tmp_path / "out/runs/mine/none/seed-0/traceback.txt").read_text()
    assert "--- rank 1 of 2 ---" in text and "rank one broke" in text


def test_a_rank_0_that_dies_is_a_failed_job_naming_the_exit_codes(project, tmp_path):
    config = load_config(data_parallel_config(project, early=False, fail="rank0-dies"))
    run_experiment(config, tmp_path / "out", ranks=2, workers=2, threads=1, progress=False)
    outcome = _outcomes(tmp_path / "out")["runs/mine/none/seed-0"]
    assert outcome["error"].startswith("rank 0 ended without a result (exit codes rank 0: 3,")


def test_each_worker_sees_one_gpu_of_its_own_and_the_threads_it_was_given(
    project, tmp_path, monkeypatch
):
    # no GPU here: the driver's list of visible GPUs stands in for a machine with two, and each
    # worker reports the CUDA_VISIBLE_DEVICES it was started with
    monkeypatch.setattr(local, "visible_gpus", lambda: ["5", "7"])
    config = load_config(data_parallel_config(project, early=False))
    run_experiment(config, tmp_path / "pool", workers=2, threads=2, progress=False)
    pool = _outcomes(tmp_path / "pool")
    assert {o["metrics"]["gpu"] for o in pool.values()} <= {5.0, 7.0}
    assert {o["metrics"]["threads"] for o in pool.values()} == {2.0}
    run_experiment(config, tmp_path / "ranks", ranks=2, workers=1, threads=1, progress=False)
    # rank 0 of the one group at a time: the first GPU
    assert {o["metrics"]["gpu"] for o in _outcomes(tmp_path / "ranks").values()} == {5.0}


def test_workers_share_the_cores_unless_threads_says(monkeypatch, project, tmp_path):
    monkeypatch.setattr(local, "_cores", lambda: 6)
    config = load_config(data_parallel_config(project, early=False))
    run_experiment(config, tmp_path / "out", workers=2, progress=False)
    assert {o["where"]["threads"] for o in _outcomes(tmp_path / "out").values()} == {3}
    before = torch.get_num_threads()
    run_experiment(config, tmp_path / "here", threads=2, progress=False)  # in this process
    assert {o["where"]["threads"] for o in _outcomes(tmp_path / "here").values()} == {2}
    assert torch.get_num_threads() == before


def test_the_default_workers_are_one_per_gpu(monkeypatch):
    monkeypatch.setattr(local, "visible_gpus", lambda: ["0", "1", "2"])
    assert local.default_workers() == 3
    monkeypatch.setattr(local, "visible_gpus", list)
    assert local.default_workers() >= 1


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert local.visible_gpus() == ["2", "3"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert local.visible_gpus() == []


def test_a_trial_runs_on_the_cpu_here_as_one_rank(tmp_path):
    trial = _trial(tmp_path)
    assert trial.device == torch.device("cpu")
    assert (trial.rank, trial.world_size, trial.local_rank, trial.is_main) == (0, 1, 0, True)


def test_ranks_other_than_0_neither_log_nor_checkpoint_but_restore(tmp_path):
    main, other = _trial(tmp_path), _trial(tmp_path, rank=1, world_size=2, local_rank=1)
    other.log(1, loss=1.0)
    other.checkpoint({"step": 1})
    assert not (tmp_path / "t").exists()
    main.checkpoint({"step": 2})
    main.log(2, loss=0.5)
    assert other.restore() == {"step": 2}
    assert (tmp_path / "t/log.jsonl").read_text().count("\n") == 1


@contextmanager
def _saved_as_if_on(location: str) -> Iterator[None]:
    """``torch.save`` tags every storage with ``location`` (a GPU's, on a machine without one)."""
    entry = (0, lambda storage: location, lambda storage, tag: None)
    torch.serialization._package_registry.insert(0, entry)
    try:
        yield
    finally:
        torch.serialization._package_registry.remove(entry)


def test_restore_brings_a_gpu_checkpoint_onto_a_cpu_trial(tmp_path):
    trial = _trial(tmp_path)
    with _saved_as_if_on("cuda:1"):
        trial.checkpoint({"w": torch.ones(2)})
    with pytest.raises(RuntimeError, match="CUDA"):  # as torch.load alone would
        torch.load(tmp_path / "t/checkpoint.pt", weights_only=False)
    restored = trial.restore()
    assert restored["w"].device.type == "cpu" and restored["w"].tolist() == [1.0, 1.0]


def test_restore_keeps_cpu_tensors_on_the_cpu_for_a_gpu_trial(tmp_path):
    storage = torch.arange(3.0).untyped_storage()
    # an RNG state saved from the CPU stays there (torch.set_rng_state takes no GPU tensor):
    # placing it touches no GPU
    assert _onto(torch.device("cuda", 0))(storage, "cpu") is storage
    assert _onto(torch.device("cpu"))(storage, "cuda:1") is storage
    trial = _trial(tmp_path)
    trial.checkpoint({"w": torch.ones(2), "rng": torch.get_rng_state()})
    torch.set_rng_state(trial.restore()["rng"])
    assert trial.restore(map_location="meta")["w"].device.type == "meta"  # as torch.load's


def test_ranks_are_refused_where_they_cannot_apply(tmp_path, project):
    builtin = {"name": "b", "seeds": 2, "settings": {"s": {
        "data": "digits", "model": {"kind": "mlp"}, "train": {"epochs": 1},
        "variants": {"none": {}}}}}  # fmt: skip
    with pytest.raises(ConfigError, match=r"settings \['s'\] are built-in"):
        run_experiment(parse_config(builtin), tmp_path / "b", ranks=2, progress=False)
    slurm = {**builtin, "executor": {"kind": "slurm", "tasks_per_node": 2, "nodes": 2}}
    config = parse_config(slurm)
    assert config.executor.ranks == 4
    with pytest.raises(ConfigError, match="4 tasks per job"):
        run_experiment(config, tmp_path / "s", progress=False)
    function = load_config(data_parallel_config(project)).with_executor("slurm")
    with pytest.raises(ConfigError, match="tasks_per_node x nodes"):
        run_experiment(function, tmp_path / "f", ranks=2, progress=False)
    with pytest.raises(ConfigError, match="cpus_per_task"):
        run_experiment(function, tmp_path / "f", threads=2, progress=False)
    bad = parse_config({**slurm, "executor": {"kind": "slurm", "tasks_per_node": "two"}})
    with pytest.raises(ConfigError, match="tasks_per_node: expected a whole number"):
        assert bad.executor.ranks


def test_the_command_line_takes_ranks_and_threads_and_refuses_them_on_slurm(
    project, tmp_path, capsys
):
    from dropkit.cli import main

    config = str(data_parallel_config(project, seeds=2))
    out = str(tmp_path / "out")
    assert main(["run", config, "--out", out, "--ranks", "2", "--executor", "slurm"]) == 2
    assert "tasks_per_node x nodes" in capsys.readouterr().err
    assert main(["run", config, "--out", out, "--threads", "2", "--executor", "slurm"]) == 2
    assert "cpus_per_task" in capsys.readouterr().err
    assert main(["run", config, "--out", out, "--ranks", "0"]) == 2
    assert "ranks" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_an_interrupted_or_killed_driver_leaves_no_rank_behind(project, tmp_path, how):
    # SIGTERM: the driver stops the ranks and says how to resume; SIGKILL: each rank's watchdog
    # ends it (the autouse fixture fails the test if any process outlives it)
    hold = tmp_path / "hold"
    hold.mkdir()
    config = data_parallel_config(project, early=False, hold=str(hold))
    out = str(tmp_path / "out")
    command = [sys.executable, "-m", "dropkit.cli", "run", str(config), "--out", out,
               "--ranks", "2", "--workers", "1", "--threads", "1"]  # fmt: skip
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(list(hold.iterdir())) == 2, timeout=120, what="both ranks started")
        driver.send_signal(getattr(signal, how))
        _, err = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
    assert driver.returncode == (128 + signal.SIGTERM if how == "SIGTERM" else -signal.SIGKILL)
    if how == "SIGTERM":
        assert "interrupted by SIGTERM: 0 of 2 jobs finished" in err
    assert not list((tmp_path / "out").rglob("outcome.json"))


def test_a_folder_trained_at_one_rank_count_refuses_another(project, tmp_path):
    # a trial's numbers change with its ranks when its data per rank does (a per-device
    # batch): seeds trained at 2 ranks would mix into seeds trained at 1 unnoticed
    config = load_config(data_parallel_config(project, early=False))
    out = tmp_path / "out"
    run_experiment(config, out, threads=1, progress=False)
    assert json.loads((out / "config.json").read_text())["ranks"] == 1
    with pytest.raises(ValueError, match=r"as 1 rank\(s\), this command as 2.*--ranks 1"):
        run_experiment(config.with_seeds(3), out, ranks=2, progress=False)
    assert not (out / "runs/mine/none/seed-2").exists()  # refused before anything trained
    report = run_experiment(config.with_seeds(3), out, threads=1, progress=False)
    assert report["failed_jobs"] == []
