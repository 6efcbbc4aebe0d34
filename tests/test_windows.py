"""The commands on Windows, simulated on Linux (issue 20, item 12).

Every Python process these tests start (the command and its spawned workers) first runs the
``sitecustomize`` below, which takes away what Windows lacks: ``fcntl`` does not import,
``signal.SIGUSR1`` / ``SIGUSR2`` and ``os.fchmod`` do not exist, ``msvcrt.locking`` is the only
file lock, and ``os.getppid()`` keeps returning the parent's pid after the parent died. The
locale is C with Python's UTF-8 mode off, so files opened without an encoding and the console
are ASCII, stricter than a Windows code page: neither can hold the report's "−" or "≥".
"""

import os
import socket
import subprocess
import sys
import time

import pytest
import yaml

from tests.test_faults_runtime import TINY_RUN, _slow

WINDOWS = '''\
"""What Windows lacks or does differently, for a test on Linux."""
import errno
import os
import signal
import sys
import types

sys.modules["fcntl"] = None  # `import fcntl` raises ImportError
del signal.SIGUSR1, signal.SIGUSR2, os.fchmod

_parent = os.getppid()
os.getppid = lambda: _parent  # Windows: the pid the process started with, even once it is dead


def locking(fd, mode, nbytes):
    """msvcrt.locking: ``nbytes`` from the current position; EACCES when another process holds
    them (POSIX record locks, as Windows byte-range locks, belong to the process)."""
    try:
        os.lockf(fd, os.F_ULOCK if mode == msvcrt.LK_UNLCK else os.F_TLOCK, nbytes)
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EAGAIN):
            raise OSError(errno.EACCES, "Permission denied") from None
        raise


import subprocess  # noqa: E402,F401  # before msvcrt exists: it takes msvcrt for Windows

msvcrt = types.ModuleType("msvcrt")
msvcrt.LK_UNLCK, msvcrt.LK_LOCK, msvcrt.LK_NBLCK, msvcrt.LK_RLCK, msvcrt.LK_NBRLCK = range(5)
msvcrt.locking = locking
sys.modules["msvcrt"] = msvcrt
'''

CONFIG = {
    **TINY_RUN,
    "claims": [{**TINY_RUN["claims"][0], "statement": "dropout ≥ none − 0"}],
}


@pytest.fixture
def windows(tmp_path):
    """The environment of a simulated Windows process: ``sitecustomize`` first, ASCII locale."""
    folder = tmp_path / "windows"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(WINDOWS, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONIOENCODING", "LANGUAGE")}
    env.update(
        PYTHONPATH=str(folder), LC_ALL="C", LANG="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0",
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg",
    )  # fmt: skip
    return env


def _python(env: dict, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, timeout=300, **kwargs
    )


def _cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return _python(env, "-m", "dropkit.cli", *args)


def test_the_simulation_is_windows_like(windows):
    probe = (
        "import codecs, locale, os, signal, sys\n"
        "try:\n"
        "    import fcntl\n"
        "except ImportError:\n"
        "    fcntl = None\n"
        "print(fcntl is None, hasattr(signal, 'SIGUSR1'), hasattr(os, 'fchmod'),\n"
        "      codecs.lookup(locale.getpreferredencoding(False)).name,\n"
        "      codecs.lookup(sys.stdout.encoding).name, sys.flags.utf8_mode)\n"
    )
    done = _python(windows, "-c", probe)
    assert done.stdout.decode().split() == ["True", "False", "False", "ascii", "ascii", "0"]


def test_the_commands_run_and_write_utf8_on_windows(windows, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(CONFIG, allow_unicode=True), encoding="utf-8")
    out = tmp_path / "out"
    run = _cli(windows, "run", str(config), "--out", str(out), "--workers", "2")
    assert run.returncode == 0, run.stderr.decode()
    assert b"dropout \\u2265 none \\u2212 0" in run.stdout  # the console cannot show them
    assert all((out / "runs" / "digits" / v / "result.json").exists() for v in ("none", "dropout"))
    status = _cli(windows, "status", str(out))
    assert status.returncode == 0, status.stderr.decode()
    (out / "report.md").unlink()
    report = _cli(windows, "report", str(out))
    assert report.returncode == 0, report.stderr.decode()
    text = (out / "report.md").read_bytes().decode("utf-8")
    assert "dropout ≥ none − 0" in text and "A − B" in text
    setting = tmp_path / "mine.yaml"
    setting.write_text(yaml.safe_dump({k: v for k, v in CONFIG["settings"]["digits"].items()
                                       if k != "variants"}), encoding="utf-8")  # fmt: skip
    emitted = tmp_path / "test-mine.yaml"
    advise = _cli(windows, "advise", str(setting), "--seeds", "2", "--out",
                  str(tmp_path / "advice"), "--emit-config", str(emitted))  # fmt: skip
    assert advise.returncode == 0, advise.stderr.decode()
    assert yaml.safe_load(emitted.read_text(encoding="utf-8"))["claims"]
    assert (tmp_path / "advice" / "advice.md").exists()


HOLD = (
    "import sys\n"
    "from pathlib import Path\n"
    "from dropkit.experiments.base.lock import one_writer\n"
    "with one_writer(Path(sys.argv[1])):\n"
    "    print('held', flush=True)\n"
    "    sys.stdin.readline()\n"
)


def test_a_second_command_on_windows_is_refused_with_the_holders_pid(windows, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(TINY_RUN), encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], env=windows,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == b"held\n", holder.stderr.read().decode()
        refused = _cli(windows, "run", str(config), "--out", str(out), "--workers", "1")
        err = refused.stderr.decode()
        assert refused.returncode == 2, err
        assert f"pid {holder.pid} on {socket.gethostname()}" in err
        assert "is being written by another dropkit command" in err
        assert not (out / "runs").exists()
    finally:
        holder.communicate(b"\n", timeout=60)
    assert holder.returncode == 0
    # released with its holder: the next one takes it
    again = subprocess.run(
        [sys.executable, "-c", HOLD, str(out)], env=windows, input=b"\n", capture_output=True,
        timeout=120,
    )  # fmt: skip
    assert again.returncode == 0 and again.stdout == b"held\n", again.stderr.decode()


def test_workers_exit_when_their_parent_is_killed_on_windows(windows, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_slow(TINY_RUN, epochs=200)), encoding="utf-8")
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "dropkit.cli", "run", str(config), "--out", str(out),
         "--workers", "2"], env=windows, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (out / "config.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (out / "config.json").exists()
    time.sleep(1.0)
    process.kill()
    process.wait()
    assert not list(out.rglob("result.json"))  # killed before any run finished
    # os.getppid() never changes here: the workers must learn of the death some other way; the
    # autouse fixture fails this test if one outlives it
