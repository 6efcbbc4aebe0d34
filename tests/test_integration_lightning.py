"""The Lightning callbacks in a real ``lightning.Trainer`` (CPU, tiny model, a few steps)."""

import csv
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import dropkit
from dropkit import schedules

pl = pytest.importorskip("lightning.pytorch")
from dropkit.integrations.lightning import (  # noqa: E402
    DropoutScheduleCallback,
    DynamicsCallback,
    rdrop_training_step,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:`isinstance.treespec, LeafSpec.` is deprecated"  # inside Lightning 2.6
)


BATCHES, ACCUMULATE, EPOCHS = 6, 2, 4
TOTAL = EPOCHS * BATCHES // ACCUMULATE  # optimizer steps
DROPOUT = schedules.early(0.3, cutoff=8, shape="linear")
DROP_PATH = schedules.late(0.2, cutoff=0.5)


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc, self.drop_path = nn.Linear(dim, dim), dropkit.DropPath(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(torch.relu(self.fc(x)))


class TinyModule(pl.LightningModule):
    """Records, from inside training_step, the rates its forward is about to use."""

    def __init__(self, rdrop_alpha: float | None = None) -> None:
        super().__init__()
        self.inp, self.drop = nn.Linear(4, 16), nn.Dropout(0.0)
        self.blocks = nn.Sequential(Block(16), Block(16))  # linear depth rule: 0, then the rate
        self.head = nn.Linear(16, 3)
        self.rdrop_alpha = rdrop_alpha
        self.seen: list[tuple[int, float, float]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.drop(self.inp(x))))

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.seen.append(
            (self.trainer.global_step, self.drop.p, self.blocks[1].drop_path.drop_prob)
        )
        x, y = batch
        if self.rdrop_alpha is not None:
            return rdrop_training_step(self, x, target=y, alpha=self.rdrop_alpha)
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _data() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn(4 * BATCHES, 4, generator=g),
        torch.randint(0, 3, (4 * BATCHES,), generator=g),
    )
    return DataLoader(TensorDataset(x, y), batch_size=4)


def _trainer(tmp_path: Path, callbacks: list, name: str) -> "pl.Trainer":
    return pl.Trainer(
        max_epochs=EPOCHS,
        accumulate_grad_batches=ACCUMULATE,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        logger=pl.loggers.CSVLogger(tmp_path, name=name),
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks),
    )


def _expected(step: int) -> tuple[int, float, float]:
    return (step, DROPOUT(step, TOTAL), DROP_PATH(step, TOTAL))


class StopAfterEpoch(pl.Callback):
    """Interrupts the run like a crash would, after ``epoch`` (a checkpoint exists by then)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


def _logged_rates(trainer: "pl.Trainer") -> dict[int, tuple[float, float]]:
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("dropout/p")]
    return {int(r["step"]): (float(r["dropout/p"]), float(r["drop_path/p"])) for r in rows}


def test_rates_follow_global_step_across_accumulation_and_are_logged(tmp_path: Path) -> None:
    module = TinyModule()
    callback = DropoutScheduleCallback(dropout=DROPOUT, drop_path=DROP_PATH)
    trainer = _trainer(tmp_path, [callback], "run")
    trainer.fit(module, _data())
    assert trainer.global_step == TOTAL == callback.scheduler.total_steps
    # every micro-batch of a window (ACCUMULATE of them) uses that optimizer step's rates
    expected = [_expected(step) for step in range(TOTAL) for _ in range(ACCUMULATE)]
    assert module.seen == expected
    assert {rate for _, rate, _ in module.seen} >= {0.3, 0.0}  # the schedule really moved
    logged = _logged_rates(trainer)
    assert len(logged) == TOTAL
    for step, (dropout_p, drop_path_p) in logged.items():
        assert dropout_p == pytest.approx(DROPOUT(step, TOTAL), abs=1e-6)
        assert drop_path_p == pytest.approx(DROP_PATH(step, TOTAL), abs=1e-6)


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_resume_from_checkpoint_continues_the_schedule_exactly(tmp_path: Path) -> None:
    checkpoints = pl.callbacks.ModelCheckpoint(tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    first = TinyModule()
    trainer = _trainer(
        tmp_path,
        [
            DropoutScheduleCallback(dropout=DROPOUT, drop_path=DROP_PATH),
            checkpoints,
            StopAfterEpoch(1),
        ],
        "first",
    )
    trainer.fit(first, _data())
    stopped_at = trainer.global_step
    assert stopped_at == 2 * BATCHES // ACCUMULATE
    ckpt_path = tmp_path / "ckpt" / f"epoch=1-step={stopped_at}.ckpt"
    saved = torch.load(ckpt_path, weights_only=False)["callbacks"]
    callback = DropoutScheduleCallback(dropout=DROPOUT, drop_path=DROP_PATH)
    assert saved[callback.state_key] == {"last_step": stopped_at - 1, "total_steps": TOTAL}

    second = TinyModule()  # a new process would start with the model's built rates
    checkpoints = pl.callbacks.ModelCheckpoint(tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    resumed = _trainer(tmp_path, [callback, checkpoints], "second")
    resumed.fit(second, _data(), ckpt_path=ckpt_path)
    assert first.seen[-1][0] == stopped_at - 1 and second.seen[0][0] == stopped_at
    assert first.seen + second.seen == [
        _expected(step) for step in range(TOTAL) for _ in range(ACCUMULATE)
    ]


def test_state_keys_differ_per_configuration() -> None:
    a = DropoutScheduleCallback(dropout=DROPOUT)
    b = DropoutScheduleCallback(dropout=schedules.early(0.1, cutoff=0.2))
    assert a.state_key != b.state_key
    assert a.state_key == DropoutScheduleCallback(dropout=DROPOUT).state_key
    decay = lambda step, total: 0.1 * (1 - step / total)  # noqa: E731
    assert "0x" not in DropoutScheduleCallback(dropout=decay).state_key  # same after a restart


def test_invalid_arguments_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="nothing to schedule"):
        DropoutScheduleCallback()
    with pytest.raises(TypeError, match="depth_rule"):
        DropoutScheduleCallback(dropout=0.1, depht_rule="uniform")
    with pytest.raises(TypeError, match="comes from the trainer"):
        DropoutScheduleCallback(dropout=0.1, total_steps=10)


def test_rdrop_training_step_matches_an_independent_formulation(tmp_path: Path) -> None:
    alpha = 0.7
    checked = []

    class Checked(TinyModule):
        def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
            x, y = batch
            state = torch.get_rng_state()
            logits = self(torch.cat([x, x]))  # the same masks as R-Drop's doubled forward
            first, second = logits[: len(x)].double(), logits[len(x) :].double()
            kl = lambda p, q: F.kl_div(  # noqa: E731  KL(p || q), summed over classes
                q.log_softmax(-1), p.log_softmax(-1), log_target=True, reduction="batchmean"
            )
            expected = (
                F.cross_entropy(first, y)
                + F.cross_entropy(second, y)
                + alpha / 2 * (kl(first, second) + kl(second, first))
            )
            torch.set_rng_state(state)
            loss = rdrop_training_step(self, x, target=y, alpha=alpha)
            checked.append((loss.item(), expected.item(), kl(first, second).item()))
            return loss

    module = Checked()
    callback = DropoutScheduleCallback(dropout=0.3)
    trainer = _trainer(tmp_path, [callback], "rdrop")
    trainer.fit(module, _data())
    assert len(checked) == EPOCHS * BATCHES
    for loss, expected, kl in checked:
        assert loss == pytest.approx(expected, rel=1e-5)
        assert kl > 0  # the two passes did differ
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("rdrop/kl")]
    assert len(rows) == TOTAL and all(float(r["rdrop/kl"]) > 0 for r in rows)
    assert all(float(r["rdrop/ce"]) > 0 for r in rows)


class IndependentDynamics(pl.Callback):
    """Gradient norm and distance from the start, computed here in float64."""

    def __init__(self) -> None:
        self.values: dict[int, tuple[float, float]] = {}

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self.start = [p.detach().clone().double() for p in pl_module.parameters()]

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        params = list(pl_module.parameters())
        grad_norm = torch.cat([p.grad.double().flatten() for p in params]).norm().item()
        moved = torch.cat([(p.double() - p0).flatten() for p, p0 in zip(params, self.start)])
        self.values[trainer.global_step] = (grad_norm, moved.norm().item())


def test_dynamics_callback_logs_the_instruments_on_their_schedule(tmp_path: Path) -> None:
    loader = _data()
    dynamics = DynamicsCallback(
        ("grad_norm", "distance", "gdv"), cadence=2, batches=list(loader), n_batches=3
    )
    independent = IndependentDynamics()
    trainer = _trainer(
        tmp_path, [DropoutScheduleCallback(dropout=DROPOUT), dynamics, independent], "dynamics"
    )
    trainer.fit(TinyModule(), loader)
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("dynamics/grad_norm")]
    assert [int(r["step"]) for r in rows] == list(range(0, TOTAL, 2))
    by_step = {(r["step"], r["instrument"]): r["value"] for r in dynamics.recorder.records}
    for row in rows:
        step = int(row["step"])
        grad_norm, distance = independent.values[step]
        assert float(row["dynamics/grad_norm"]) == pytest.approx(grad_norm, rel=1e-6)
        assert float(row["dynamics/distance"]) == pytest.approx(distance, rel=1e-5, abs=1e-7)
        assert float(row["dynamics/gdv"]) == pytest.approx(by_step[step, "gdv"], rel=1e-6)
        assert 0.0 <= float(row["dynamics/gdv"]) <= 1.0


def test_dynamics_callback_rejects_unknown_options() -> None:
    with pytest.raises(TypeError, match="DynamicsRecorder"):
        DynamicsCallback(("grad_norm",), every=3)


class Preempted(Exception):
    pass


class Crash(pl.Callback):
    """Kills the fit like a preempted job, after ``epoch``'s end (its checkpoint saved)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if trainer.current_epoch == self.epoch:
            raise Preempted  # Lightning re-raises it after its teardown


class ValModule(TinyModule):
    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))


def _trial(tmp_path: Path, budget: float = 1.0):
    from dropkit.experiments import Trial

    return Trial(setting="s", variant="v", seed=0, dropout=DROPOUT, drop_path=DROP_PATH,
                 rdrop_alpha=0.0, double_batch=False, params={}, budget=budget,
                 dir=tmp_path / "trial")  # fmt: skip


def _shuffled() -> DataLoader:
    return DataLoader(_data().dataset, batch_size=4, shuffle=True)


def _fit(tmp_path: Path, callbacks: list, name: str, ckpt_path=None) -> "ValModule":
    torch.manual_seed(0)  # the model's init (a resumed fit overwrites it from the checkpoint)
    module = ValModule()
    trainer = _trainer(tmp_path, callbacks, name)
    trainer.fit(module, _shuffled(), _data(), ckpt_path=ckpt_path)
    return module


@pytest.mark.filterwarnings("ignore:.*does not have many workers")
def test_trial_callback_resumes_a_killed_trial_to_the_uninterrupted_numbers(tmp_path: Path):
    from dropkit.experiments.engine.trial import read_log
    from dropkit.integrations.lightning import TrialCallback

    whole = _fit(tmp_path / "a", [TrialCallback(_trial(tmp_path / "a"))], "whole")
    killed = TrialCallback(_trial(tmp_path / "b"))
    with pytest.raises(Preempted):
        _fit(tmp_path / "b", [killed, Crash(1)], "killed")
    assert killed.ckpt_path is not None  # the checkpoint of epoch 1, whole
    assert not list((tmp_path / "b" / "trial").glob("*.partial"))
    torch.manual_seed(123)  # a new process: another RNG state, restored from the checkpoint
    again = TrialCallback(_trial(tmp_path / "b"))
    resumed = _fit(tmp_path / "b", [again], "resumed", ckpt_path=again.ckpt_path)
    assert resumed.seen[0][0] == 2 * BATCHES // ACCUMULATE  # it went on from epoch 2
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0)
    # the curves: the epoch's mean training loss and the module's val_loss, at the global step
    log = read_log(tmp_path / "a" / "trial")
    steps = [BATCHES // ACCUMULATE * (epoch + 1) for epoch in range(EPOCHS)]
    assert [row["step"] for row in log] == steps
    assert all("train_loss" in row and "val_loss" in row for row in log)
    assert read_log(tmp_path / "b" / "trial") == log


def test_the_budget_stops_the_fit_with_the_schedule_laid_over_the_whole_run(tmp_path: Path):
    module = TinyModule()
    callback = DropoutScheduleCallback(dropout=DROPOUT, drop_path=DROP_PATH, budget=0.4)
    _trainer(tmp_path, [callback], "probe").fit(module, _data())
    stop = math.ceil(0.4 * TOTAL)
    assert callback.scheduler.total_steps == TOTAL and module.seen[-1][0] == stop - 1
    assert module.seen == [_expected(step) for step in range(stop) for _ in range(ACCUMULATE)]
    with pytest.raises(ValueError, match="budget"):
        DropoutScheduleCallback(dropout=DROPOUT, budget=0.0)


def _ranks_rng(rank: int, rendezvous: str, out_dir: str) -> None:
    """Each rank's own RNG stream into the callback's state, and back after a 'restart'."""
    import torch.distributed as dist

    from dropkit.integrations.lightning import TrialCallback

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=2)
    try:
        torch.manual_seed(100 + rank)
        torch.rand(rank + 3)  # each rank somewhere along its own stream
        own = torch.get_rng_state()
        callback = TrialCallback(_trial(Path(out_dir) / f"rank{rank}"))
        state = callback.state_dict()  # collective, as Lightning asks every rank when saving
        if rank == 0:  # the checkpoint holds rank 0's callback state
            torch.save(state, Path(out_dir) / "state.pt")
        dist.barrier()
        torch.manual_seed(7)  # a restarted process: another stream
        callback.load_state_dict(torch.load(Path(out_dir) / "state.pt", weights_only=False))
        torch.save({"own": own, "restored": torch.get_rng_state()}, Path(out_dir) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_trial_callback_checkpoints_every_ranks_rng_and_each_rank_restores_its_own(
    tmp_path: Path,
):
    import torch.multiprocessing as mp

    mp.spawn(_ranks_rng, args=(f"file://{tmp_path / 'rendezvous'}", str(tmp_path)), nprocs=2)
    seen = [torch.load(tmp_path / f"{rank}.pt", weights_only=False) for rank in range(2)]
    assert not torch.equal(seen[0]["own"], seen[1]["own"])
    for rank in seen:
        assert torch.equal(rank["restored"], rank["own"])
