"""The Makefile's test targets: `make test` (what CI runs) runs every test, `make test-fast`
leaves out those marked `slow`, and the marker does deselect them."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _recipe(target: str) -> list[str]:
    """The recipe lines of ``target`` in the Makefile (tab-indented, after ``target:``)."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"{re.escape(target)}:", line))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def _pytest(target: str) -> str:
    (line,) = [line for line in _recipe(target) if "-m pytest" in line]
    return line


def test_make_test_runs_everything_and_test_fast_leaves_out_the_slow_tests():
    assert " -m " not in _pytest("test").split("-m pytest", 1)[1]  # no marker selects for CI
    assert _pytest("test-fast").endswith('-m "not slow"')
    assert "test-fast" in (ROOT / "Makefile").read_text().split(".PHONY:", 1)[1].splitlines()[0]
    assert "`make test-fast`" in (ROOT / "docs" / "contributing.md").read_text()


def test_the_slow_marker_deselects_the_end_to_end_tests():
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "-m", "not slow", "tests/test_cli.py"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "test_cli.py::test_demo_refuses_fewer_than_two_seeds" in collected
    assert "test_quick_demo" not in collected  # marked slow: `make test-fast` leaves it out


def test_make_dist_builds_the_wheel_the_install_docs_name():
    assert any("-m build --no-isolation --wheel" in line for line in _recipe("dist"))
    for page in (ROOT / "README.md", ROOT / "docs" / "getting-started.md"):
        assert "make dist" in page.read_text() and "dist/dropkit-*.whl" in page.read_text()
