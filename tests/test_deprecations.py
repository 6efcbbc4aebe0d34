"""Every renamed public name keeps working for a release, warns with the new name, and is the
same object (or gives the same result) as the new one. The list is CHANGELOG.md's."""

import importlib
import subprocess
import sys

import pytest
import torch
from torch import nn

import dropkit
from dropkit import diagnostics as dd


@pytest.mark.parametrize(
    ("module", "old", "new"),
    [
        ("dropkit", "RDropLoss", "RDropTerms"),
        ("dropkit.rdrop", "RDropLoss", "RDropTerms"),
        ("dropkit.diagnostics", "Schedule", "Cadence"),
        ("dropkit.diagnostics.tracking", "Schedule", "Cadence"),
    ],
)
def test_renamed_attributes_warn_and_are_the_new_object(module, old, new) -> None:
    mod = importlib.import_module(module)
    with pytest.warns(FutureWarning, match=f"{old} is deprecated.*use {new}"):
        value = getattr(mod, old)
    assert value is getattr(mod, new)
    assert old not in getattr(mod, "__all__", ())
    with pytest.raises(AttributeError):
        mod.no_such_name  # noqa: B018 (the access is the test)


def test_the_old_scheduler_module_warns_and_reexports() -> None:
    sys.modules.pop("dropkit.scheduler", None)
    with pytest.warns(FutureWarning, match="dropkit.dropout_scheduler"):
        old = importlib.import_module("dropkit.scheduler")
    assert old.DropoutScheduler is dropkit.DropoutScheduler


@pytest.mark.parametrize(
    ("old", "new", "names"),
    [
        ("dropkit.experiments.train", "dropkit.experiments.builtin.train",
         ["Population", "TrainResult", "Variant", "train_variant", "objective"]),
        ("dropkit.experiments.data", "dropkit.experiments.builtin.data",
         ["Dataset", "load_dataset", "load_digits", "load_npz", "split_validation"]),
    ],
)  # fmt: skip
def test_the_experiments_old_module_paths_warn_and_reexport(old, new, names) -> None:
    sys.modules.pop(old, None)
    with pytest.warns(FutureWarning, match=new.replace(".", r"\.")):
        module = importlib.import_module(old)
    moved = importlib.import_module(new)
    assert all(getattr(module, name) is getattr(moved, name) for name in names)


def test_the_experiments_public_paths_are_the_moved_objects() -> None:
    import dropkit.experiments as experiments
    from dropkit.experiments import advise, config, runner, stats
    from dropkit.experiments.base import stats as base_stats
    from dropkit.experiments.config import parse
    from dropkit.experiments.config.training import TrainConfig

    sys.modules.pop("dropkit.experiments.train", None)
    with pytest.warns(FutureWarning):
        from dropkit.experiments.train import TrainConfig as old_train_config
    assert old_train_config is TrainConfig is experiments.TrainConfig
    assert stats.paired_t_interval is base_stats.paired_t_interval
    assert config.load_config is parse.load_config and callable(runner.run_experiment)
    assert advise.advise_function.__module__ == "dropkit.experiments.advise"
    assert callable(advise.emit_config) and advise.split_validation is not None


def test_recorder_keywords_keep_their_old_names() -> None:
    model = nn.Linear(3, 2)
    with pytest.warns(FutureWarning, match=r"schedule=.*cadence="):
        rec = dd.DynamicsRecorder(model, ["grad_norm"], schedule=3)
    assert rec.due(3) == ["grad_norm"] and rec.due(4) == []
    batches = [(torch.randn(4, 3), torch.randint(0, 2, (4,))) for _ in range(5)]
    with pytest.warns(FutureWarning, match=r"num_batches=.*n_batches="):
        rec = dd.DynamicsRecorder(model, ["gdv"], batches=batches, num_batches=2)
    assert rec.step(0)[0]["num_grads"] == 2


def test_drop_path_takes_timms_names_and_warns_on_the_old_ones() -> None:
    x = torch.ones(1000, 3)
    torch.manual_seed(0)
    new = dropkit.drop_path(x, drop_prob=0.5, training=True)
    torch.manual_seed(0)
    with pytest.warns(FutureWarning, match=r"drop_path\(p=...\).*drop_prob="):
        old = dropkit.drop_path(x, p=0.5, training=True)
    assert torch.equal(new, old)
    with pytest.warns(FutureWarning, match="training="):
        torch.manual_seed(0)
        defaulted = dropkit.drop_path(x, 0.5)
    assert torch.equal(defaulted, new)  # still drops until the default changes in 0.3
    assert dropkit.drop_path(x, 0.5, training=False) is x


def test_subpackages_are_reachable_as_attributes_after_import_dropkit() -> None:
    code = (
        "import dropkit, sys; "
        "assert 'dropkit.experiments' not in sys.modules; "
        "print(dropkit.diagnostics.Cadence is not None, dropkit.integrations.__name__, "
        "dropkit.experiments.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "dropkit.integrations", "dropkit.experiments"]


def test_star_import_loads_no_tier_above_the_core() -> None:
    code = (
        "import sys; from dropkit import *; import dropkit; "
        "print(sorted(m for m in sys.modules if m.startswith('dropkit.experiments'))); "
        "print(dropkit.advise.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["[]", "dropkit.experiments.advise"]


def test_advise_takes_n_batches_and_warns_on_gde_batches() -> None:
    from dropkit.experiments.builtin.data import load_dataset

    digits = load_dataset("digits")
    with pytest.warns(FutureWarning, match=r"gde_batches=.*n_batches="):
        advice = dropkit.advise(
            lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), digits, gde_batches=4
        )
    assert advice.recommendation == "no_dropout"


@pytest.mark.parametrize(
    "call",
    [
        lambda: dropkit.drop_path(torch.ones(4, 3), 0.0, True, p=0.5),
        lambda: dd.DynamicsRecorder(nn.Linear(3, 2), ["grad_norm"], cadence=1, schedule=3),
        lambda: dd.DynamicsRecorder(nn.Linear(3, 2), ["gdv"], n_batches=2, num_batches=4),
        lambda: dropkit.advise(lambda: nn.Linear(64, 10), "digits", n_batches=8, gde_batches=4),
    ],
    ids=["drop_path", "recorder-cadence", "recorder-n_batches", "advise"],
)
def test_a_keyword_and_its_deprecated_name_together_are_refused(call) -> None:
    """Both names given (even the new one at its default value) could disagree: refused before
    anything runs, instead of silently taking the deprecated one."""
    with pytest.raises(TypeError, match=r"got both .*=.*its deprecated name"):
        call()
