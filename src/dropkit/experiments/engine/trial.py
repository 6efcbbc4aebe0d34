"""A user's training function as a setting: `Trial`, what one call gets, and the job that makes
the call.

A setting with ``function: mytrain:train`` is trained by calling ``train(trial)`` once per
(variant, seed). The trial carries the variant's schedules (ready for
[`DropoutScheduler`][dropkit.DropoutScheduler]), its parameters, and a private folder in which
the function may log curves ([`Trial.log`][dropkit.experiments.Trial.log]) and save a
checkpoint that survives a requeue or a killed run
([`Trial.checkpoint`][dropkit.experiments.Trial.checkpoint],
[`Trial.restore`][dropkit.experiments.Trial.restore]). The function returns its final metrics,
a mapping of names to numbers; claims may name any of them. The trial also says where the call
runs: its ``device``, and for a trial of several data-parallel ranks its ``rank``,
``world_size``, ``local_rank`` and ``is_main``.

`TrialJob` is what an executor runs: it imports the function where it runs (a SLURM node
imports it from the config's folder), picks the device, joins the ranks of a data-parallel
trial into one process group, calls the function and returns a `TrialOutcome` — the metrics, or
the error with its traceback. It learns its rank from torch's own environment variables
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), which the
executor sets, and keeps the thread count the executor gave its process. It writes nothing
outside ``trial.dir`` and knows nothing of claims or of the run folder around it.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, TypeVar, cast

import torch

from dropkit.experiments.base.io import write_atomic
from dropkit.schedules import Early, Late, Schedule

__all__ = ["Trial", "TrialJob", "TrialOutcome", "function_source", "load_function"]

LOG_FILE = "log.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
TRACEBACK_FILE = "traceback.txt"
PEER_FAILURE_FILE = "failed-rank{rank}.json"  # a rank other than 0 that failed: why, for rank 0


@dataclass
class Trial:
    """One call of a training function: a (setting, variant, seed) and where to keep its state.

    dropkit builds one per (variant, seed) of a setting that names a training function
    (``function: module:name``) and calls ``train(trial)``; the function trains the variant
    with the trial's schedules and seed and returns its final metrics, a mapping of names to
    numbers (those the config's claims name, plus any others). ``dropkit advise`` calls it the
    same way with ``budget < 1``.

    Attributes:
        setting: The setting's name in the config.
        variant: The variant's name (``none``, ``early_dropout``, ...).
        seed: The seed; seed ``s`` of every variant is paired with seed ``s`` of the others, so
            seed everything random with it (``torch.manual_seed(trial.seed)``).
        dropout: The variant's dropout schedule, a callable ``(step, total_steps) -> rate``
            (a [`Schedule`][dropkit.schedules.Schedule]) ready for
            ``DropoutScheduler(model, total_steps, dropout=trial.dropout)``. A variant that
            names no dropout (``none``) gets ``schedules.standard(0.0)``: it trains without
            dropout whatever rate the model was built with.
        drop_path: The variant's stochastic-depth schedule, or None when it names none (the
            model's drop-path sites keep the rates they were built with).
        rdrop_alpha: R-Drop's alpha (0: no R-Drop); use it as the ``alpha`` of
            [`rdrop_loss`][dropkit.rdrop_loss].
        double_batch: Train on ``[x; x]`` without the KL term (R-Drop's control arm): the same
            doubled forward with alpha 0, e.g. ``rdrop_loss(..., alpha=0.0)`` or
            ``RDropTrainer(rdrop_alpha=0.0)``.
        params: The setting's ``params:`` overlaid by the variant's.
        budget: The fraction of the intended run to train (1.0; below 1 only for ``dropkit
            advise`` probes): train ``trial.budget_steps(total_steps)`` steps with the
            schedules still laid over the full ``total_steps``.
        dir: A folder of this trial's own, kept across requeues and reruns; it exists when the
            function is called.
        device: Where to train: a GPU of this trial's own when the machine (or the SLURM job)
            has any — locally each worker process sees one GPU, so ``cuda:0``; on SLURM
            ``cuda:{local_rank % device_count}`` of the job's GPUs — else ``cpu``.
        rank: This process's rank in a data-parallel trial (0 in a trial of one process).
        world_size: How many ranks train the trial (1 unless the executor runs it as several:
            ``--ranks N`` locally, ``tasks_per_node`` x ``nodes`` on SLURM). When above 1,
            dropkit has initialised torch's default process group (NCCL on a GPU, gloo on the
            CPU) before the call and destroys it after; every rank gets the same seed, so
            shard the data by ``rank`` (e.g. ``DistributedSampler``).
        local_rank: The rank among the trial's processes on this machine.

    Examples:
        A training function (``mytrain.py``, named in a config as ``function: mytrain:train``)
        that resumes from its checkpoint exactly (the random stream the dropout masks draw
        from is checkpointed too) and trains only ``budget_steps`` when probed:

        ```python
        import torch
        import torch.nn.functional as F
        from torch import nn

        import dropkit


        def train(trial):
            steps = trial.params.get("steps", 100)
            x = torch.randn(512, 16, generator=torch.Generator().manual_seed(0))  # your data
            y = (x[:, 0] > 0).long()
            torch.manual_seed(trial.seed)
            model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Dropout(0.0), nn.Linear(64, 2))
            opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
            sched = dropkit.DropoutScheduler(
                model, steps, dropout=trial.dropout, drop_path=trial.drop_path
            )
            start, state = 0, trial.restore()
            if state is not None:  # requeued or resumed: go on from there, masks included
                model.load_state_dict(state["model"])
                opt.load_state_dict(state["opt"])
                sched.load_state_dict(state["sched"])
                torch.set_rng_state(state["rng"])
                start = state["step"]
            for step in range(start, trial.budget_steps(steps)):
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                if (step + 1) % 10 == 0:
                    trial.log(step + 1, train_loss=loss.item())
                    trial.checkpoint({"model": model.state_dict(), "opt": opt.state_dict(),
                                      "sched": sched.state_dict(), "step": step + 1,
                                      "rng": torch.get_rng_state()})
            model.eval()
            with torch.no_grad():
                return {"train_loss": F.cross_entropy(model(x), y).item()}
        ```
    """

    setting: str
    variant: str
    seed: int
    dropout: Schedule
    drop_path: Schedule | None
    rdrop_alpha: float
    double_batch: bool
    params: dict[str, Any]
    budget: float
    dir: Path
    device: torch.device = torch.device("cpu")  # noqa: RUF009 (a torch.device is immutable)
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, whose return value, logs and checkpoints are the trial's
        (the other ranks' are ignored: `log` and `checkpoint` do nothing there)."""
        return self.rank == 0

    def budget_steps(self, total_steps: int) -> int:
        """How many of the run's ``total_steps`` optimizer steps to train.

        All of them in a run (``budget`` 1), ``ceil(budget * total_steps)`` (at least 1) for an
        advise probe. Lay the schedules (dropout, learning rate) over ``total_steps`` whatever
        this returns: a probe trains the first part of the intended run.

        Args:
            total_steps: The optimizer steps of the full run.

        Returns:
            The number of optimizer steps to train, between 1 and ``total_steps`` (1 when
                ``total_steps`` is below 1).
        """
        return max(1, math.ceil(self.budget * total_steps))

    def log(self, step: int, **values: float) -> None:
        """Record values at optimizer ``step``; the report draws a figure of each value logged
        (``train_loss`` is the training-loss figure).

        Lines go to ``dir/log.jsonl`` at once, so a curve survives a requeue. Values logged at
        one step in several calls are merged (``log(10, train_loss=...)`` then
        ``log(10, val_loss=...)`` keeps both); a value logged again at a step (after a
        restore) replaces the earlier one. Log the last step too: the run's length in the
        report (and the cutoff line of its loss figure) is the largest step logged.

        Only rank 0 writes (on other ranks of a data-parallel trial this does nothing), so
        log values that are the same on every rank or reduced across them.

        Args:
            step: The optimizer step the values belong to (converted with ``int``).
            **values: The values by name, e.g. ``train_loss=0.31`` (each converted with
                ``float``).

        Raises:
            TypeError: If ``step`` or a value cannot be converted (``ValueError`` for a string
                that is not a number).
        """
        row = {"step": int(step), **{name: float(value) for name, value in values.items()}}
        if not self.is_main:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / LOG_FILE).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()

    def checkpoint(self, state: Any) -> None:
        """Save ``state`` atomically as this trial's checkpoint, replacing the previous one.

        Written to a temporary file, synced and renamed over ``dir/checkpoint.pt``, so a kill
        at any moment leaves either the old checkpoint or the new one, never half of one. Only
        rank 0 saves (on other ranks of a data-parallel trial this does nothing): checkpoint
        state that rank 0 holds in full, such as a DDP model's; every rank restores it.

        Args:
            state: Anything ``torch.save`` takes, e.g. ``{"model": model.state_dict(),
                "opt": opt.state_dict(), "step": step}``.
        """
        if not self.is_main:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / CHECKPOINT_FILE
        tmp = path.with_name(f".{CHECKPOINT_FILE}.{os.getpid()}.tmp")
        try:
            torch.save(state, tmp)
            with tmp.open("rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def restore(self, map_location: Any = None) -> Any | None:
        """What [`checkpoint`][dropkit.experiments.Trial.checkpoint] last saved.

        Loaded with ``torch.load(..., weights_only=False)``: the checkpoint is the trial's own,
        so any picklable state comes back as it was saved. By default, tensors saved from a
        GPU come back on this trial's ``device`` (a requeued trial may run on another GPU, or
        on none) and tensors saved from the CPU stay there (``torch.set_rng_state`` takes a
        CPU tensor).

        Args:
            map_location: As ``torch.load``'s, to place the tensors otherwise.

        Returns:
            The saved state, or None on a first start (no checkpoint yet).
        """
        path = self.dir / CHECKPOINT_FILE
        if not path.exists():
            return None
        if map_location is None:
            map_location = _onto(self.device)
        return torch.load(path, map_location=map_location, weights_only=False)


def _onto(device: torch.device) -> Callable[[Any, str], Any]:
    """A ``torch.load`` map_location that keeps CPU storages on the CPU and puts every other
    storage (saved on a GPU or another accelerator) on ``device``."""

    def place(storage: Any, location: str) -> Any:
        if location == "cpu" or device.type == "cpu":
            return storage  # torch.load hands each storage over on the CPU
        return storage.to(device=device)

    return place


def read_log(trial_dir: Path) -> list[dict[str, Any]]:
    """The rows `Trial.log` wrote, one per step (the values logged at a step merged, a value
    logged again keeping its last; a line cut short by a kill is skipped), in step order."""
    path = trial_dir / LOG_FILE
    if not path.exists():
        return []
    rows: dict[int, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows.setdefault(row["step"], {}).update(row)
    return [rows[step] for step in sorted(rows)]


def load_function(ref: str, root: str | None) -> Callable[[Trial], Any]:
    """Import a training function ``module:name`` and check it takes one argument, the trial.

    Args:
        ref: ``"module:name"``, as a setting's ``function:`` gives it.
        root: A folder put first on ``sys.path`` (the config's folder), or None.

    Returns:
        The function.

    Raises:
        ImportError: If the module cannot be imported (whatever error it raised) or has no
            ``name``.
        TypeError: If ``name`` is not callable or cannot be called with one argument.
    """
    module_name, _, attr = ref.partition(":")
    if root is not None and root not in sys.path:
        sys.path.insert(0, root)
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # the user's module: any error in it means it cannot be imported
        where = f" (looked in {root} and on sys.path)" if root else ""
        raise ImportError(
            f"cannot import {module_name!r}{where}: {type(err).__name__}: {err}"
        ) from err
    function = getattr(module, attr, None)
    if function is None:
        raise ImportError(f"module {module_name!r} has no {attr!r}")
    if not callable(function):
        raise TypeError(f"{ref} is a {type(function).__name__}, not a function")
    try:
        inspect.signature(function).bind(None)
    except TypeError:
        raise TypeError(
            f"{ref}{inspect.signature(function)} cannot be called as {attr}(trial); a training "
            "function takes one argument, the dropkit.experiments.Trial"
        ) from None
    return function


def function_source(ref: str, root: str | None) -> dict[str, Any]:
    """What identifies a training function's code: the file that defines it (``file``), its
    SHA-256 (``sha256``), and where the file lies in a git repository, the commit checked out
    and whether the tree had uncommitted changes (``git``: ``commit``, ``dirty``). Other
    modules the function imports are not hashed: the git state speaks for them."""
    function = load_function(ref, root)
    module = inspect.getmodule(function)
    defined_in = getattr(module, "__file__", None)
    if defined_in is None:
        raise TypeError(f"{ref} is not defined in a file; put it in a module file")
    path = Path(defined_in).resolve()
    source: dict[str, Any] = {
        "function": ref,
        "file": str(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    git = _git_state(path.parent)
    if git is not None:
        source["git"] = git
    return source


def _git_state(folder: Path) -> dict[str, Any] | None:
    """The commit checked out in the repository around ``folder`` and whether tracked files
    differ from it; None outside a repository or without git."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True,
                                  text=True, timeout=10, check=False)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status)}


@dataclass(frozen=True)
class TrialOutcome:
    """A trial's end: its final ``metrics``, or the ``error`` (one line) and its traceback.

    What a `TrialJob` returns.

    Attributes:
        metrics: The metrics the function returned, as floats; None when it raised (or returned
            something that is not a mapping of numbers). When it lacks a metric the config's
            claims need, what it returned is kept and ``error`` names the missing ones: the
            seed is failed.
        error: ``"ExceptionType: message"`` when the function raised, ``"non-finite NAME, ...
            (diverged)"`` when it returned NaN or infinite metrics (then ``metrics`` is set
            too), else None.
        traceback: The formatted traceback when the function raised (also written to
            ``trial.dir/traceback.txt``), else None.
        seconds: Wall-clock seconds the call took.
        where: Where it ran: ``device``, ``threads`` (torch's intra-op threads) and
            ``world_size`` (ranks); the last bits of a function's numbers may depend on them.
    """

    metrics: dict[str, float] | None
    error: str | None = None
    traceback: str | None = None
    seconds: float = 0.0
    where: dict[str, Any] | None = None


def check_metrics(returned: Any, where: str) -> dict[str, float]:
    """The returned mapping as ``{name: float}``; a ``TypeError`` naming ``where`` otherwise."""
    if not isinstance(returned, Mapping):
        raise TypeError(
            f"{where} returned a {type(returned).__name__}; a training function returns its "
            "final metrics as a mapping, e.g. {'test_acc': 0.91, 'train_loss': 0.2}"
        )
    metrics = {}
    for name, value in returned.items():
        try:
            metrics[str(name)] = float(value)
        except (TypeError, ValueError):
            raise TypeError(
                f"{where} returned {name}={value!r}, not a number; return plain floats"
            ) from None
    return metrics


def missing_metrics(metrics: Mapping[str, float] | None, required: Sequence[str]) -> list[str]:
    """The ``required`` metrics an outcome lacks (all of them when it has none)."""
    return [name for name in required if metrics is None or name not in metrics]


def failed_seed(metrics: Mapping[str, float] | None, required: Sequence[str]) -> bool:
    """Whether an outcome fails its seed: it has no metrics (the function raised, or its job
    ended without a result), or lacks a ``required`` one. A diverged seed is a result."""
    return metrics is None or bool(missing_metrics(metrics, required))


@dataclass(frozen=True)
class TrialJob:
    """Call a training function for one (setting, variant, seed): what an executor runs.

    Calling the job (``job(progress=None)``) imports the function where it runs, sets the
    trial's device and ranks, calls the function with the trial and checks what it returns; any
    error is caught and returned in the `TrialOutcome`. It runs with the intra-op threads its
    process was given (the executor decides: SLURM's ``cpus_per_task``, locally the cores
    divided among the processes or ``--threads``).

    A data-parallel trial runs this job once per rank, each process with torch's environment
    variables set (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).
    The job joins the default process group before the call and, after it, waits at a barrier
    for the others: rank 0's outcome is the trial's, and a rank that failed (or never reached
    the barrier) fails it, with that rank's error.

    Attributes:
        function: ``"module:name"`` of the training function.
        root: The folder the function imports from (the config's folder), or None.
        trial: The trial it is called with.
        required: The metrics the config's claims read; a function that does not return all of
            them fails.
        ranks: How many data-parallel ranks the executor runs it as (1: one process).
    """

    function: str
    root: str | None
    trial: Trial
    required: tuple[str, ...]  # the metrics the config's claims read
    ranks: int = 1

    @property
    def label(self) -> str:
        """``"setting/variant/seed N"``, how progress and errors name the job."""
        return f"{self.trial.setting}/{self.trial.variant}/seed {self.trial.seed}"

    def __call__(self, progress: Callable[[str, int, int], None] | None = None) -> TrialOutcome:
        if progress is not None:
            progress(self.label, 0, 1)
        where = f"settings.{self.trial.setting}: {self.function}"
        started = time.perf_counter()
        trial = _watched(self.trial)
        signalled: list[int] = []
        try:
            trial = _placed(trial, self.ranks)
            trial.dir.mkdir(parents=True, exist_ok=True)
            with restored_process_state(), _noting(signalled), _process_group(trial):
                function = load_function(self.function, self.root)
                returned = function(trial)
            if not trial.is_main:  # rank 0's return value is the trial's
                return TrialOutcome(None, where=_where(trial))
            metrics = check_metrics(returned, where)
            missing = missing_metrics(metrics, self.required)
            if not missing and all(map(math.isfinite, metrics.values())):  # a diverged run stops
                _check_schedules_applied(trial)
        except (Exception, SystemExit) as err:
            if isinstance(err, SystemExit) and signalled:
                raise  # a signal's handler ends the process (submitit requeues on SIGUSR2)
            text, error = traceback.format_exc(), _error_line(err)
            if trial.is_main:
                text, error = _with_peer_failures(trial, text, error)
                write_atomic(trial.dir / TRACEBACK_FILE, text)
            seconds = time.perf_counter() - started
            return TrialOutcome(None, error, text, seconds, _where(trial))
        seconds = time.perf_counter() - started
        if missing:  # what it did return is kept; the seed is failed and trained again
            reason = (
                f"{where} returned {sorted(metrics)} but the config's claims need {missing}; "
                "return them too"
            )
            return TrialOutcome(metrics, reason, None, seconds, _where(trial))
        bad = [name for name, value in metrics.items() if not math.isfinite(value)]
        diverged = f"non-finite {', '.join(bad)} (diverged)" if bad else None
        return TrialOutcome(metrics, diverged, None, seconds, _where(trial))


def _placed(trial: Trial, ranks: int) -> Trial:
    """``trial`` with where this process runs: its rank from torch's environment variables
    (one rank without them) and its device."""
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if world_size != ranks:
        raise RuntimeError(
            f"{trial.setting}/{trial.variant}/seed {trial.seed} was planned as {ranks} rank(s) "
            f"but runs as {world_size} (WORLD_SIZE): the executor's tasks and the plan disagree"
        )
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return replace(trial, device=device, rank=rank, world_size=world_size, local_rank=local_rank)


def _where(trial: Trial) -> dict[str, Any]:
    return {"device": str(trial.device), "threads": torch.get_num_threads(),
            "world_size": trial.world_size}  # fmt: skip


@contextmanager
def _process_group(trial: Trial) -> Iterator[None]:
    """For a trial of several ranks: torch's default process group around the call (NCCL on a
    GPU, gloo on the CPU), then a barrier that every rank reaches only if none failed. A rank
    other than 0 that fails writes why for rank 0 before it leaves the group (leaving ends the
    others' collectives with an error, so none waits for it)."""
    if trial.world_size == 1:
        yield
        return
    import torch.distributed as dist

    failure = trial.dir / PEER_FAILURE_FILE.format(rank=trial.rank)
    failure.unlink(missing_ok=True)  # an earlier attempt's
    dist.init_process_group("nccl" if trial.device.type == "cuda" else "gloo")
    phase = "function"
    try:
        yield
        phase = "barrier"
        dist.barrier()
    except BaseException as err:
        if not trial.is_main:
            why = {"error": _error_line(err), "traceback": traceback.format_exc(), "in": phase}
            write_atomic(failure, json.dumps(why))
        raise
    finally:
        dist.destroy_process_group()


def _with_peer_failures(trial: Trial, text: str, error: str) -> tuple[str, str]:
    """Rank 0's traceback and error line with those of the ranks that failed: the first rank
    whose training function raised is named as the cause (rank 0's own error is then most
    likely a closed connection to it)."""
    peers = []
    for rank in range(1, trial.world_size):
        path = trial.dir / PEER_FAILURE_FILE.format(rank=rank)
        if path.exists():
            peers.append((rank, json.loads(path.read_text(encoding="utf-8"))))
    for rank, why in peers:
        text += f"\n--- rank {rank} of {trial.world_size} ---\n{why['traceback']}"
    causes = [(rank, why) for rank, why in peers if why["in"] == "function"]
    if causes:
        rank, why = causes[0]
        error = f"rank {rank} of {trial.world_size} failed: {why['error']}"
    return text, error


@contextmanager
def _noting(signalled: list[int]) -> Iterator[None]:
    """Note in ``signalled`` each signal that reaches a Python handler while the block runs,
    then call that handler: a ``SystemExit`` after one is the process being ended (submitit's
    handler requeues a preempted job and exits), not the training function's own."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2")
    previous = {}
    for sig in (getattr(signal, name) for name in names if hasattr(signal, name)):
        handler = signal.getsignal(sig)
        if callable(handler):

            def noted(signum: int, frame: Any, handler: Callable[..., Any] = handler) -> Any:
                signalled.append(signum)
                return handler(signum, frame)

            previous[sig] = signal.signal(sig, noted)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _error_line(err: BaseException) -> str:
    if isinstance(err, SystemExit):
        return (
            f"SystemExit: {err.code}: the function called sys.exit (argparse does on arguments "
            "it does not know: give parse_args an explicit list, e.g. parse_args([]))"
        )
    return f"{type(err).__name__}: {err}"


@contextmanager
def restored_process_state() -> Iterator[None]:
    """Run a training function, then put back the process-wide state it may change and a later
    trial, a built-in population or the driver in the same process would inherit: the working
    directory, environment variables, torch's default dtype and device, grad mode,
    deterministic-algorithm setting and intra-op thread count. Other process-wide changes (a
    monkeypatched module, a global of the user's own) are out of reach: they stay in the
    process."""
    cwd, environ = os.getcwd(), dict(os.environ)
    dtype, device = torch.get_default_dtype(), torch.get_default_device()
    grad, threads = torch.is_grad_enabled(), torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        yield
    finally:
        os.chdir(cwd)
        if os.environ != environ:
            os.environ.clear()
            os.environ.update(environ)
        torch.set_default_dtype(dtype)
        if torch.get_default_device() != device:
            # only undo a change: setting a default device, even the CPU, installs a mode
            # that every tensor factory then passes through
            torch.set_default_device(None if device.type == "cpu" else device)
        torch.set_grad_enabled(grad)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


class _Reach:
    """Mixin of a schedule that changes over time: remembers the last step it was applied at
    and the run's length it was given, so a trial can tell whether its scheduler was stepped."""

    reached: tuple[int, int] | None = None  # (last step, total_steps); None: never called

    def __call__(self, step: int, total_steps: int) -> float:
        rate = super().__call__(step, total_steps)  # type: ignore[misc]
        last = -1 if self.reached is None else self.reached[0]
        object.__setattr__(self, "reached", (max(last, step), total_steps))
        return float(rate)

    def __repr__(self) -> str:  # as the schedule it watches prints itself
        (watched,) = (base for base, cls in _WATCHED.items() if cls is type(self))
        return repr(watched(**_values(self)))


class _WatchedEarly(_Reach, Early):
    pass


class _WatchedLate(_Reach, Late):
    pass


_WATCHED: dict[type, type] = {Early: _WatchedEarly, Late: _WatchedLate}


_S = TypeVar("_S", bound="Schedule | None")


def _watch(schedule: _S) -> _S:
    """``schedule`` as one that remembers its reach, when it changes over time (early, late)."""
    if isinstance(schedule, (Early, Late)) and type(schedule) in _WATCHED:
        return cast(_S, _WATCHED[type(schedule)](**_values(schedule)))
    return schedule


def _values(schedule: Any) -> dict[str, Any]:
    """A schedule's fields, to build the same schedule as another class."""
    return {f.name: getattr(schedule, f.name) for f in fields(schedule)}


def _watched(trial: Trial) -> Trial:
    return replace(trial, dropout=_watch(trial.dropout), drop_path=_watch(trial.drop_path))


def _check_schedules_applied(trial: Trial) -> None:
    """Raise unless every schedule that changes over time was applied up to the steps the trial
    trains: one never stepped trains an early / late variant as if it were standard."""
    for kind in ("dropout", "drop_path"):
        schedule = getattr(trial, kind)
        if not isinstance(schedule, _Reach):
            continue
        how = (
            f"build DropoutScheduler(model, total_steps, {kind}=trial.{kind}) and call "
            "sched.step() after each optimizer.step()"
        )
        if schedule.reached is None:
            raise RuntimeError(f"trial.{kind} ({schedule!r}) was never applied: {how}")
        last, total = schedule.reached
        needed = trial.budget_steps(total)
        if last < needed - 1:
            raise RuntimeError(
                f"trial.{kind} ({schedule!r}) was applied up to step {last} of the {needed} "
                f"steps the trial trains (total_steps={total}), so the variant did not follow "
                f"its schedule: {how}"
            )
