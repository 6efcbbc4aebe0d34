"""The SLURM executor: jobs submitted through submitit, as job arrays; nothing of our own.

Each job is submitted as ``_Submission(job)``, a callable whose ``checkpoint`` method tells
submitit to requeue it when SLURM preempts it or its time limit nears (SIGUSR2); the requeued job
calls the same job again, and a training function resumes from its own ``trial.checkpoint()``.
Job ids are kept in ``jobs-<scope>.json`` in the executor's folder, one file per scope (a run
folder's id), each job with a key of what it computes (a hash of its repr). A driver
started again (after a kill, or after ``--detach``) re-attaches to a recorded job only when it
belongs to the same scope, computes the same thing, and has not been collected yet: still
queued or running, or ended with a result this driver has not handed on. So two experiments
sharing a folder never exchange results, a job that failed is submitted again, and a job of
other seeds is never taken for this one. A job that ends without a result (cancelled, failed
node, out of memory, time limit without a checkpoint) is reported as a `JobFailure` with
SLURM's state and the end of its log.

On the node, a job's process takes the CPUs its task was given as intra-op threads
(``cpus_per_task``; SLURM's default is one). A job of several tasks (``tasks_per_node``,
``nodes``) runs the same job in every task, as the ranks of one data-parallel trial: each gets
torch's environment variables for the process group from submitit's job environment, and task 0's
result is the job's.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from dropkit._optional import import_optional
from dropkit.experiments.base.io import read_json, write_json
from dropkit.experiments.engine.executors.interface import Job, JobFailure, OnDone, Progress

__all__ = ["SlurmExecutor", "job_states", "jobs_file"]

ACTIVE = ("PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING", "PREEMPTED", "RESIZING",
          "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED")  # fmt: skip
POLL_S = 2.0  # seconds between sacct calls while jobs are pending
LOST_AFTER_S = 120.0  # a job unknown to sacct and squeue this long is reported lost
LOG_TAIL_LINES = 20
TIME_LIMIT_KEYS = ("timeout_min", "slurm_time")
NO_TIME_LIMIT = (
    "SLURM: no timeout_min given, so submitit's default limit of 5 minutes "
    "applies to every job; near it a job is requeued (up to 3 times, resuming from its "
    "trial.checkpoint(), else from the start) and then fails. Give what a job needs, in minutes: "
    "timeout_min in the config's executor block, or --executor-param timeout_min=N."
)


def _submitit() -> Any:
    return import_optional("submitit", "slurm", "to submit jobs to SLURM")


class _Submission:
    """What submitit runs on a node: the job, and how to requeue it (submitit's checkpoint hook)."""

    def __init__(self, job: Job) -> None:
        self.job = job

    def __call__(self) -> Any:
        submitit = _submitit()
        environment = submitit.JobEnvironment()
        tasks_here = max(1, environment.num_tasks // environment.num_nodes)
        torch.set_num_threads(_task_cpus(tasks_here))
        if environment.num_tasks > 1:  # MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK
            submitit.helpers.TorchDistributedEnvironment().export(
                set_cuda_visible_devices=False, overwrite=True
            )
        return self.job()

    def checkpoint(self) -> Any:
        """Requeue the same job: a trial restores its own checkpoint when it starts again."""
        return _submitit().helpers.DelayedSubmission(self)


def _task_cpus(tasks_here: int) -> int:
    """The CPUs SLURM gave this task: ``cpus_per_task`` when the job set it, else the job's
    CPUs on this node shared among its tasks here (one, SLURM's default, when it says none)."""
    per_task = os.environ.get("SLURM_CPUS_PER_TASK")
    if per_task:
        return max(1, int(per_task))
    on_node = os.environ.get("SLURM_CPUS_ON_NODE")
    return max(1, int(on_node) // tasks_here) if on_node else 1


def _state(job: Any) -> str:
    """SLURM's state word (``CANCELLED by 0`` -> ``CANCELLED``)."""
    return str(job.state).split()[0].upper()


def _failure(job: Any) -> JobFailure:
    log = job.stderr() or job.stdout() or ""
    tail = "\n".join(log.strip().splitlines()[-LOG_TAIL_LINES:])
    reason = f"SLURM job {job.job_id} ended {job.state} without a result"
    return JobFailure(f"{reason}\n{tail}" if tail else reason)


def _in_queue(job_id: str) -> bool:
    """Whether ``squeue`` lists the job: one submitted a moment ago may not be in ``sacct`` yet
    (slurmctld reports it to the accounting database asynchronously)."""
    try:
        listed = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%i"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return listed.returncode == 0 and bool(listed.stdout.strip())


def _alive(job: Any) -> bool:
    """Queued or running, by sacct, or by squeue while sacct does not know the job yet."""
    state = _state(job)
    return state in ACTIVE or (state == "UNKNOWN" and _in_queue(job.job_id))


def jobs_file(folder: Path, scope: str) -> Path:
    """Where the executor in ``folder`` records the jobs of ``scope``."""
    return folder / f"jobs-{scope}.json"


def job_key(job: Job) -> str:
    """What a job computes, as a hash of its ``repr``: the jobs are frozen dataclasses of
    specs, so another config, seeds or trial folder give another key, and the same job the
    same key in any process (a pickle's bytes depend on which equal objects are shared)."""
    return hashlib.sha256(repr(job).encode()).hexdigest()


def _records(folder: Path, scope: str) -> dict[str, dict[str, Any]]:
    """``{label: {"job_id", "key", "collected"}}`` of ``scope``'s jobs in ``folder``."""
    path = jobs_file(folder, scope)
    return dict(read_json(path)) if path.exists() else {}


def _handles(folder: Path, job_ids: Mapping[str, str]) -> dict[str, Any]:
    """``{label: SlurmJob}`` of ``job_ids``, their states fetched with one sacct call."""
    submitit = _submitit()
    jobs = {label: submitit.SlurmJob(folder, job_id) for label, job_id in job_ids.items()}
    if jobs:
        next(iter(jobs.values())).watcher.update()
    return jobs


def _ended(job: Any) -> bool:
    if job.paths.result_pickle.exists():
        return True
    return _state(job) not in (*ACTIVE, "UNKNOWN")


class SlurmExecutor:
    """Submit jobs to SLURM with submitit's ``AutoExecutor``; ``parameters`` go to its
    ``update_parameters`` as given, ``name`` (made safe for sbatch) names the jobs in the queue
    unless they give one; jobs are recorded under ``scope`` (a run folder's id). With
    ``detach``, `run` returns once all are queued."""

    def __init__(
        self,
        folder: Path,
        parameters: Mapping[str, Any],
        *,
        scope: str,
        detach: bool = False,
        name: str = "dropkit",
    ) -> None:
        self.folder = Path(folder)
        self.parameters = {"name": re.sub(r"[^\w.-]+", "-", name), **parameters}
        self.scope = scope
        self.detach = detach

    def _attach(self, keys: Mapping[str, str]) -> dict[str, Any]:
        """The recorded jobs of this scope that compute what ``keys`` (by label) say, were not
        collected yet, and are still queued or running or have ended with a result."""
        records = _records(self.folder, self.scope)
        wanted = {
            label: record["job_id"]
            for label, record in records.items()
            if not record["collected"] and record["key"] == keys.get(label)
        }
        return {
            label: handle
            for label, handle in _handles(self.folder, wanted).items()
            if handle.paths.result_pickle.exists() or _alive(handle)
        }

    def _submit(self, jobs: Sequence[Job]) -> dict[str, Any]:
        if not jobs:
            return {}
        submitit = _submitit()
        executor = submitit.AutoExecutor(folder=self.folder, cluster="slurm")
        try:
            executor.update_parameters(**self.parameters)
        except (TypeError, ValueError, NameError) as err:
            raise ValueError(
                f"executor: submitit refuses the parameters {sorted(self.parameters)}: {err}"
            ) from err
        with executor.batch():
            submitted = [executor.submit(_Submission(job)) for job in jobs]
        # task 0 stands for the job: of several tasks (a trial's ranks) its result is the job's,
        # and a handle re-attached from a job id is task 0's too
        return {job.label: handle.task(0) for job, handle in zip(jobs, submitted)}

    def _record(self, keys: Mapping[str, str], handles: Mapping[str, Any]) -> None:
        records = _records(self.folder, self.scope)
        for label, handle in handles.items():
            records[label] = {"job_id": handle.job_id, "key": keys[label], "collected": False}
        write_json(jobs_file(self.folder, self.scope), records)

    def _collected(self, label: str) -> None:
        records = _records(self.folder, self.scope)
        records[label]["collected"] = True
        write_json(jobs_file(self.folder, self.scope), records)

    def run(self, jobs: Sequence[Job], on_done: OnDone, progress: Progress) -> None:
        by_label = {job.label: job for job in jobs}
        keys = {label: job_key(job) for label, job in by_label.items()}
        handles = self._attach(keys)
        fresh = self._submit([job for label, job in by_label.items() if label not in handles])
        handles |= fresh
        self._record(keys, handles)
        if handles:
            ids = sorted({h.job_id.split("_")[0] for h in handles.values()})
            print(
                f"SLURM: {len(fresh)} job(s) submitted, {len(handles) - len(fresh)} re-attached "
                f"(job {', '.join(ids)}; logs in {self.folder})",
                file=sys.stderr,
                flush=True,
            )
        if fresh and not any(key in self.parameters for key in TIME_LIMIT_KEYS):
            print(NO_TIME_LIMIT, file=sys.stderr, flush=True)
        if self.detach:
            return
        pending = dict(handles)
        unknown_since: dict[str, float] = {}  # jobs neither sacct nor squeue knows, since when
        while pending:
            next(iter(pending.values())).watcher.update()  # one sacct call per poll
            now = time.monotonic()
            for label, handle in list(pending.items()):
                if _ended(handle):
                    on_done(by_label[label], self._output(pending.pop(label)))
                    self._collected(label)
                elif _alive(handle):
                    unknown_since.pop(label, None)
                elif now - unknown_since.setdefault(label, now) > LOST_AFTER_S:
                    reason = f"SLURM job {handle.job_id} is known to neither sacct nor squeue"
                    on_done(by_label[label], JobFailure(f"{reason} (lost); run again to resubmit"))
                    self._collected(label)
                    del pending[label]
            if pending:
                time.sleep(POLL_S)

    @staticmethod
    def _output(handle: Any) -> Any:
        finished = _state(handle) in ("COMPLETED", "FAILED")
        if not finished and not handle.paths.result_pickle.exists():
            return _failure(handle)  # cancelled, killed, timed out: no result will come
        utils = _submitit().core.utils
        try:
            return handle.result()
        except utils.FailedJobError as err:  # the job raised: submitit's message has the trace
            tail = "\n".join(str(err).strip().splitlines()[-LOG_TAIL_LINES:])
            return JobFailure(f"SLURM job {handle.job_id} raised\n{tail}")
        except utils.UncompletedJobError:  # cancelled, killed, node failure: no result at all
            return _failure(handle)


def job_states(folder: Path, scope: str) -> dict[str, str]:
    """``{label: SLURM state}`` of ``scope``'s jobs recorded in ``folder`` and not collected yet
    (for ``dropkit status``; a collected job's result is in the run folder)."""
    records = _records(folder, scope)
    uncollected = {label: r["job_id"] for label, r in records.items() if not r["collected"]}
    return {
        label: f"{job.state} (job {job.job_id})"
        for label, job in _handles(folder, uncollected).items()
    }
