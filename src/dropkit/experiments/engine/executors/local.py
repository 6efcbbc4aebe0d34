"""The local executor: jobs in this process (``workers=1``) or in worker processes.

Worker processes are spawned, ignore SIGINT (the driver decides), and end at once when the
driver dies, even by SIGKILL (a watchdog thread waits on the driver: a pipe on POSIX, a process
handle on Windows), so none outlives the command. Each sees one GPU of its own when the machine
has any (``CUDA_VISIBLE_DEVICES``, round robin) and gets the cores divided among the processes as
intra-op threads, unless ``threads`` says how many. A job that asks for several ranks (a
data-parallel trial, ``job.ranks``) runs as that many processes at once, with the environment
variables torchrun would set for a process group on this machine (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``); rank 0's output is the
job's. When the driver is interrupted or a job raises, the workers are terminated and joined
before the error goes on: finished jobs were already handed to ``on_done``, the rest run again
on a rerun.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from dropkit._checks import check_int
from dropkit.experiments.base.threads import fixed_threads
from dropkit.experiments.engine.executors.interface import Job, JobFailure, OnDone, Progress

__all__ = ["LocalExecutor", "default_workers", "visible_gpus"]

POLL_S = 0.2  # seconds between looks at the workers
_progress_queue: Any = None  # a worker's channel for progress, set by _start_process


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` names them (its entries when
    set, else the indices); empty without CUDA."""
    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [name.strip() for name in listed.split(",") if name.strip()]
    return [str(index) for index in range(torch.cuda.device_count())]


def default_workers() -> int:
    """One worker per GPU when there are any, else up to two (a worker per core, of two)."""
    return len(visible_gpus()) or min(2, os.cpu_count() or 1)


def _cores() -> int:
    getaffinity = getattr(os, "sched_getaffinity", None)
    return len(getaffinity(0)) if getaffinity is not None else os.cpu_count() or 1


def _start_process(queue: Any, gpu: str | None, threads: int) -> None:
    """In each worker: its GPU, its threads, progress to ``queue``, no SIGINT, and exit when the
    parent is gone."""
    global _progress_queue
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu  # before anything initialises CUDA here
    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _progress_queue = queue
    # the driver, as multiprocessing knows it in a spawned process: joining it waits on its
    # sentinel, which becomes ready when the driver dies however it ends (polling os.getppid()
    # would not do: on Windows it keeps returning the dead parent's pid)
    parent = multiprocessing.parent_process()
    if parent is None:  # not a multiprocessing child: nothing to watch
        return

    def watch() -> None:
        parent.join()
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _init_pool_worker(queue: Any, started: Any, gpus: list[str], threads: int) -> None:
    """A pool worker's start: the ``started``-th worker takes the GPU of that turn."""
    with started.get_lock():
        slot = started.value
        started.value += 1
    _start_process(queue, gpus[slot % len(gpus)] if gpus else None, threads)


def _report(label: str, done: int, total: int) -> None:
    _progress_queue.put((label, done, total))


def _run_in_worker(job: Job) -> Any:
    return job(_report)


def _run_rank(job: Job, env: dict[str, str], gpu: str | None, threads: int, queue: Any,
              outputs: Any, group: int) -> None:  # fmt: skip
    """One rank of a job's process group: rank 0 reports progress and puts its output."""
    _start_process(queue, gpu, threads)
    os.environ.update(env)
    main = env["RANK"] == "0"
    output = job(_report if main else None)
    if main:
        outputs.put((group, output))


def _ranks(job: Job) -> int:
    return int(getattr(job, "ranks", 1))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


_NO_OUTPUT = object()  # a group whose rank 0 has not put its output (yet)


@dataclass
class _Group:
    """The processes of one job's ranks, and rank 0's output once it came."""

    job: Job
    processes: list[Any]
    output: Any = _NO_OUTPUT


class LocalExecutor:
    """Run jobs here: in this process when ``workers`` is 1, else in that many processes; a job
    of several ranks always in that many processes, ``workers`` such jobs at once. ``threads``:
    intra-op threads per process (default: the cores divided among the processes; in this
    process, its own count)."""

    def __init__(self, workers: int = 1, threads: int | None = None) -> None:
        self.workers = check_int(workers, "workers", 1)
        self.threads = None if threads is None else check_int(threads, "threads", 1)

    def _threads(self, processes: int) -> int:
        return self.threads or max(1, _cores() // processes)

    def run(self, jobs: Sequence[Job], on_done: OnDone, progress: Progress) -> None:
        single = [job for job in jobs if _ranks(job) == 1]
        if self.workers == 1:
            with nullcontext() if self.threads is None else fixed_threads(self.threads):
                for job in single:
                    on_done(job, job(progress))
        elif single:
            self._run_pool(single, on_done, progress)
        grouped = [job for job in jobs if _ranks(job) > 1]
        if grouped:
            self._run_groups(grouped, on_done, progress)

    def _run_pool(self, jobs: Sequence[Job], on_done: OnDone, progress: Progress) -> None:
        # workers > 1 always trains in worker processes, even when one job is left (a resume):
        # a job's numbers then never depend on how many remained
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        processes = min(self.workers, len(jobs))
        pool = ProcessPoolExecutor(
            processes,
            mp_context=context,
            initializer=_init_pool_worker,
            initargs=(queue, context.Value("i", 0), visible_gpus(), self._threads(processes)),
        )
        try:
            pending = {pool.submit(_run_in_worker, job): job for job in jobs}
            while pending:
                done, _ = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
                while not queue.empty():
                    progress(*queue.get())
                for future in done:
                    output = future.result()  # re-raises a worker's error here
                    on_done(pending.pop(future), output)
        except BaseException:  # interrupted or failed: stop the workers now, finished jobs stay
            _stop(list((pool._processes or {}).values()))
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        else:
            pool.shutdown(wait=True)
        finally:
            queue.close()
            queue.cancel_join_thread()

    def _run_groups(self, jobs: Sequence[Job], on_done: OnDone, progress: Progress) -> None:
        """Each job as its ranks' processes, ``workers`` jobs at once; a job whose rank 0 ended
        without an output is a `JobFailure` with the ranks' exit codes."""
        context = multiprocessing.get_context("spawn")
        queue, outputs = context.Queue(), context.Queue()
        gpus = visible_gpus()
        waiting = list(jobs)
        running: dict[int, _Group] = {}
        try:
            while waiting or running:
                for slot in range(self.workers):
                    if waiting and slot not in running:
                        running[slot] = self._start_group(context, waiting.pop(0), slot, gpus,
                                                          queue, outputs)  # fmt: skip
                time.sleep(POLL_S)
                while not queue.empty():
                    progress(*queue.get())
                # which groups ended, before reading outputs: a rank 0 puts its output before
                # it exits, so an ended group's output is in the pipe by now
                ended = [slot for slot, group in running.items()
                         if not any(process.is_alive() for process in group.processes)]  # fmt: skip
                while not outputs.empty():
                    slot, output = outputs.get()
                    running[slot].output = output
                for slot in ended:
                    group = running.pop(slot)
                    output = group.output
                    on_done(group.job, _no_output(group) if output is _NO_OUTPUT else output)
        except BaseException:
            _stop([process for group in running.values() for process in group.processes])
            raise
        finally:
            for channel in (queue, outputs):
                channel.close()
                channel.cancel_join_thread()

    def _start_group(self, context: Any, job: Job, slot: int, gpus: list[str], queue: Any,
                     outputs: Any) -> _Group:  # fmt: skip
        ranks = _ranks(job)
        threads = self._threads(self.workers * ranks)
        # as torchrun sets them (with LOCAL_RANK set, Lightning takes the processes as
        # launched and joins their group instead of starting its own)
        base = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
                "WORLD_SIZE": str(ranks), "LOCAL_WORLD_SIZE": str(ranks)}  # fmt: skip
        processes = []
        for rank in range(ranks):
            env = {**base, "RANK": str(rank), "LOCAL_RANK": str(rank)}
            gpu = gpus[(slot * ranks + rank) % len(gpus)] if gpus else None
            process = context.Process(
                target=_run_rank, args=(job, env, gpu, threads, queue, outputs, slot),
                name=f"dropkit-rank{rank}",
            )  # fmt: skip
            process.start()
            processes.append(process)
        return _Group(job, processes)


def _no_output(group: _Group) -> JobFailure:
    codes = ", ".join(
        f"rank {rank}: {process.exitcode}" for rank, process in enumerate(group.processes)
    )
    return JobFailure(f"rank 0 ended without a result (exit codes {codes})")


def _stop(processes: list[Any]) -> None:
    """Terminate ``processes`` and wait for them (a few seconds at most each)."""
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=5)
