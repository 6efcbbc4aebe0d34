"""A run folder is one experiment: ``config.json`` says which, and a command that would mix in
another is refused.

``config.json`` holds the config (every default filled in), an id made when the folder was
(``run_id``: a folder deleted and made again is another run), and the code of each training
function: the file that defines it, its SHA-256, and the git commit and whether the tree had
uncommitted changes where the file lies in a repository, and the ranks each trial of a training
function trains as (``ranks``). A later command must bring the same config, but for its seed
counts (more seeds extend the run; each extension is recorded) and fields that change no
number, the same ranks (a trial's numbers change with them when its data per rank does, as a
per-device batch), and the same function files: a changed file is refused unless the command
allows it, and then the change is recorded, and the report says it.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from dropkit.experiments.base.io import read_json, utc_timestamp, write_json
from dropkit.experiments.config.parse import parse_config
from dropkit.experiments.config.specs import ExperimentConfig
from dropkit.experiments.config.training import TrainConfig
from dropkit.experiments.engine.trial import function_source

__all__ = ["CONFIG_FILE", "held_seeds", "record_run"]

CONFIG_FILE = "config.json"


def _seed_counts(config: ExperimentConfig) -> dict[str, int]:
    return {s.name: len(config.seeds_of(s)) for s in config.settings}


def _identity(raw: dict[str, Any]) -> dict[str, Any]:
    """What makes two configs one run: all of it but the seed counts and the training fields
    that cannot change a number (``TrainConfig.RESULT_NEUTRAL``, e.g. ``eval_batch``)."""

    def setting(s: dict[str, Any]) -> dict[str, Any]:
        kept = {k: v for k, v in s.items() if k != "seeds"}
        if "train" in kept:
            neutral = TrainConfig.RESULT_NEUTRAL
            kept["train"] = {k: v for k, v in kept["train"].items() if k not in neutral}
        return kept

    settings = {name: setting(s) for name, s in raw["settings"].items()}
    return {**{k: v for k, v in raw.items() if k != "seeds"}, "settings": settings}


def _canonical(value: Any) -> str:
    """``value`` as JSON text after a round trip through JSON, as ``config.json`` holds it:
    integer keys become strings and NaN equals NaN, so a config compares equal to itself read
    back."""
    return json.dumps(json.loads(json.dumps(value)), sort_keys=True)


def _code(config: ExperimentConfig) -> dict[str, dict[str, Any]]:
    """``{setting: source}`` of every training function (see `function_source`)."""
    return {
        s.name: function_source(s.function, config.root)
        for s in config.settings
        if s.function is not None
    }


def _code_changes(
    out: Path, held: dict[str, Any], code: dict[str, dict[str, Any]], allowed: bool
) -> list[dict[str, Any]]:
    """The function files whose contents differ from those the folder was run with; raise
    unless ``allowed``."""
    changes = [
        {"at": utc_timestamp(), "setting": name, "file": new["file"],
         "from": held[name]["sha256"], "to": new["sha256"]}
        for name, new in code.items()
        if name in held and held[name]["sha256"] != new["sha256"]
    ]  # fmt: skip
    if changes and not allowed:
        change = changes[0]
        commit = held[change["setting"]].get("git", {}).get("commit")
        at_commit = f" (git commit {commit[:12]})" if commit else ""
        raise ValueError(
            f"settings.{change['setting']}.function: {change['file']} changed since {out} was "
            f"run (sha256 {change['from'][:12]} -> {change['to'][:12]}), so its finished trials "
            "came from other code. To run the new code, pass another --out (or delete the "
            f"folder); to go on with this folder, restore the file{at_commit}; or pass "
            "--allow-changed-code to mix the two (recorded in config.json and said in the report)"
        )
    return changes


def held_seeds(out: Path) -> int:
    """The most seeds any setting of the run in ``out`` has (0 for a new folder)."""
    path = out / CONFIG_FILE
    if not path.exists():
        return 0
    return max(_seed_counts(parse_config(read_json(path)["config"])).values(), default=0)


def record_run(
    out: Path,
    config: ExperimentConfig,
    *,
    allow_changed_code: bool = False,
    until_decided: dict[str, int] | None = None,
    ranks: int = 1,
) -> str:
    """Write ``config.json`` for a new folder, or check that ``out`` holds a run of ``config``,
    its code and its ``ranks`` per training-function trial; record a seed extension, an allowed
    code change, or that the run trains ``until_decided`` (its ``max_seeds`` and ``step``: every
    claim then uses the confidence sequence). Return the run's id."""
    path, wanted, code = out / CONFIG_FILE, config.to_dict(), _code(config)
    if not path.exists():
        run_id = uuid.uuid4().hex
        first = {"config": wanted, "run_id": run_id, "code": code, "ranks": ranks}
        if until_decided is not None:
            first["until_decided"] = until_decided
        write_json(path, first)
        return run_id
    stored = read_json(path)
    held = parse_config(stored["config"])  # read back through today's defaults
    if _canonical(_identity(held.to_dict())) != _canonical(_identity(wanted)):
        raise ValueError(
            f"{out} holds a run of a different config; pass another --out, or delete the folder "
            "to start over"
        )
    held_ranks = stored.get("ranks", 1)  # a folder from before ranks: one per trial
    if code and held_ranks != ranks:
        raise ValueError(
            f"{out} trained each training-function trial as {held_ranks} rank(s), this command "
            f"as {ranks}: a trial's numbers change with its ranks when its data per rank does "
            f"(a per-device batch). Pass --ranks {held_ranks} (on SLURM: tasks_per_node x nodes "
            f"= {held_ranks}) to go on with this folder, or another --out"
        )
    before, after = _seed_counts(held), _seed_counts(config)
    for name, count in after.items():
        if count < before[name]:
            raise ValueError(
                f"{out} holds {before[name]} seeds of setting {name!r}, more than the {count} "
                f"asked for: --seeds can only add seeds to a run folder (pass --seeds "
                f"{max(before.values())} or more), or pass another --out"
            )
    changes = _code_changes(out, stored.get("code", {}), code, allow_changed_code)
    updated = {**stored, "code": code}
    updated.setdefault("run_id", uuid.uuid4().hex)  # a folder from before run ids
    updated.setdefault("ranks", ranks)
    if until_decided is not None:
        updated["until_decided"] = until_decided
    if changes:
        updated["code_changes"] = [*stored.get("code_changes", []), *changes]
    if before != after:
        extension = {
            "at": utc_timestamp(),
            "seeds": {
                name: [before[name], after[name]] for name in after if after[name] > before[name]
            },
            "after_report": (out / "report.json").exists(),
        }
        updated["extensions"] = [*stored.get("extensions", []), extension]
        updated["config"] = wanted
    if _canonical(updated) != _canonical(stored):
        write_json(path, updated)
    return str(updated["run_id"])
