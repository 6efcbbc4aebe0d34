"""The SLURM test cluster (``make slurm-up``) end to end through submitit: a job's result, a
cancelled job seen through sacct, and a preempted checkpointable job requeued and resumed.

The jobs run on this machine, so the job folder can be pytest's tmp_path; the jobs a test
submitted are cancelled and waited for when it ends, pass or fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.slurm_cluster import cancel_jobs, require_cluster
from tests.waiting import wait_for

submitit = pytest.importorskip("submitit")
cloudpickle = pytest.importorskip("cloudpickle")

# The job process unpickles what it runs: send this module's functions and classes by value, so
# that it needs neither to import `tests` nor to find it on its sys.path.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.slow


def _job_id_and_node() -> tuple[str, str]:
    return os.environ["SLURM_JOB_ID"], os.environ["SLURMD_NODENAME"]


class _Preemptible:
    """Sleeps until preempted on its first run and returns at once on the next: checkpoint()
    hands submitit the state to requeue with, here how many times it was preempted."""

    def __init__(self) -> None:
        self.preemptions = 0

    def __call__(self, started: str) -> int:
        if self.preemptions == 0:
            Path(started).touch()  # submitit's signal handlers are installed by now
            time.sleep(300)
        return self.preemptions

    def checkpoint(self, started: str) -> Any:
        self.preemptions += 1
        return submitit.helpers.DelayedSubmission(self, started)


def _sacct_states(job_id: str) -> list[str]:
    """The job's states, one per run (a requeued job has several), oldest first."""
    command = ["sacct", "-n", "-X", "-D", "-P", "-o", "State", "-j", job_id]
    return subprocess.check_output(command, text=True).split("\n")[:-1]


@pytest.fixture
def executor(tmp_path: Path) -> Iterator[Any]:
    """A slurm executor into tmp_path; the jobs submitted through it are gone afterwards."""
    require_cluster()
    ex = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    # the time limit only backs up the cleanup: no job here should run for long
    ex.update_parameters(timeout_min=5, cpus_per_task=1)
    yield ex
    cancel_jobs(tmp_path)


def test_job_result_and_cancelled_job(executor: Any) -> None:
    node = subprocess.check_output(["sinfo", "-h", "-N", "-o", "%N"], text=True).split()[0]
    done = executor.submit(_job_id_and_node)
    sleeping = executor.submit(time.sleep, 300)
    assert done.result() == (done.job_id, node)
    wait_for(lambda: _sacct_states(done.job_id) == ["COMPLETED"], 30, "sacct: job completed")

    wait_for(lambda: sleeping.get_info().get("State") == "RUNNING", 60, "sleeping job runs")
    subprocess.run(["scancel", sleeping.job_id], check=True)
    wait_for(lambda: sleeping.done(force_check=True), 30, "submitit: cancelled job done")
    assert sleeping.state.startswith("CANCELLED")  # sacct's "CANCELLED by <uid>"
    # A cancelled job leaves no result: exception() and result() wait that long (15 s by
    # default) for one before they give up.
    sleeping._results_timeout_s = 1
    uncompleted = submitit.core.utils.UncompletedJobError
    assert isinstance(sleeping.exception(), uncompleted)
    with pytest.raises(uncompleted, match="has not produced any output"):
        sleeping.result()


def test_preempted_checkpointable_job_is_requeued(executor: Any, tmp_path: Path) -> None:
    started = tmp_path / "started"
    job = executor.submit(_Preemptible(), str(started))
    wait_for(started.exists, 60, f"job {job.job_id} starts")
    # As SLURM preempts, and as submitit's own job._interrupt() does: SIGTERM, which submitit
    # ignores, then its preemption signal USR2, on which it checkpoints and requeues the job.
    # scancel returns before slurmd delivers, so USR2 waits until the SIGTERM has been seen: a
    # SIGTERM arriving after it would kill the `scontrol requeue` USR2's handler runs (seen once).
    start = time.monotonic()
    subprocess.run(["scancel", "--signal=TERM", job.job_id], check=True)
    wait_for(lambda: "Bypassing signal SIGTERM" in (job.stderr() or ""), 30, "SIGTERM delivered")
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)
    wait_for(job.paths.result_pickle.exists, 60, f"job {job.job_id} requeued and completed")
    requeued_s = time.monotonic() - start
    assert job.result() == 1  # the rerun started from the state checkpoint() returned
    log = job.stderr() or ""
    assert "Bypassing signal SIGTERM" in log
    assert "Caught signal SIGUSR2" in log
    wait_for(lambda: _sacct_states(job.job_id) == ["REQUEUED", "COMPLETED"], 30, "sacct: requeued")
    print(f"job {job.job_id} requeued and completed {requeued_s:.1f} s after the signals")
