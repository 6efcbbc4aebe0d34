"""Run-folder files on shared machines: readable by colleagues, on disk before they are named."""

from __future__ import annotations

import os
import stat

import pytest

from dropkit.experiments.base import io


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        io.write_json(tmp_path / "result.json", {"a": 1})
        io.write_jsonl(tmp_path / "rows.jsonl", [{"b": 2}])
    finally:
        os.umask(previous)
    for name in ("result.json", "rows.jsonl"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode


def test_the_data_reaches_the_disk_before_the_file_is_renamed_into_place(tmp_path, monkeypatch):
    events = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), replace(a, b))[1])
    io.write_json(tmp_path / "result.json", {"a": 1})
    assert events == ["fsync", "replace"]
    assert io.read_json(tmp_path / "result.json") == {"a": 1}


def test_text_is_utf8_whatever_the_locale(tmp_path, monkeypatch):
    monkeypatch.setenv("LC_ALL", "C")
    io.write_atomic(tmp_path / "report.md", "effect −0.3, MDE ≥ 0.1")
    assert (tmp_path / "report.md").read_bytes().decode("utf-8") == "effect −0.3, MDE ≥ 0.1"
