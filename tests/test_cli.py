import pytest

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


@pytest.mark.slow
def test_demo_runs_and_reports_every_variant(capsys) -> None:
    assert main(["demo", "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    for variant in ("no dropout", "standard dropout", "early dropout"):
        assert variant in out
    assert "regime check" in out
