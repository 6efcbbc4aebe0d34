"""Where jobs run: one small interface, two places (this machine's process pool, or SLURM).

An executor is handed jobs — callables with a ``label`` that take an optional progress callback
and return their output — and calls ``on_done(job, output)`` in the driver's process as each one
ends. It knows nothing of claims, reports or the run folder's layout; a job knows nothing of
where it runs. A job that ends without an output (a cancelled or crashed SLURM job) is reported
as a `JobFailure` with the reason.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from dropkit.experiments.engine.executors.interface import (
    Executor,
    Job,
    JobFailure,
    OnDone,
    Progress,
)

__all__ = ["Executor", "Job", "JobFailure", "OnDone", "Progress", "make_executor"]


def make_executor(
    kind: str,
    state_dir: Path,
    *,
    workers: int = 1,
    threads: int | None = None,
    parameters: dict[str, Any] | None = None,
    detach: bool = False,
    name: str = "dropkit",
    scope: str | None = None,
) -> Executor:
    """``local``: ``workers`` processes (``threads`` intra-op threads each; default the cores
    divided among them); ``slurm``: submitit, with its job logs and
    the job ids in ``state_dir``, ``parameters`` for ``update_parameters``, ``name`` as the
    jobs' name in the queue unless ``parameters`` give one, and the jobs recorded under
    ``scope`` (a run folder's id: a later driver of the same scope re-attaches to them; None, a
    fresh scope, re-attaches to nothing)."""
    if kind == "local":
        from dropkit.experiments.engine.executors.local import LocalExecutor

        return LocalExecutor(workers, threads)
    if kind == "slurm":
        from dropkit.experiments.engine.executors.slurm import SlurmExecutor

        scope = uuid.uuid4().hex if scope is None else scope
        return SlurmExecutor(state_dir, parameters or {}, scope=scope, detach=detach, name=name)
    raise ValueError(f"unknown executor {kind!r}; expected local or slurm")
