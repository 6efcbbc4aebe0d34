"""The framework examples run as documented: ``examples/lightning`` and ``examples/hf_rdrop``,
shrunk (fewer steps, two seeds) but otherwise as shipped, through ``run_experiment``."""

from __future__ import annotations

import json
import math
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from dropkit import schedules
from dropkit.experiments import Trial
from dropkit.experiments.config.parse import load_config
from dropkit.experiments.engine.trial import read_log
from dropkit.experiments.runner import run_experiment

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

pytestmark = pytest.mark.filterwarnings(
    "ignore:`isinstance.treespec, LeafSpec.` is deprecated",  # inside Lightning 2.6
    "ignore:The `srun` command is available",  # Lightning, on a machine with SLURM installed
)


@contextmanager
def _example(name: str, module: str, tmp_path: Path, shrink: Callable[[dict], None]
             ) -> Iterator[Path]:  # fmt: skip
    """The example copied to ``tmp_path`` with ``shrink`` applied to its config; its module
    leaves ``sys.modules`` and its folder ``sys.path`` afterwards."""
    folder = tmp_path / name
    shutil.copytree(EXAMPLES / name, folder)
    raw = yaml.safe_load((folder / "config.yaml").read_text())
    raw["seeds"] = 2
    shrink(raw)
    (folder / "config.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True))
    try:
        yield folder
    finally:
        sys.modules.pop(module, None)
        while str(folder) in sys.path:
            sys.path.remove(str(folder))


def _result(out: Path, setting: str, variant: str) -> dict[str, Any]:
    return json.loads((out / "runs" / setting / variant / "result.json").read_text())


# the digits examples train on 75% of the 1 797 digits less a 10% validation split (1 212
# samples), in batches of 64
STEPS_PER_EPOCH = 18


def _check_run(report: dict[str, Any] | None, out: Path, setting: str, claims: set[str],
               variants: tuple[str, ...], total_steps: int) -> None:  # fmt: skip
    assert report is not None
    assert {c["id"] for c in report["claims"]} == claims
    assert all(c["verdict"] != "not measured" for c in report["claims"]), report["claims"]
    assert all(c["n_seeds"] == 2 and c["failed_seeds"] == [] for c in report["claims"])
    for variant in variants:
        result = _result(out, setting, variant)
        assert result["errors"] == [None, None]
        assert result["total_steps"] == total_steps
        curve = result["curve"]
        assert curve["steps"] and curve["steps"][-1] == total_steps
        assert all(len(row) == len(curve["steps"]) for row in curve["train_loss"])
        assert all(0 < loss < 10 for row in curve["train_loss"] for loss in row)
    assert (out / "figures" / f"{setting}_train_loss.png").stat().st_size > 0


def test_the_lightning_example_runs_as_documented(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    pytest.importorskip("sklearn")

    def shrink(raw: dict) -> None:
        raw["settings"]["digits"]["params"]["epochs"] = 2

    out = tmp_path / "run"
    with _example("lightning", "classifier", tmp_path, shrink) as folder:
        report = run_experiment(load_config(folder / "config.yaml"), out, progress=False)
    variants = ("none", "dropout", "early_dropout")
    _check_run(report, out, "digits", {"L1", "L2"}, variants, total_steps=2 * STEPS_PER_EPOCH)
    # the schedule reached the model: each variant trained differently from the same seed
    losses = {v: _result(out, "digits", v)["metrics"]["train_loss"] for v in variants}
    assert len({tuple(loss) for loss in losses.values()}) == 3
    # every trial left a Lightning checkpoint to resume from in its own folder
    assert (out / "runs/digits/none/seed-1/lightning.ckpt").exists()
    # ... and the validation loss the module logs reached the trial's curve
    log = read_log(out / "runs/digits/none/seed-1")
    assert [row["step"] for row in log if "val_loss" in row] == [
        STEPS_PER_EPOCH,
        2 * STEPS_PER_EPOCH,
    ]


@pytest.mark.slow
def test_the_lightning_example_trains_one_trial_as_two_ranks(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    pytest.importorskip("sklearn")

    def shrink(raw: dict) -> None:
        raw["settings"]["digits"]["params"]["epochs"] = 2
        raw["settings"]["digits"]["variants"] = {"none": {}}
        raw["claims"] = []

    out = tmp_path / "run"
    with _example("lightning", "classifier", tmp_path, shrink) as folder:
        config = load_config(folder / "config.yaml")
        run_experiment(config, out, ranks=2, workers=2, threads=1, progress=False)
    assert _result(out, "digits", "none")["errors"] == [None, None]
    # Lightning's DDP joined dropkit's process group and its sampler gave each rank half of
    # every epoch: half the optimizer steps per epoch of the one-process trial
    log = read_log(out / "runs/digits/none/seed-1")
    half = STEPS_PER_EPOCH // 2
    assert [row["step"] for row in log if "val_loss" in row] == [half, 2 * half]
    assert (out / "runs/digits/none/seed-1/lightning.ckpt").exists()


def test_the_hf_rdrop_example_runs_as_documented(tmp_path: Path) -> None:
    pytest.importorskip("transformers")  # the model is built from a config: no download

    def shrink(raw: dict) -> None:
        raw["settings"]["order"]["params"].update(steps=40, log_every=10, save_every=20)

    out = tmp_path / "run"
    with _example("hf_rdrop", "finetune", tmp_path, shrink) as folder:
        report = run_experiment(load_config(folder / "config.yaml"), out, progress=False)
    variants = ("dropout", "rdrop", "rdrop_control")
    _check_run(report, out, "order", {"R1", "R2", "R3"}, variants, total_steps=40)
    metrics = {v: _result(out, "order", v)["metrics"] for v in variants}
    # the KL term did something: R-Drop trains differently from dropout and from its control
    # (the control's doubled batch alone also differs from dropout)
    for other in ("dropout", "rdrop_control"):
        assert metrics["rdrop"]["train_loss"] != metrics[other]["train_loss"]
        assert metrics["rdrop"]["test_loss"] != metrics[other]["test_loss"]
    assert metrics["dropout"]["train_loss"] != metrics["rdrop_control"]["train_loss"]


@pytest.mark.parametrize("budget", [0.5, 0.4])
def test_the_lightning_example_honours_the_budget(tmp_path: Path, budget: float) -> None:
    pytest.importorskip("lightning")
    pytest.importorskip("sklearn")
    sys.path.insert(0, str(EXAMPLES / "lightning"))
    try:
        import classifier

        schedule = schedules.early(0.1, cutoff=0.5, shape="linear")
        trial = Trial(setting="digits", variant="early_dropout", seed=0, dropout=schedule,
                      drop_path=None, rdrop_alpha=0.0, double_batch=False,
                      params={"epochs": 4}, budget=budget, dir=tmp_path / "trial")  # fmt: skip
        metrics = classifier.train(trial)
    finally:
        sys.modules.pop("classifier", None)
        sys.path.remove(str(EXAMPLES / "lightning"))
    total = 4 * STEPS_PER_EPOCH
    steps = [row["step"] for row in read_log(tmp_path / "trial")]
    # half the run (an epoch boundary), or 0.4 of it (mid-epoch): the last step logged is there
    assert steps[-1] == math.ceil(budget * total) and steps == sorted(steps)
    assert steps[:-1] == [STEPS_PER_EPOCH * k for k in range(1, len(steps))]
    assert set(metrics) == {"train_loss", "val_loss", "test_loss", "test_acc"}
    # ... and the schedule was still laid over the whole run, as in the checkpoint it left
    checkpoint = torch.load(tmp_path / "trial/lightning.ckpt", weights_only=False)
    (state,) = [s for key, s in checkpoint["callbacks"].items() if key.startswith("TrialCallback")]
    assert {k: state[k] for k in ("last_step", "total_steps")} == {
        "last_step": math.ceil(budget * total) - 1,
        "total_steps": total,
    }
    assert "torch_rng" in state  # a resumed trial draws as one never stopped
