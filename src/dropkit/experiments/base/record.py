"""The record one (setting, variant) run passes from training to the report: ``result.json``.

One typed structure with one axis order: every per-seed table is indexed ``[seed][point]``, in
the order of ``seeds``, from `TrainResult` through the file to
the figures, so nothing is transposed on the way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["Curve", "DynamicsSeries", "RunRecord", "Series"]


@dataclass(frozen=True)
class Curve:
    """Training loss ``train_loss[seed][window]`` at window ends ``steps``; rates per kind."""

    steps: list[int]
    train_loss: list[list[float]]
    rates: dict[str, list[float]]


@dataclass(frozen=True)
class Series:
    """One logged value ``values[seed][point]`` at optimizer ``steps`` (NaN where a seed did
    not log it)."""

    steps: list[int]
    values: list[list[float]]


@dataclass(frozen=True)
class DynamicsSeries:
    """``values[instrument][seed][checkpoint]`` measured at optimizer ``steps``."""

    steps: list[int]
    values: dict[str, list[list[float]]]


@dataclass(frozen=True)
class RunRecord:
    """What a finished run produced: final metrics per seed, curves and dynamics."""

    setting: str
    variant: str
    seeds: list[int]
    total_steps: int
    cutoff_step: int | None
    metrics: dict[str, list[float]]  # metric -> one value per seed
    curve: Curve
    dynamics: DynamicsSeries | None
    wall_s: float
    diverged_at: list[int | None]  # per seed: the step its loss became non-finite, or None
    # per seed: why it failed (a training function raised, or its job was cancelled), or None
    errors: list[str | None] = dataclasses.field(default_factory=list)
    # what a training function logged besides train_loss (the curve), by name
    logged: dict[str, Series] = dataclasses.field(default_factory=dict)

    def failed(self) -> dict[int, str]:
        """``{seed: reason}`` of the seeds that failed (their metrics are NaN)."""
        return {s: e for s, e in zip(self.seeds, self.errors) if e is not None}

    def per_seed(self, metric: str) -> dict[int, float]:
        """``{seed: value}`` of a final metric (empty when the run did not measure it)."""
        return dict(zip(self.seeds, self.metrics.get(metric, [])))

    def extended(self, other: RunRecord) -> RunRecord:
        """This run with the seeds of ``other``, the same (setting, variant) trained alike on
        other seeds (a run extended by ``--seeds``): per-seed tables joined, wall times added."""
        if set(self.seeds) & set(other.seeds):
            raise ValueError(f"both runs hold seeds {sorted(set(self.seeds) & set(other.seeds))}")
        same = ("setting", "variant", "total_steps", "cutoff_step")
        if any(getattr(self, k) != getattr(other, k) for k in same) or (
            self.curve.steps != other.curve.steps
        ):
            raise ValueError("the runs differ in more than their seeds: they cannot be joined")
        dynamics = None
        if self.dynamics is not None and other.dynamics is not None:
            if self.dynamics.steps != other.dynamics.steps:
                raise ValueError("the runs' dynamics were measured at different steps")
            dynamics = DynamicsSeries(
                self.dynamics.steps,
                {k: v + other.dynamics.values[k] for k, v in self.dynamics.values.items()},
            )
        return RunRecord(
            setting=self.setting,
            variant=self.variant,
            seeds=self.seeds + other.seeds,
            total_steps=self.total_steps,
            cutoff_step=self.cutoff_step,
            metrics={k: v + other.metrics.get(k, []) for k, v in self.metrics.items()},
            curve=Curve(
                self.curve.steps, self.curve.train_loss + other.curve.train_loss, self.curve.rates
            ),
            dynamics=dynamics,
            wall_s=self.wall_s + other.wall_s,
            diverged_at=self.diverged_at + other.diverged_at,
            errors=(self.errors or [None] * len(self.seeds))
            + (other.errors or [None] * len(other.seeds)),
            logged={
                name: Series(series.steps, series.values + other.logged[name].values)
                for name, series in self.logged.items()
                if name in other.logged and other.logged[name].steps == series.steps
            },
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        dynamics = data.get("dynamics")
        return cls(
            **{k: data[k] for k in ("setting", "variant", "seeds", "total_steps", "metrics")},
            cutoff_step=data.get("cutoff_step"),
            curve=Curve(**data["curve"]),
            dynamics=None if dynamics is None else DynamicsSeries(**dynamics),
            wall_s=float(data.get("wall_s", 0.0)),
            diverged_at=data.get("diverged_at", [None] * len(data["seeds"])),
            errors=data.get("errors", [None] * len(data["seeds"])),
            logged={name: Series(**series) for name, series in data.get("logged", {}).items()},
        )
