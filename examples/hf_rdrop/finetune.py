"""A Hugging Face training function dropkit runs over variants and seeds: R-Drop on a tiny BERT.

A randomly initialised ``BertForSequenceClassification`` (no download) learns a synthetic task
(does token 7 come before token 8?) from a training set small enough to overfit, with the
``transformers.Trainer``. One callback, dropkit's ``TrialCallback``, lays the variant's dropout
schedule over ``max_steps``, stops an advise probe after ``trial.budget`` of the run (the
schedule unchanged), and logs the training and validation losses to ``trial.log``; the
Trainer's checkpoints go to the trial's folder (RNG state included), so a requeued or killed
trial resumes. ``rdrop_alpha > 0`` trains with ``RDropTrainer`` (R-Drop's loss from one doubled
forward) and ``double_batch`` with ``RDropTrainer(rdrop_alpha=0)``, R-Drop's control arm: the
same doubled forward and summed cross-entropies without the KL term. Run it with
``dropkit run examples/hf_rdrop/config.yaml``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import transformers
from torch.utils.data import Dataset
from transformers import TrainingArguments

from dropkit.experiments import Trial
from dropkit.integrations.transformers import RDropTrainer, TrialCallback

VOCAB, LENGTH, CLS, FIRST = 100, 16, 1, 7


class Sequences(Dataset):
    def __init__(self, ids: torch.Tensor, labels: torch.Tensor) -> None:
        self.ids, self.labels = ids, labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]),
                "labels": self.labels[i]}  # fmt: skip


def _data(
    n_train: int = 256, n_val: int = 64, n_test: int = 256
) -> tuple[Sequences, Sequences, Sequences]:
    """Random sequences ``[CLS, ...]`` holding tokens 7 and 8 once each; the label says whether
    7 comes first. Small enough a training set for a model that memorises it to overfit. The
    validation split is what ``dropkit advise`` reads (the test split stays for the claims)."""
    n = n_train + n_val + n_test
    g = torch.Generator().manual_seed(0)  # the same data for every trial
    ids = torch.randint(FIRST + 2, VOCAB, (n, LENGTH), generator=g)
    ids[:, 0] = CLS
    positions = torch.rand(n, LENGTH - 1, generator=g).argsort(1)[:, :2] + 1
    rows = torch.arange(n)
    ids[rows, positions[:, 0]], ids[rows, positions[:, 1]] = FIRST, FIRST + 1
    labels = (positions[:, 0] < positions[:, 1]).long()
    a, b = n_train, n_train + n_val
    return (Sequences(ids[:a], labels[:a]), Sequences(ids[a:b], labels[a:b]),
            Sequences(ids[b:], labels[b:]))  # fmt: skip


def _model() -> transformers.PreTrainedModel:
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=LENGTH,  # two labels by default
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,  # the schedule sets them
    )  # fmt: skip
    return transformers.BertForSequenceClassification(config)


def _evaluate(model: torch.nn.Module, data: Sequences) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=data.ids, attention_mask=torch.ones_like(data.ids)).logits
    model.train()
    loss = F.cross_entropy(logits, data.labels).item()
    return loss, (logits.argmax(1) == data.labels).float().mean().item()


def train(trial: Trial) -> dict[str, float]:
    params = {"steps": 240, "batch_size": 32, "lr": 1e-3, "log_every": 20, "save_every": 60,
              **trial.params}  # fmt: skip
    train_data, val_data, test_data = _data()
    transformers.utils.logging.disable_progress_bar()  # "Writing model shards" at each save
    torch.manual_seed(trial.seed)
    model = _model()
    callback = TrialCallback(trial)
    args = TrainingArguments(
        output_dir=callback.output_dir,
        max_steps=params["steps"],
        per_device_train_batch_size=params["batch_size"],
        learning_rate=params["lr"],
        logging_steps=params["log_every"],
        save_strategy="steps",
        save_steps=params["save_every"],
        save_total_limit=1,
        seed=trial.seed,
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
    )
    callbacks = [callback]
    if trial.rdrop_alpha > 0 or trial.double_batch:  # double_batch: R-Drop's alpha = 0 control
        trainer: transformers.Trainer = RDropTrainer(
            model=model, args=args, train_dataset=train_data, callbacks=callbacks,
            rdrop_alpha=trial.rdrop_alpha,
        )  # fmt: skip
    else:
        trainer = transformers.Trainer(
            model=model, args=args, train_dataset=train_data, callbacks=callbacks
        )
    trainer.remove_callback(transformers.PrinterCallback)  # dropkit shows the progress
    # a requeued trial goes on from its checkpoint
    trainer.train(resume_from_checkpoint=callback.resume_from)
    train_loss, _ = _evaluate(model, train_data)
    val_loss, _ = _evaluate(model, val_data)
    test_loss, test_acc = _evaluate(model, test_data)
    return {"train_loss": train_loss, "val_loss": val_loss, "test_loss": test_loss,
            "test_acc": test_acc}  # fmt: skip
