"""Run an experiment config: config -> plan of jobs -> executor -> results -> report.

The plan (`dropkit.experiments.engine.plan`) holds a population job per built-in (setting,
variant) and a trial job per (variant, seed) of a training function; the executor (local pool
or SLURM) runs those not finished yet; the driver alone writes their results
(`dropkit.experiments.engine.results`), and the report is built from the run folder. Re-running
the same command skips finished jobs, so a killed run resumes where it stopped and the report
comes out the same. One command at a time may write a run folder (an advisory lock).
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dropkit._checks import check_int
from dropkit._optional import import_optional
from dropkit.experiments.base.io import read_jsonl, write_json, write_jsonl
from dropkit.experiments.base.layout import run_dir
from dropkit.experiments.base.lock import RunFolderBusy, RunFolderUnlockable, one_writer
from dropkit.experiments.builtin.population import PopulationJobs
from dropkit.experiments.config.specs import ConfigError, ExperimentConfig
from dropkit.experiments.engine.executors import Job, make_executor
from dropkit.experiments.engine.plan import make_plan
from dropkit.experiments.engine.results import Results
from dropkit.experiments.evidence.claims import futile
from dropkit.experiments.evidence.report import build_report, load_results, summary_table
from dropkit.experiments.preflight import preflight
from dropkit.experiments.run_folder import held_seeds, record_run
from dropkit.experiments.status import EXECUTOR_FILE

__all__ = [
    "Interrupted",
    "RunFolderBusy",
    "RunFolderUnlockable",
    "executor_dir",
    "run_experiment",
]


def _tqdm() -> Any:
    return import_optional("tqdm", "data", "for the progress bars").tqdm


class _Bars:
    """A bar for the grid and one per job in flight (plain lines when stderr is not a terminal)."""

    def __init__(self, total_jobs: int, finished: int, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.runs: dict[str, Any] = {}
        self.started_at: dict[str, float] = {}
        self.total_jobs = total_jobs
        self.finished = finished
        self.started = 0  # jobs begun in this invocation
        self.grid = None
        if self.enabled:
            tqdm = _tqdm()
            self.grid = tqdm(total=total_jobs, initial=finished, desc="jobs", position=0)

    def update(self, label: str, done: int, total: int) -> None:
        self.started_at.setdefault(label, time.perf_counter())
        if not self.enabled:
            if label not in self.runs:
                self.runs[label] = None
                self.started += 1
                steps = f": {total} steps" if total > 1 else ""
                print(f"[job {self.finished + self.started}/{self.total_jobs}] {label}{steps}",
                      file=sys.stderr, flush=True)  # fmt: skip
            return
        if label not in self.runs:
            self.runs[label] = _tqdm()(
                total=total, desc=label, leave=False, position=len(self.runs) + 1
            )
        bar = self.runs[label]
        bar.update(done - bar.n)

    def finish(self, label: str, status: str) -> None:
        bar = self.runs.pop(label, None)
        seconds = time.perf_counter() - self.started_at.pop(label, time.perf_counter())
        if bar is not None:
            bar.close()
        elif not self.enabled:
            took = f" in {seconds:.0f} s" if seconds >= 0.5 else ""
            print(f"           {label}: {status}{took}", file=sys.stderr, flush=True)
        if self.grid is not None:
            self.grid.update(1)

    def close(self) -> None:
        for bar in self.runs.values():
            if bar is not None:
                bar.close()
        if self.grid is not None:
            self.grid.close()


class Interrupted(Exception):
    """The command got SIGINT / SIGTERM / SIGUSR1 / SIGUSR2; finished jobs are kept, the rest
    resumes on rerun (SLURM jobs keep running and a rerun re-attaches to them)."""

    def __init__(self, signum: int, out: Path, finished: int, total: int) -> None:
        name = signal.Signals(signum).name
        super().__init__(
            f"interrupted by {name}: {finished} of {total} jobs finished and are kept in {out}; "
            "run the same command again to resume"
        )
        self.exit_code = 128 + signum


@contextmanager
def _signals_raise() -> Iterator[None]:
    """Turn SIGINT, SIGTERM and SIGUSR1/2 (what ``sbatch --signal`` sends before a time limit)
    into an exception in the main thread, then restore (those of them the platform has)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        raise _Signal(signum)

    names = ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2")  # Windows has no SIGUSR1/2
    signals = [getattr(signal, name) for name in names if hasattr(signal, name)]
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class _Signal(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def run_experiment(
    config: ExperimentConfig,
    out_dir: str | Path,
    *,
    cache_dir: str | Path | None = None,
    workers: int = 1,
    ranks: int | None = None,
    threads: int | None = None,
    progress: bool = True,
    detach: bool = False,
    eager: bool = False,
    allow_changed_code: bool = False,
    until_decided: int | None = None,
) -> dict[str, Any] | None:
    """Run what is not finished yet in ``out_dir`` on the config's executor, then write the
    report; return report.json, with ``failed_jobs`` (the labels of jobs that failed) and
    ``wall_s_this_invocation`` added (None with ``detach``: the jobs were submitted, nothing
    waited).

    Local: ``workers > 1`` runs that many jobs at once in separate processes, each seeing one
    GPU of its own when there are any; ``ranks`` runs each training-function trial as that many
    data-parallel ranks (on SLURM: the executor's ``tasks_per_node`` x ``nodes``); ``threads``
    sets the intra-op threads per process (default: the cores divided among them; on SLURM:
    ``cpus_per_task``). A built-in population trains with one thread wherever it runs, so its
    numbers do not depend on the executor or the worker that ran it; a training function's may
    in their last bits, and its outcome records its device, threads and ranks. ``eager`` trains
    every population without ``torch.compile``, even where a setting's ``train.compile`` asks
    for it (the reference path). A folder whose training-function files changed since it was run
    is refused (`dropkit.experiments.run_folder`) unless ``allow_changed_code``, which records
    the change.

    ``until_decided`` (a number of seeds, the most to train) trains seeds in rounds of the
    config's seed count, judges every claim with the confidence sequence after each round, and
    stops once each is decided (confirmed, opposite, non-inferior, not applicable, or futile
    against the paper's effect), the seeds reach that number, or a round's jobs failed. Run
    again, it goes on from the seeds the folder holds.
    """
    workers = check_int(workers, "workers", 1)
    ranks = _ranks(config, ranks)
    if threads is not None and config.executor.kind == "slurm":
        raise ConfigError("threads: on SLURM a job's threads are its cpus_per_task; drop it")
    # every path resolved once, here: a training function that changes the working directory
    # cannot move what the driver writes
    out = Path(out_dir).resolve()
    cache_dir = None if cache_dir is None else Path(cache_dir).resolve()
    preflight(config, cache_dir)  # every check that can fail before training: nothing on disk yet
    if detach and config.executor.kind != "slurm":
        raise ConfigError("--detach submits to a cluster: it needs --executor slurm")
    if until_decided is not None:
        _check_rounds(config, until_decided, detach)
    out.mkdir(parents=True, exist_ok=True)

    def run_round(round_config: ExperimentConfig, run_id: str, detach: bool) -> Any:
        return _run_locked(
            round_config, out, run_id, cache_dir, workers=workers, ranks=ranks,
            threads=threads, progress=progress, detach=detach, eager=eager,
        )  # fmt: skip

    with one_writer(out):
        if until_decided is None:
            run_id = record_run(out, config, allow_changed_code=allow_changed_code, ranks=ranks)
            return run_round(config, run_id, detach)
        rule = {"max_seeds": until_decided, "step": config.seeds}
        seeds = max(config.seeds, held_seeds(out))  # a rerun goes on from what is there
        while True:
            round_config = config.with_seeds(seeds)
            run_id = record_run(out, round_config, allow_changed_code=allow_changed_code,
                                until_decided=rule, ranks=ranks)  # fmt: skip
            report = run_round(round_config, run_id, False)
            assert report is not None  # not detached
            undecided = _undecided(config, report)
            if report["failed_jobs"]:  # more rounds would fail alike: fix them first
                print(
                    f"until decided: stopped at {seeds} seeds, {len(report['failed_jobs'])} "
                    "job(s) failed in this round; fix them, then run the same command again "
                    "(it retrains them and goes on)",
                    file=sys.stderr,
                )
                report["undecided"] = undecided
                return report
            if not undecided or seeds >= until_decided:
                print(
                    f"until decided: stopped at {seeds} seeds, "
                    + (f"claims {', '.join(undecided)} still undecided (the most seeds)"
                       if undecided else "every claim decided"),
                    file=sys.stderr,
                )  # fmt: skip
                report["undecided"] = undecided
                return report
            seeds = min(seeds + config.seeds, until_decided)
            print(f"until decided: {', '.join(undecided)} undecided; {seeds} seeds next",
                  file=sys.stderr)  # fmt: skip


def _ranks(config: ExperimentConfig, ranks: int | None) -> int:
    """The ranks a training-function trial runs as: the SLURM executor's tasks, or ``ranks``
    (default 1) locally; refused above 1 when built-in settings (one process each) would run
    with them."""
    if config.executor.kind == "slurm":
        if ranks is not None and ranks != config.executor.ranks:
            raise ConfigError(
                f"ranks={ranks}: on SLURM a trial's ranks are the executor's tasks_per_node x "
                f"nodes ({config.executor.ranks} here); set those instead"
            )
        ranks = config.executor.ranks
        asked = (
            f"executor: {ranks} "
            "tasks per job run a training function's trial as that many data-parallel ranks"
        )
        fix = "run them from a config without tasks_per_node / nodes"
    else:
        ranks = 1 if ranks is None else check_int(ranks, "ranks", 1)
        asked = f"ranks={ranks} runs training-function trials as data-parallel ranks"
        fix = "run them without it"
    builtin = [s.name for s in config.settings if s.function is None]
    if ranks > 1 and builtin:
        raise ConfigError(f"{asked}, but settings {builtin} are built-in (one process each); {fix}")
    return ranks


def _check_rounds(config: ExperimentConfig, max_seeds: int, detach: bool) -> None:
    if detach:
        raise ConfigError("--until-decided waits for each round's results: it cannot --detach")
    fixed = [s.name for s in config.settings if s.seeds is not None]
    if fixed:
        raise ConfigError(
            f"--until-decided adds the config's seeds in rounds; settings {fixed} give their "
            "own seeds: drop them or run without --until-decided"
        )
    if check_int(max_seeds, "--max-seeds", 2) < config.seeds:
        raise ConfigError(
            f"--max-seeds {max_seeds} is below the config's {config.seeds} seeds per round"
        )


# the verdicts more seeds would not change
DECIDED = ("confirmed", "opposite", "non-inferior", "not applicable")


def _undecided(config: ExperimentConfig, report: dict[str, Any]) -> list[str]:
    """The ids of the claims more seeds could still decide."""
    specs = {c.id: c for c in config.claims}
    return [
        c["id"]
        for c in report["claims"]
        if c["verdict"] not in DECIDED and not futile(specs[c["id"]], c["ci_low"], c["ci_high"])
    ]


def executor_dir(out: Path, config: ExperimentConfig) -> Path:
    """Where an executor keeps its state (submitit's logs, job ids): ``executor.folder`` or
    ``slurm/`` in the run folder."""
    folder = config.executor.folder
    return out / config.executor.kind if folder is None else Path(folder).resolve()


def _run_locked(
    config: ExperimentConfig,
    out: Path,
    run_id: str,
    cache_dir: Path | None,
    *,
    workers: int,
    ranks: int,
    threads: int | None,
    progress: bool,
    detach: bool,
    eager: bool,
) -> dict[str, Any] | None:
    plan = make_plan(config, out, PopulationJobs(cache_dir, eager), ranks)
    todo = plan.todo()  # preflight generated and cached the data
    started = time.perf_counter()
    bars = _Bars(len(plan.jobs), len(plan.jobs) - len(todo), progress)
    results = Results(plan)
    for job in todo:
        results.retry(job)
    state_dir = executor_dir(out, config)
    kind = config.executor.kind
    write_json(out / EXECUTOR_FILE, {"kind": kind, "folder": str(state_dir), "scope": run_id})
    executor = make_executor(
        kind,
        state_dir,
        workers=workers,
        threads=threads,
        parameters=dict(config.executor.parameters),
        detach=detach,
        name=f"dropkit-{config.name}",
        scope=run_id,
    )

    def on_done(job: Job, output: Any) -> None:
        bars.finish(job.label, results.collect(job, output))

    try:
        with _signals_raise():
            executor.run(todo, on_done, bars.update)
    except _Signal as signalled:
        finished = sum(plan.finished(job) for job in plan.jobs)
        raise Interrupted(signalled.signum, _shown(out), finished, len(plan.jobs)) from None
    finally:
        bars.close()
    if detach:
        return None
    _gather_records(out, config)
    report = build_report(out)
    report["wall_s_this_invocation"] = time.perf_counter() - started
    print(summary_table(config, load_results(out, config), _shown(out)))
    _print_claims(report)
    failed = [job.label for job in plan.jobs if not plan.finished(job)]
    report["failed_jobs"] = failed
    if failed:
        listed = ", ".join(failed[:5]) + (", ..." if len(failed) > 5 else "")
        print(
            f"{len(failed)} job(s) failed ({listed}); the report counts them as failed seeds. "
            "Run the same command again to retry only them.",
            file=sys.stderr,
        )
    return report


def _shown(path: Path) -> Path:
    """``path`` as a message shows it: relative to the working directory when it lies below
    it, else absolute."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def _gather_records(out: Path, config: ExperimentConfig) -> None:
    """``records.jsonl`` at the top: every dynamics record of every run, tagged with its run."""
    rows = []
    for setting in config.settings:
        for spec in setting.variants:
            path = run_dir(out, setting.name, spec.name) / "records.jsonl"
            rows += [{"setting": setting.name, **row} for row in read_jsonl(path)]
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
