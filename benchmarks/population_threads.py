"""Built-in population jobs: one intra-op thread per worker against the threads shared out.

The local executor can spend a machine's cores as many workers of one thread (what the built-in
populations do today) or as fewer workers of several threads. This trains the default demo's
jobs (every variant of each setting, over its seeds, ``--steps`` steps each) both ways on all
the cores, after an untimed warm-up, in the order workers, threads, threads, workers (shared
machines drift), and prints each way's wall seconds for the whole set of jobs, and the ratio;
then one job alone at 1 and at all threads (what threads buy a single population). The rule it
checks: keep one thread per population job when the workers-of-one-thread way is at least as
fast.

    python benchmarks/population_threads.py [--steps 120]
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial

import torch

from dropkit.experiments.builtin.data import load_dataset
from dropkit.experiments.builtin.demo_configs import builtin_config
from dropkit.experiments.builtin.models import model_factory
from dropkit.experiments.builtin.population import train_variant_spec
from dropkit.experiments.builtin.train import train_variant


def _jobs() -> list[tuple[str, str]]:
    """(setting, variant) of every population job of the default demo."""
    demo = builtin_config("demo")
    return [(s.name, v.name) for s in demo.settings for v in s.variants]


def train_job(job: tuple[str, str], steps: int, threads: int) -> float:
    """Train one demo population for ``steps`` steps with ``threads`` threads; its seconds."""
    torch.set_num_threads(threads)
    demo = builtin_config("demo")
    setting = next(s for s in demo.settings if s.name == job[0])
    spec = next(v for v in setting.variants if v.name == job[1])
    data_name, model, train = setting.recipe()
    data = load_dataset(data_name)
    model_fn = model_factory(model, data.n_features, data.n_classes)
    start = time.perf_counter()
    train_variant(model_fn, data, train_variant_spec(spec), list(demo.seeds_of(setting)), train,
                  max_steps=steps)  # fmt: skip
    return time.perf_counter() - start


def _wall(jobs: list[tuple[str, str]], steps: int, workers: int, threads: int) -> float:
    start = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(partial(train_job, steps=steps, threads=threads), jobs))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120, help="steps per job (default 120)")
    steps = parser.parse_args().steps
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    jobs = _jobs()
    _wall(jobs[:1], 5, 1, 1)  # untimed: the data made and cached, the code loaded
    ways = {"workers": (cores, 1), "threads": (1, cores)}
    walls: dict[str, list[float]] = {name: [] for name in ways}
    for name in ("workers", "threads", "threads", "workers"):
        walls[name].append(_wall(jobs, steps, *ways[name]))
    print(f"{len(jobs)} demo population jobs x {steps} steps on {cores} cores")
    print("| way | workers x threads | wall s (two runs) |")
    print("|---|---|---|")
    for name, (workers, threads) in ways.items():
        print(f"| {name} | {workers} x {threads} | "
              f"{' / '.join(f'{w:.1f}' for w in walls[name])} |")  # fmt: skip
    ratio = sum(walls["threads"]) / sum(walls["workers"])
    print(f"threads / workers wall: {ratio:.2f} (above 1: one thread per job is faster)")
    alone = {t: min(train_job(jobs[0], steps, t) for _ in range(2)) for t in (1, cores)}
    print(f"one job alone ({jobs[0][0]}/{jobs[0][1]}): 1 thread {alone[1]:.1f} s, "
          f"{cores} threads {alone[cores]:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
