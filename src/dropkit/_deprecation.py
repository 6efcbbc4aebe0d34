"""Renamed public names keep working for a release, with a ``FutureWarning`` naming the new one."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

REMOVED_IN = "0.3"


def warn_renamed(old: str, new: str, stacklevel: int = 3) -> None:
    """Warn that ``old`` was renamed ``new`` and goes away in :data:`REMOVED_IN`."""
    warnings.warn(
        f"{old} is deprecated and will be removed in dropkit {REMOVED_IN}: use {new}",
        FutureWarning,
        stacklevel=stacklevel,
    )


def renamed_attribute(
    module: str, name: str, renamed: Mapping[str, tuple[str, Callable[[], Any]]]
) -> Any:
    """A module ``__getattr__`` body: ``renamed`` maps an old name to (new name, getter)."""
    if name in renamed:
        new, get = renamed[name]
        warn_renamed(f"{module}.{name}", new, stacklevel=4)
        return get()
    raise AttributeError(f"module {module!r} has no attribute {name!r}")


def renamed_keyword(function: str, old: str, new: str, old_value: Any, new_value: Any) -> Any:
    """The value for keyword ``new``, where a caller may still pass it as ``old`` (None: not)."""
    if old_value is None:
        return new_value
    warn_renamed(f"{function}({old}=...)", f"{new}=...", stacklevel=4)
    return old_value
