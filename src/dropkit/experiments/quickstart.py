"""A one-minute look at early dropout: no dropout vs standard vs early dropout on a small MLP.

The task is a teacher-student problem with more data than a small student can fit. The paper says
early dropout lowers the final training loss of a model in the underfitting regime, which it
defines as one whose test accuracy is *hurt* by standard dropout; the demo prints that regime check
next to the result. Numbers are printed as measured; nothing is asserted.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from dropkit import DropoutScheduler, describe, schedules

VARIANTS = {
    "no dropout": None,
    "standard dropout": schedules.standard(0.1),
    "early dropout": schedules.early(0.1, cutoff=1 / 6, shape="linear"),
}


def make_data(seed: int, n_train: int = 16_384, n_test: int = 4_096, dim: int = 32):
    """Labels from a random wide teacher network; inputs Gaussian."""
    gen = torch.Generator().manual_seed(seed)
    teacher = [torch.randn(dim, 256, generator=gen) / dim**0.5, torch.randn(256, 10, generator=gen)]
    x = torch.randn(n_train + n_test, dim, generator=gen)
    y = (torch.tanh(x @ teacher[0]) @ teacher[1]).argmax(1)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def make_model(dim: int = 32, width: int = 48) -> nn.Module:
    return nn.Sequential(
        nn.Linear(dim, width), nn.GELU(), nn.Dropout(0.0),
        nn.Linear(width, width), nn.GELU(), nn.Dropout(0.0),
        nn.Linear(width, 10),
    )  # fmt: skip


def train(schedule, data, seed: int, epochs: int = 12, batch: int = 128) -> tuple[float, float]:
    """Train once; return (final training loss over the whole train set, test accuracy)."""
    x, y, x_test, y_test = data
    torch.manual_seed(seed)
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    total = epochs * (len(x) // batch)
    sched = DropoutScheduler(model, total, dropout=schedule) if schedule else None
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for i in range(len(x) // batch):
            idx = order[i * batch : (i + 1) * batch]
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched:
                sched.step()
    model.eval()
    with torch.no_grad():
        train_loss = loss_fn(model(x), y).item()
        test_acc = (model(x_test).argmax(1) == y_test).float().mean().item()
    return train_loss, test_acc


def main(seeds: int = 3) -> None:
    torch.set_num_threads(1)
    print("dropkit quickstart: early dropout on a small MLP that underfits its data\n")
    print(describe(make_model()), "\n")
    early = VARIANTS["early dropout"]
    total = 12 * (16_384 // 128)
    marks = [0, total // 12, total // 6 - 1, total // 6, total - 1]
    print("early-dropout rate at steps", {k: round(early(k, total), 4) for k in marks}, "\n")
    start = time.perf_counter()
    results = {name: [] for name in VARIANTS}
    for seed in range(seeds):
        data = make_data(seed)
        for name, schedule in VARIANTS.items():
            results[name].append(train(schedule, data, seed))
    print(f"{'variant':<18} {'final train loss':>17} {'test accuracy':>14}   ({seeds} seeds)")
    for name, runs in results.items():
        loss = statistics.mean(r[0] for r in runs)
        acc = statistics.mean(r[1] for r in runs)
        print(f"{name:<18} {loss:>17.4f} {acc:>14.4f}")

    def mean_of(name: str, index: int) -> float:
        return statistics.mean(r[index] for r in results[name])

    acc_change = mean_of("standard dropout", 1) - mean_of("no dropout", 1)
    regime = "underfitting" if acc_change < 0 else "overfitting"
    loss_change = mean_of("early dropout", 0) - mean_of("no dropout", 0)
    print(
        f"\nregime check: standard dropout changes test accuracy by {acc_change:+.4f}, so this "
        f"model is in the {regime} regime here.\n"
        f"early dropout changes the final training loss by {loss_change:+.4f} "
        f"({'lower' if loss_change < 0 else 'not lower'} than no dropout); "
        f"{time.perf_counter() - start:.0f} s in all."
    )
