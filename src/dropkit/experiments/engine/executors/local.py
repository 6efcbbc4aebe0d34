"""The local executor: jobs in this process (``workers=1``) or a pool of worker processes.

Workers are spawned, one intra-op thread each, ignore SIGINT (the driver decides), and end at once
when the driver dies, even by SIGKILL (a watchdog thread waits on the driver: a pipe on POSIX, a
process handle on Windows), so none outlives the command. When the driver is interrupted or a
job raises, the workers are terminated and joined before the error goes on: finished jobs were
already handed to ``on_done``, the rest run again on a rerun.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

import torch

from dropkit._checks import check_int
from dropkit.experiments.engine.executors.interface import Job, OnDone, Progress

__all__ = ["LocalExecutor"]

_progress_queue: Any = None  # a worker's channel for progress, set by _init_worker


def _init_worker(queue: Any) -> None:
    """In each worker: one thread, progress to ``queue``, and exit when the parent is gone."""
    global _progress_queue
    torch.set_num_threads(1)
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


def _report(label: str, done: int, total: int) -> None:
    _progress_queue.put((label, done, total))


def _run_in_worker(job: Job) -> Any:
    return job(_report)


class LocalExecutor:
    """Run jobs here: in this process when ``workers`` is 1, else in that many processes."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = check_int(workers, "workers", 1)

    def run(self, jobs: Sequence[Job], on_done: OnDone, progress: Progress) -> None:
        if self.workers == 1:
            for job in jobs:
                on_done(job, job(progress))
            return
        if not jobs:
            return
        # workers > 1 always trains in worker processes, even when one job is left (a resume):
        # a job's numbers then never depend on how many remained
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        pool = ProcessPoolExecutor(
            min(self.workers, len(jobs)),
            mp_context=context,
            initializer=_init_worker,
            initargs=(queue,),
        )
        try:
            pending = {pool.submit(_run_in_worker, job): job for job in jobs}
            while pending:
                done, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                while not queue.empty():
                    progress(*queue.get())
                for future in done:
                    output = future.result()  # re-raises a worker's error here
                    on_done(pending.pop(future), output)
        except BaseException:  # interrupted or failed: stop the workers now, finished jobs stay
            processes = list((pool._processes or {}).values())
            for process in processes:
                process.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                process.join(timeout=5)
            raise
        else:
            pool.shutdown(wait=True)
        finally:
            queue.close()
            queue.cancel_join_thread()
