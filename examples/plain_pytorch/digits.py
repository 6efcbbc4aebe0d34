"""A training function dropkit runs over variants and seeds: an MLP on scikit-learn's digits.

Written against the documented ``dropkit.experiments.Trial`` only, as a user would: it builds
its own model and data, drives its dropout sites with the variant's schedule, logs the training
and validation loss, checkpoints every epoch (so a requeued or killed trial resumes), and returns
its final metrics: ``val_loss`` on the last 10% of its training data, which ``dropkit advise``
reads the regime from (the test split stays for the claims). Run it with
``dropkit run examples/plain_pytorch/config.yaml``.
"""

from __future__ import annotations

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
    return (torch.tensor(x_train, dtype=torch.float32), torch.tensor(y_train),
            torch.tensor(x_test, dtype=torch.float32), torch.tensor(y_test))  # fmt: skip


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = model(x)
    model.train()
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def train(trial: Trial) -> dict[str, float]:
    params = {"width": 128, "epochs": 8, "batch_size": 64, "lr": 3e-3, **trial.params}
    x, y, x_test, y_test = _data()
    n_val = round(0.1 * len(x))  # a validation split for advise: the test split stays unseen
    x, y, x_val, y_val = x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:]
    torch.manual_seed(trial.seed)
    model = nn.Sequential(
        nn.Linear(64, params["width"]), nn.GELU(), nn.Dropout(0.0),
        nn.Linear(params["width"], params["width"]), nn.GELU(), nn.Dropout(0.0),
        nn.Linear(params["width"], 10),
    )  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=params["lr"])
    steps_per_epoch = len(x) // params["batch_size"]
    total_steps = params["epochs"] * steps_per_epoch
    scheduler = dropkit.DropoutScheduler(
        model, total_steps, dropout=trial.dropout, drop_path=trial.drop_path
    )
    order = torch.Generator().manual_seed(trial.seed)
    start_epoch = 0
    state = trial.restore()
    if state is not None:  # a requeued or resumed trial goes on where its checkpoint left it
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        order.set_state(state["order"])
        torch.set_rng_state(state["rng"])  # the dropout masks continue as if never stopped
        start_epoch = state["epoch"]
    last_epoch = round(trial.budget * params["epochs"])  # advise probes: whole epochs of the run
    for epoch in range(start_epoch, max(1, last_epoch)):
        permutation = torch.randperm(len(x), generator=order)
        losses = []
        for i in range(steps_per_epoch):
            batch = permutation[i * params["batch_size"] : (i + 1) * params["batch_size"]]
            loss = F.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        trial.log((epoch + 1) * steps_per_epoch, train_loss=sum(losses) / len(losses),
                  val_loss=_evaluate(model, x_val, y_val)[0])  # fmt: skip
        trial.checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(), "order": order.get_state(),
                          "rng": torch.get_rng_state(), "epoch": epoch + 1})  # fmt: skip
    train_loss, train_acc = _evaluate(model, x, y)
    val_loss, _ = _evaluate(model, x_val, y_val)
    test_loss, test_acc = _evaluate(model, x_test, y_test)
    return {"train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
            "test_loss": test_loss, "test_acc": test_acc}  # fmt: skip
