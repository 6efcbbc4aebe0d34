"""DropoutScheduler overhead on a training step, measured side by side in one run.

A small transformer classifier trains with and without a DropoutScheduler in alternating
blocks of steps (so drift in machine speed hits both arms alike). The scheduler runs a linear
early-dropout schedule: the worst case, since it rewrites every site on every step.

Prints the median step time of each arm, their ratio (target <= 1.005), and the cost of one
``sched.step()`` call on its own as a fraction of a training step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import dropkit
from common import TinyTransformerClassifier, time_calls


def timed_steps(model, opt, sched, x, y, steps: int) -> list[float]:
    def step() -> None:
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()

    return time_calls(step, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps-per-round", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()

    torch.manual_seed(0)
    x, y = torch.randn(args.batch, 16, 64), torch.randint(0, 10, (args.batch,))
    model = TinyTransformerClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    total = 2 * args.rounds * args.steps_per_round + 1000
    sched = dropkit.DropoutScheduler(
        model, total_steps=total, dropout=dropkit.schedules.early(0.1, 0.9, shape="linear")
    )
    n_sites = len([s for s in dropkit.find_sites(model) if s.controllable])

    timed_steps(model, opt, None, x, y, 10)  # warm-up
    plain, scheduled = [], []
    for _ in range(args.rounds):
        plain += timed_steps(model, opt, None, x, y, args.steps_per_round)
        scheduled += timed_steps(model, opt, sched, x, y, args.steps_per_round)

    calls = 2000
    probe = dropkit.DropoutScheduler(
        model, total_steps=calls + 1, dropout=dropkit.schedules.early(0.1, 1.0, shape="linear")
    )
    start = time.perf_counter()
    for _ in range(calls):
        probe.step()
    per_call = (time.perf_counter() - start) / calls

    plain_ms = statistics.median(plain) * 1e3
    sched_ms = statistics.median(scheduled) * 1e3
    print(f"model: transformer dim 64 depth 4, batch {args.batch}, {n_sites} controllable sites")
    print(f"steps per arm: {len(plain)} (alternating blocks of {args.steps_per_round})")
    print(f"plain step      median {plain_ms:8.3f} ms")
    print(f"scheduled step  median {sched_ms:8.3f} ms")
    print(f"ratio scheduled/plain: {sched_ms / plain_ms:.4f}  (target <= 1.005)")
    print(
        f"sched.step() alone: {per_call * 1e6:.1f} us/call "
        f"= {per_call * 1e3 / plain_ms:.4%} of a plain step"
    )


if __name__ == "__main__":
    main()
