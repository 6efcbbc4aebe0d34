"""The fault table, part two: faults while an experiment runs (``test_faults.py`` has the inputs).

SIGTERM / a killed parent, two writers on one folder, divergence, a damaged result, a full disk,
a changed config; the README's table lists what dropkit does for each. The autouse fixture in
``conftest.py`` fails any of these tests whose processes outlive it.
"""

import errno
import fcntl
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dropkit.cli import main

# --- faults while an experiment runs ------------------------------------------------------------

TINY_RUN = {
    "name": "tiny",
    "seeds": 2,
    "settings": {
        "digits": {
            "data": "digits",
            "model": {"kind": "mlp", "width": 16, "depth": 1},
            "train": {"epochs": 2, "batch_size": 64, "log_every": 5},
            "variants": {"none": {}, "dropout": {"dropout": {"schedule": "standard", "p": 0.2}}},
        }
    },
    "claims": [
        {"id": "T", "statement": "dropout vs none", "setting": "digits", "metric": "test_acc",
         "a": "dropout", "b": "none", "direction": ">"},
    ],
}  # fmt: skip


def _write_config(path: Path, raw: dict | None = None) -> Path:
    # in the dict's order (settings and variants run in file order), not sorted
    path.write_text(yaml.safe_dump(raw or TINY_RUN, sort_keys=False))
    return path


def _slow(raw: dict, epochs: int = 60) -> dict:
    """The tiny config, trained long enough to be interrupted part-way."""
    slow = json.loads(json.dumps(raw))
    slow["settings"]["digits"]["train"]["epochs"] = epochs
    return slow


def _quick_then_slow(epochs: int = 30) -> dict:
    """A setting ``brief`` (2 epochs, both variants done in about a second each) run before the
    tiny config's ``digits`` trained ``epochs`` long: interrupted once ``brief`` is done, a run
    has finished jobs to keep and unfinished ones to resume."""
    raw = _slow(TINY_RUN, epochs)
    brief = json.loads(json.dumps(TINY_RUN["settings"]["digits"]))
    raw["settings"] = {"brief": brief, **raw["settings"]}
    return raw


BRIEF = {"brief/dropout", "brief/none"}  # the jobs of _quick_then_slow that finish first


def _results(out: Path) -> set[str]:
    """``setting/variant`` of every run with a result."""
    runs = out / "runs"
    found = runs.rglob("result.json") if runs.exists() else []
    return {f"{p.parent.parent.name}/{p.parent.name}" for p in found}


def _wait_for_results(out: Path, wanted: set[str], process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not wanted <= _results(out) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert wanted <= _results(out), f"{sorted(wanted)} never finished: {sorted(_results(out))}"


def _snapshot(out: Path, runs: set[str]) -> dict[str, tuple[bytes, int]]:
    """Each run's result file: its bytes and its modification time in nanoseconds."""
    files = {run: out / "runs" / run / "result.json" for run in runs}
    return {run: (path.read_bytes(), path.stat().st_mtime_ns) for run, path in files.items()}


def _resume_keeps(out: Path, config: Path, kept: dict[str, tuple[bytes, int]], capsys) -> None:
    """The same command again: it trains only the unfinished runs, and the finished ones keep
    their result files byte for byte, never rewritten."""
    capsys.readouterr()
    assert main(["run", str(config), "--out", str(out), "--workers", "1"]) == 0
    err = capsys.readouterr().err
    started = {line.split("] ")[1].split(":")[0] for line in err.splitlines()
               if line.startswith("[job ")}  # fmt: skip
    assert started == {"digits/dropout", "digits/none"}, err
    assert _snapshot(out, set(kept)) == kept
    assert _results(out) == BRIEF | {"digits/dropout", "digits/none"}
    assert (out / "report.json").exists()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dropkit.cli", *args]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("workers", "signum"),
    [("1", signal.SIGTERM), ("2", signal.SIGTERM), ("1", signal.SIGUSR1), ("2", signal.SIGUSR2)],
)  # SIGUSR1/2: what `sbatch --signal` sends a driver running in a job before its time limit
def test_sigterm_stops_the_workers_keeps_finished_runs_and_says_how_to_resume(
    tmp_path, workers, signum, capsys
):
    config = _write_config(tmp_path / "c.yaml", _quick_then_slow())
    out = tmp_path / "out"
    process = subprocess.Popen(
        _cli("run", str(config), "--out", str(out), "--workers", workers),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_for_results(out, BRIEF, process)  # `digits` is training now, for seconds yet
        kept = _snapshot(out, BRIEF)
        process.send_signal(signum)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 128 + signum, err
    name = signal.Signals(signum).name
    assert f"interrupted by {name}: 2 of 4 jobs finished and are kept" in err
    assert "run the same command again to resume" in err
    assert _results(out) == BRIEF  # the finished runs stay, the interrupted ones left no result
    assert _snapshot(out, BRIEF) == kept
    assert not list(out.rglob("*.tmp"))  # no partial file left behind
    assert not (out / "report.json").exists()
    # (the autouse fixture fails this test if a worker or the resource tracker is still alive)
    _resume_keeps(out, config, kept, capsys)


def test_workers_exit_when_their_parent_is_killed(tmp_path, capsys):
    config = _write_config(tmp_path / "c.yaml", _quick_then_slow())
    out = tmp_path / "out"
    process = subprocess.Popen(
        _cli("run", str(config), "--out", str(out), "--workers", "2"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_for_results(out, BRIEF, process)  # both workers are training `digits` now
        kept = _snapshot(out, BRIEF)
    finally:
        process.kill()
        process.wait()
    # a kill gives no chance to clean up: the finished runs stay as they were, and the runs the
    # workers were training left no result (only the driver writes one, once a run is done)
    assert _results(out) == BRIEF
    assert _snapshot(out, BRIEF) == kept
    assert not (out / "report.json").exists()
    # the watchdog ends each worker once it runs; the autouse fixture checks none outlives this
    _resume_keeps(out, config, kept, capsys)


def test_a_second_command_on_the_same_folder_is_refused_with_the_holders_pid(tmp_path, capsys):
    config = _write_config(tmp_path / "c.yaml")
    out = tmp_path / "out"
    out.mkdir()
    with (out / ".lock").open("a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        handle.write("4242@node17")
        handle.flush()
        assert main(["run", str(config), "--out", str(out), "--workers", "1"]) == 2
        err = capsys.readouterr().err
        assert "pid 4242 on node17" in err and not (out / "runs").exists()
    # the lock is advisory and held by an open file: once released, the folder is usable
    assert main(["run", str(config), "--out", str(out), "--workers", "1"]) == 0


def test_report_and_advise_take_the_folders_lock_too(tmp_path, capsys):
    # two advise runs on one folder emptied each other's probes; a report rebuilt while a run
    # wrote the folder could read it half written
    config = _write_config(tmp_path / "c.yaml")
    out = tmp_path / "out"
    assert main(["run", str(config), "--out", str(out), "--workers", "1"]) == 0
    setting = tmp_path / "setting.yaml"
    setting.write_text(yaml.safe_dump(
        {"data": "digits", "model": {"kind": "mlp", "width": 16, "depth": 1},
         "train": {"epochs": 2, "batch_size": 64}}
    ))  # fmt: skip
    advice = tmp_path / "advice"
    advice.mkdir()
    for folder, command in ((out, ["report", str(out)]),
                            (advice, ["advise", str(setting), "--out", str(advice)])):  # fmt: skip
        capsys.readouterr()
        with (folder / ".lock").open("a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            handle.truncate(0)
            handle.write("4242@node17")
            handle.flush()
            assert main(command) == 2
            assert "pid 4242 on node17" in capsys.readouterr().err
    assert not (advice / "advice.md").exists()


def test_a_file_system_without_locks_is_named_as_the_problem(tmp_path, capsys, monkeypatch):
    def no_locks(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    config = _write_config(tmp_path / "c.yaml")
    out = tmp_path / "out"
    assert main(["run", str(config), "--out", str(out), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "file system without file locks (flock: No locks available)" in err
    assert "free space" not in err and not (out / "runs").exists()


def test_divergence_is_a_result_not_a_crash(tmp_path, capsys):
    raw = json.loads(json.dumps(TINY_RUN))
    raw["settings"]["digits"]["train"]["lr"] = 1e6  # trains to NaN within a few steps
    out = tmp_path / "out"
    assert main(["run", str(_write_config(tmp_path / "c.yaml", raw)), "--out", str(out),
                 "--workers", "1"]) == 1  # fmt: skip
    assert "claim(s) T not measured (exit 1)" in capsys.readouterr().err
    result = json.loads((out / "runs" / "digits" / "none" / "result.json").read_text())
    total = result["total_steps"]
    assert all(step is not None and step < total for step in result["diverged_at"])
    assert all(math.isnan(v) for v in result["metrics"]["test_acc"])
    report = json.loads((out / "report.json").read_text())
    (claim,) = report["claims"]
    assert claim["verdict"] == "not measured" and claim["failed_seeds"] == [0, 1]
    text = (out / "report.md").read_text()
    assert "2 of 2 seeds diverged" in text
    assert (out / "figures" / "digits_train_loss.png").exists()  # figures skip non-finite points


def test_a_truncated_result_is_trained_again_on_resume(tmp_path, capsys):
    config = _write_config(tmp_path / "c.yaml")
    out = tmp_path / "out"
    assert main(["run", str(config), "--out", str(out), "--workers", "1"]) == 0
    whole = json.loads((out / "report.json").read_text())["claims"]
    result = out / "runs" / "digits" / "none" / "result.json"
    result.write_text(result.read_text()[:100])  # a disk that lost the end of the file
    assert main(["report", str(out)]) == 2
    assert "is damaged" in capsys.readouterr().err
    assert main(["run", str(config), "--out", str(out), "--workers", "1"]) == 0
    assert "training it again" in capsys.readouterr().err
    assert json.loads((out / "report.json").read_text())["claims"] == whole


def test_a_full_disk_names_the_file_and_leaves_nothing_half_written(tmp_path, capsys, monkeypatch):
    config = _write_config(tmp_path / "c.yaml")
    out = tmp_path / "out"
    real_replace = os.replace

    def full_disk(src, dst):
        if str(dst).endswith("result.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk)
    assert main(["run", str(config), "--out", str(out), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "result.json" in err
    assert _results(out) == set() and not list(out.rglob("*.tmp"))
    monkeypatch.setattr(os, "replace", real_replace)  # space freed: the same command resumes
    assert main(["run", str(config), "--out", str(out), "--workers", "1"]) == 0
    assert _results(out) == {"digits/none", "digits/dropout"}


def test_a_config_changed_between_a_crash_and_the_resume_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(_write_config(tmp_path / "a.yaml")), "--out", str(out),
                 "--workers", "1"]) == 0  # fmt: skip
    changed = json.loads(json.dumps(TINY_RUN))
    changed["settings"]["digits"]["train"]["lr"] = 0.01
    assert main(["run", str(_write_config(tmp_path / "b.yaml", changed)), "--out", str(out),
                 "--workers", "1"]) == 2  # fmt: skip
    assert "holds a run of a different config" in capsys.readouterr().err


def test_a_folder_recorded_with_another_eval_batch_resumes_without_retraining(tmp_path, capsys):
    # eval_batch changes no number (its default moved from 8192 to 1024): a folder written
    # before is the same run, not a different config
    config, out = _write_config(tmp_path / "a.yaml"), tmp_path / "out"
    assert main(["run", str(config), "--out", str(out), "--workers", "1"]) == 0
    recorded = json.loads((out / "config.json").read_text())
    recorded["config"]["settings"]["digits"]["train"]["eval_batch"] = 8192
    (out / "config.json").write_text(json.dumps(recorded))
    results = {p: p.read_bytes() for p in out.rglob("result.json")}
    assert main(["run", str(config), "--out", str(out), "--workers", "1"]) == 0
    assert {p: p.read_bytes() for p in out.rglob("result.json")} == results
    assert "extensions" not in json.loads((out / "config.json").read_text())
    assert "different config" not in capsys.readouterr().err


def test_the_process_fixture_sees_a_child_that_would_outlive_its_test():
    from tests.conftest import _MARKER, _marked_processes

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in _marked_processes(os.environ[_MARKER])
    finally:
        child.kill()
        child.wait()
    assert child.pid not in _marked_processes(os.environ[_MARKER])
