"""The built documentation site, as a reader meets it: built once, strictly, then read as HTML.

``make test`` builds the site too, but the properties checked here are about its content: no raw
Sphinx role left as text, the install line and the version on the home page, the figures the
guides describe actually embedded, and no plumbing or deprecated parameter on the API pages.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import dropkit

pytest.importorskip("mkdocs")
ROOT = Path(__file__).resolve().parents[1]
RAW_ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|obj|exc):`")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(out)],
        cwd=ROOT, env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return out


def _text(page: Path) -> str:
    """A page's visible text, roughly: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text(encoding="utf-8")))


def test_no_raw_sphinx_role_is_left_as_text(site: Path) -> None:
    found = [
        f"{page.relative_to(site)}: {match.group(0)}"
        for page in sorted(site.rglob("*.html"))
        for match in RAW_ROLE.finditer(_text(page))
    ]
    assert not found, "\n".join(found[:20])


def test_the_home_page_shows_the_install_line_the_version_and_the_papers(site: Path) -> None:
    home = (site / "index.html").read_text(encoding="utf-8")
    assert "pip install" in _text(site / "index.html")
    assert f"dropkit {dropkit.__version__}" in home  # in the header, from __version__
    for link in (
        "https://arxiv.org/abs/2303.01500",  # Dropout Reduces Underfitting
        "https://github.com/facebookresearch/dropout",
        "https://arxiv.org/abs/2106.14448",  # R-Drop
        "https://github.com/dropreg/R-Drop",
    ):
        assert link in home, link


def test_the_changelog_names_the_version(site: Path) -> None:
    assert f"{dropkit.__version__} (unreleased)" in _text(site / "changelog.html")


@pytest.mark.parametrize(
    ("page", "figures"),
    [
        ("guides/early-late-dropout", ["figures/schedules.png"]),
        ("guides/demo", [f"figures/demo/{name}" for name in (
            "underfit_train_loss.png", "underfit_dynamics_difference.png",
            "underfit_dynamics.png", "overfit_test_acc.png")]),
    ],
)  # fmt: skip
def test_the_guides_embed_their_figures(site: Path, page: str, figures: list[str]) -> None:
    text = (site / f"{page}.html").read_text(encoding="utf-8")  # read from disk: no directory URLs
    for figure in figures:
        assert re.search(rf'<img [^>]*src="[./]*{re.escape(figure)}"', text), figure
        assert (site / figure).stat().st_size > 10_000, figure  # a real image, not a stub


def test_every_figure_shipped_is_embedded_somewhere(site: Path) -> None:
    pages = "\n".join(p.read_text(encoding="utf-8") for p in site.rglob("*.html"))
    shipped = sorted(p.relative_to(ROOT / "docs") for p in (ROOT / "docs/figures").rglob("*.png"))
    assert [str(f) for f in shipped if f'{f.as_posix()}"' not in pages] == []


def test_the_site_reads_from_disk(site: Path) -> None:
    home = (site / "index.html").read_text(encoding="utf-8")
    assert 'href="getting-started.html"' in home  # no directory URLs: opens from the file system
    assert "fonts.googleapis" not in home and "fonts.gstatic" not in home


def _signature(page: str, identifier: str) -> str:
    """The rendered signature of ``identifier`` on an API page, as text."""
    start = page.index(f'id="{identifier}"')
    text = html.unescape(re.sub(r"<[^>]+>", "", page[start : start + 20_000]))
    end = text.find("\n)")  # a long signature closes on a line of its own
    return text[: end if end != -1 else text.index(")")]


def test_the_api_pages_leave_out_plumbing_and_deprecated_parameters(site: Path) -> None:
    core = (site / "api" / "dropkit.html").read_text(encoding="utf-8")
    diagnostics = (site / "api" / "diagnostics.html").read_text(encoding="utf-8")
    assert 'id="dropkit.Dropout"' in core and 'id="dropkit.Dropout.forward"' not in core
    assert 'id="dropkit.DropPath.extra_repr"' not in core
    drop_path = _signature(core, "dropkit.drop_path")
    assert "drop_prob:" in drop_path and not re.search(r"\bp:", drop_path)  # p: deprecated
    recorder = _signature(diagnostics, "dropkit.diagnostics.DynamicsRecorder")
    assert "cadence" in recorder
    assert "num_batches" not in recorder and "schedule:" not in recorder
