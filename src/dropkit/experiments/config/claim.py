"""A claim of an experiment config: one metric of two variants of a setting, compared seed by
seed in the paper's direction (`dropkit.experiments.evidence.claims` decides its verdict)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = ["DIRECTIONS", "NON_INFERIORITY", "SWEEP_AXES", "Claim", "Direction"]

Direction = Literal["<", ">", ">=", "<="]
DIRECTIONS: tuple[str, ...] = ("<", ">", ">=", "<=")
NON_INFERIORITY = (">=", "<=")
SWEEP_AXES = ("cutoff", "p")  # the schedule fields a sensitivity sweep varies


@dataclass(frozen=True)
class Claim:
    """In ``setting``, ``metric`` of variant ``a`` minus variant ``b`` is ``direction`` 0.

    ``">"`` / ``"<"`` claim superiority (``margin`` 0); ``">="`` / ``"<="`` non-inferiority: the
    difference is not worse than ``margin`` (> 0, metric units) in the wrong direction.
    ``paper`` says what the paper reported and where; ``target`` is the paper's effect size in
    metric units (the report's power section compares the interval's half-width with it).
    ``sweep`` names the sensitivity sweeps (``"cutoff"``, ``"p"``) the claim is a point of: the
    report draws the effect against ``a``'s schedule value on that axis, one panel per axis.
    """

    id: str
    statement: str
    setting: str
    metric: str
    a: str
    b: str
    direction: Direction
    margin: float = 0.0
    paper: str = ""
    target: float | None = None
    sweep: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [axis for axis in self.sweep if axis not in SWEEP_AXES]
        if unknown:
            raise ValueError(
                f"claim {self.id}: sweep axes must be among {list(SWEEP_AXES)}, got {unknown}"
            )
        if self.direction not in DIRECTIONS:
            raise ValueError(
                f"claim {self.id}: direction must be one of {list(DIRECTIONS)}, "
                f"got {self.direction!r}"
            )
        if self.direction in NON_INFERIORITY:
            if not (math.isfinite(self.margin) and self.margin > 0):
                raise ValueError(
                    f"claim {self.id}: non-inferiority ({self.direction!r}) needs a finite "
                    f"margin > 0 in metric units, got {self.margin!r}"
                )
        elif self.margin != 0:
            raise ValueError(
                f"claim {self.id}: superiority ({self.direction!r}) takes no margin, "
                f"got {self.margin!r}"
            )

    @property
    def test(self) -> str:
        """``"superiority"`` for ``<`` / ``>``, ``"non-inferiority"`` for ``<=`` / ``>=``."""
        return "non-inferiority" if self.direction in NON_INFERIORITY else "superiority"

    @property
    def comparison(self) -> str:
        """E.g. ``"early_dropout - none > 0"``, ``"late_sd - sd >= -0.001"``."""
        line = {">": "0", "<": "0", ">=": f"-{self.margin:g}", "<=": f"{self.margin:g}"}
        return f"{self.a} - {self.b} {self.direction} {line[self.direction]}"
