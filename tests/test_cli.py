import json

import pytest

import dropkit
from dropkit.cli import main


def test_sites_command_prints_the_table(capsys) -> None:
    assert main(["sites", "tests.lookalikes:TimmViT"]) == 0
    out = capsys.readouterr().out
    assert (
        out.startswith("TimmViT: 13 sites (5 dropout, 8 drop_path), 2 not controllable")
        and "blocks.3.drop_path2" in out
    )


@pytest.mark.parametrize("spec", ["no_colon", "tests.lookalikes:Missing", "no.such.module:f"])
def test_sites_command_bad_factory(spec: str) -> None:
    with pytest.raises(SystemExit, match="dropkit sites"):
        main(["sites", spec])


def test_version_flag_prints_the_package_version(capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out == f"dropkit {dropkit.__version__}\n"


def test_demo_refuses_fewer_than_two_seeds(capsys) -> None:
    assert main(["demo", "--seeds", "1"]) == 2
    assert "--seeds must be >= 2" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_demo_runs_every_claim_of_the_builtin_config(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--seeds", "2", "--workers", "1", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    ids = [claim["id"] for claim in report["claims"]]
    assert ids == [
        *("C1", "C2", "C3", "C3n", "C4", "C4n", "C5a", "C5b", "C5c", "C5d"),
        *("C6", "C8", "C8c", "C9", "C7r", "C7", "C7n"),
    ]
    regime_ids = {"C1", "C6", "C7r"}
    for claim in report["claims"]:
        assert claim["verdict"] != "not measured"
        if claim["id"] in regime_ids:  # decided on every seed
            assert claim["n_seeds"] == 2
        else:  # measured, or gated by an unconfirmed regime claim
            assert claim["n_seeds"] == 2 or claim["verdict"] == "not applicable"
    printed = capsys.readouterr().out
    assert "| early_dropout | 2 |" in printed and "C9" in printed
    assert (out / "figures" / "underfit_dynamics.png").exists()
