"""Is `dropkit advise` right on models nobody tuned for it? Its answer at the default budget and
seeds, against the regime full runs show, over a suite of settings.

The suite: the families the advisor must serve — MLP, residual MLP, ViT1D, Mixer1D (built-in),
a small CNN and a character-level transformer LM (training functions, in
``benchmarks/advise_suite/`` and ``examples/charlm/``) — each in a setting meant to underfit
(much data per parameter, a short run) or to overfit (little data, a long run), with data
sizes, run lengths and warm-ups (0.05, 1/6, 0.3) varied, and settings whose held-out data is
shifted from the training data. Run lengths were set by cost alone (a 6-seed arm within a few
minutes on one thread). The first 13 (the design set) were run while the rule was designed
(the versions before the final one were tried on them); the 10 marked ``held_out`` were fixed
before the final rule ran on them and never used to change it.

- truth: full runs with and without standard dropout (p = 0.1) over ``--truth-seeds`` seeds
  (100, 101, ...), trained on what the probes train on (the training data minus its last
  10%) and scored on the test split; the paper's definition: dropout lowers the test loss
  (paired 95% interval below 0) = overfitting, raises it = underfitting, an interval across 0
  = "undecided" (shown, left out of the score). Cached per setting in
  ``benchmarks/results/advise_truth/`` with the command and commit that made it.
- advice: ``advise`` / ``advise_function`` at their defaults (3 seeds: 0, 1, 2; budget 5% past
  the warm-up), one thread.
- cost: the probes' optimizer steps (2 arms x 3 seeds x budget) in full single-seed runs of one
  variant, and wall time over the truth's ``none`` arm per seed (its seeds train together, so
  this overstates the probes' share).
- ``--follow``: after a "cannot tell", advise once more as it suggests (its budget and seeds,
  fresh seeds 3, 4, ...), and what that adds to the cost.

    python benchmarks/advise_accuracy.py [--cases a,b] [--truth-seeds 6] [--recompute-truth]
                                         [--follow] [--json rows.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from dropkit import schedules
from dropkit.experiments.advise import advise, advise_function
from dropkit.experiments.base.stats import paired_t_interval
from dropkit.experiments.builtin.data import Dataset, load_dataset, split_validation
from dropkit.experiments.builtin.models import model_factory
from dropkit.experiments.builtin.train import Variant, train_variant
from dropkit.experiments.config.parse import load_settings
from dropkit.experiments.config.training import TrainConfig
from dropkit.experiments.engine.trial import Trial, load_function

HERE = Path(__file__).resolve().parent
SUITE_DIR = HERE / "advise_suite"
EXAMPLES = HERE.parent / "examples"
CACHE = HERE / "results" / "advise_truth"
P = 0.1


def _train(epochs: int, batch: int = 128, warmup: float = 1 / 6) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=batch, lr=2e-3, weight_decay=0.05,
                       warmup_frac=warmup, lr_schedule="cosine")  # fmt: skip


def _shifted(name: str) -> Dataset:
    """MNIST-1D whose held-out data (the training data's last 10%, and the test split) comes
    from a noisier, rescaled sensor: the same classes, other inputs."""
    data = load_dataset(name)
    gen = torch.Generator().manual_seed(7)

    def shift(x: torch.Tensor) -> torch.Tensor:
        return 1.3 * x + 0.5 * x.std() * torch.randn(x.shape, generator=gen)

    n_val = round(0.1 * len(data.x))
    x = torch.cat([data.x[:-n_val], shift(data.x[-n_val:])])
    return Dataset(f"{name}-shifted", x, data.y, shift(data.x_test), data.y_test, data.n_classes)


@dataclass(frozen=True)
class Case:
    name: str
    family: str
    what: str
    data: str = ""
    model: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig | None = None
    shifted: bool = False
    function: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    held_out: bool = False  # not looked at while the rule was designed

    def root(self) -> Path:
        """The folder the training function imports from: the char-level LM is an example."""
        module = (self.function or "").split(":")[0]
        return EXAMPLES / module if (EXAMPLES / module / f"{module}.py").exists() else SUITE_DIR

    def dataset(self) -> Dataset:
        return _shifted(self.data) if self.shifted else load_dataset(self.data)

    def key(self) -> str:
        """What the truth depends on: a changed case recomputes its truth."""
        spec = dataclasses.asdict(self) | {"p": P}
        del spec["held_out"]
        if self.function:
            spec["source"] = (self.root() / f"{self.function.split(':')[0]}.py").read_text()
        return hashlib.sha256(repr(sorted(spec.items())).encode()).hexdigest()[:16]


VIT_SMALL = {"kind": "vit", "patch": 8, "dim": 32, "depth": 3, "heads": 2, "mlp_ratio": 2.0}
SUITE = (
    Case("mlp_overfit", "MLP", "demo: 4 000 samples, 30 epochs",
         "mnist1d", {"kind": "mlp", "width": 256, "depth": 3}, _train(30)),
    Case("vit_underfit", "ViT1D", "demo: 45 000 samples, 3 epochs",
         "mnist1d-large", VIT_SMALL, _train(3)),
    Case("resmlp_underfit", "residual MLP", "45 000 samples, 6 epochs, warm-up 0.05",
         "mnist1d-large", {"kind": "resmlp", "width": 32, "depth": 4}, _train(6, warmup=0.05)),
    Case("resmlp_overfit", "residual MLP", "4 000 samples, 30 epochs",
         "mnist1d", {"kind": "resmlp", "width": 128, "depth": 4}, _train(30)),
    Case("mixer_underfit", "Mixer1D", "45 000 samples, 3 epochs",
         "mnist1d-large", {"kind": "mixer", "patch": 8, "dim": 32, "depth": 2}, _train(3)),
    Case("mixer_overfit", "Mixer1D", "4 000 samples, 30 epochs",
         "mnist1d", {"kind": "mixer", "patch": 4, "dim": 64, "depth": 4}, _train(30)),
    Case("vit_overfit", "ViT1D", "4 000 samples, 30 epochs, depth 6",
         "mnist1d", {**VIT_SMALL, "depth": 6}, _train(20)),
    Case("mlp_digits", "MLP", "digits, 1 617 samples, 40 epochs, warm-up 0.3",
         "digits", {"kind": "mlp", "width": 256, "depth": 3}, _train(40, 64, warmup=0.3)),
    Case("resmlp_digits_tiny", "residual MLP", "digits, width 8, 10 epochs",
         "digits", {"kind": "resmlp", "width": 8, "depth": 2}, _train(10, 64)),
    Case("mlp_shifted", "MLP", "12 000 samples, 10 epochs, shifted held-out data",
         "mnist1d:12000:1", {"kind": "mlp", "width": 128, "depth": 2}, _train(10), shifted=True),
    Case("cnn_digits", "CNN", "function: digits 8x8, 30 epochs",
         function="cnn_digits:train", params={"epochs": 30}),
    Case("charlm_small", "char transformer LM", "function: 40 000 characters, 800 steps",
         function="charlm:train", params={"chars": 50_000, "steps": 800}),
    Case("charlm_shift", "char transformer LM",
         "function: 400 000 characters, 600 steps, held-out text in another style",
         function="charlm:train", params={"chars": 400_000, "steps": 600, "shift": True}),
    # held out: fixed before the final rule ran on them, never used to design it
    Case("mlp_wide_8k", "MLP", "8 000 samples, width 512, 20 epochs", "mnist1d:8000:2",
         {"kind": "mlp", "width": 512, "depth": 2}, _train(20), held_out=True),
    Case("resmlp_digits", "residual MLP", "digits, width 64, 30 epochs", "digits",
         {"kind": "resmlp", "width": 64, "depth": 3}, _train(30, 64), held_out=True),
    Case("mixer_20k", "Mixer1D", "18 000 samples, 5 epochs, warm-up 0.05", "mnist1d:20000:3",
         {"kind": "mixer", "patch": 8, "dim": 48, "depth": 3}, _train(5, warmup=0.05),
         held_out=True),
    Case("vit_digits", "ViT1D", "digits, depth 2, 30 epochs", "digits",
         {**VIT_SMALL, "depth": 2}, _train(30, 64), held_out=True),
    Case("mlp_narrow_large", "MLP", "45 000 samples, width 64, 2 epochs", "mnist1d-large",
         {"kind": "mlp", "width": 64, "depth": 2}, _train(2), held_out=True),
    Case("mixer_digits", "Mixer1D", "digits, 40 epochs, warm-up 0.3", "digits",
         {"kind": "mixer", "patch": 8, "dim": 32, "depth": 2}, _train(40, 64, warmup=0.3),
         held_out=True),
    Case("resmlp_shifted", "residual MLP", "12 000 samples, 8 epochs, shifted held-out data",
         "mnist1d:12000:4", {"kind": "resmlp", "width": 64, "depth": 3}, _train(8),
         shifted=True, held_out=True),
    Case("cnn_digits_long", "CNN", "function: 32 channels, 60 epochs, warm-up 0.05",
         function="cnn_digits:train",
         params={"channels": 32, "epochs": 60, "warmup_frac": 0.05}, held_out=True),
    Case("charlm_tiny", "char transformer LM", "function: width 32, 1 layer, 320 000 characters",
         function="charlm:train", params={"chars": 400_000, "steps": 600, "dim": 32, "depth": 1},
         held_out=True),
    Case("charlm_wide", "char transformer LM", "function: width 96, 3 layers, 24 000 characters",
         function="charlm:train", params={"chars": 30_000, "steps": 700, "dim": 96, "depth": 3},
         held_out=True),
)  # fmt: skip


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=HERE, check=True)  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                               cwd=HERE, check=True).stdout.strip()  # fmt: skip
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _function_truth(case: Case, seeds: list[int], folder: Path) -> dict[str, Any]:
    function = load_function(case.function, str(case.root()))
    out: dict[str, Any] = {}
    for arm, p in (("none", 0.0), ("dropout", P)):
        started, losses = time.perf_counter(), []
        for seed in seeds:
            trial = Trial(setting=case.name, variant=arm, seed=seed,
                          dropout=schedules.standard(p), drop_path=None, rdrop_alpha=0.0,
                          double_batch=False, params=dict(case.params), budget=1.0,
                          dir=folder / arm / f"seed-{seed}")  # fmt: skip
            trial.dir.mkdir(parents=True)
            losses.append(function(trial)["test_loss"])
        out[arm] = {"test_loss": losses, "seconds": time.perf_counter() - started}
    return out


def _builtin_truth(case: Case, seeds: list[int]) -> dict[str, Any]:
    data = case.dataset()
    trained_on = split_validation(data, 0.1)  # what the probes train on
    scored = Dataset(data.name, trained_on.x, trained_on.y, data.x_test, data.y_test,
                     data.n_classes)  # fmt: skip
    model_fn = model_factory(case.model, data.n_features, data.n_classes)
    out: dict[str, Any] = {}
    for arm, p in (("none", 0.0), ("dropout", P)):
        result = train_variant(model_fn, scored, Variant(arm, dropout=schedules.standard(p)),
                               seeds, case.train)  # fmt: skip
        out[arm] = {"test_loss": result.test_loss, "seconds": result.seconds}
    return out


def truth(case: Case, n_seeds: int, recompute: bool) -> dict[str, Any]:
    path = CACHE / f"{case.name}.json"
    if path.exists() and not recompute:
        cached = json.loads(path.read_text())
        if cached["key"] == case.key() and len(cached["seeds"]) == n_seeds:
            return cached
    seeds = list(range(100, 100 + n_seeds))
    with tempfile.TemporaryDirectory() as folder:
        arms = (_function_truth(case, seeds, Path(folder)) if case.function
                else _builtin_truth(case, seeds))  # fmt: skip
    record = {"key": case.key(), "seeds": seeds, **arms, "commit": _commit(),
              "command": " ".join(["python", *sys.argv]),
              "made": time.strftime("%Y-%m-%d")}  # fmt: skip
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def regime(record: dict[str, Any]) -> tuple[str, float, float, float]:
    mean, low, high = paired_t_interval(record["dropout"]["test_loss"], record["none"]["test_loss"])
    name = "underfitting" if low > 0 else "overfitting" if high < 0 else "undecided"
    return name, mean, low, high


def advice_for(
    case: Case, folder: Path, seeds: list[int] | None = None, budget: float | None = None
) -> tuple[Any, float]:
    """The advice at the defaults, or at the given seeds and budget."""
    options: dict[str, Any] = {"seeds": seeds or 3, "budget": budget}
    started = time.perf_counter()
    if case.function:
        config = folder / "setting.yaml"
        config.write_text(yaml.safe_dump({"name": case.name, "seeds": 3, "settings": {
            case.name: {"function": case.function, "params": case.params,
                        "variants": {"none": {}}}}}))  # fmt: skip
        (setting,) = load_settings(config)
        result = advise_function(setting, str(case.root()), folder / "advise", **options)
    else:
        data = case.dataset()
        result = advise(model_factory(case.model, data.n_features, data.n_classes), data,
                        case.train, **options)  # fmt: skip
    return result, time.perf_counter() - started


def _verdict(true: str, regime: str) -> str:
    if true == "undecided":
        return "no truth"
    if regime == "cannot tell":
        return "cannot tell"
    return "right" if regime == true else "WRONG"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", help="comma-separated names (default: all)")
    parser.add_argument("--truth-seeds", type=int, default=6)
    parser.add_argument("--recompute-truth", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument(
        "--follow",
        action="store_true",
        help="after a 'cannot tell', advise again as it suggests (fresh seeds)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    chosen = None if args.cases is None else set(args.cases.split(","))
    cases = [c for c in SUITE if chosen is None or c.name in chosen]
    print(f"torch {torch.__version__}, 1 thread, commit {_commit()}; advice: defaults "
          f"(3 seeds, budget 5% past the warm-up); truth: {args.truth_seeds} seeds")  # fmt: skip
    header = ("| setting | family | what | truth: dropout's effect on test loss [95% CI] | "
              "advice | confidence | verdict | budget | cost (steps) | cost (time) | "
              "following a 'cannot tell' once (fresh seeds) |")  # fmt: skip
    print(header)
    print("|" + "---|" * 11)
    rows = []
    for case in cases:
        record = truth(case, args.truth_seeds, args.recompute_truth)
        true, mean, low, high = regime(record)
        with tempfile.TemporaryDirectory() as folder:
            result, seconds = advice_for(case, Path(folder))
        budget = result.evidence["budget"]
        one_run = record["none"]["seconds"] / len(record["seeds"])
        verdict = _verdict(true, result.regime)
        row = {"setting": case.name, "family": case.family, "what": case.what, "truth": true,
               "effect": [mean, low, high], "regime": result.regime,
               "confidence": result.confidence, "verdict": verdict, "budget": budget,
               "cost_steps": 2 * 3 * budget, "cost_time": seconds / one_run,
               "effect_now": result.evidence.get("effect_now"),
               "effect_projected": result.evidence.get("effect_projected")}  # fmt: skip
        followed = "–"
        if args.follow and "decide_with" in result.evidence:  # its advice, on fresh seeds
            then = result.evidence["decide_with"]
            fresh = list(range(3, 3 + then["seeds"]))
            with tempfile.TemporaryDirectory() as folder:
                second, more = advice_for(case, Path(folder), fresh, then["budget"])
            row["followed"] = {"budget": then["budget"], "seeds": len(fresh),
                               "regime": second.regime, "confidence": second.confidence,
                               "verdict": _verdict(true, second.regime),
                               "cost_steps": 2 * len(fresh) * second.evidence["budget"],
                               "cost_time": more / one_run}  # fmt: skip
            f = row["followed"]
            followed = (
                f"{f['regime']} ({f['confidence'] or '–'}): {f['verdict']}, budget "
                f"{f['budget']:g} x {f['seeds']} seeds, +{f['cost_steps']:.2f}"
            )
        rows.append(row)
        print(f"| {case.name} | {case.family} | {case.what} | {true} {mean:+.4f} "
              f"[{low:+.4f}, {high:+.4f}] | {result.regime} | {result.confidence or '–'} | "
              f"{verdict} | {budget:.3f} | {row['cost_steps']:.2f} | {row['cost_time']:.2f} | "
              f"{followed} |", flush=True)  # fmt: skip
    scored = [r for r in rows if r["verdict"] != "no truth"]
    right = sum(r["verdict"] == "right" for r in scored)
    wrong_high = sum(r["verdict"] == "WRONG" and r["confidence"] == "high" for r in scored)
    wrong = sum(r["verdict"] == "WRONG" for r in scored)
    print(f"\nat the defaults: right {right}/{len(scored)} settings with a known truth; wrong "
          f"{wrong} ({wrong_high} at high); cannot tell "
          f"{sum(r['verdict'] == 'cannot tell' for r in scored)}; "
          f"no truth {len(rows) - len(scored)}")  # fmt: skip
    if args.follow:
        final = [r.get("followed", r)["verdict"] for r in scored]
        print(
            f"following a 'cannot tell' once: right {final.count('right')}/{len(scored)}, "
            f"wrong {final.count('WRONG')}, cannot tell {final.count('cannot tell')}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
