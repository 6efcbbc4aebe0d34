"""A small CNN on scikit-learn's 8x8 digits: a training function for
`benchmarks/advise_accuracy.py`, written as a user would (nothing tuned for dropkit).

Training data: 75% of the digits (stratified, fixed split); its last 10% is the validation split
the function reports as ``val_loss``; the other 25% is the test split. Two conv blocks (16 and
32 channels, 3x3, GELU, 2x2 max-pool), dropout after each and before the classifier.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import dropkit
from dropkit.experiments import Trial


def _data() -> tuple[torch.Tensor, ...]:
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x / 16.0, y, test_size=0.25, random_state=0, stratify=y
    )
    as_images = lambda a: torch.tensor(a, dtype=torch.float32).view(-1, 1, 8, 8)  # noqa: E731
    return as_images(x_train), torch.tensor(y_train), as_images(x_test), torch.tensor(y_test)


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = model(x)
    model.train()
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def train(trial: Trial) -> dict[str, float]:
    params = {"channels": 16, "epochs": 30, "batch_size": 64, "lr": 3e-3, "warmup_frac": 1 / 6,
              **trial.params}  # fmt: skip
    x, y, x_test, y_test = _data()
    n_val = round(0.1 * len(x))
    x, y, x_val, y_val = x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:]
    torch.manual_seed(trial.seed)
    c = params["channels"]
    model = nn.Sequential(
        nn.Conv2d(1, c, 3, padding=1), nn.GELU(), nn.MaxPool2d(2), nn.Dropout(0.0),
        nn.Conv2d(c, 2 * c, 3, padding=1), nn.GELU(), nn.MaxPool2d(2), nn.Dropout(0.0),
        nn.Flatten(), nn.Linear(2 * c * 4, 10),
    )  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=params["lr"], weight_decay=0.05)
    steps_per_epoch = len(x) // params["batch_size"]
    total = params["epochs"] * steps_per_epoch
    warmup = max(1, round(params["warmup_frac"] * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / warmup if s < warmup
        else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))),
    )  # fmt: skip
    dropout = dropkit.DropoutScheduler(model, total, dropout=trial.dropout)
    order = torch.Generator().manual_seed(trial.seed)
    stop = max(1, round(trial.budget * total))
    step = 0
    while step < stop:
        permutation = torch.randperm(len(x), generator=order)
        for i in range(steps_per_epoch):
            batch = permutation[i * params["batch_size"] : (i + 1) * params["batch_size"]]
            loss = F.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            dropout.step()
            step += 1
            if step % steps_per_epoch == 0 or step == stop:
                trial.log(step, train_loss=loss.item(), val_loss=_evaluate(model, x_val, y_val)[0])
            if step == stop:
                break
    train_loss, train_acc = _evaluate(model, x, y)
    val_loss, val_acc = _evaluate(model, x_val, y_val)
    test_loss, test_acc = _evaluate(model, x_test, y_test)
    return {"train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
            "val_acc": val_acc, "test_loss": test_loss, "test_acc": test_acc}  # fmt: skip
