"""A Lightning training function dropkit runs over variants and seeds: an MLP on scikit-learn's
digits, trained by ``lightning.Trainer``.

The same experiment as ``examples/plain_pytorch`` written the Lightning way, with one callback,
:class:`dropkit.integrations.lightning.TrialCallback`: it lays the variant's schedules over the
Trainer's ``estimated_stepping_batches``, stops an advise probe after ``trial.budget`` of the run
without shrinking them, logs the training loss and the validation loss the module logs to
``trial.log``, and checkpoints in ``trial.dir`` (RNG state included), so a requeued or killed
trial resumes with ``fit(ckpt_path=callback.ckpt_path)`` and ends as if never stopped. Run it
with ``dropkit run examples/lightning/config.yaml``.
"""

from __future__ import annotations

import logging

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dropkit.experiments import Trial
from dropkit.integrations.lightning import TrialCallback


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

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))  # what TrialCallback sends to trial.log

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = model(x)
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def train(trial: Trial) -> dict[str, float]:
    params = {"width": 128, "epochs": 8, "batch_size": 64, "lr": 3e-3, **trial.params}
    x, y, x_test, y_test = _data()
    n_val = round(0.1 * len(x))  # a validation split for advise: the test split stays unseen
    x, y, x_val, y_val = x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:]
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # dropkit shows progress
    pl.seed_everything(trial.seed, verbose=False)
    model = Classifier(params["width"], params["lr"])
    loader = DataLoader(
        TensorDataset(x, y), batch_size=params["batch_size"], shuffle=True, drop_last=True
    )
    val_loader = DataLoader(TensorDataset(x_val, y_val), batch_size=len(x_val))
    callback = TrialCallback(trial)
    trainer = pl.Trainer(
        max_epochs=params["epochs"],
        accelerator="cpu",
        devices=trial.world_size,  # a data-parallel trial: one device per rank dropkit started
        strategy="ddp" if trial.world_size > 1 else "auto",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,  # TrialCallback checkpoints in the trial's folder
        num_sanity_val_steps=0,
        callbacks=[callback],
    )
    # a requeued or resumed trial goes on from its last epoch
    trainer.fit(model, loader, val_loader, ckpt_path=callback.ckpt_path)
    train_loss, _ = _evaluate(model, x, y)
    val_loss, _ = _evaluate(model, x_val, y_val)
    test_loss, test_acc = _evaluate(model, x_test, y_test)
    return {"train_loss": train_loss, "val_loss": val_loss, "test_loss": test_loss,
            "test_acc": test_acc}  # fmt: skip
