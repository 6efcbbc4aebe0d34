"""The experiment configs that ship with dropkit (``builtin/configs/*.yaml``): the demo's."""

from __future__ import annotations

from importlib import resources

from dropkit import _optional
from dropkit.experiments.config.parse import parse_config
from dropkit.experiments.config.specs import ExperimentConfig

__all__ = ["builtin_config"]


def builtin_config(name: str) -> ExperimentConfig:
    """A config shipped with dropkit: ``demo``, ``demo-quick`` or ``demo-full``."""
    yaml = _optional.import_optional("yaml", "data", "to read experiment configs")
    files = resources.files("dropkit.experiments.builtin") / "configs"
    available = sorted(
        p.name.removesuffix(".yaml") for p in files.iterdir() if p.name.endswith(".yaml")
    )
    if name not in available:
        raise ValueError(f"no built-in config {name!r}; available: {available}")
    return parse_config(yaml.safe_load((files / f"{name}.yaml").read_text(encoding="utf-8")))
