"""Experiments built on dropkit's public API (the core never imports this package).

[`Trial`][dropkit.experiments.Trial] is what a user's training function receives when a setting
names it (``function: module:name``): the variant's schedules, its parameters, a seed, and a
folder for curves and checkpoints. [`TrainConfig`][dropkit.experiments.TrainConfig] (the
intended run) and [`Dataset`][dropkit.experiments.Dataset] (the data) are what
[`dropkit.advise`][dropkit.experiments.advise.advise] probes a model with.
"""

from dropkit.experiments.builtin.data import Dataset
from dropkit.experiments.config.training import TrainConfig
from dropkit.experiments.engine.trial import Trial

__all__ = ["Dataset", "TrainConfig", "Trial"]
