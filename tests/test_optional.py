"""Optional dependencies: every one is imported through dropkit._optional, and a missing one is a
MissingDependency whose message names the extra that installs it."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch

from dropkit._optional import MissingDependency, import_optional, optional_imports, require
from dropkit.cli import main
from dropkit.experiments import preflight


def _hide(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    """Make ``package`` (and every submodule already imported) unimportable for this test."""
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, package, None)


def _pip(extra: str) -> str:
    return rf"from a dropkit checkout: pip install '\.\[{extra}\]'\)"


def test_import_optional_returns_the_module_or_names_the_extra(monkeypatch) -> None:
    assert import_optional("json", "data", "for nothing") is importlib.import_module("json")
    _hide(monkeypatch, "json")
    with pytest.raises(MissingDependency, match=rf"^json is not installed; .* {_pip('data')}$"):
        import_optional("json", "data", "for nothing")
    with pytest.raises(ImportError) as caught:  # existing `except ImportError` still catch it
        require("json", "plot", "for nothing")
    assert caught.value.name == "json" and "pip install '.[plot]'" in str(caught.value)


def test_a_package_that_is_there_but_does_not_import_is_named_too() -> None:
    with (
        pytest.raises(MissingDependency, match=r"json is installed but does not import"),
        optional_imports("json", "data", "for nothing"),
    ):
        from json import no_such_name  # noqa: F401


def test_preflight_refusal_is_the_same_error() -> None:
    assert issubclass(preflight.MissingDependency, MissingDependency)
    with pytest.raises(preflight.MissingDependency, match=_pip("data")):
        preflight.require("dropkit_no_such_module", "data", "for nothing")


def _figures() -> None:
    from dropkit.experiments.evidence.figures import _pyplot

    _pyplot()


def _stats() -> None:
    from dropkit.experiments.base.stats import t_quantile

    t_quantile(0.95, 3)


def _mde() -> None:
    from dropkit.experiments.base.stats import min_detectable_effect

    min_detectable_effect(1.0, 5)


def _config() -> None:
    from dropkit.experiments.builtin.demo_configs import builtin_config

    builtin_config("demo-quick")


def _digits() -> None:
    from dropkit.experiments.builtin.data import load_digits

    load_digits()


def _mnist1d() -> None:
    from dropkit.experiments.builtin.data import _generate_mnist1d

    _generate_mnist1d(40, 0)


def _bars() -> None:
    from dropkit.experiments.runner import _tqdm

    _tqdm()


def _tensorboard(tmp_path) -> None:
    from dropkit.diagnostics import DynamicsRecorder

    DynamicsRecorder(torch.nn.Linear(2, 2), tensorboard=tmp_path / "tb")


def _advise() -> None:  # refused before any probe trains
    from dropkit.experiments.advise import advise

    advise(lambda: None, None, figure="never.png")


def _integration(name: str):
    def load(monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delitem(sys.modules, f"dropkit.integrations.{name}", raising=False)
        importlib.import_module(f"dropkit.integrations.{name}")

    return load


@pytest.mark.parametrize(
    ("package", "extra", "use"),
    [
        ("matplotlib", "plot", _figures),
        ("scipy", "data", _stats),
        ("scipy", "data", _mde),
        ("scipy", "data", _advise),
        ("matplotlib", "plot", _advise),
        ("yaml", "data", _config),
        ("sklearn", "data", _digits),
        ("mnist1d", "data", _mnist1d),
        ("tqdm", "data", _bars),
        ("tensorboard", "tensorboard", _tensorboard),
        ("lightning", "lightning", _integration("lightning")),
        ("transformers", "hf", _integration("transformers")),
    ],
    ids=lambda v: v if isinstance(v, str) else getattr(v, "__name__", ""),
)
def test_every_optional_import_names_its_extra(
    monkeypatch, tmp_path, package: str, extra: str, use
) -> None:
    if package in {"lightning", "transformers"}:
        pytest.importorskip(package)  # the module under test must import when it is there
    _hide(monkeypatch, package)
    with pytest.raises(MissingDependency, match=rf"^{package} is not installed; .*{_pip(extra)}"):
        if use.__name__ == "load":
            use(monkeypatch)
        elif use is _tensorboard:
            use(tmp_path)
        else:
            use()


def test_cli_answers_a_missing_package_without_a_traceback(monkeypatch, tmp_path, capsys) -> None:
    _hide(monkeypatch, "yaml")
    assert main(["run", str(tmp_path / "config.yaml")]) == 2
    assert "dropkit run: yaml is not installed" in capsys.readouterr().err
