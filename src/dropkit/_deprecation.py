"""Renamed public names keep working for a release, with a ``FutureWarning`` naming the new one."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

REMOVED_IN = "0.3"


def warn_renamed(old: str, new: str, stacklevel: int = 3) -> None:
    """Warn that ``old`` was renamed ``new`` and goes away in ``REMOVED_IN``."""
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


def renamed_keyword(
    function: str, old: str, new: str, old_value: Any, new_value: Any, default: Any = None
) -> Any:
    """The value for keyword ``new``, which a caller may still pass as ``old``.

    ``None`` means not passed, for both: neither gives ``default``, and both are refused (the
    two could disagree, and silently preferring one would hide it).
    """
    if old_value is None:
        return default if new_value is None else new_value
    if new_value is not None:
        raise TypeError(
            f"{function}() got both {new}= and {old}=, its deprecated name; pass {new}= only"
        )
    warn_renamed(f"{function}({old}=...)", f"{new}=...", stacklevel=4)
    return old_value
