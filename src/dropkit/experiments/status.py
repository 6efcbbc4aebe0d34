"""``dropkit status DIR``: where each job of a run folder stands, read from the folder (and, for
SLURM jobs, from ``sacct`` through submitit) without changing anything."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from dropkit.experiments.base.io import read_json
from dropkit.experiments.base.layout import outcome_path, read_outcome
from dropkit.experiments.builtin.population import PopulationJobs
from dropkit.experiments.config.parse import parse_config
from dropkit.experiments.engine.plan import FolderJob, make_plan
from dropkit.experiments.engine.trial import TrialJob

__all__ = ["EXECUTOR_FILE", "job_status", "status_table"]

EXECUTOR_FILE = "executor.json"
_QUEUED = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "CONFIGURING", "PREEMPTED", "SUSPENDED")
_RUNNING = ("RUNNING", "COMPLETING")


def _failure_reason(out: Path, job: object) -> str | None:
    if isinstance(job, TrialJob):
        t = job.trial
        outcome = read_outcome(outcome_path(out, t.setting, t.variant, t.seed))
        return None if outcome is None else outcome.get("error")
    return cast(FolderJob, job).failure(out)


def _slurm_word(state: str) -> str:
    word = state.split()[0].upper()
    if word in _QUEUED:
        return f"queued ({state})"
    if word in _RUNNING:
        return f"running ({state})"
    if word == "COMPLETED":
        return f"finished, not collected yet: run the same command again ({state})"
    return f"failed: {state}"


def job_status(run_folder: str | Path) -> dict[str, str]:
    """``{job label: status}`` for every job of the run folder's config."""
    out = Path(run_folder).resolve()
    config_path = out / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{run_folder} has no config.json: is it a dropkit run folder?")
    plan = make_plan(parse_config(read_json(config_path)["config"]), out, PopulationJobs())
    executor = read_json(out / EXECUTOR_FILE) if (out / EXECUTOR_FILE).exists() else {}
    states: dict[str, str] = {}
    if executor.get("kind") == "slurm":
        from dropkit.experiments.engine.executors.slurm import job_states

        states = job_states(Path(executor["folder"]), executor.get("scope", ""))
    status = {}
    for job in plan.jobs:
        if plan.finished(job):
            status[job.label] = "done"
        elif job.label in states:
            status[job.label] = _slurm_word(states[job.label])
        elif (reason := _failure_reason(out, job)) is not None:
            status[job.label] = f"failed: {reason.splitlines()[0]}"
        else:
            status[job.label] = "not started"
    return status


def status_table(run_folder: str | Path) -> str:
    """The statuses as lines, with a count per status at the end."""
    status = job_status(run_folder)
    width = max(map(len, status), default=0)
    lines = [f"{label:<{width}}  {word}" for label, word in status.items()]
    counts: dict[str, int] = {}
    for word in status.values():
        key = word.split(":")[0].split(" (")[0]
        counts[key] = counts.get(key, 0) + 1
    lines.append(", ".join(f"{n} {word}" for word, n in counts.items()))
    return "\n".join(lines)
