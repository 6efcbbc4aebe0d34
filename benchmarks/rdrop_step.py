"""Cost of an R-Drop training step, measured side by side in one run.

Three arms on the same small transformer classifier, interleaved round by round:
  (a) plain step: one forward, cross-entropy;
  (b) dropkit: ``rdrop_forward`` (one forward on [x; x]) + ``rdrop_loss``;
  (c) naive R-Drop as most blog posts write it: two forwards, ``F.kl_div`` both ways.
Prints median step times, the ratios b/a (target <= 2.0, the FLOP floor of two passes) and b/c
(target <= 1.0), and each arm's activation memory: the bytes autograd saves for backward (distinct
storages), which is what grows with R-Drop's doubled batch.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from torch import nn

import dropkit
from common import TinyTransformerClassifier, time_calls

ALPHA = 1.0


def plain_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def dropkit_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits1, logits2 = dropkit.rdrop_forward(model, x)
    return dropkit.rdrop_loss(logits1, logits2, y, alpha=ALPHA)


def naive_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits1, logits2 = model(x), model(x)
    ce = F.cross_entropy(logits1, y) + F.cross_entropy(logits2, y)
    kl12 = F.kl_div(F.log_softmax(logits2, -1), F.softmax(logits1, -1), reduction="batchmean")
    kl21 = F.kl_div(F.log_softmax(logits1, -1), F.softmax(logits2, -1), reduction="batchmean")
    return ce + ALPHA / 2 * (kl12 + kl21)


ARMS = {"a plain": plain_loss, "b dropkit R-Drop": dropkit_loss, "c naive R-Drop": naive_loss}


def saved_activation_bytes(loss_fn, model, x, y) -> int:
    """Bytes of the distinct storages autograd keeps for the backward of one step."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn(model, x, y)
    loss.backward()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in storages.items() if ptr not in params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps-per-round", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq", type=int, default=16)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = TinyTransformerClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.randn(args.batch, args.seq, 64), torch.randint(0, 10, (args.batch,))

    def step(loss_fn) -> None:
        loss = loss_fn(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times: dict[str, list[float]] = {name: [] for name in ARMS}
    for loss_fn in ARMS.values():  # warm-up
        time_calls(lambda f=loss_fn: step(f), 5)
    for _ in range(args.rounds):
        for name, loss_fn in ARMS.items():
            times[name] += time_calls(lambda f=loss_fn: step(f), args.steps_per_round)
    memory = {name: saved_activation_bytes(fn, model, x, y) for name, fn in ARMS.items()}

    median = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    print(f"transformer dim 64 depth 4, batch {args.batch} x {args.seq} tokens, alpha {ALPHA}")
    print(f"{'arm':<18} {'median step':>12} {'activations':>12}")
    for name in ARMS:
        print(f"{name:<18} {median[name]:9.2f} ms {memory[name] / 2**20:9.2f} MiB")
    a, b, c = (median[name] for name in ARMS)
    print(f"ratio b/a (dropkit / plain): {b / a:.3f}  (target <= 2.0)")
    print(f"ratio b/c (dropkit / naive): {b / c:.3f}  (target <= 1.0)")
    mem_a, mem_b, mem_c = (memory[name] for name in ARMS)
    print(f"activation memory b/a: {mem_b / mem_a:.3f}, b/c: {mem_b / mem_c:.3f}")


if __name__ == "__main__":
    main()
