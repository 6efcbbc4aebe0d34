"""Deprecated: population training is `dropkit.experiments.builtin.train`, and `TrainConfig` is
``dropkit.experiments.TrainConfig``.

Moved when the experiments were grouped by stage; importing this module warns and re-exports
the new ones.
"""

from dropkit._deprecation import warn_renamed
from dropkit.experiments.builtin import train as _train
from dropkit.experiments.builtin.train import *  # noqa: F403 (re-exported under the old path)
from dropkit.experiments.config.training import TrainConfig

warn_renamed(
    "dropkit.experiments.train",
    "dropkit.experiments.builtin.train (or dropkit.experiments.TrainConfig)",
    2,
)

__all__ = [*_train.__all__, "TrainConfig"]
