"""Config -> jobs: a population per built-in (setting, variant), a trial per (variant, seed) of a
training function's setting, each with its place in the run folder and whether it is finished.

The run folder: ``runs/<setting>/<variant>/result.json`` (written by the driver alone) marks a
(setting, variant) finished; a trial's own folder is ``runs/<setting>/<variant>/seed-<n>/``, where
the driver keeps its ``outcome.json``. A trial whose outcome holds metrics is finished (a
non-finite metric is a result: the seed diverged); one that raised, or whose job failed, is run
again by the next command (the driver clears its folder first:
`dropkit.experiments.results.Results.retry`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dropkit import schedules
from dropkit.experiments.config import ExperimentConfig, SettingSpec, VariantSpec
from dropkit.experiments.executors import Job
from dropkit.experiments.io import read_json
from dropkit.experiments.population import PopulationJob, train_variant_spec
from dropkit.experiments.record import RunRecord
from dropkit.experiments.trial import Trial, TrialJob

__all__ = ["Plan", "make_plan", "outcome_path", "run_dir"]

OUTCOME_FILE = "outcome.json"
RESULT_FILE = "result.json"


def run_dir(out: Path, setting: str, variant: str) -> Path:
    return out / "runs" / setting / variant


def trial_dir(out: Path, setting: str, variant: str, seed: int) -> Path:
    return run_dir(out, setting, variant) / f"seed-{seed}"


def outcome_path(out: Path, setting: str, variant: str, seed: int) -> Path:
    return trial_dir(out, setting, variant, seed) / OUTCOME_FILE


def read_outcome(path: Path) -> dict[str, Any] | None:
    """A trial's recorded outcome (None when there is none, or it is unreadable)."""
    try:
        return dict(read_json(path))
    except (OSError, ValueError, TypeError):
        return None


def read_record(path: Path, *, quiet: bool = False) -> RunRecord | None:
    """The result at ``path``; None when there is none, or it is damaged (then trained again)."""
    if not path.exists():
        return None
    try:
        return RunRecord.from_dict(read_json(path))
    except (ValueError, KeyError, TypeError) as err:  # truncated or not a result: retrain
        if not quiet:
            print(f"{path} is damaged ({type(err).__name__}); training it again", file=sys.stderr)
        return None


def _seeds_to_train(path: Path, seeds: tuple[int, ...]) -> tuple[int, ...]:
    """``seeds`` less those a result at ``path`` already holds (a run extended by ``--seeds``);
    all of ``seeds`` when it holds none of them or seeds outside them."""
    record = read_record(path, quiet=True)
    if record is None or not set(record.seeds) <= set(seeds):
        return seeds
    return tuple(s for s in seeds if s not in record.seeds) or seeds


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
            return outcome is not None and outcome.get("metrics") is not None
        assert isinstance(job, PopulationJob)
        record = read_record(run_dir(self.out, job.setting.name, job.variant.name) / RESULT_FILE)
        return record is not None and set(job.seeds) <= set(record.seeds)

    def todo(self) -> list[Job]:
        """The jobs still to run."""
        return [job for job in self.jobs if not self.finished(job)]


def _lighter(setting: SettingSpec, spec: VariantSpec) -> tuple[bool, bool]:
    """Sorts a setting's variants heaviest first (those measuring dynamics, then those training
    on a doubled batch; config order otherwise), so that workers running jobs in plan order
    finish together instead of one running the longest job alone at the end."""
    dynamics = setting.dynamics is not None and spec.name in setting.dynamics.variants
    return not dynamics, not train_variant_spec(spec).doubled


def make_plan(
    config: ExperimentConfig, out: Path, cache_dir: Path | None = None, *, eager: bool = False
) -> Plan:
    """One population job per built-in (setting, variant), of the seeds its result does not hold
    yet; one trial job per (variant, seed) of a function setting. ``eager`` keeps every
    population off ``torch.compile``."""
    jobs: list[Job] = []
    for setting in config.settings:
        seeds = config.seeds_of(setting)
        for spec in sorted(setting.variants, key=lambda spec: _lighter(setting, spec)):
            if setting.function is None:
                result = run_dir(out, setting.name, spec.name) / RESULT_FILE
                todo = _seeds_to_train(result, seeds)
                jobs.append(PopulationJob(setting, spec, todo, cache_dir, eager))
                continue
            required = _claimed_metrics(config, setting)
            jobs += [
                TrialJob(setting.function, config.root, _trial(out, setting, spec, s), required)
                for s in seeds
            ]
    return Plan(config, out, tuple(jobs))
