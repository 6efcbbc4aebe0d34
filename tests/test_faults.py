"""The fault table: each bad input a user can hand dropkit, and what dropkit does with it.

Every fault is answered before anything trains, with a message that names the file or the
config field and the fix; the CLI prints it as ``dropkit <command>: ...`` and exits with 2, and a
refused ``run`` / ``advise`` leaves nothing on disk.

fault                                         what dropkit does
--------------------------------------------  ------------------------------------------------
labels < 0, non-integer (1.5) or NaN          ValueError naming the dataset and split
features NaN / inf (either split)             ValueError: the split, how many, how to fix
strings / objects in the arrays               ValueError: numeric arrays only / no pickles
.npz that is random bytes, text, truncated    ValueError: not a readable .npz of x, y, ...
batch_size > training samples                 ConfigError at settings.<s>.train.batch_size
model fields wrong, or model fails on data    ConfigError at settings.<s>.model
schedule with no site / cutoff past the run   ConfigError at settings.<s>.variants.<v>...
dynamics window longer than the run           ConfigError at settings.<s>.dynamics.window
optional package missing                      MissingDependency with the pip line
``dropkit sites`` factory bad                 SystemExit("dropkit sites: ..."), no traceback
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from dropkit.cli import main
from dropkit.experiments.builtin import data as datasets
from dropkit.experiments.config.parse import parse_config
from dropkit.experiments.config.specs import ConfigError
from dropkit.experiments.preflight import (
    MissingDependency,
    preflight,
    preflight_settings,
    require,
)

NOT_NPZ = "is not a readable .npz of arrays x, y, x_test, y_test"


def _arrays(n: int = 40, features: int = 6, classes: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((n, features))
    y = np.arange(n) % classes
    return {"x": x, "y": y, "x_test": x[: n // 4].copy(), "y_test": y[: n // 4].copy()}


def _npz(tmp_path: Path, name: str = "data", **overrides: Any) -> Path:
    path = tmp_path / f"{name}.npz"
    np.savez(path, **{**_arrays(), **overrides})
    return path


def _config(data: str | Path, **setting: Any) -> dict[str, Any]:
    spec = {
        "data": str(data),
        "model": {"kind": "mlp", "width": 8, "depth": 1},
        "train": {"epochs": 1, "batch_size": 8},
        "variants": {"none": {}, "dropout": {"dropout": {"p": 0.1}}},
        **setting,
    }
    return {"name": "faults", "seeds": 2, "settings": {"s": spec}}


def _yaml(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# --- data ------------------------------------------------------------------------------------


def test_good_npz_passes_preflight(tmp_path) -> None:
    preflight(parse_config(_config(_npz(tmp_path))))


@pytest.mark.parametrize(
    ("split", "key", "labels"),
    [("train", "y", np.arange(40) % 3 - 1), ("test", "y_test", np.array([0, 1, -2] * 3 + [0]))],
)
def test_negative_labels_are_refused(tmp_path, split, key, labels) -> None:
    path = _npz(tmp_path, **{key: labels})
    with pytest.raises(ValueError, match=rf"the {split} labels \({key}\) hold \d+ negative"):
        datasets.load_npz(path)
    with pytest.raises(ConfigError, match=r"settings\.s\.data: dataset 'data'.* negative"):
        preflight(parse_config(_config(path)))


def test_non_integer_labels_are_refused(tmp_path) -> None:
    labels = (np.arange(40) % 3).astype(np.float64)
    assert datasets.load_npz(_npz(tmp_path, "whole", y=labels)).n_classes == 3  # 1.0 is fine
    labels[5] = 1.5
    with pytest.raises(ValueError, match=r"train labels \(y\) hold 1 non-integer value.*1\.5"):
        datasets.load_npz(_npz(tmp_path, "fractional", y=labels))
    labels[5] = np.nan
    with pytest.raises(ValueError, match=r"train labels \(y\) hold 1 NaN or infinite"):
        datasets.load_npz(_npz(tmp_path, "nan", y=labels))


@pytest.mark.parametrize(("split", "key"), [("train", "x"), ("test", "x_test")])
def test_nan_or_inf_features_are_refused(tmp_path, split, key) -> None:
    x = _arrays()[key].copy()
    x[0, 0], x[1, 2], x[2, 3] = np.nan, np.inf, 1e300  # 1e300 is inf as float32
    path = _npz(tmp_path, **{key: x})
    with pytest.raises(
        ValueError, match=rf"dataset 'data': the {split} features \({key}\) hold 1 NaN and 2 inf"
    ) as caught:
        datasets.load_npz(path)
    assert "np.nan_to_num" in str(caught.value)


@pytest.mark.parametrize("fault", ["random bytes", "text renamed .npz", "truncated npz", "empty"])
def test_corrupt_npz_is_refused(tmp_path, fault) -> None:
    real = _npz(tmp_path, "real").read_bytes()
    content = {
        "random bytes": np.random.default_rng(1).bytes(512),
        "text renamed .npz": b"x,y\n1,2\n3,4\n",
        "truncated npz": real[: len(real) // 2],
        "empty": b"",
    }[fault]
    path = tmp_path / "corrupt.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=NOT_NPZ) as caught:
        datasets.load_dataset(str(path))
    assert str(path) in str(caught.value) and "pickled" not in str(caught.value)


def test_npz_of_pickled_objects_is_refused_without_unpickling(tmp_path) -> None:
    path = _npz(tmp_path, x=np.array([[1.0], ["a"], [None]] * 10, dtype=object))
    with pytest.raises(ValueError, match="array 'x' holds pickled objects; save plain numeric"):
        datasets.load_npz(path)


def test_string_arrays_are_refused(tmp_path) -> None:
    path = _npz(tmp_path, x=_arrays()["x"].astype(str))
    with pytest.raises(ValueError, match=r"x holds <U\d+ values, not numbers"):
        datasets.load_npz(path)


# --- config against the data -----------------------------------------------------------------


def test_batch_larger_than_the_training_split_is_refused(tmp_path) -> None:
    config = _config(_npz(tmp_path), train={"epochs": 1, "batch_size": 64})
    with pytest.raises(ConfigError, match=r"settings\.s\.train\.batch_size: 64 exceeds the 40"):
        preflight(parse_config(config))


@pytest.mark.parametrize(
    ("model", "match"),
    [
        ({"kind": "mlp", "width": 0}, "width=0 must be a positive int"),
        ({"kind": "mlp", "heads": 2}, "bad arguments for model 'mlp'"),
        ({"kind": "vit", "patch": 4}, "patch=4 does not divide signal_length=6"),
        ({"kind": "mlp", "in_features": 5}, "fails on inputs shaped \\(2, 6\\)"),
        ({"kind": "mlp", "n_classes": 2}, "2 outputs but data's labels go up to 2"),
    ],
)
def test_bad_model_fields_are_refused(tmp_path, model, match) -> None:
    with pytest.raises(ConfigError, match=rf"settings\.s\.model: .*{match}"):
        preflight(parse_config(_config(_npz(tmp_path), model=model)))


def test_schedule_the_model_cannot_follow_is_refused(tmp_path) -> None:
    no_site = _config(_npz(tmp_path), variants={"sd": {"drop_path": {"p": 0.1}}})
    with pytest.raises(ConfigError, match=r"variants\.sd\.drop_path: the mlp model has no"):
        preflight(parse_config(no_site))
    late = {"dropout": {"schedule": "early", "p": 0.1, "cutoff": 50}}  # 5 steps in the run
    with pytest.raises(ConfigError, match=r"variants\.e\.dropout\.cutoff: cutoff=50 steps"):
        preflight(parse_config(_config(_npz(tmp_path), variants={"e": late})))
    never = {"dropout": {"schedule": "late", "p": 0.1, "cutoff": 5}}  # on from step 5 of 5
    with pytest.raises(ConfigError, match=r"variants\.l\.dropout\.cutoff: late cutoff=5 .*never"):
        preflight(parse_config(_config(_npz(tmp_path), variants={"l": never})))
    never = {"dropout": {"schedule": "early", "p": 0.1, "cutoff": 0.05}}  # 0.25 steps of 5
    with pytest.raises(ConfigError, match=r"variants\.e\.dropout\.cutoff: .*rounds to 0 steps"):
        preflight(parse_config(_config(_npz(tmp_path), variants={"e": never})))


def test_dynamics_window_longer_than_the_run_is_refused(tmp_path) -> None:
    dynamics = {"variants": ["none"], "every": 1, "window": 8, "until": 8}
    config = _config(_npz(tmp_path), dynamics=dynamics)  # 40 // 8 = 5 steps
    with pytest.raises(ConfigError, match=r"settings\.s\.dynamics\.window: .* only 5 optimizer"):
        preflight(parse_config(config))


# --- optional dependencies -------------------------------------------------------------------


def _without(monkeypatch, *missing: str) -> None:
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name in missing else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_missing_optional_dependency_refuses_run(tmp_path, monkeypatch) -> None:
    config = parse_config(_config(_npz(tmp_path)))
    _without(monkeypatch, "matplotlib")
    with pytest.raises(MissingDependency, match=r"pip install matplotlib \(or") as caught:
        preflight(config)
    assert isinstance(caught.value, ImportError) and caught.value.name == "matplotlib"
    assert "the report's figures" in str(caught.value)
    preflight(config, need_plots=False)  # a caller that draws nothing does not need it
    monkeypatch.setitem(sys.modules, "scipy", None)  # the other way to hide a package
    with pytest.raises(
        MissingDependency, match=r"scipy is not installed.*pip install '\.\[data\]'"
    ):
        preflight(config, need_plots=False)


def test_run_without_matplotlib_is_refused_before_training(tmp_path, monkeypatch, capsys) -> None:
    cfg, out = _yaml(tmp_path, _config(_npz(tmp_path))), tmp_path / "out"
    _without(monkeypatch, "matplotlib")
    assert main(["run", str(cfg), "--out", str(out), "--workers", "1"]) == 2
    assert "dropkit run: matplotlib is not installed" in capsys.readouterr().err
    assert not out.exists()


def test_require_names_module_purpose_and_extra() -> None:
    require("numpy", "data", "for nothing")  # installed: no error
    with pytest.raises(MissingDependency) as caught:
        require("dropkit_no_such_module", "plot", "for the report's figures")
    assert str(caught.value) == (
        "dropkit_no_such_module is not installed; dropkit needs it for the report's figures: "
        "pip install dropkit_no_such_module (or the whole `plot` extra, from a dropkit "
        "checkout: pip install '.[plot]')"
    )
    with pytest.raises(MissingDependency, match=r"pip install pyyaml \(or the whole `data`"):
        require("yaml.no_such_module", "data", "to read experiment configs")


# --- dropkit sites ---------------------------------------------------------------------------


def raising_factory():
    raise RuntimeError("weights not found")


def needs_arguments(width):
    raise AssertionError("never called")


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("os:getcwd", "'os:getcwd' returned a str, not a torch.nn.Module"),
        ("tests.test_faults:raising_factory", "raised RuntimeError: weights not found"),
        ("tests.test_faults:needs_arguments", "with no arguments raised TypeError"),
        ("os:no_such_factory", "cannot load 'os:no_such_factory'"),
        ("os:sep", "'os:sep' is a str, not a callable"),
    ],
)
def test_sites_bad_factory(spec, match) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["sites", spec])
    assert str(caught.value).startswith("dropkit sites: ") and match in str(caught.value)


# --- nothing on disk after a refusal ---------------------------------------------------------


@pytest.mark.parametrize("fault", ["bad data", "bad budget", "no matplotlib"])
def test_refused_advise_creates_nothing(tmp_path, monkeypatch, capsys, fault) -> None:
    data = _npz(tmp_path, y=np.arange(40) % 3 - 1) if fault == "bad data" else _npz(tmp_path)
    cfg, out = _yaml(tmp_path, _config(data)), tmp_path / "advice"
    argv = ["advise", str(cfg), "--out", str(out)]
    if fault == "bad budget":
        argv += ["--budget", "0"]
    if fault == "no matplotlib":
        _without(monkeypatch, "matplotlib")
    monkeypatch.chdir(tmp_path)  # the default runs/advise-<name> would land here
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("dropkit advise: ")
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_preflight_settings_checks_the_probe_split(tmp_path) -> None:
    config = parse_config(_config(_npz(tmp_path), train={"epochs": 1, "batch_size": 40}))
    preflight(config)  # the full training split holds 40
    with pytest.raises(ConfigError, match=r"batch_size: 40 exceeds the 36 training \(less val"):
        preflight_settings(config.settings)  # advise holds out the last 10 % for validation


def test_refused_run_creates_nothing(tmp_path, capsys) -> None:
    data = _npz(tmp_path, x=np.full((40, 6), np.nan))
    cfg, out = _yaml(tmp_path, _config(data)), tmp_path / "out"
    assert main(["run", str(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dropkit run: settings.s.data: dataset 'data': the train features")
    assert not out.exists()
