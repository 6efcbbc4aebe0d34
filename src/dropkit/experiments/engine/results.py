"""The driver's side of a finished job: the one writer of the run folder's results.

A trial's outcome becomes ``seed-<n>/outcome.json``; once every seed of a (setting, variant) has
one, its ``result.json`` is assembled from them: a failed seed's metrics are NaN and its reason
is kept, so claims list it as failed. A trial job that ended without output (`JobFailure`) is
recorded the same way. Any other job (a built-in population) writes its own output, as a
`dropkit.experiments.engine.plan.FolderJob`. Every file is written atomically.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from typing import Any, cast

from dropkit.experiments.base.io import write_json, write_jsonl
from dropkit.experiments.base.layout import (
    OUTCOME_FILE,
    RESULT_FILE,
    outcome_path,
    read_outcome,
    run_dir,
    trial_dir,
)
from dropkit.experiments.base.record import Curve, RunRecord, Series
from dropkit.experiments.config.specs import VariantSpec
from dropkit.experiments.engine.executors import Job, JobFailure
from dropkit.experiments.engine.plan import FolderJob, Plan
from dropkit.experiments.engine.trial import TrialJob, TrialOutcome, failed_seed, read_log

__all__ = ["Results"]


def _cutoff(spec: VariantSpec, total_steps: int) -> int | None:
    """The cutoff step on the logged steps' scale (None when nothing was logged or it does not
    fit: the figure then draws no cutoff line)."""
    try:
        return spec.cutoff_step(total_steps) if total_steps > 0 else None
    except ValueError:
        return None


class Results:
    """Write what each finished job produced into the plan's run folder."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def retry(self, job: Job) -> None:
        """Before ``job`` runs again: a trial that failed starts from a clean folder (no
        checkpoint or log of the failed attempt); an interrupted one keeps its checkpoint."""
        if isinstance(job, TrialJob) and (job.trial.dir / OUTCOME_FILE).exists():
            shutil.rmtree(job.trial.dir)

    def collect(self, job: Job, output: Any) -> str:
        """Record ``output`` of ``job``; return a word for the progress line."""
        if isinstance(job, TrialJob):
            return self._trial(job, output)
        folder_job = cast(FolderJob, job)
        if isinstance(output, JobFailure):
            return folder_job.failed(self.plan.out, output.reason)
        return folder_job.collect(self.plan.out, output)

    def _trial(self, job: TrialJob, output: TrialOutcome | JobFailure) -> str:
        trial = job.trial
        if isinstance(output, JobFailure):
            output = TrialOutcome(None, output.reason)
        write_json(
            outcome_path(self.plan.out, trial.setting, trial.variant, trial.seed),
            dataclasses.asdict(output),
        )
        self._assemble(trial.setting, trial.variant, job.required)
        if failed_seed(output.metrics, job.required):
            return f"failed: {(output.error or '').splitlines()[0]}"
        return "done" if output.error is None else output.error

    def _assemble(self, setting_name: str, variant: str, required: tuple[str, ...]) -> None:
        """Write the (setting, variant)'s ``result.json`` once every seed has an outcome: a
        seed that lacks a ``required`` metric is failed, with its reason, and keeps the
        metrics it has."""
        out, config = self.plan.out, self.plan.config
        setting = next(s for s in config.settings if s.name == setting_name)
        seeds = list(config.seeds_of(setting))
        read = [read_outcome(outcome_path(out, setting_name, variant, s)) for s in seeds]
        outcomes = [o for o in read if o is not None]
        if len(outcomes) < len(seeds):
            return
        logs = [read_log(trial_dir(out, setting_name, variant, s)) for s in seeds]
        names = sorted({m for o in outcomes if o and o["metrics"] for m in o["metrics"]})
        metrics = {
            name: [
                float(o["metrics"].get(name, math.nan)) if o and o["metrics"] else math.nan
                for o in outcomes
            ]
            for name in names
        }
        logged = {name: _series(logs, name) for name in sorted(_logged_names(logs))}
        loss = logged.pop("train_loss", Series([], [[] for _ in logs]))
        total = max((row["step"] for log in logs for row in log), default=0)
        spec = setting.variant(variant)
        record = RunRecord(
            setting=setting_name,
            variant=variant,
            seeds=seeds,
            total_steps=total,
            cutoff_step=_cutoff(spec, total),
            metrics=metrics,
            curve=Curve(loss.steps, loss.values, {}),
            dynamics=None,
            wall_s=sum(float(o.get("seconds") or 0.0) for o in outcomes if o),
            diverged_at=[None] * len(seeds),
            errors=[o["error"] if failed_seed(o["metrics"], required) else None for o in outcomes],
            logged=logged,
        )
        rows = [
            {"variant": variant, "seed": seed, **row}
            for seed, log in zip(seeds, logs)
            for row in log
        ]
        rows += [
            {"variant": variant, "seed": seed, "step": total, **(o["metrics"] or {})}
            for seed, o in zip(seeds, outcomes)
            if o
        ]
        folder = run_dir(out, setting_name, variant)
        write_jsonl(folder / "metrics.jsonl", rows)
        write_json(folder / RESULT_FILE, record.to_dict())


def _logged_names(logs: list[list[dict[str, Any]]]) -> set[str]:
    return {name for log in logs for row in log for name in row if name != "step"}


def _series(logs: list[list[dict[str, Any]]], name: str) -> Series:
    """``name`` as logged by each seed, at every step any seed logged it (NaN where a seed
    did not)."""
    steps = sorted({row["step"] for log in logs for row in log if name in row})
    by_step = [{row["step"]: row.get(name, math.nan) for row in log} for log in logs]
    return Series(steps, [[seed.get(k, math.nan) for k in steps] for seed in by_step])
