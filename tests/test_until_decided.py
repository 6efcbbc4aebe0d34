"""`dropkit run --until-decided`: seeds in rounds, every claim judged with the confidence
sequence, stopping once each is decided or at --max-seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dropkit.cli import main

# a training function with a known effect: seed s of every variant shares its base value (the
# pairing), the variant adds its shift, and each (variant, seed) its own noise (sd 0.3)
MODULE = """
import numpy as np

def train(trial):
    base = np.random.default_rng(trial.seed).normal()
    noise = np.random.default_rng([trial.seed, len(trial.variant)]).normal(scale=0.3)
    with open(trial.params["calls"], "a") as handle:
        handle.write(f"{trial.variant}/{trial.seed}\\n")
    if trial.params.get("broken"):
        raise RuntimeError("a bug in the user's code")
    return {"score": float(base + trial.params.get("shift", 0.0) + noise)}
"""


def _config(tmp_path: Path, shift: float, broken: bool = False) -> Path:
    (tmp_path / "synthetic.py").write_text(MODULE)
    raw = {
        "name": "rounds", "seeds": 5,
        "settings": {"s": {
            "function": "synthetic:train", "params": {"calls": str(tmp_path / "calls.txt")},
            "variants": {"none": {}, "treated": {"params": {"shift": shift, "broken": broken}}},
        }},
        "claims": [{"id": "E", "statement": "the treatment raises the score", "setting": "s",
                    "metric": "score", "a": "treated", "b": "none", "direction": ">"}],
    }  # fmt: skip
    path = tmp_path / "rounds.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _calls(tmp_path: Path) -> int:
    return len((tmp_path / "calls.txt").read_text().split())


def test_a_real_effect_stops_early_and_confirms(tmp_path, capsys):
    config = _config(tmp_path, shift=1.0)
    out = tmp_path / "run"
    command = ["run", str(config), "--out", str(out), "--workers", "1", "--until-decided",
               "--max-seeds", "30"]  # fmt: skip
    assert main(command) == 0
    report = json.loads((out / "report.json").read_text())
    (claim,) = report["claims"]
    assert claim["verdict"] == "confirmed" and claim["interval"] == "confidence sequence"
    assert 5 < claim["n_seeds"] < 30  # more than one round, fewer than the most
    assert _calls(tmp_path) == 2 * claim["n_seeds"]
    assert "every claim decided" in capsys.readouterr().err
    text = (out / "report.md").read_text()
    assert "trains seeds in rounds of 5 until every claim is decided" in text
    # run again: it goes on from what the folder holds, nothing left to train
    assert main(command) == 0 and _calls(tmp_path) == 2 * claim["n_seeds"]


def test_no_effect_runs_to_the_most_seeds_and_does_not_confirm(tmp_path, capsys):
    config = _config(tmp_path, shift=0.0)
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--workers", "1", "--until-decided",
                 "--max-seeds", "15"]) == 0  # fmt: skip
    (claim,) = json.loads((out / "report.json").read_text())["claims"]
    assert claim["n_seeds"] == 15 and claim["verdict"] == "inconclusive"
    assert [look["seeds"]["s"] for look in map(json.loads, (out / "looks.jsonl").open())] == [
        5,
        10,
        15,
    ]
    assert "claims E still undecided" in capsys.readouterr().err


def test_a_round_whose_jobs_failed_stops_the_rounds(tmp_path, capsys):
    # every trial of a variant raised, and each round added seeds that failed alike
    config = _config(tmp_path, shift=1.0, broken=True)
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--workers", "1", "--until-decided",
                 "--max-seeds", "30"]) == 1  # fmt: skip
    assert _calls(tmp_path) == 10  # one round of 5 seeds, both variants
    assert "5 job(s) failed in this round; fix them" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--max-seeds", "3"], "below the config's 5 seeds"),
     (["--max-seeds", "8", "--detach", "--executor", "slurm"], "cannot --detach")],
)  # fmt: skip
def test_until_decided_refuses_what_it_cannot_do(tmp_path, capsys, extra, message):
    config = _config(tmp_path, shift=1.0)
    assert main(["run", str(config), "--out", str(tmp_path / "o"), "--until-decided", *extra]) == 2
    assert message in capsys.readouterr().err
    capsys.readouterr()
    assert main(["run", str(config), "--out", str(tmp_path / "o"), "--max-seeds", "8"]) == 2
    assert "--max-seeds goes with --until-decided" in capsys.readouterr().err
