"""Deprecated: the module is `dropkit.dropout_scheduler` (``dropkit.DropoutScheduler``).

Renamed so that ``schedules`` (the pure functions of the step) and the thing that applies them
no longer differ by two letters; importing this module warns and re-exports the new one.
"""

from dropkit._deprecation import warn_renamed
from dropkit.dropout_scheduler import DropoutScheduler, ScheduleLike

warn_renamed("dropkit.scheduler", "dropkit.dropout_scheduler (or dropkit.DropoutScheduler)", 2)

__all__ = ["DropoutScheduler", "ScheduleLike"]
