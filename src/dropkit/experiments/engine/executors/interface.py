"""What an executor runs and how it reports: `Job`, `JobFailure`, `Executor` (see the package)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Executor", "Job", "JobFailure", "OnDone", "Progress"]

Progress = Callable[[str, int, int], None]  # (job label, steps done, steps in all)


class Job(Protocol):
    """What an executor runs: picklable, with a label; returns its output."""

    @property
    def label(self) -> str: ...

    def __call__(self, progress: Progress | None = None) -> Any: ...


@dataclass(frozen=True)
class JobFailure:
    """A job that ended without an output: ``reason`` says why (SLURM's state and log tail)."""

    reason: str


OnDone = Callable[[Job, Any], None]


class Executor(Protocol):
    """Runs jobs and reports each one's output to ``on_done`` as it ends."""

    def run(self, jobs: Sequence[Job], on_done: OnDone, progress: Progress) -> None: ...
