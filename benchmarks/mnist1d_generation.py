"""Generating MNIST-1D: the ``mnist1d`` package's ``make_dataset`` against dropkit's vectorised
generator (`dropkit.experiments.builtin.mnist1d_generator`), side by side in one run.

The sizes are the demo's two sets: the canonical 5 000 samples (seed 42) and the large 50 000
(seed 0) its ViT1D setting trains on. Each is timed in the order package, dropkit, dropkit,
package (the best of each pair is kept, so a machine that slows down mid-run moves both), and
the arrays are compared for equality. Prints seconds and the ratio.

    python benchmarks/mnist1d_generation.py
"""

from __future__ import annotations

import time

import numpy as np
from mnist1d.data import get_dataset_args, make_dataset

from dropkit.experiments.builtin.data import NPZ_KEYS
from dropkit.experiments.builtin.mnist1d_generator import make_mnist1d


def _package(num_samples: int, seed: int) -> dict[str, np.ndarray]:
    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    return make_dataset(args)


def _timed(make, num_samples: int, seed: int) -> tuple[float, dict[str, np.ndarray]]:
    start = time.perf_counter()
    arrays = make(num_samples, seed)
    return time.perf_counter() - start, arrays


def main() -> None:
    make_mnist1d(100, 0)  # imports and first-call costs out of the timings
    print(f"{'samples':>8} {'package s':>10} {'dropkit s':>10} {'ratio':>6}  identical")
    for num_samples, seed in [(5_000, 42), (50_000, 0)]:
        runs = [_timed(make, num_samples, seed)
                for make in (_package, make_mnist1d, make_mnist1d, _package)]  # fmt: skip
        package = min(runs[0][0], runs[3][0])
        ours = min(runs[1][0], runs[2][0])
        same = all(np.array_equal(runs[0][1][k], runs[1][1][k]) for k in NPZ_KEYS)
        print(f"{num_samples:>8} {package:>10.2f} {ours:>10.2f} {package / ours:>6.1f}  {same}")


if __name__ == "__main__":
    main()
