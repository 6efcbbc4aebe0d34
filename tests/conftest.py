import atexit
import contextlib
import os
import shutil
import signal
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# torch.compile's cache goes to a folder of this test process (its subprocesses inherit it),
# removed when it exits: no test leaves files in /tmp/torchinductor_<user>.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="dropkit-tests-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

import pytest
import torch

from dropkit import sites

# Tiny models on a small shared CPU (pytest -n 2 on 2 cores): one intra-op thread per worker, or
# the workers' thread pools fight and small steps stall.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolate() -> None:
    """Each test starts with a fixed seed and no user site registrations."""
    torch.manual_seed(0)
    saved = list(sites._user_rules)
    yield
    sites._user_rules[:] = saved


_MARKER = "DROPKIT_TEST_MARKER"


def _own_resource_tracker(pid: str) -> bool:
    """multiprocessing's resource tracker of this very process: one per process, it lives as
    long as the process does (not a leak while its parent is alive)."""
    with open(f"/proc/{pid}/stat") as handle:
        parent = int(handle.read().rsplit(")", 1)[1].split()[1])
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
        command = handle.read()
    return parent == os.getpid() and b"multiprocessing.resource_tracker" in command


def _marked_processes(marker: str) -> list[int]:
    """Live processes (other than this one and its resource tracker) carrying ``marker``."""
    needle = f"{_MARKER}={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if needle in handle.read().split(b"\0") and not _own_resource_tracker(entry):
                    found.append(int(entry))
        except OSError:  # gone already, or not ours to read
            continue
    return found


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail a test whose child processes (workers, subprocesses, their children) outlive it.

    Every process a test starts inherits a marker in its environment; any process still
    carrying it 20 s after the test ends is killed and reported.
    """
    if not os.path.isdir("/proc"):
        yield
        return
    marker = f"{os.getpid()}-{os.urandom(6).hex()}"
    monkeypatch.setenv(_MARKER, marker)
    yield
    # a worker killed mid-start-up first finishes importing torch, which on a loaded 2-core
    # machine takes seconds, before its watchdog sees the dead parent
    deadline = time.monotonic() + 20.0
    while (left := _marked_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    if left:
        pytest.fail(f"processes {left} outlived the test that started them", pytrace=False)
