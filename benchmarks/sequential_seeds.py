"""Looking, then adding seeds: how often a null effect reads "confirmed", and what
`dropkit run --until-decided` costs in seeds against a fixed design of the same power.

Simulated paired differences (one per seed), side by side in one run:

- no true effect, read after every seed from 2 to 64, and in the rounds `--until-decided` uses
  (5 seeds a round): the share of runs ever "confirmed" (the interval's low end above 0; the
  report promises at most 2.5%) with the fixed-n 95% t interval and with the confidence
  sequence, for normal differences and for heavy-tailed ones (Student t, 3 dof, unit variance);
- true effects of 0.5, 1 and 2 standard deviations: `--until-decided`'s rule (rounds of 5, at
  most 64 seeds, stop when the sequence clears 0 on either side): how often it confirms, the
  mean and 90th percentile of the seeds it used, and the seeds a fixed-n t test needs for the
  same power (99.9% at most) and for the 80% the report's power section uses.

    python benchmarks/sequential_seeds.py [--runs 20000] [--round 5] [--max-seeds 64]
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import stats

from dropkit.experiments.base.stats import confidence_sequence_radius, t_quantile


def _paths(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per run and per n = 2 .. N: the mean, the CS radius and the t half-width."""
    n = np.arange(1, x.shape[1] + 1)
    total = np.cumsum(x, 1)
    mean = (total / n)[:, 1:]
    ss = np.maximum(np.cumsum(x**2, 1) - total**2 / n, 0.0)[:, 1:]
    n = n[1:]
    radius = np.array([confidence_sequence_radius(k, 1.0) for k in n])
    t = np.array([t_quantile(0.95, k - 1) for k in n])
    return mean, radius * np.sqrt(ss), t * np.sqrt(ss / (n - 1)) / np.sqrt(n)


def _ever_confirmed(x: np.ndarray, looks: np.ndarray) -> tuple[float, float]:
    """Shares of runs whose low end ever clears 0 at the ``looks`` (numbers of seeds)."""
    mean, cs, half = _paths(x)
    at = looks - 2  # column of n = looks
    return (
        float(np.any((mean - half)[:, at] > 0, 1).mean()),
        float(np.any((mean - cs)[:, at] > 0, 1).mean()),
    )


def _fixed_n_for_power(effect: float, power: float) -> int:
    """The smallest n whose one-sided 2.5% t test reaches ``power`` at ``effect`` sd."""
    for n in range(2, 10_000):
        crit = t_quantile(0.95, n - 1)
        if stats.nct.sf(crit, n - 1, effect * np.sqrt(n)) >= power:
            return n
    raise ValueError("no n up to 10 000")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--round", type=int, default=5, help="seeds per round")
    parser.add_argument("--max-seeds", type=int, default=64)
    args = parser.parse_args()
    rng = np.random.default_rng(2026)
    top = args.max_seeds
    every = np.arange(2, top + 1)
    rounds = np.unique(np.minimum(np.arange(args.round, top + args.round, args.round), top))

    print(f"No true effect, {args.runs} runs: share ever 'confirmed' (target at most 2.5%)")
    print("| differences | read | fixed-n t interval | confidence sequence |")
    print("|---|---|---|---|")
    normal = rng.normal(size=(args.runs, top))
    heavy = rng.standard_t(3, size=(args.runs, top)) / np.sqrt(3.0)  # unit variance
    for name, x in (("normal", normal), ("Student t, 3 dof", heavy)):
        for label, looks in ((f"after every seed 2..{top}", every),
                             (f"rounds of {args.round} up to {top}", rounds)):  # fmt: skip
            t_share, cs_share = _ever_confirmed(x, looks)
            print(f"| {name} | {label} | {100 * t_share:.1f}% | {100 * cs_share:.1f}% |")

    print()
    print(f"--until-decided (rounds of {args.round}, at most {top} seeds) against a fixed design")
    print("| true effect (sd) | confirmed | seeds: mean | seeds: 90th pct "
          "| fixed n, same power | fixed n, 80% power |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for effect in (0.5, 1.0, 2.0):
        x = rng.normal(loc=effect, size=(args.runs, top))
        mean, cs, _ = _paths(x)
        low, high = (mean - cs)[:, rounds - 2], (mean + cs)[:, rounds - 2]
        decided = (low > 0) | (high < 0)
        first = np.where(decided.any(1), decided.argmax(1), len(rounds) - 1)
        used = rounds[first]
        confirmed = low[np.arange(args.runs), first] > 0
        power = float(confirmed.mean())
        same = _fixed_n_for_power(effect, min(power, 0.999))  # the same power, 99.9% at most
        print(f"| {effect:g} | {100 * power:.1f}% | {used.mean():.1f} | "
              f"{np.percentile(used, 90):.0f} | {same} (at {100 * min(power, 0.999):.1f}%) | "
              f"{_fixed_n_for_power(effect, 0.8)} |")  # fmt: skip


if __name__ == "__main__":
    main()
