"""The built-in job: train one (setting, variant) of a built-in setting over all its seeds.

The seeds train as one population (`dropkit.experiments.builtin.train.train_variant`); the job
returns a `PopulationOutput` — the run's `RunRecord`, its metric rows and dynamics records — and
writes nothing where it runs. Back in the driver, the job writes that output into the run
folder (``result.json``, ``metrics.jsonl``, ``records.jsonl``; ``failure.json`` for a job that
ended without output): the engine knows it only as a
`dropkit.experiments.engine.plan.FolderJob`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dropkit.diagnostics import train_test_inconsistency
from dropkit.experiments.base.io import read_json, read_jsonl, write_json, write_jsonl
from dropkit.experiments.base.layout import FAILURE_FILE, RESULT_FILE, read_record, run_dir
from dropkit.experiments.base.record import Curve, RunRecord
from dropkit.experiments.base.threads import fixed_threads
from dropkit.experiments.builtin import data as datasets
from dropkit.experiments.builtin.dynamics import DynamicsProbe
from dropkit.experiments.builtin.models import model_factory
from dropkit.experiments.builtin.train import Population, TrainResult, Variant, train_variant
from dropkit.experiments.config.specs import SettingSpec, VariantSpec
from dropkit.sites import find_sites

__all__ = ["PopulationJob", "PopulationJobs", "PopulationOutput", "train_variant_spec"]


def train_variant_spec(spec: VariantSpec) -> Variant:
    """The trainer's `Variant` of a config's variant."""
    return Variant(
        name=spec.name,
        dropout=None if spec.dropout is None else spec.dropout.build(),
        drop_path=None if spec.drop_path is None else spec.drop_path.build(),
        rdrop_alpha=spec.rdrop_alpha,
        double_batch=spec.double_batch,
    )


def _inconsistency_kl(result: TrainResult, data: datasets.Dataset, passes: int) -> list[float]:
    """Per seed: KL(average of ``passes`` MC-dropout predictions || deterministic) on test data
    (NaN for a seed that diverged: it has no predictions to compare). 0 without a pass where
    every site ends at rate 0 (no schedule, or an early one): each pass is then the
    deterministic forward, the built-in models drawing nothing else at random."""
    population = result.population
    if population is None:  # a result read back from JSON holds no models
        raise ValueError(f"{result.variant}: the result holds no trained models to measure")
    if all(site.p == 0.0 for site in find_sites(population.base)):
        return [math.nan if at is not None else 0.0 for at in result.diverged_at]
    return [
        math.nan
        if result.diverged_at[i] is not None
        else train_test_inconsistency(
            population.member(i).train(), data.x_test, data.y_test, passes=passes, seed=seed
        ).kl
        for i, seed in enumerate(population.seeds)
    ]


def _metrics_rows(record: RunRecord) -> list[dict[str, Any]]:
    rows = []
    for i, seed in enumerate(record.seeds):
        for k, step in enumerate(record.curve.steps):
            rows.append(
                {
                    "variant": record.variant,
                    "seed": seed,
                    "step": step,
                    "train_loss": record.curve.train_loss[i][k],
                }
            )
        final = {name: values[i] for name, values in record.metrics.items() if values}
        rows.append({"variant": record.variant, "seed": seed, "step": record.total_steps, **final})
    return rows


@dataclass(frozen=True)
class PopulationOutput:
    """What a population job hands the driver: ``result.json``'s record, ``metrics.jsonl``'s
    rows and ``records.jsonl``'s dynamics records (None when no dynamics were measured)."""

    record: RunRecord
    metrics_rows: list[dict[str, Any]]
    dynamics_records: list[dict[str, Any]] | None


@dataclass(frozen=True)
class PopulationJob:
    """Train a built-in (setting, variant) over ``seeds``, one thread, wherever it runs;
    ``eager`` trains without ``torch.compile`` whatever the setting's ``train.compile``."""

    setting: SettingSpec
    variant: VariantSpec
    seeds: tuple[int, ...]
    cache_dir: Path | None
    eager: bool = False

    @property
    def label(self) -> str:
        return f"{self.setting.name}/{self.variant.name}"

    def finished(self, out: Path) -> bool:
        """Whether the run folder's result holds every seed of the job."""
        record = read_record(self._folder(out) / RESULT_FILE)
        return record is not None and set(self.seeds) <= set(record.seeds)

    def failure(self, out: Path) -> str | None:
        """Why the job's last attempt ended without output (None: it did not fail)."""
        path = self._folder(out) / FAILURE_FILE
        return str(read_json(path)["reason"]) if path.exists() else None

    def failed(self, out: Path, reason: str) -> str:
        """Record that the job ended without output; return a word for the progress line."""
        write_json(self._folder(out) / FAILURE_FILE, {"reason": reason})
        return f"failed: {reason.splitlines()[0]}"

    def collect(self, out: Path, output: PopulationOutput) -> str:
        """Write ``output`` into the run folder, after the seeds it holds already (a run
        extended by ``--seeds``); ``result.json`` last, as it marks the job finished."""
        folder = self._folder(out)
        (folder / FAILURE_FILE).unlink(missing_ok=True)
        record, rows, records = output.record, output.metrics_rows, output.dynamics_records
        held = read_record(folder / RESULT_FILE, quiet=True)
        if held is not None and not set(held.seeds) & set(record.seeds):  # seeds added
            record = held.extended(record)
            rows = read_jsonl(folder / "metrics.jsonl") + rows
            if records is not None:
                records = read_jsonl(folder / "records.jsonl") + records
        write_jsonl(folder / "metrics.jsonl", rows)
        if records is not None:
            write_jsonl(folder / "records.jsonl", records)
        write_json(folder / RESULT_FILE, record.to_dict())  # last: marks it finished
        return "done"

    def _folder(self, out: Path) -> Path:
        return run_dir(out, self.setting.name, self.variant.name)

    def __call__(self, progress: Callable[[str, int, int], None] | None = None) -> PopulationOutput:
        with fixed_threads(1):
            return self._train(progress or (lambda label, done, total: None))

    def _train(self, progress: Callable[[str, int, int], None]) -> PopulationOutput:
        setting, spec, seeds = self.setting, self.variant, list(self.seeds)
        data_name, model_spec, train = setting.recipe()
        if self.eager:
            train = dataclasses.replace(train, compile=False)
        dataset = datasets.load_dataset(data_name, cache_dir=self.cache_dir)
        model_fn = model_factory(model_spec, dataset.n_features, dataset.n_classes)
        steps = train.epochs * (len(dataset.x) // train.batch_size)
        probe = None
        if setting.dynamics is not None and spec.name in setting.dynamics.variants:
            probe = DynamicsProbe(
                setting.dynamics, model_fn, dataset, seeds, steps, train.batch_size, spec.name
            )
        every = max(1, steps // 100)

        def on_step(step: int, population: Population) -> None:
            if step % every == 0 or step == steps:
                progress(self.label, step, steps)
            if probe is not None:
                probe.maybe_measure(step, population)

        result = train_variant(
            model_fn, dataset, train_variant_spec(spec), seeds, train, on_step=on_step
        )
        metrics = {
            "train_loss": result.final_train_loss,
            "train_acc": result.final_train_acc,
            "test_loss": result.test_loss,
            "test_acc": result.test_acc,
        }
        if setting.mc_passes:  # 0: the setting skips the inconsistency
            metrics["inconsistency_kl"] = _inconsistency_kl(result, dataset, setting.mc_passes)
        record = RunRecord(
            setting=setting.name,
            variant=spec.name,
            seeds=result.seeds,
            total_steps=result.total_steps,
            cutoff_step=spec.cutoff_step(result.total_steps),
            metrics=metrics,
            curve=Curve(result.log_steps, result.train_loss, result.rates),
            dynamics=None if probe is None else probe.series(),
            wall_s=result.seconds,
            diverged_at=result.diverged_at,
        )
        return PopulationOutput(
            record, _metrics_rows(record), None if probe is None else probe.records
        )


def _seeds_to_train(path: Path, seeds: tuple[int, ...]) -> tuple[int, ...]:
    """``seeds`` less those a result at ``path`` already holds (a run extended by ``--seeds``);
    all of ``seeds`` when it holds none of them or seeds outside them."""
    record = read_record(path, quiet=True)
    if record is None or not set(record.seeds) <= set(seeds):
        return seeds
    return tuple(s for s in seeds if s not in record.seeds) or seeds


@dataclass(frozen=True)
class PopulationJobs:
    """Makes a built-in setting's jobs for a plan (`dropkit.experiments.engine.plan.make_plan`):
    one per (setting, variant), of the seeds its result does not hold yet. ``eager`` keeps
    every population off ``torch.compile``."""

    cache_dir: Path | None = None
    eager: bool = False

    def __call__(
        self, out: Path, setting: SettingSpec, spec: VariantSpec, seeds: tuple[int, ...]
    ) -> PopulationJob:
        todo = _seeds_to_train(run_dir(out, setting.name, spec.name) / RESULT_FILE, seeds)
        return PopulationJob(setting, spec, todo, self.cache_dir, self.eager)
