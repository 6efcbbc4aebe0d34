"""Run an experiment config: every (setting, variant) over all seeds, resumable, then the report.

Each (setting, variant) trains its seeds as one population (``train.train_variant``) and writes
``runs/<setting>/<variant>/metrics.jsonl`` then ``result.json``, both atomically; ``result.json``
marks the run finished. Re-running the same command skips finished runs, so a killed run resumes
where it stopped and the report comes out the same.
"""

from __future__ import annotations

import fcntl
import json
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dropkit._checks import check_int
from dropkit._optional import import_optional
from dropkit.diagnostics import train_test_inconsistency
from dropkit.experiments import data as datasets
from dropkit.experiments.config import ExperimentConfig, SettingSpec, VariantSpec
from dropkit.experiments.dynamics import DynamicsProbe
from dropkit.experiments.io import read_json, write_json, write_jsonl
from dropkit.experiments.models import model_factory
from dropkit.experiments.preflight import preflight
from dropkit.experiments.record import Curve, DynamicsSeries, RunRecord
from dropkit.experiments.report import build_report, load_results, summary_table
from dropkit.experiments.train import Population, TrainResult, Variant, train_variant
from dropkit.schedules import cutoff_steps

__all__ = ["Interrupted", "RunFolderBusy", "run_experiment"]


def _train_variant_spec(spec: VariantSpec) -> Variant:
    return Variant(
        name=spec.name,
        dropout=None if spec.dropout is None else spec.dropout.build(),
        drop_path=None if spec.drop_path is None else spec.drop_path.build(),
        rdrop_alpha=spec.rdrop_alpha,
        double_batch=spec.double_batch,
    )


def _cutoff_step(spec: VariantSpec, total_steps: int) -> int | None:
    for schedule in (spec.dropout, spec.drop_path):
        if schedule is not None and schedule.kind != "standard" and schedule.cutoff is not None:
            return cutoff_steps(schedule.cutoff, total_steps)
    return None


def _inconsistency_kl(result: TrainResult, data: datasets.Dataset, passes: int) -> list[float]:
    """Per seed: KL(average of ``passes`` MC-dropout predictions || deterministic) on test data
    (NaN for a seed that diverged: it has no predictions to compare)."""
    population = result.population
    if population is None:  # a result read back from JSON holds no models
        raise ValueError(f"{result.variant}: the result holds no trained models to measure")
    return [
        math.nan
        if result.diverged_at[i] is not None
        else train_test_inconsistency(
            population.member(i).train(), data.x_test, data.y_test, passes=passes, seed=seed
        ).kl
        for i, seed in enumerate(population.seeds)
    ]


def _run_record(
    setting: SettingSpec,
    spec: VariantSpec,
    result: TrainResult,
    inconsistency: list[float],
    dynamics: DynamicsSeries | None,
) -> RunRecord:
    return RunRecord(
        setting=setting.name,
        variant=spec.name,
        seeds=result.seeds,
        total_steps=result.total_steps,
        cutoff_step=_cutoff_step(spec, result.total_steps),
        metrics={
            "train_loss": result.final_train_loss,
            "train_acc": result.final_train_acc,
            "test_loss": result.test_loss,
            "test_acc": result.test_acc,
            "inconsistency_kl": inconsistency,
        },
        curve=Curve(result.log_steps, result.train_loss, result.rates),
        dynamics=dynamics,
        wall_s=result.seconds,
        diverged_at=result.diverged_at,
    )


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


def _finished(job: _Job) -> bool:
    """Whether ``job`` has a readable result for its seeds; a damaged one is trained again."""
    path = job.run_dir / "result.json"
    if not path.exists():
        return False
    try:
        record = RunRecord.from_dict(read_json(path))
    except (ValueError, KeyError, TypeError) as err:  # truncated or not a result: retrain
        print(f"{path} is damaged ({type(err).__name__}); training it again", file=sys.stderr)
        return False
    return record.seeds == list(job.seeds)


@dataclass(frozen=True)
class _Job:
    setting: SettingSpec
    variant: VariantSpec
    seeds: tuple[int, ...]
    run_dir: Path
    cache_dir: Path | None

    @property
    def label(self) -> str:
        return f"{self.setting.name}/{self.variant.name}"


def _run_job(job: _Job, report_progress: Callable[[str, int, int], None]) -> float:
    """Train one (setting, variant) over all seeds; write its files; return the wall seconds."""
    setting, spec, seeds = job.setting, job.variant, list(job.seeds)
    dataset = datasets.load_dataset(setting.data, cache_dir=job.cache_dir)
    model_fn = model_factory(setting.model, dataset.n_features, dataset.n_classes)
    steps = setting.train.epochs * (len(dataset.x) // setting.train.batch_size)
    probe = None
    if setting.dynamics is not None and spec.name in setting.dynamics.variants:
        probe = DynamicsProbe(
            setting.dynamics, model_fn, dataset, seeds, steps, setting.train.batch_size, spec.name
        )
    every = max(1, steps // 100)

    def on_step(step: int, population: Population) -> None:
        if step % every == 0 or step == steps:
            report_progress(job.label, step, steps)
        if probe is not None:
            probe.maybe_measure(step, population)

    result = train_variant(
        model_fn, dataset, _train_variant_spec(spec), seeds, setting.train, on_step=on_step
    )
    inconsistency = _inconsistency_kl(result, dataset, setting.mc_passes)
    record = _run_record(
        setting, spec, result, inconsistency, None if probe is None else probe.series()
    )
    write_jsonl(job.run_dir / "metrics.jsonl", _metrics_rows(record))
    if probe is not None:
        write_jsonl(job.run_dir / "records.jsonl", probe.records)
    write_json(job.run_dir / "result.json", record.to_dict())  # last: marks the run finished
    return result.seconds


_progress_queue: Any = None  # a worker's channel for progress, set by _init_worker


def _init_worker(queue: Any, parent: int) -> None:
    """In each worker: one thread, progress to ``queue``, and exit when the parent is gone.

    A worker ignores SIGINT (Ctrl-C reaches the whole process group; the parent decides), and a
    watchdog thread ends it at once, writing nothing, when its parent process dies (even by
    SIGKILL), so no worker outlives the command that started it.
    """
    global _progress_queue
    torch.set_num_threads(1)  # two workers on two cores: one thread each
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _progress_queue = queue

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _run_job_in_worker(job: _Job) -> float:
    return _run_job(job, lambda label, done, total: _progress_queue.put((label, done, total)))


def _tqdm() -> Any:
    return import_optional("tqdm", "data", "for the progress bars").tqdm


class _Bars:
    """A bar for the grid and one per run in flight (plain lines when stderr is not a terminal)."""

    def __init__(self, total_runs: int, finished: int, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.runs: dict[str, Any] = {}
        self.total_runs = total_runs
        self.finished = finished
        self.started = 0  # runs begun in this invocation
        self.grid = None
        if self.enabled:
            tqdm = _tqdm()
            self.grid = tqdm(total=total_runs, initial=finished, desc="runs", position=0)

    def update(self, label: str, done: int, total: int) -> None:
        if not self.enabled:
            if label not in self.runs:
                self.runs[label] = None
                self.started += 1
                print(f"[run {self.finished + self.started}/{self.total_runs}] {label}: "
                      f"{total} steps", file=sys.stderr, flush=True)  # fmt: skip
            return
        if label not in self.runs:
            self.runs[label] = _tqdm()(
                total=total, desc=label, leave=False, position=len(self.runs) + 1
            )
        bar = self.runs[label]
        bar.update(done - bar.n)

    def finish(self, label: str, seconds: float) -> None:
        bar = self.runs.pop(label, None)
        if bar is not None:
            bar.close()
        elif not self.enabled:
            print(f"           {label}: done in {seconds:.0f} s", file=sys.stderr, flush=True)
        if self.grid is not None:
            self.grid.update(1)

    def close(self) -> None:
        for bar in self.runs.values():
            if bar is not None:
                bar.close()
        if self.grid is not None:
            self.grid.close()


def _run_jobs(jobs: list[_Job], workers: int, bars: _Bars) -> None:
    if workers == 1:
        for job in jobs:
            bars.finish(job.label, _run_job(job, bars.update))
        return
    if not jobs:
        return
    # workers > 1 always trains in worker processes, one thread each, even when a single run is
    # left (a resume): a run's numbers then never depend on how many runs remained
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    pool = ProcessPoolExecutor(
        min(workers, len(jobs)),
        mp_context=context,
        initializer=_init_worker,
        initargs=(queue, os.getpid()),
    )
    try:
        pending = {pool.submit(_run_job_in_worker, job): job for job in jobs}
        while pending:
            done, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            while not queue.empty():
                bars.update(*queue.get())
            for future in done:
                seconds = future.result()  # re-raises a worker's error here
                bars.finish(pending.pop(future).label, seconds)
    except BaseException:  # interrupted or failed: stop the workers now, finished runs stay
        processes = list((pool._processes or {}).values())
        for process in processes:
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.join(timeout=5)
        raise
    else:
        pool.shutdown(wait=True)
    finally:
        queue.close()
        queue.cancel_join_thread()


class Interrupted(Exception):
    """The command got SIGINT / SIGTERM; finished runs are kept, the rest resumes on rerun."""

    def __init__(self, signum: int, out: Path, finished: int, total: int) -> None:
        name = signal.Signals(signum).name
        super().__init__(
            f"interrupted by {name}: {finished} of {total} runs finished and are kept in {out}; "
            "run the same command again to resume"
        )
        self.exit_code = 128 + signum


@contextmanager
def _signals_raise() -> Iterator[None]:
    """Turn SIGTERM (and SIGINT) into an exception in the main thread, then restore."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        raise _Signal(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class _Signal(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _one_writer(out: Path) -> Iterator[None]:
    """Hold an advisory lock on ``out/.lock`` (released by the OS if the holder is killed)."""
    path = out / ".lock"
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunFolderBusy(
            f"{out} is being written by another dropkit command (pid {holder}); wait for it to "
            "finish, or pass another --out"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


class RunFolderBusy(ValueError):
    """Another command holds the run folder's lock."""


def run_experiment(
    config: ExperimentConfig,
    out_dir: str | Path,
    *,
    cache_dir: str | Path | None = None,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Train what is not finished yet in ``out_dir``, then write the report; return report.json.

    ``workers > 1`` trains that many (setting, variant) runs at once in separate processes, one
    thread each. A run's numbers do not depend on which worker trains it; between different
    thread counts they agree up to floating-point summation order (~1e-8 relative).
    """
    workers = check_int(workers, "workers", 1)
    out = Path(out_dir)
    preflight(config, cache_dir)  # every check that can fail before training: nothing on disk yet
    out.mkdir(parents=True, exist_ok=True)
    with _one_writer(out):
        return _run_locked(config, out, cache_dir, workers, progress)


def _run_locked(
    config: ExperimentConfig,
    out: Path,
    cache_dir: str | Path | None,
    workers: int,
    progress: bool,
) -> dict[str, Any]:
    config_file = out / "config.json"
    if config_file.exists() and read_json(config_file)["config"] != config.to_dict():
        raise ValueError(
            f"{out} holds a run of a different config; pass another --out, or delete the folder "
            "to start over"
        )
    write_json(config_file, {"config": config.to_dict()})
    cache = None if cache_dir is None else Path(cache_dir)
    jobs = [
        _Job(
            setting, spec, config.seeds_of(setting), out / "runs" / setting.name / spec.name, cache
        )
        for setting in config.settings
        for spec in setting.variants
    ]
    todo = [job for job in jobs if not _finished(job)]  # preflight generated and cached the data
    started = time.perf_counter()
    bars = _Bars(len(jobs), len(jobs) - len(todo), progress)
    try:
        with _signals_raise():
            _run_jobs(todo, workers, bars)
    except _Signal as signalled:
        finished = sum((job.run_dir / "result.json").exists() for job in jobs)
        raise Interrupted(signalled.signum, out, finished, len(jobs)) from None
    finally:
        bars.close()
    _gather_records(out, config)
    report = build_report(out)
    report["wall_s_this_invocation"] = time.perf_counter() - started
    print(summary_table(config, load_results(out, config)))
    _print_claims(report)
    return report


def _gather_records(out: Path, config: ExperimentConfig) -> None:
    """``records.jsonl`` at the top: every dynamics record of every run, tagged with its run."""
    rows = []
    for setting in config.settings:
        for spec in setting.variants:
            path = out / "runs" / setting.name / spec.name / "records.jsonl"
            if path.exists():
                rows += [
                    {"setting": setting.name, **row}
                    for row in map(json.loads, path.read_text().splitlines())
                ]
    write_jsonl(out / "records.jsonl", rows)


def _print_claims(report: dict[str, Any]) -> None:
    print("claim  verdict         effect [95% CI]")
    for claim in report["claims"]:
        effect = claim["effect"]
        interval = (
            f"{effect:+.4g} [{claim['ci_low']:+.4g}, {claim['ci_high']:+.4g}]"
            if effect is not None and math.isfinite(effect)
            else "–"
        )
        print(f"{claim['id']:<6} {claim['verdict']:<15} {interval}  {claim['statement']}")
