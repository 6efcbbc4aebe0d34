"""Argument checks shared by the public API, with one rule: a wrong type raises ``TypeError``, a
wrong value ``ValueError``, and numpy scalars count as the Python numbers they hold."""

from __future__ import annotations

import numbers


def check_int(value: object, name: str, minimum: int | None = None, what: str = "") -> int:
    """``value`` as an ``int`` (numpy integers too, never a bool), at least ``minimum``.

    ``what`` says what the number is, for the message (e.g. ``" (optimizer steps)"``).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int{what}, got {type(value).__name__} {value!r}")
    number = int(value)
    if minimum is not None and number < minimum:
        bound = {0: "a non-negative int", 1: "a positive int"}.get(minimum, f"an int >= {minimum}")
        raise ValueError(f"{name}={number} must be {bound}{what}")
    return number


def check_real(value: object, name: str, what: str = "") -> float:
    """``value`` as a ``float`` (ints and numpy scalars too, never a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number{what}, got {type(value).__name__} {value!r}")
    return float(value)
