"""The run folder's layout, and reading what the driver wrote there.

``runs/<setting>/<variant>/result.json`` (written by the driver alone) marks a (setting,
variant) finished; ``failure.json`` beside it says why its last job ended without output. A
trial's own folder is ``runs/<setting>/<variant>/seed-<n>/``, where the driver keeps its
``outcome.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from dropkit.experiments.base.io import read_json
from dropkit.experiments.base.record import RunRecord

__all__ = [
    "FAILURE_FILE",
    "OUTCOME_FILE",
    "RESULT_FILE",
    "outcome_path",
    "read_outcome",
    "read_record",
    "run_dir",
    "trial_dir",
]

FAILURE_FILE = "failure.json"
OUTCOME_FILE = "outcome.json"
RESULT_FILE = "result.json"


def run_dir(out: Path, setting: str, variant: str) -> Path:
    return out / "runs" / setting / variant


def trial_dir(out: Path, setting: str, variant: str, seed: int) -> Path:
    return run_dir(out, setting, variant) / f"seed-{seed}"


def outcome_path(out: Path, setting: str, variant: str, seed: int) -> Path:
    return trial_dir(out, setting, variant, seed) / OUTCOME_FILE


def read_outcome(path: Path) -> dict[str, Any] | None:
    """A trial's recorded outcome (None when there is none, or it is unreadable)."""
    try:
        return dict(read_json(path))
    except (OSError, ValueError, TypeError):
        return None


def read_record(path: Path, *, quiet: bool = False) -> RunRecord | None:
    """The result at ``path``; None when there is none, or it is damaged (then trained again)."""
    if not path.exists():
        return None
    try:
        return RunRecord.from_dict(read_json(path))
    except (ValueError, KeyError, TypeError) as err:  # truncated or not a result: retrain
        if not quiet:
            print(f"{path} is damaged ({type(err).__name__}); training it again", file=sys.stderr)
        return None
