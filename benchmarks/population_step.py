"""A population training step, eager against compiled (``TrainConfig.compile``), side by side.

For each setting of the default demo (``dropkit demo``: its underfitting ViT1D and its
overfitting MLP) and for the residual-MLP underfitting setting of ``dropkit demo --full``,
trains the setting's variant with dropout switched on over its seeds for the same steps,
through ``train_variant`` itself: eagerly (the reference path) and compiled, in the order eager,
compiled, compiled, eager, so a machine that speeds up or slows down during the run moves both
paths alike (step times on shared machines drift by a third between runs). Prints per setting
the steady-state ms per step of each (the median step time after the first 20 steps, pooled over
the path's two runs), their ratio, the seconds the first compiled run spent before its first
step (compiling), and the largest relative difference between the logged training losses of an
eager and a compiled run (same seeds, same masks: float rounding only). One thread, as the demo's
jobs run.

    python benchmarks/population_step.py [--steps 150]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import statistics
import time

import torch

from dropkit.experiments.builtin.data import load_dataset
from dropkit.experiments.builtin.demo_configs import builtin_config
from dropkit.experiments.builtin.models import model_factory
from dropkit.experiments.builtin.population import train_variant_spec
from dropkit.experiments.builtin.train import train_variant
from dropkit.experiments.config.specs import SettingSpec
from dropkit.experiments.config.training import TrainConfig

WARMUP_STEPS = 20


def _settings() -> list[tuple[str, SettingSpec, int]]:
    """(label, setting, seeds) of each default-demo setting, then demo-full's residual MLP."""
    demo, full = builtin_config("demo"), builtin_config("demo-full")
    rows = [(s.name, s, len(demo.seeds_of(s))) for s in demo.settings]
    underfit = next(s for s in full.settings if s.name == "underfit")
    return [*rows, ("underfit (demo-full, ResMLP)", underfit, 8)]


def _timed_run(model_fn, data, variant, seeds, train: TrainConfig, steps: int):
    """The run's result, its steady-state step times and the seconds before its first step."""
    stamps: list[float] = []
    start = time.perf_counter()
    result = train_variant(
        model_fn, data, variant, seeds, train, max_steps=steps,
        on_step=lambda step, population: stamps.append(time.perf_counter()),
    )  # fmt: skip
    steady = [b - a for a, b in itertools.pairwise(stamps[WARMUP_STEPS:])]
    return result, steady, stamps[0] - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="steps per run (default 150)")
    steps = parser.parse_args().steps
    torch.set_num_threads(1)
    print("| setting | variant | seeds | eager ms/step | compiled ms/step | eager / compiled "
          "| compile s | max rel. loss diff |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for label, setting, n_seeds in _settings():
        data_name, model, train = setting.recipe()
        data = load_dataset(data_name)
        model_fn = model_factory(model, data.n_features, data.n_classes)
        spec = next(v for v in setting.variants if v.name in ("dropout", "sd"))
        variant, variant_name = train_variant_spec(spec), spec.name
        seeds = list(range(n_seeds))
        runs: dict[bool, list] = {False: [], True: []}
        for compile_ in (False, True, True, False):
            run_config = dataclasses.replace(train, compile=compile_, log_every=1)
            runs[compile_].append(_timed_run(model_fn, data, variant, seeds, run_config, steps))
        eager_ms, compiled_ms = (
            statistics.median(t for _, steady, _ in runs[path] for t in steady)
            for path in (False, True)
        )
        (eager, _, _), (compiled, _, compile_s) = runs[False][0], runs[True][0]
        diff = max(
            abs(a - b) / abs(a)
            for seed_a, seed_b in zip(eager.train_loss, compiled.train_loss)
            for a, b in zip(seed_a, seed_b)
        )
        print(f"| {label} | {variant_name} | {n_seeds} | {eager_ms * 1e3:.1f} | "
              f"{compiled_ms * 1e3:.1f} | {eager_ms / compiled_ms:.2f} | {compile_s:.0f} | "
              f"{diff:.1e} |")  # fmt: skip


if __name__ == "__main__":
    main()
