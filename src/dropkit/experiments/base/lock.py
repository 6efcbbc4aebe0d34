"""One command at a time writes a run folder: an advisory lock on ``out/.lock``.

The lock belongs to the operating system, which releases it when its holder dies (even by
SIGKILL), so a killed run never blocks its resume. The file's text says who holds it,
``pid@host``, since on a cluster the holder may be another node. POSIX locks the whole file with
``flock``; Windows locks one byte far past the text with ``msvcrt.locking``, which leaves the
text readable by the command that is refused.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt

__all__ = ["RunFolderBusy", "RunFolderUnlockable", "one_writer"]

LOCK_FILE = ".lock"
_FAR = 2**20  # the byte Windows locks: past any pid@host text


class RunFolderUnlockable(ValueError):
    """The run folder's file system refuses file locks."""


class RunFolderBusy(ValueError):
    """Another command holds the run folder's lock."""


def _try_lock(handle: IO[str]) -> bool:
    """Take the lock without waiting: False when another process holds it; OSError when the
    file system has no locks."""
    if fcntl is not None:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    os.lseek(handle.fileno(), _FAR, os.SEEK_SET)  # msvcrt locks from the current position
    try:
        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EDEADLK):  # held by another process
            return False
        raise
    return True


def _unlock(handle: IO[str]) -> None:
    if fcntl is not None:
        fcntl.flock(handle, fcntl.LOCK_UN)
        return
    handle.flush()
    os.lseek(handle.fileno(), _FAR, os.SEEK_SET)
    msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)


_held: dict[Path, int] = {}  # the folders this process holds, and how deep


@contextmanager
def one_writer(out: Path) -> Iterator[None]:
    """Hold the lock of run folder ``out`` while the block runs (a block inside another that
    holds it, in the same process, holds it already: ``dropkit run`` building its report).

    Raises:
        RunFolderBusy: another command holds it; the message names its ``pid@host``.
        RunFolderUnlockable: the file system refuses locks (NFS without lockd, Lustre without
            ``-o flock``); nothing was written.
    """
    key = Path(out).resolve()
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    path = out / LOCK_FILE
    handle = path.open("a+", encoding="utf-8")
    try:
        locked = _try_lock(handle)
    except OSError as err:  # ENOLCK, EOPNOTSUPP: NFS without lockd, Lustre without -o flock
        handle.close()
        call = "flock" if fcntl is not None else "locking"
        raise RunFolderUnlockable(
            f"{out} is on a file system without file locks ({call}: {err.strerror or err}); "
            "dropkit locks a run folder so that two commands never write it at once. Pass an "
            "--out on a file system with locks (a local disk, NFS with lockd, Lustre mounted "
            "with -o flock); nothing was trained"
        ) from err
    if not locked:
        handle.seek(0)
        pid, _, host = (handle.read().strip() or "unknown").partition("@")
        handle.close()
        where = f" on {host}" if host else ""
        raise RunFolderBusy(
            f"{out} is being written by another dropkit command (pid {pid}{where}); wait for it "
            "to finish, or pass another --out"
        )
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}@{socket.gethostname()}")
        handle.flush()
        _held[key] = 1
        yield
    finally:
        _held.pop(key, None)
        _unlock(handle)
        handle.close()
