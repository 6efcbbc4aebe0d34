"""`dropkit advise` on a training function's setting, and `--emit-config` for both kinds."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from dropkit.cli import main
from dropkit.experiments.advise import default_budget
from dropkit.experiments.config.parse import load_config
from dropkit.experiments.runner import run_experiment
from tests.slurm_cluster import cancel_jobs, recorded_job_ids, require_cluster, submitted_as

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "plain_pytorch"


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """The plain-PyTorch example, shortened, copied where the test may write beside it."""
    pytest.importorskip("sklearn")
    folder = tmp_path / "example"
    shutil.copytree(EXAMPLE, folder)
    raw = yaml.safe_load((folder / "config.yaml").read_text())
    raw["settings"]["digits"]["params"]["epochs"] = 4
    (folder / "config.yaml").write_text(yaml.safe_dump(raw))
    yield folder
    sys.modules.pop("digits", None)
    while str(folder) in sys.path:
        sys.path.remove(str(folder))


def test_the_default_budget_ends_past_the_warmup():
    assert default_budget(1 / 6) == pytest.approx(1 / 6 + 0.05)  # the paper's warm-up
    assert default_budget(0.0) == 0.05 and default_budget(0.99) == 1.0


def test_advise_probes_a_training_function_and_emits_a_runnable_config(example, tmp_path, capsys):
    emitted = example / "test-it.yaml"
    code = main(["advise", str(example / "config.yaml"), "--seeds", "2", "--budget", "0.5",
                 "--out", str(tmp_path / "advice"), "--emit-config", str(emitted)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    advice = json.loads((tmp_path / "advice" / "advice.json").read_text())
    assert set(advice["evidence"]["variants"]) == {"none", "dropout"}
    assert advice["evidence"]["budget"] == 0.5
    assert advice["evidence"]["metric"] == {"name": "val_loss", "better": "lower"}
    assert advice["regime"] in ("underfitting", "overfitting", "cannot tell")
    # the probes called the function with budget 0.5: it trained half its epochs
    log = (tmp_path / "advice/probes/none/seed-0/log.jsonl").read_text().splitlines()
    assert len(log) == 2
    # the validation loss it logged is the probe's curve, drawn per arm
    curve = advice["evidence"]["curve"]
    assert curve["fractions"] == [0.25, 0.5] and len(curve["dropout"]) == 2
    assert (tmp_path / "advice" / "probe_held_out.png").stat().st_size > 1000
    assert "probes: 4/4 done" in capsys.readouterr().err
    assert any("no GDE" in limit for limit in advice["limits"])
    config = load_config(emitted)
    setting = config.settings[0]
    assert setting.function == "digits:train" and setting.regime_claim == "A1"
    assert {"none", "dropout"} <= {v.name for v in setting.variants}
    a1 = config.claims[0]
    assert (a1.a, a1.b, a1.metric) == ("dropout", "none", "test_acc")
    assert a1.direction == (">" if advice["regime"] == "overfitting" else "<")
    report = run_experiment(config.with_seeds(2), tmp_path / "run", progress=False)
    assert report is not None and report["claims"][0]["n_seeds"] == 2


@pytest.mark.slow
def test_advise_on_slurm_gives_the_local_advice_in_named_jobs_with_the_time_given(
    example, tmp_path
):
    pytest.importorskip("submitit")
    require_cluster()
    base = ["advise", str(example / "config.yaml"), "--seeds", "2", "--budget", "0.5"]
    slurm = ["--executor", "slurm", "--executor-param", "timeout_min=6"]
    try:
        assert main([*base, "--out", str(tmp_path / "local")]) == 0
        assert main([*base, "--out", str(tmp_path / "slurm"), *slurm]) == 0
    finally:
        cancel_jobs(tmp_path)
    local, remote = (json.loads((tmp_path / where / "advice.json").read_text())
                     for where in ("local", "slurm"))  # fmt: skip
    assert remote["evidence"]["variants"] == local["evidence"]["variants"]
    assert remote["recommendation"] == local["recommendation"]
    ids = recorded_job_ids(tmp_path / "slurm/slurm").values()
    assert submitted_as(ids) == ["dropkit-advise-digits|00:06:00"] * 4


def test_an_early_dropout_advice_emits_its_schedule_and_the_papers_claims(tmp_path, capsys):
    from dropkit.experiments.advise import Advice, emit_config
    from dropkit.experiments.config.parse import parse_config

    config = load_config(Path(__file__).parent.parent / "examples/plain_pytorch/config.yaml")
    setting = config.settings[0]
    schedule = {"sites": "dropout", "schedule": "early", "p": 0.1, "cutoff": 1 / 6,
                "shape": "linear"}  # fmt: skip
    evidence = {"variants": {"none": {"val_acc": [0.9, 0.9]}, "dropout": {}}}
    advice = Advice("early_dropout", schedule, "underfitting", "high", (), evidence, ())
    raw = emit_config(advice, setting, p=0.1)
    parsed = parse_config(raw)
    early = parsed.settings[0].variant("early_dropout").dropout
    assert early is not None and (early.kind, early.p, early.shape) == ("early", 0.1, "linear")
    claims = {c.id: (c.a, c.b, c.metric, c.direction) for c in parsed.claims}
    assert claims == {
        "A1": ("dropout", "none", "test_acc", "<"),
        "A2": ("early_dropout", "none", "train_loss", "<"),
        "A3": ("early_dropout", "none", "test_acc", ">"),
    }


def test_advise_emits_a_config_for_a_builtin_setting(tmp_path, capsys):
    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump({
        "data": "digits", "model": {"kind": "mlp", "width": 16, "depth": 1},
        "train": {"epochs": 2, "batch_size": 64},
    }))  # fmt: skip
    emitted = tmp_path / "test-mine.yaml"
    assert main(["advise", str(config), "--seeds", "2", "--out", str(tmp_path / "a"),
                 "--emit-config", str(emitted)]) == 0  # fmt: skip
    parsed = load_config(emitted)
    setting = parsed.settings[0]
    assert setting.function is None and setting.recipe()[0] == "digits"
    assert parsed.claims[0].id == "A1" and setting.regime_claim == "A1"
    advice = json.loads((tmp_path / "a" / "advice.json").read_text())
    names = {v.name for v in setting.variants}
    tested = {"undecided": "early_dropout"}.get(advice["recommendation"], advice["recommendation"])
    assert "none" in names and (tested in names or tested in ("standard_dropout", "no_dropout"))


def test_a_failing_probe_gives_no_advice_and_says_where_the_traceback_is(example, tmp_path, capsys):
    (example / "digits.py").write_text("def train(trial):\n    raise RuntimeError('boom')\n")
    code = main(["advise", str(example / "config.yaml"), "--seeds", "2", "--out",
                 str(tmp_path / "advice")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "4 probe(s) failed, no advice" in err and "RuntimeError: boom" in err
    assert (tmp_path / "advice/probes/none/seed-0/traceback.txt").exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seeds": 1}, "seeds=1"),
        ({"seeds": [3]}, "give >= 2 seeds"),
        ({"threshold": 0}, "threshold"),
    ],
)
def test_advise_function_refuses_bad_probes_before_training(example, tmp_path, kwargs, match):
    """As advise() does: from Python, seeds=1 used to train every probe, then fail."""
    from dropkit.experiments.advise import advise_function

    setting = load_config(example / "config.yaml").settings[0]
    with pytest.raises(ValueError, match=match):
        advise_function(setting, str(example), tmp_path / "advice", **kwargs)
    assert not (tmp_path / "advice").exists()  # nothing trained, nothing written


def test_advise_leaves_the_callers_random_state_alone() -> None:
    import torch
    from torch import nn

    import dropkit

    torch.manual_seed(123)
    before = torch.get_rng_state()
    dropkit.advise(lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), "digits", seeds=2,
                   budget=0.05)  # fmt: skip
    assert torch.equal(torch.get_rng_state(), before)


VAL_ONLY = """
import torch


def train(trial):
    # a function that reports only a validation loss: dropout raises it, more as training goes
    steps = 40
    torch.manual_seed(trial.seed)
    noise = 0.01 * torch.randn(steps + 1)
    harm = trial.dropout(0, steps) * 2.0  # the probe's dropout rate, 0.0 or 0.1
    stop = max(1, round(trial.budget * steps))
    for step in range(1, stop + 1):
        trial.log(step, val_loss=1.0 / step**0.5 + harm * step / steps + noise[step].item())
    return {"val_loss": 1.0 / stop**0.5 + harm * stop / steps + noise[stop].item()}
"""


def _function_config(folder: Path, source: str, **setting) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "valonly.py").write_text(source)
    config = folder / "mine.yaml"
    config.write_text(yaml.safe_dump({"name": "mine", "settings": {"mine": {
        "function": "valonly:train", "variants": {"none": {}}, **setting}}}))  # fmt: skip
    return config


def test_a_function_returning_only_a_validation_loss_is_advised(tmp_path, capsys):
    config = _function_config(tmp_path / "f", VAL_ONLY, params={"warmup_frac": 0.0})
    try:
        code = main(["advise", str(config), "--seeds", "3", "--budget", "0.5", "--workers", "2",
                     "--out", str(tmp_path / "advice")])  # fmt: skip
    finally:
        sys.modules.pop("valonly", None)
    assert code == 0, capsys.readouterr().err
    advice = json.loads((tmp_path / "advice" / "advice.json").read_text())
    assert advice["regime"] == "underfitting" and advice["confidence"] == "high"
    assert "train_loss" not in advice["evidence"]["variants"]["none"]  # no gap reading
    assert "projected_relative_gap" not in advice["evidence"]


def test_the_validation_metric_is_named_by_the_setting_and_never_the_test_split(tmp_path, capsys):
    from dropkit.experiments.config.specs import ConfigError

    source = VAL_ONLY.replace("val_loss", "score")
    config = _function_config(tmp_path / "f", source, validation={"metric": "score"})
    assert load_config(config).settings[0].validation.better == "lower"
    acc = _function_config(tmp_path / "g", source, validation={"metric": "val_acc"})
    assert load_config(acc).settings[0].validation.better == "higher"
    refused = _function_config(tmp_path / "h", source, validation={"metric": "test_loss"})
    with pytest.raises(ConfigError, match="reads the test split"):
        load_config(refused)
    missing = _function_config(tmp_path / "i", VAL_ONLY.replace("val_loss", "loss"))
    try:
        code = main(["advise", str(missing), "--seeds", "2", "--out", str(tmp_path / "a")])
    finally:
        sys.modules.pop("valonly", None)
    err = capsys.readouterr().err
    assert code == 2 and "val_loss" in err and "probe(s) failed" in err


def test_an_undecided_advice_emits_the_experiment_that_decides_it(tmp_path):
    from dropkit.experiments.advise import Advice, emit_config
    from dropkit.experiments.config.parse import parse_config

    setting = load_config(EXAMPLE / "config.yaml").settings[0]
    evidence = {"metric": {"name": "val_loss", "better": "lower"}, "returned": ["test_acc"],
                "variants": {"none": {}, "dropout": {}}}  # fmt: skip
    advice = Advice("undecided", None, "cannot tell", None, (), evidence, ())
    parsed = parse_config(emit_config(advice, setting, p=0.1))
    assert parsed.settings[0].regime == "underfitting" and parsed.settings[0].regime_claim == "A1"
    claims = {c.id: (c.a, c.b, c.metric, c.direction) for c in parsed.claims}
    assert claims == {
        "A1": ("dropout", "none", "test_acc", "<"),
        "A2": ("early_dropout", "none", "train_loss", "<"),
        "A3": ("early_dropout", "none", "test_acc", ">"),
    }
