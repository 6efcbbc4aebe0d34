"""Files a run folder is made of, written atomically so a killed run never leaves half a file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "atomic_writer",
    "read_json",
    "read_jsonl",
    "utc_timestamp",
    "write_atomic",
    "write_json",
    "write_jsonl",
]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """A binary handle on a temporary file beside ``path``; on a clean exit the file is flushed
    to disk, then renamed into place: a crash, even of the machine, leaves the old file or the
    new one, never part. On an error the temporary file is removed.

    The file gets the mode a plain ``open`` would give (``0o666`` less the umask), so colleagues
    on a shared cluster can read a run folder or a data cache; ``mkstemp`` alone would leave it
    ``0o600``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.chmod(tmp, 0o666 & ~_umask())  # by path: Windows has no os.fchmod
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:  # full or read-only disk: nothing half-written, and the path named
        os.unlink(tmp)
        raise OSError(err.errno, err.strerror, str(path)) from err
    except BaseException:
        os.unlink(tmp)
        raise


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8, whatever the locale) to ``path`` through `atomic_writer`."""
    with atomic_writer(path) as handle:
        handle.write(text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=1))


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    write_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file (none when it does not exist)."""
    if not Path(path).exists():
        return []
    text = Path(path).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line]


def utc_timestamp() -> str:
    """Now, as the run folder's records write it: UTC ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
