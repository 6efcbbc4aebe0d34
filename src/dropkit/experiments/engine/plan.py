"""Config -> jobs: a population per built-in (setting, variant), a trial per (variant, seed) of a
training function's setting, each with its place in the run folder and whether it is finished.

A trial whose outcome holds the metrics its claims need is finished (a non-finite metric is a
result: the seed diverged); one that raised, lacked a claimed metric, or whose job failed, is run
again by the next command (the driver
clears its folder first: `dropkit.experiments.engine.results.Results.retry`). The engine runs a
built-in setting's jobs without knowing what they compute: `make_plan` is handed the factory
that makes them (`dropkit.experiments.builtin.population.PopulationJobs`), and they answer for
their own place in the run folder as `FolderJob`s (`dropkit.experiments.base.layout`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from dropkit import schedules
from dropkit.experiments.base.layout import outcome_path, read_outcome, trial_dir
from dropkit.experiments.config.specs import ExperimentConfig, SettingSpec, VariantSpec
from dropkit.experiments.engine.executors import Job
from dropkit.experiments.engine.trial import Trial, TrialJob, failed_seed

__all__ = ["BuiltinJobs", "FolderJob", "Plan", "make_plan"]


class FolderJob(Job, Protocol):
    """A job that answers for its own output in a run folder ``out`` (a built-in population).

    The driver asks it whether that output is there (`finished`) and why its last attempt
    failed (`failure`), and hands it the output to write (`collect`), or the reason the job
    ended without one (`failed`); both run in the driver's process, the run folder's one
    writer, and return a word for the progress line."""

    def finished(self, out: Path) -> bool: ...

    def failure(self, out: Path) -> str | None: ...

    def failed(self, out: Path, reason: str) -> str: ...

    def collect(self, out: Path, output: Any) -> str: ...


# (run folder, setting, variant, the setting's seeds) -> the job training what is not there yet
BuiltinJobs = Callable[[Path, SettingSpec, VariantSpec, tuple[int, ...]], FolderJob]


def _claimed_metrics(config: ExperimentConfig, setting: SettingSpec) -> tuple[str, ...]:
    return tuple(sorted({c.metric for c in config.claims if c.setting == setting.name}))


def _trial(out: Path, setting: SettingSpec, spec: VariantSpec, seed: int) -> Trial:
    return Trial(
        setting=setting.name,
        variant=spec.name,
        seed=seed,
        # a variant that names no dropout trains without it, whatever rate the model was built with
        dropout=schedules.standard(0.0) if spec.dropout is None else spec.dropout.build(),
        drop_path=None if spec.drop_path is None else spec.drop_path.build(),
        rdrop_alpha=spec.rdrop_alpha,
        double_batch=spec.double_batch,
        params={**setting.params, **spec.params},
        budget=1.0,
        dir=trial_dir(out, setting.name, spec.name, seed),
    )


@dataclass(frozen=True)
class Plan:
    """Every job of a config in a run folder ``out``; `todo` those not finished."""

    config: ExperimentConfig
    out: Path
    jobs: tuple[Job, ...]

    def finished(self, job: Job) -> bool:
        if isinstance(job, TrialJob):
            trial = job.trial
            outcome = read_outcome(outcome_path(self.out, trial.setting, trial.variant, trial.seed))
            return outcome is not None and not failed_seed(outcome["metrics"], job.required)
        return cast(FolderJob, job).finished(self.out)

    def todo(self) -> list[Job]:
        """The jobs still to run."""
        return [job for job in self.jobs if not self.finished(job)]


def _lighter(setting: SettingSpec, spec: VariantSpec) -> tuple[bool, bool]:
    """Sorts a setting's variants heaviest first (those measuring dynamics, then those training
    on a doubled batch; config order otherwise), so that workers running jobs in plan order
    finish together instead of one running the longest job alone at the end."""
    dynamics = setting.dynamics is not None and spec.name in setting.dynamics.variants
    return not dynamics, not spec.doubled


def make_plan(
    config: ExperimentConfig, out: Path, builtin_jobs: BuiltinJobs, ranks: int = 1
) -> Plan:
    """One job per built-in (setting, variant), made by ``builtin_jobs``; one trial job per
    (variant, seed) of a function setting, run as ``ranks`` data-parallel ranks."""
    jobs: list[Job] = []
    for setting in config.settings:
        seeds = config.seeds_of(setting)
        for spec in sorted(setting.variants, key=lambda spec: _lighter(setting, spec)):
            if setting.function is None:
                jobs.append(builtin_jobs(out, setting, spec, seeds))
                continue
            required = _claimed_metrics(config, setting)
            jobs += [
                TrialJob(
                    setting.function, config.root, _trial(out, setting, spec, s), required, ranks
                )
                for s in seeds
            ]
    return Plan(config, out, tuple(jobs))
