"""The SLURM executor: jobs submitted through submitit, as job arrays; nothing of our own.

Each job is submitted as ``_Submission(job)``, a callable whose ``checkpoint`` method tells
submitit to requeue it when SLURM preempts it or its time limit nears (SIGUSR2); the requeued job
calls the same job again, and a training function resumes from its own ``trial.checkpoint()``.
Job ids are kept in ``jobs.json`` in the executor's folder, so a driver started again (after a
kill, or after ``--detach``) re-attaches to jobs still queued or running instead of submitting
them twice, and collects those that finished while it was away. A job that ends without a
result (cancelled, failed node, out of memory, time limit without a checkpoint) is reported as
a `JobFailure` with SLURM's state and the end of its log.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dropkit._optional import import_optional
from dropkit.experiments.base.io import read_json, write_json
from dropkit.experiments.engine.executors.interface import Job, JobFailure, OnDone, Progress

__all__ = ["JOBS_FILE", "SlurmExecutor", "job_states"]

JOBS_FILE = "jobs.json"
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
        return self.job()

    def checkpoint(self) -> Any:
        """Requeue the same job: a trial restores its own checkpoint when it starts again."""
        return _submitit().helpers.DelayedSubmission(self)


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


def _recorded_jobs(folder: Path, labels: Sequence[str] | None = None) -> dict[str, Any]:
    """``{label: SlurmJob}`` of the job ids in ``folder/jobs.json`` (all, or those of
    ``labels``), their states fetched with one sacct call."""
    path = folder / JOBS_FILE
    recorded = dict(read_json(path)) if path.exists() else {}
    wanted = recorded if labels is None else [label for label in labels if label in recorded]
    submitit = _submitit()
    jobs = {label: submitit.SlurmJob(folder, recorded[label]) for label in wanted}
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
    unless they give one. With ``detach``, `run` returns once all are queued."""

    def __init__(
        self,
        folder: Path,
        parameters: Mapping[str, Any],
        *,
        detach: bool = False,
        name: str = "dropkit",
    ) -> None:
        self.folder = Path(folder)
        self.parameters = {"name": re.sub(r"[^\w.-]+", "-", name), **parameters}
        self.detach = detach

    def _attach(self, labels: Sequence[str]) -> dict[str, Any]:
        """The recorded jobs of ``labels`` that are still queued or running, or have ended with
        a result this driver has not collected yet."""
        jobs = _recorded_jobs(self.folder, labels)
        return {
            label: job
            for label, job in jobs.items()
            if job.paths.result_pickle.exists() or _alive(job)
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
        return {job.label: handle for job, handle in zip(jobs, submitted)}

    def run(self, jobs: Sequence[Job], on_done: OnDone, progress: Progress) -> None:
        by_label = {job.label: job for job in jobs}
        handles = self._attach(list(by_label))
        fresh = self._submit([job for label, job in by_label.items() if label not in handles])
        handles |= fresh
        path = self.folder / JOBS_FILE
        recorded = dict(read_json(path)) if path.exists() else {}
        write_json(path, recorded | {label: h.job_id for label, h in handles.items()})
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
                elif _alive(handle):
                    unknown_since.pop(label, None)
                elif now - unknown_since.setdefault(label, now) > LOST_AFTER_S:
                    reason = f"SLURM job {handle.job_id} is known to neither sacct nor squeue"
                    on_done(by_label[label], JobFailure(f"{reason} (lost); run again to resubmit"))
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


def job_states(folder: Path) -> dict[str, str]:
    """``{label: SLURM state}`` of the jobs recorded in ``folder`` (for ``dropkit status``)."""
    return {
        label: f"{job.state} (job {job.job_id})" for label, job in _recorded_jobs(folder).items()
    }
