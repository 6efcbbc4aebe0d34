"""Helpers for tests that need a live SLURM cluster (``make slurm-up`` starts one on this machine).

Without a cluster such tests skip, except in CI (``CI=true``), where ``.ci/run`` starts the cluster
first, so that a cluster that does not answer fails them instead of hiding them.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.waiting import wait_for

# node states (sinfo %T, less any *~#!%$@^- suffix) in which a node takes jobs
_USABLE = {"idle", "mixed", "allocated", "completing"}


def _slurm(*command: str) -> str:
    """stdout of a slurm command; raises RuntimeError with its stderr when it fails."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise RuntimeError(f"{command[0]}: {error}") from error
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


@functools.cache  # once per process: without a controller, sinfo takes ~10 s to give up
def cluster_available() -> str | None:
    """None when a cluster answers here (a node that takes jobs, and sacct), else why not."""
    for tool in ("sinfo", "sbatch", "srun", "scancel", "sacct"):
        if shutil.which(tool) is None:
            return f"no SLURM cluster: {tool} not found (start one with `make slurm-up`)"
    try:
        states = {state.rstrip("*~#!%$@^-") for state in _slurm("sinfo", "-h", "-o", "%T").split()}
        if not states & _USABLE:
            return f"no SLURM node takes jobs (sinfo states: {sorted(states) or 'none'})"
        _slurm("sacct", "-n", "-X", "-o", "JobID")  # submitit follows job states through sacct
    except RuntimeError as error:
        return f"no SLURM cluster answers: {error}"
    return None


def require_cluster() -> None:
    """Skip the calling test when no cluster answers; fail it in CI, where one must."""
    reason = cluster_available()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


def active_jobs(folder: Path) -> list[str]:
    """Ids of the jobs still pending, running or completing whose batch script lies in ``folder``
    (submitit writes its sbatch scripts into the executor's folder)."""
    listed = _slurm("squeue", "-h", "-o", "%A|%o")  # job id, batch script
    return [
        job_id
        for job_id, script in (line.split("|", 1) for line in listed.splitlines())
        if Path(script).is_relative_to(folder)
    ]


def cancel_jobs(folder: Path, timeout: float = 30.0) -> None:
    """Cancel the jobs submitted from ``folder`` and wait until none is left pending, running or
    completing, so that no process of theirs outlives the test; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while jobs := active_jobs(folder):
        if time.monotonic() > deadline:
            raise TimeoutError(f"SLURM jobs {jobs} still active {timeout:.0f} s after scancel")
        subprocess.run(["scancel", *jobs], capture_output=True, timeout=20, check=False)
        time.sleep(0.5)


def submitted_as(job_ids: Iterable[str]) -> list[str]:
    """``name|time limit`` of each job, as sacct accounts them: what was asked of SLURM. Waits
    until sacct lists every job (slurmctld reports them to the database asynchronously)."""
    ids = list(job_ids)
    command = ["sacct", "-n", "-X", "-P", "-o", "JobName,Timelimit", "-j", ",".join(ids)]
    rows: list[str] = []

    def accounted() -> bool:
        rows[:] = _slurm(*command).split()
        return len(rows) == len(ids)

    wait_for(accounted, 30, f"sacct: jobs {ids} accounted")
    return rows


def recorded_job_ids(folder: Path) -> dict[str, str]:
    """``{label: SLURM job id}`` the executor recorded in ``folder`` (one run's scope: one
    ``jobs-<run id>.json``); empty before the first submission."""
    files = list(folder.glob("jobs-*.json"))
    assert len(files) <= 1, f"jobs of several runs in {folder}: {files}"
    records = json.loads(files[0].read_text()) if files else {}
    return {label: record["job_id"] for label, record in records.items()}
