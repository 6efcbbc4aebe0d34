"""Evaluating a population: seconds per pass at each ``eval_batch`` (samples per forward), side
by side in one run, on the model of each demo setting.

A population's final metrics are one forward of every member over the training subset and the
test set, ``TrainConfig.eval_batch`` samples at a time. The chunk sets the size of the
intermediate tensors (members x samples x tokens x width); once they outgrow the CPU's caches
a pass slows down without doing more arithmetic. Each setting's 8-member population (one
thread) evaluates its test set at every chunk size, in two rounds (the best of each kept, so a
machine that slows down mid-run moves every size); the losses must be identical at every size.
Prints seconds per size and the ratio of the old default (8192) to the current one.

    python benchmarks/eval_batch.py
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from dropkit.experiments.builtin import data as datasets
from dropkit.experiments.builtin.models import model_factory
from dropkit.experiments.builtin.train import Population, build_members
from dropkit.experiments.config.parse import load_settings
from dropkit.experiments.config.training import TrainConfig

CONFIGS = (
    Path(__file__).resolve().parents[1] / "src" / "dropkit" / "experiments" / "builtin" / "configs"
)
SETTINGS = {"demo": ("underfit", "overfit"), "demo-full": ("underfit", "overfit_sd_vit")}
CHUNKS = (8192, 4096, 2048, 1024, 512, 256)
OLD_DEFAULT = 8192


def _population(setting) -> tuple[Population, datasets.Dataset]:
    data_name, model_spec, _ = setting.recipe()
    dataset = datasets.load_dataset(data_name)
    model_fn = model_factory(model_spec, dataset.n_features, dataset.n_classes)
    seeds = list(range(8))
    population = Population.from_modules(build_members(model_fn, seeds), seeds)
    population.base.eval()
    return population, dataset


def main() -> None:
    torch.set_num_threads(1)
    current = TrainConfig().eval_batch
    print(f"{'setting':<26} {'samples':>7} " + " ".join(f"{c:>6}" for c in CHUNKS)
          + f"  {OLD_DEFAULT}/{current}  identical")  # fmt: skip
    for config, names in SETTINGS.items():
        settings = {s.name: s for s in load_settings(CONFIGS / f"{config}.yaml")}
        for name in names:
            population, data = _population(settings[name])
            seconds: dict[int, float] = {}
            losses = []
            for _ in range(2):
                for chunk in CHUNKS:
                    start = time.perf_counter()
                    loss, _ = population.evaluate(data.x_test, data.y_test, chunk)
                    elapsed = time.perf_counter() - start
                    seconds[chunk] = min(seconds.get(chunk, elapsed), elapsed)
                    losses.append(loss)
            same = all(torch.equal(loss, losses[0]) for loss in losses)
            times = " ".join(f"{seconds[c]:>6.3f}" for c in CHUNKS)
            ratio = seconds[OLD_DEFAULT] / seconds[current]
            label = f"{config}/{name}"
            print(f"{label:<26} {len(data.x_test):>7} {times}  {ratio:>9.2f}  {same}")


if __name__ == "__main__":
    main()
