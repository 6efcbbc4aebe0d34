"""Calibrate the demo: time a setting's variants and check which regime the model is in.

Trains each named variant as one population over the seeds (``train_variant``) and prints, per
variant, seconds, ms per step, and mean ± sd over seeds of the final training loss (dropout
off), the last logged mini-batch loss, test accuracy and test loss; then paired differences
(same seed) against a reference variant. Nothing is asserted: the numbers are the result.

    python benchmarks/demo_calibration.py --data mnist1d:50000:0 \
        --model vit:dim=32,depth=4,heads=2,patch=5 --epochs 2 --variants none,do,early_do
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from dropkit import schedules
from dropkit.experiments.builtin.data import load_dataset
from dropkit.experiments.builtin.models import build_model
from dropkit.experiments.builtin.train import TrainResult, Variant, train_variant
from dropkit.experiments.config.training import TrainConfig


def variants(
    p_do: float, p_sd: float, p_early_sd: float, p_late_sd: float, cutoff: float, alpha: float
) -> dict[str, Variant]:
    """The demo's variant vocabulary, by short name."""
    return {
        "none": Variant("none"),
        "do": Variant("do", dropout=schedules.standard(p_do)),
        "early_do": Variant("early_do", dropout=schedules.early(p_do, cutoff, "linear")),
        "late_do": Variant("late_do", dropout=schedules.late(p_do, cutoff)),
        "sd": Variant("sd", drop_path=schedules.standard(p_sd)),
        "early_sd": Variant("early_sd", drop_path=schedules.early(p_early_sd, cutoff, "linear")),
        "sd_late": Variant("sd_late", drop_path=schedules.standard(p_late_sd)),
        "late_sd": Variant("late_sd", drop_path=schedules.late(p_late_sd, cutoff)),
        "rdrop": Variant("rdrop", dropout=schedules.standard(p_do), rdrop_alpha=alpha),
    }


def parse_model(spec: str) -> tuple[str, dict[str, float | int | str]]:
    """``kind:key=value,...`` -> (kind, kwargs); numbers are parsed."""
    kind, _, rest = spec.partition(":")
    kwargs: dict[str, float | int | str] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            kwargs[key] = int(value)
        except ValueError:
            try:
                kwargs[key] = float(value)
            except ValueError:
                kwargs[key] = value
    return kind, kwargs


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f}±{sd:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="mnist1d")
    parser.add_argument("--model", default="vit:dim=32,depth=4,heads=2,patch=5")
    parser.add_argument("--variants", default="none,do,early_do")
    parser.add_argument("--reference", default="none", help="variant for paired differences")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--wd", type=float, default=0.05)
    parser.add_argument("--warmup", type=float, default=0.05)
    parser.add_argument("--p-do", type=float, default=0.1)
    parser.add_argument("--p-sd", type=float, default=0.1)
    parser.add_argument("--p-early-sd", type=float, help="default: --p-sd")
    parser.add_argument("--p-late-sd", type=float, default=0.2)
    parser.add_argument("--cutoff", type=float, default=1 / 6)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-eval", type=int, default=10_000)
    parser.add_argument("--json", help="append one JSON line per variant to this file")
    parser.add_argument(
        "--compare-loop",
        action="store_true",
        help="also train each variant with vectorize=False and print the time ratio",
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    data = load_dataset(args.data)
    print(f"{data} loaded in {time.perf_counter() - start:.1f} s; threads={args.threads}")
    kind, kwargs = parse_model(args.model)
    if kind in ("mlp", "resmlp"):
        kwargs.setdefault("in_features", data.n_features)
    else:
        kwargs.setdefault("signal_length", data.n_features)
    kwargs.setdefault("n_classes", data.n_classes)
    n_params = sum(p.numel() for p in build_model(kind, **kwargs).parameters())
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch, lr=args.lr, weight_decay=args.wd,
        warmup_frac=args.warmup, train_eval_samples=args.train_eval,
    )  # fmt: skip
    catalogue = variants(
        args.p_do, args.p_sd, args.p_early_sd or args.p_sd, args.p_late_sd, args.cutoff, args.alpha
    )
    names = args.variants.split(",")
    print(f"model {args.model} ({n_params} parameters), {config}")
    print(
        f"{'variant':<10} {'s':>6} {'ms/step':>8} {'train loss (eval)':>17} "
        f"{'last batch loss':>16} {'test acc':>15} {'test loss':>15}"
    )
    results: dict[str, TrainResult] = {}
    if args.compare_loop:  # untimed warm-up of both paths (first-call costs of vmap, allocator)
        warm = TrainConfig(epochs=1, batch_size=args.batch)
        for vectorize in (True, False):
            train_variant(
                lambda: build_model(kind, **kwargs), data, catalogue[names[0]], [0], warm,
                vectorize=vectorize,
            )  # fmt: skip
    for name in names:
        result = train_variant(
            lambda: build_model(kind, **kwargs), data, catalogue[name], range(args.seeds), config
        )
        results[name] = result
        last_window = [curve[-1] for curve in result.train_loss]
        print(
            f"{name:<10} {result.seconds:6.1f} {1000 * result.seconds / result.total_steps:8.1f} "
            f"{mean_sd(result.final_train_loss):>17} {mean_sd(last_window):>16} "
            f"{mean_sd(result.test_acc):>15} {mean_sd(result.test_loss):>15}",
            flush=True,
        )
        if args.compare_loop:
            loop = train_variant(
                lambda: build_model(kind, **kwargs), data, catalogue[name], range(args.seeds),
                config, vectorize=False,
            )  # fmt: skip
            print(
                f"{'  (loop)':<10} {loop.seconds:6.1f} "
                f"{1000 * loop.seconds / loop.total_steps:8.1f}   "
                f"vectorized is {loop.seconds / result.seconds:.2f}x faster",
                flush=True,
            )
        if args.json:
            with open(args.json, "a") as handle:
                row = {"data": args.data, "model": args.model, "args": vars(args)}
                handle.write(json.dumps({**row, **result.to_dict()}) + "\n")
    if args.reference in results:
        ref = results[args.reference]
        print(f"\npaired differences vs {args.reference} (mean±sd over seeds):")
        for name, result in results.items():
            if name == args.reference:
                continue
            d_loss = [a - b for a, b in zip(result.final_train_loss, ref.final_train_loss)]
            d_acc = [a - b for a, b in zip(result.test_acc, ref.test_acc)]
            wins = sum(d > 0 for d in d_acc)
            print(
                f"  {name:<10} train loss {mean_sd(d_loss)}  test acc {mean_sd(d_acc)} "
                f"(higher in {wins}/{len(d_acc)} seeds)"
            )
    print(f"total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
