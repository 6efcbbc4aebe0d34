"""A training function called as a job: what one trial may do to the run, and what it gets."""

from __future__ import annotations

import itertools
import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from dropkit import schedules
from dropkit.experiments import Trial
from dropkit.experiments.engine import trial as trial_module
from dropkit.experiments.engine.trial import TrialJob, read_log

_names = itertools.count()


def _job(tmp_path: Path, body: str, *, dropout=None, budget: float = 1.0, seed: int = 0,
         folder: str = "trial") -> TrialJob:  # fmt: skip
    """A job calling ``train`` of a module made of ``body`` (a fresh module name each time)."""
    module = f"user_trial_{os.getpid()}_{next(_names)}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(body), encoding="utf-8")
    trial = Trial(
        setting="s", variant="v", seed=seed,
        dropout=schedules.standard(0.0) if dropout is None else dropout, drop_path=None,
        rdrop_alpha=0.0, double_batch=False, params={}, budget=budget,
        dir=tmp_path / "runs" / folder,
    )  # fmt: skip
    return TrialJob(f"{module}:train", str(tmp_path), trial, ("loss",))


STEPPED = """
import torch
from torch import nn
import dropkit

def train(trial):
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.0))
    sched = dropkit.DropoutScheduler(model, 20, dropout=trial.dropout)
    for _ in range(trial.budget_steps(20) - SKIP):
        sched.step()
    return {"loss": 1.0}
"""


def test_sys_exit_fails_that_trial_alone_with_the_reason(tmp_path, capsys):
    body = """
    import argparse
    def train(trial):
        argparse.ArgumentParser().parse_args(["--epochs", "3"])  # a script's own arguments
        return {"loss": 1.0}
    """
    outcome = _job(tmp_path, body)()  # SystemExit(2) ended the whole `dropkit run`
    assert outcome.metrics is None
    assert outcome.error.startswith("SystemExit: 2: the function called sys.exit")
    assert "parse_args([])" in outcome.error
    assert "SystemExit" in (tmp_path / "runs/trial/traceback.txt").read_text()


def test_a_sys_exit_from_a_signal_handler_still_ends_the_process(tmp_path):
    # submitit's SIGUSR2 handler requeues a preempted job, then calls sys.exit(-1): that exit
    # must end the job, not fail the seed
    def requeue_and_exit(signum, frame):
        sys.exit(-1)

    previous = signal.signal(signal.SIGUSR1, requeue_and_exit)
    body = """
    import os, signal, time
    def train(trial):
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(5)
        return {"loss": 1.0}
    """
    try:
        with pytest.raises(SystemExit) as ended:
            _job(tmp_path, body)()
        assert ended.value.code == -1
        assert signal.getsignal(signal.SIGUSR1) is requeue_and_exit  # the handler is put back
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_process_wide_state_a_trial_changes_is_put_back(tmp_path):
    body = """
    import os, torch
    def train(trial):
        os.chdir(trial.dir)
        os.environ["DROPKIT_TEST_LEAK"] = "1"
        torch.set_default_dtype(torch.float64)
        torch.set_grad_enabled(False)
        torch.use_deterministic_algorithms(True)
        torch.set_default_device("meta")
        return {"loss": 1.0}
    """
    before = os.getcwd()
    outcome = _job(tmp_path, body)()
    assert outcome.error is None
    assert os.getcwd() == before and "DROPKIT_TEST_LEAK" not in os.environ
    assert torch.get_default_dtype() == torch.float32 and torch.is_grad_enabled()
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.get_default_device() == torch.device("cpu") and torch.ones(1).device.type == "cpu"


def test_state_is_put_back_when_the_function_raises(tmp_path):
    body = """
    import torch
    def train(trial):
        torch.set_default_dtype(torch.float64)
        raise ValueError("late")
    """
    outcome = _job(tmp_path, body)()
    assert outcome.error == "ValueError: late" and torch.get_default_dtype() == torch.float32


def test_the_trial_folder_exists_when_the_function_is_called(tmp_path):
    body = """
    def train(trial):
        (trial.dir / "notes.txt").write_text("first thing the function does")
        return {"loss": 1.0}
    """
    outcome = _job(tmp_path, body)()
    assert outcome.error is None, outcome.error
    assert (tmp_path / "runs/trial/notes.txt").exists()


@pytest.mark.parametrize(
    "dropout",
    [schedules.early(0.2, 0.5, "linear"), schedules.late(0.2, 0.5)],
    ids=["early", "late"],
)
def test_a_schedule_never_stepped_fails_the_trial(tmp_path, dropout):
    outcome = _job(tmp_path, STEPPED.replace("SKIP", "20"), dropout=dropout)()
    assert outcome.metrics is None
    assert "was applied up to step 0 of the 20 steps" in outcome.error
    assert "call sched.step() after each optimizer.step()" in outcome.error
    body = "def train(trial):\n    return {'loss': 1.0}\n"  # never built a scheduler at all
    outcome = _job(tmp_path, body, dropout=dropout, folder="t2")()
    assert "trial.dropout" in outcome.error and "was never applied" in outcome.error


@pytest.mark.parametrize(("skip", "fails"), [(0, False), (1, False), (2, True)])
def test_a_schedule_stepped_through_the_budget_passes(tmp_path, skip, fails):
    # stepped after each of the steps trained (the last step() may be left out); a probe's
    # budget counts, not the full run
    job = _job(tmp_path, STEPPED.replace("SKIP", str(skip)), dropout=schedules.early(0.2, 0.5),
               budget=0.5)  # fmt: skip
    outcome = job()
    assert (outcome.metrics is None) is fails, outcome.error


def test_a_standard_schedule_is_not_watched_and_the_trial_sees_its_schedule(tmp_path):
    body = """
    def train(trial):
        assert repr(trial.dropout) == "Early(p=0.2, cutoff=0.5, shape='constant')"
        assert trial.dropout.p == 0.2 and trial.dropout(0, 10) == 0.2
        return {"loss": 1.0}
    """
    early = schedules.early(0.2, 0.5)
    assert _job(tmp_path, body, dropout=early)().error is not None  # applied once, not stepped
    body = "def train(trial):\n    return {'loss': 1.0}\n"
    assert _job(tmp_path, body, folder="t2")().error is None  # standard(0.0): nothing to step


def test_a_diverged_trial_stops_early_without_a_schedule_failure(tmp_path):
    body = STEPPED.replace('return {"loss": 1.0}', 'return {"loss": float("nan")}')
    outcome = _job(tmp_path, body.replace("SKIP", "15"), dropout=schedules.early(0.2, 0.5))()
    assert outcome.metrics is not None and "diverged" in outcome.error


def test_values_logged_at_one_step_in_several_calls_are_merged(tmp_path):
    trial = _job(tmp_path, "def train(trial):\n    return {}\n").trial
    trial.log(10, train_loss=0.5)
    trial.log(10, val_loss=0.7)
    trial.log(20, train_loss=0.4)
    trial.log(20, train_loss=0.3)  # logged again (after a restore): the last value holds
    assert read_log(trial.dir) == [
        {"step": 10, "train_loss": 0.5, "val_loss": 0.7},
        {"step": 20, "train_loss": 0.3},
    ]


class _Killed(BaseException):
    """Stands in for SIGKILL: nothing in the function catches it."""


class _KilledAfter(Trial):
    """A trial whose run is killed right after its checkpoint at step ``kill_at``."""

    kill_at = 20  # inside the dropout phase: the masks' stream matters after the resume

    def checkpoint(self, state):
        super().checkpoint(state)
        if state["step"] == self.kill_at:
            raise _Killed


def test_the_trial_docstring_example_resumes_exactly_after_a_kill(tmp_path):
    doc = trial_module.Trial.__doc__ or ""
    code = textwrap.dedent(doc.split("```python\n")[1].split("```")[0])
    namespace: dict = {}
    exec(compile(code, "trial_example", "exec"), namespace)  # the example as a user copies it
    train = namespace["train"]
    fields = dict(
        setting="s", variant="early", seed=3, dropout=schedules.early(0.3, 0.5), drop_path=None,
        rdrop_alpha=0.0, double_batch=False, params={}, budget=1.0,
    )  # fmt: skip
    whole = train(Trial(**fields, dir=tmp_path / "whole"))
    killed = _KilledAfter(**fields, dir=tmp_path / "killed")
    with pytest.raises(_Killed):
        train(killed)
    torch.manual_seed(12345)  # a new process starts from another random state
    resumed = train(Trial(**fields, dir=tmp_path / "killed"))
    assert resumed == whole
