"""What `dropkit advise` costs, and how often it agrees with the full runs it stands in for.

Per setting (the demo's three, plus two on scikit-learn's digits that played no part in choosing
the advisor's threshold):

- truth: full runs without and with standard dropout (p = 0.1), ``--truth-seeds`` seeds; the regime
  is "overfitting" when dropout lowers the mean test loss, else "underfitting" (the paper's
  criterion is accuracy, printed alongside; loss is decisive where accuracy ties);
- cost: the advisor's wall time (each of ``--budgets``; 3 seeds) ÷ the wall time of one
  full run of the intended config with the same 3 seeds, side by side in this process, one thread;
- agreement: the advisor on ``--seed-sets`` disjoint sets of 3 seeds; how many find the truth's
  regime.

    python benchmarks/advise_cost.py [--seed-sets 5] [--truth-seeds 5] [--budgets 0.05,0.1]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from dropkit import schedules
from dropkit.experiments.advise import advise
from dropkit.experiments.builtin.data import load_dataset
from dropkit.experiments.builtin.demo_configs import builtin_config
from dropkit.experiments.builtin.models import model_factory
from dropkit.experiments.builtin.train import Variant, train_variant
from dropkit.experiments.config.specs import SettingSpec
from dropkit.experiments.config.training import TrainConfig

HELD_OUT = (
    ("digits_mlp", "digits", {"kind": "mlp", "width": 256, "depth": 3}, TrainConfig(epochs=40)),
    ("digits_small", "digits", {"kind": "resmlp", "width": 8, "depth": 2}, TrainConfig(epochs=10)),
)


def settings() -> list[tuple[str, str, dict, TrainConfig]]:
    """The demo's settings, then the held-out digits ones (batch 64: 1 437 training samples)."""
    demo: tuple[SettingSpec, ...] = builtin_config("demo").settings
    held_out = [(n, d, m, dataclasses.replace(t, batch_size=64)) for n, d, m, t in HELD_OUT]
    return [(s.name, s.data, dict(s.model), s.train) for s in demo] + held_out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed-sets", type=int, default=5)
    parser.add_argument("--truth-seeds", type=int, default=5)
    parser.add_argument("--settings", help="comma-separated names (default: all)")
    parser.add_argument("--budgets", default="0.05,0.1", help="the advisor's probe budgets")
    args = parser.parse_args()
    torch.set_num_threads(1)
    chosen = None if args.settings is None else set(args.settings.split(","))
    budgets = [float(b) for b in args.budgets.split(",")]
    print(f"torch {torch.__version__}, 1 thread; advisor: 3 seeds per set, {args.seed_sets} sets")
    print(
        f"{'setting':<13} {'truth':<12} {'d acc pt':>8} {'d loss':>7} {'budget':>6}  "
        f"{'advisor regime/confidence per seed set':<40} {'agree':<5} {'adv s':>5} {'full s':>6} "
        f"{'cost':>5}"
    )
    agreement = {b: [0, 0] for b in budgets}
    for name, data_name, model, train in settings():
        if chosen is not None and name not in chosen:
            continue
        data = load_dataset(data_name)
        model_fn = model_factory(model, data.n_features, data.n_classes)
        truth_seeds = list(range(args.truth_seeds))
        none = train_variant(model_fn, data, Variant("none", dropout=0.0), truth_seeds, train)
        dropout = train_variant(
            model_fn, data, Variant("dropout", dropout=schedules.standard(0.1)), truth_seeds, train
        )
        d_acc = 100 * (np.mean(dropout.test_acc) - np.mean(none.test_acc))
        d_loss = np.mean(dropout.test_loss) - np.mean(none.test_loss)
        truth = "overfitting" if d_loss < 0 else "underfitting"
        started = time.perf_counter()
        train_variant(model_fn, data, Variant("none"), [0, 1, 2], train)
        full_seconds = time.perf_counter() - started
        for budget in budgets:
            regimes, seconds = [], []
            for k in range(args.seed_sets):
                started = time.perf_counter()
                seeds = [3 * k, 3 * k + 1, 3 * k + 2]
                advice = advise(model_fn, data, train, budget=budget, seeds=seeds)
                seconds.append(time.perf_counter() - started)
                regimes.append(f"{advice.regime[:5]}/{advice.confidence[0]}")
            agree = sum(r.startswith(truth[:5]) for r in regimes)
            agreement[budget][0] += agree
            agreement[budget][1] += len(regimes)
            print(
                f"{name:<13} {truth:<12} {d_acc:+8.2f} {d_loss:+7.3f} {budget:6.2f}  "
                f"{' '.join(regimes):<40} {agree}/{len(regimes):<3} {np.mean(seconds):5.1f} "
                f"{full_seconds:6.1f} {np.mean(seconds) / full_seconds:5.3f}"
            )
    for budget, (agree, total) in agreement.items():
        print(f"budget {budget}: advisor's regime = truth in {agree}/{total} seed sets")
    print(
        "truth: overfitting when standard dropout lowers mean test loss (d loss < 0); d acc is "
        "the paper's accuracy criterion, shown alongside. regime under/over, confidence "
        "h(igh)/m(edium)/l(ow); cost = advisor seconds / full-run seconds"
    )


if __name__ == "__main__":
    main()
