"""A user's project for the training-function tests: a module written against the documented
``Trial`` only, its config, and readers of what a run left behind."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

# A user's module, written against the documented Trial only. It trains a small MLP on a fixed
# random problem, checkpoints every 10 steps (its RNG state included, so a resumed trial ends
# where an uninterrupted one does), and through files in its params' folder fails on request
# (fail-VARIANT-SEED) or, unless it was restored, waits after its first checkpoint to be
# interrupted there (hold-VARIANT-SEED): a test interrupts it mid-trial with no race.
USER_MODULE = """
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import dropkit


def train(trial):
    p = {"steps": 40, "sleep": 0.0, **trial.params}
    flags = Path(p["flags"])
    with (flags / "calls.txt").open("a") as handle:
        handle.write(f"{trial.variant}/{trial.seed}\\n")
    if (flags / f"fail-{trial.variant}-{trial.seed}").exists():
        raise RuntimeError(f"asked to fail seed {trial.seed}")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    y = (x[:, :3].sum(1) > 0).long()
    torch.manual_seed(trial.seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.0), nn.Linear(32, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = dropkit.DropoutScheduler(model, p["steps"], dropout=trial.dropout)
    start = 0
    state = trial.restore()
    if state is not None:
        with (flags / "restored.txt").open("a") as handle:
            handle.write(f"{trial.variant}/{trial.seed}@{state['step']}\\n")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        torch.set_rng_state(state["rng"])
        start = state["step"]
    for step in range(start, p["steps"]):
        batch = torch.arange(step * 32, (step + 1) * 32) % 256
        loss = F.cross_entropy(model(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        time.sleep(p["sleep"])
        if (step + 1) % 10 == 0:
            trial.log(step + 1, train_loss=loss.item())
            with torch.no_grad():  # a second call at the same step: the values are merged
                trial.log(step + 1, val_loss=F.cross_entropy(model(x[:64]), y[:64]).item())
            trial.checkpoint({"model": model.state_dict(), "opt": opt.state_dict(),
                              "sched": sched.state_dict(), "rng": torch.get_rng_state(),
                              "step": step + 1})
            if state is None and (flags / f"hold-{trial.variant}-{trial.seed}").exists():
                hold()
    if (flags / "leak").exists():  # process-wide changes a later trial or the driver inherits
        os.chdir(trial.dir)
        torch.set_default_dtype(torch.float64)
    if p.get("return") == "list":
        return [1.0]
    model.eval()
    with torch.no_grad():
        logits = model(x)
    out = {"train_loss": F.cross_entropy(logits, y).item(),
           "train_acc": (logits.argmax(1) == y).float().mean().item()}
    if p.get("return") == "no_acc":
        del out["train_acc"]
    return out


def hold():  # waits to be interrupted: the run is killed or preempted here
    time.sleep(300)
    raise RuntimeError("held for 300 s and never interrupted")


def two_arguments(trial, other):
    return {}
"""


# A user's data-parallel training function: DDP when the trial has several ranks, each rank
# training on its share of the same global batch of 64; on request (params) a rank fails.
DATA_PARALLEL_MODULE = """
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import dropkit


def train(trial):
    steps, fail = 30, trial.params.get("fail")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    y = (x[:, :3].sum(1) > 0).long()
    torch.manual_seed(trial.seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.0), nn.Linear(32, 2))
    model = model.to(trial.device)
    sched = dropkit.DropoutScheduler(model, steps, dropout=trial.dropout)
    start, state = 0, trial.restore()  # every rank restores rank 0's checkpoint
    if state is not None:
        model.load_state_dict(state["model"])
        sched.load_state_dict(state["sched"])
        start = state["step"]
    if trial.world_size > 1:
        model = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)  # no state of its own to restore
    share = 64 // trial.world_size
    mine = slice(trial.rank * share, (trial.rank + 1) * share)
    if trial.params.get("hold"):  # wait to be interrupted, once every rank is here
        Path(trial.params["hold"], f"rank{trial.rank}").touch()
        time.sleep(300)
    for step in range(start, steps):
        if fail == "rank1" and trial.rank == 1 and step == 5:
            raise ValueError("rank one broke at step 5")
        if fail == "rank0-dies" and trial.rank == 0 and step == 5:
            os._exit(3)
        loss = F.cross_entropy(model(x[mine]), y[mine])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        trial.log(step + 1, rank=trial.rank, ranks=trial.world_size)
        if step + 1 == 10:
            inner = model.module if trial.world_size > 1 else model
            trial.checkpoint({"model": inner.state_dict(), "sched": sched.state_dict(),
                              "step": step + 1})
            held = trial.params.get("hold_after_checkpoint")
            if held and state is None and trial.seed == 0:  # seed 0 waits to be preempted
                Path(held, f"rank{trial.rank}").touch()
                time.sleep(300)
    with torch.no_grad():
        full = F.cross_entropy(model(x), y).item()
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "-1")
    return {"train_loss": full, "val_loss": full, "ranks": trial.world_size, "rank": trial.rank,
            "threads": torch.get_num_threads(), "gpu": float(gpu)}
"""


def data_parallel_config(project: Path, seeds: int = 2, executor: dict | None = None,
                         early: bool = True, **params) -> Path:  # fmt: skip
    """A config of ``ddp_train:train`` (`DATA_PARALLEL_MODULE`) in ``project``: variant none and,
    with ``early``, an early schedule at rate 0 (both the same numbers on any number of ranks),
    no claims."""
    variants: dict = {"none": {}}
    if early:
        variants["early"] = {"dropout": {"schedule": "early", "p": 0.0, "cutoff": 0.5}}
    raw = {
        "name": "ddp",
        "seeds": seeds,
        "settings": {
            "mine": {"function": "ddp_train:train", "params": params, "variants": variants}
        },
    }
    if executor is not None:
        raw["executor"] = executor
    path = project / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def user_config(flags: Path, seeds: int = 3, **params) -> dict:
    return {
        "name": "userfn",
        "seeds": seeds,
        "settings": {
            "mine": {
                "function": "usertrain:train",
                "params": {"flags": str(flags), **params},
                "regime": "overfitting",
                "regime_claim": "U1",
                "variants": {
                    "none": {},
                    "dropout": {"dropout": {"schedule": "standard", "p": 0.3}},
                    "early": {
                        "dropout": {"schedule": "early", "p": 0.3, "cutoff": 0.5},
                        "params": {"steps": 40},
                    },
                },
            }
        },
        "claims": [
            {"id": "U1", "statement": "dropout lowers accuracy", "setting": "mine",
             "metric": "train_acc", "a": "dropout", "b": "none", "direction": "<"},
            {"id": "U2", "statement": "early lowers loss", "setting": "mine",
             "metric": "train_loss", "a": "early", "b": "none", "direction": "<"},
        ],
    }  # fmt: skip


def data_parallel_folder(tmp_path: Path) -> Iterator[Path]:
    """A user's project holding `DATA_PARALLEL_MODULE` as ``ddp_train.py`` (a fixture's body)."""
    folder = tmp_path / "ddp"
    folder.mkdir()
    (folder / "ddp_train.py").write_text(DATA_PARALLEL_MODULE)
    yield folder
    sys.modules.pop("ddp_train", None)
    while str(folder) in sys.path:
        sys.path.remove(str(folder))


def project_folder(tmp_path: Path) -> Iterator[Path]:
    """A user's project folder: the training module beside its config (a fixture's body)."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "usertrain.py").write_text(USER_MODULE)
    (folder / "flags").mkdir()
    yield folder
    sys.modules.pop("usertrain", None)
    while str(folder) in sys.path:
        sys.path.remove(str(folder))


def write_config(project: Path, raw: dict) -> Path:
    path = project / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def trial_calls(project: Path) -> list[str]:
    path = project / "flags" / "calls.txt"
    return path.read_text().split() if path.exists() else []


def run_result(out: Path, variant: str) -> dict:
    return json.loads((out / "runs" / "mine" / variant / "result.json").read_text())


def held_config_and_reference(project: Path, seeds: int, reference: Path, held: str) -> Path:
    """Train the user's trials once as they are (the reference numbers, into ``reference``), then
    ask trial ``held`` ("variant-seed") to wait after its first checkpoint until it is interrupted,
    and return the config. The call log is cleared for the run under test."""
    from dropkit.experiments.config.parse import load_config
    from dropkit.experiments.runner import run_experiment

    flags = project / "flags"
    config_path = write_config(project, user_config(flags, seeds=seeds))
    run_experiment(load_config(config_path), reference, progress=False)
    (flags / "calls.txt").unlink()
    (flags / f"hold-{held}").touch()
    return config_path
