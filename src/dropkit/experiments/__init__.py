"""Experiments built on dropkit's public API (the core never imports this package).

``Trial`` is what a user's training function receives when a setting names it
(``function: module:name``); see :mod:`dropkit.experiments.trial`.
"""

from dropkit.experiments.trial import Trial

__all__ = ["Trial"]
