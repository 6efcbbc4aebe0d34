"""A Lightning training function dropkit runs over variants and seeds: an MLP on scikit-learn's
digits, trained by ``lightning.Trainer``.

The same experiment as ``examples/plain_pytorch`` written the Lightning way: the variant's
schedules reach the model's dropout sites through
:class:`dropkit.integrations.lightning.DropoutScheduleCallback` (laid over the Trainer's
``estimated_stepping_batches``), a small callback stops an advise probe after ``trial.budget`` of
the run without shrinking the schedule, another logs the training loss to ``trial.log``, and a
``ModelCheckpoint`` in ``trial.dir`` lets a requeued or killed trial resume with
``fit(ckpt_path=...)``. Run it with ``dropkit run examples/lightning/config.yaml``.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dropkit.experiments import Trial
from dropkit.integrations.lightning import DropoutScheduleCallback


def _data() -> tuple[torch.Tensor, ...]:
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x / 16.0, y, test_size=0.25, random_state=0, stratify=y
    )
    return (torch.tensor(x_train, dtype=torch.float32), torch.tensor(y_train),
            torch.tensor(x_test, dtype=torch.float32), torch.tensor(y_test))  # fmt: skip


class Classifier(pl.LightningModule):
    """An MLP whose dropout sites are built at 0: the schedule callback sets their rates."""

    def __init__(self, width: int, lr: float) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(
            nn.Linear(64, width), nn.GELU(), nn.Dropout(0.0),
            nn.Linear(width, width), nn.GELU(), nn.Dropout(0.0),
            nn.Linear(width, 10),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


class StopAtBudget(pl.Callback):
    """Stop after ``trial.budget_steps(total)`` optimizer steps; the schedule keeps the full run."""

    def __init__(self, trial: Trial) -> None:
        self.trial = trial

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        total = int(trainer.estimated_stepping_batches)
        if trainer.global_step >= self.trial.budget_steps(total):
            trainer.should_stop = True


class LogTrainLoss(pl.Callback):
    """Send each epoch's mean training loss to ``trial.log`` at the optimizer step it ends on."""

    def __init__(self, trial: Trial) -> None:
        self.trial = trial
        self.losses: list[float] = []

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, *args: Any
    ) -> None:
        self.losses.append(float(outputs["loss"]))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.losses:
            self.trial.log(trainer.global_step, train_loss=sum(self.losses) / len(self.losses))
        self.losses = []


class RngState(pl.Callback):
    """Keep the global torch RNG in the checkpoint, so a resumed run draws the same data order
    and dropout masks as one never stopped (Lightning checkpoints do not hold it)."""

    def state_dict(self) -> dict[str, Any]:
        return {"torch": torch.get_rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = model(x)
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def train(trial: Trial) -> dict[str, float]:
    params = {"width": 128, "epochs": 8, "batch_size": 64, "lr": 3e-3, **trial.params}
    x, y, x_test, y_test = _data()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # dropkit shows progress
    pl.seed_everything(trial.seed, verbose=False)
    model = Classifier(params["width"], params["lr"])
    loader = DataLoader(
        TensorDataset(x, y), batch_size=params["batch_size"], shuffle=True, drop_last=True
    )
    checkpoints = trial.dir / "checkpoints"
    trainer = pl.Trainer(
        max_epochs=params["epochs"],
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[
            DropoutScheduleCallback(dropout=trial.dropout, drop_path=trial.drop_path),
            StopAtBudget(trial),
            LogTrainLoss(trial),
            RngState(),
            pl.callbacks.ModelCheckpoint(checkpoints, save_last=True, save_top_k=0),
        ],
    )
    last = checkpoints / "last.ckpt"  # a requeued or resumed trial goes on from its last epoch
    trainer.fit(model, loader, ckpt_path=last if last.exists() else None)
    train_loss, _ = _evaluate(model, x, y)
    test_loss, test_acc = _evaluate(model, x_test, y_test)
    return {"train_loss": train_loss, "test_loss": test_loss, "test_acc": test_acc}
