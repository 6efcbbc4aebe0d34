"""Experiments built on dropkit's public API (the core never imports this package).

``Trial`` is what a user's training function receives when a setting names it
(``function: module:name``): the variant's schedules, its parameters, a seed, and a folder for
curves and checkpoints.
"""

from dropkit.experiments.trial import Trial

__all__ = ["Trial"]
