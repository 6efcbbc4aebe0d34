"""Paired statistics for claims and advice: the public path of `dropkit.experiments.base.stats`
(``from dropkit.experiments.stats import paired_t_interval``)."""

from dropkit.experiments.base import stats as _stats
from dropkit.experiments.base.stats import *  # noqa: F403 (this module is its public path)

__all__ = _stats.__all__
