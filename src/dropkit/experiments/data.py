"""Deprecated: the datasets are `dropkit.experiments.builtin.data`
(``dropkit.experiments.Dataset``).

Moved when the experiments were grouped by stage; importing this module warns and re-exports
the new one.
"""

from dropkit._deprecation import warn_renamed
from dropkit.experiments.builtin import data as _data
from dropkit.experiments.builtin.data import *  # noqa: F403 (re-exported under the old path)

warn_renamed(
    "dropkit.experiments.data",
    "dropkit.experiments.builtin.data (or dropkit.experiments.Dataset)",
    2,
)

__all__ = _data.__all__
