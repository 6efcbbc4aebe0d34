"""The package as users get it: build the wheel and sdist, install the wheel into a fresh virtual
environment outside the source tree, and use it there.

The fresh environment gets the wheel with ``--no-deps``; torch, numpy and the optional packages
are made visible through a ``.pth`` line pointing at this environment's site-packages (a plain
path entry: the ``.pth`` files there, among them the editable install of the source tree, are not
run), so the test proves the wheel's own copy of dropkit imports and works.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import dropkit

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_MODULES = (
    "dropkit",
    "dropkit.layers",
    "dropkit.sites",
    "dropkit.schedules",
    "dropkit.dropout_scheduler",
    "dropkit.rdrop",
    "dropkit.rdrop_linear",
    "dropkit.diagnostics",
    "dropkit.integrations",
    "dropkit.integrations.lightning",
    "dropkit.integrations.transformers",
    "dropkit.experiments",
    "dropkit.experiments.advise",
    "dropkit.experiments.config",
    "dropkit.experiments.runner",
    "dropkit.experiments.evidence.report",
    "dropkit.experiments.evidence.figures",
    "dropkit.cli",
)

FACTORY = """
from torch import nn
import dropkit


def build():
    return nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.1), dropkit.DropPath(0.2), nn.Linear(8, 2))
"""

CHECK = f"""
import importlib, pkgutil, sys
from pathlib import Path
import dropkit
from dropkit.experiments.builtin.demo_configs import builtin_config
from dropkit.experiments.config.parse import load_config

assert Path(dropkit.__file__).resolve().is_relative_to(Path(sys.prefix).resolve()), dropkit.__file__
for name in {PUBLIC_MODULES!r}:
    importlib.import_module(name)
for module in pkgutil.walk_packages(dropkit.__path__, "dropkit."):  # and every other one
    importlib.import_module(module.name)
configs = Path(dropkit.__file__).parent / "experiments" / "builtin" / "configs"
configs = sorted(configs.glob("*.yaml"))
assert configs, "no built-in configs in the installed package"
for path in configs:
    load_config(path)
    builtin_config(path.stem)  # through importlib.resources, as `dropkit demo` reads them
assert (Path(dropkit.__file__).parent / "py.typed").is_file()
print(len(configs))
"""


def _run(*cmd: str | Path, cwd: Path) -> str:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
def test_the_wheel_installs_outside_the_tree_and_works(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the repository
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "build", "--no-isolation", "--wheel", "--sdist",
         "--outdir", dist, source, cwd=tmp_path)  # fmt: skip
    (wheel,) = dist.glob("dropkit-*.whl")
    assert wheel.name.startswith(f"dropkit-{dropkit.__version__}-")  # one source: __version__
    (sdist,) = dist.glob("dropkit-*.tar.gz")
    names = zipfile.ZipFile(wheel).namelist()
    assert "dropkit/py.typed" in names
    assert "dropkit/experiments/builtin/configs/demo.yaml" in names
    with tarfile.open(sdist) as archive:
        assert any(n.endswith("src/dropkit/rdrop_linear.py") for n in archive.getnames())

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))",
                     cwd=tmp_path).strip())  # fmt: skip
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--quiet",
         wheel, cwd=tmp_path)  # fmt: skip
    (site / "host_packages.pth").write_text(sysconfig.get_path("purelib") + "\n")

    work = tmp_path / "work"
    work.mkdir()
    (work / "factory.py").write_text(FACTORY)
    installed = _run(python, "-c", "import dropkit; print(dropkit.__version__)", cwd=work).strip()
    assert _run(venv / "bin" / "dropkit", "--version", cwd=work).strip() == f"dropkit {installed}"
    sites = _run(venv / "bin" / "dropkit", "sites", "factory:build", cwd=work)
    assert "drop_path" in sites and "0.2" in sites and "dropout" in sites
    assert int(_run(python, "-c", CHECK, cwd=work)) >= 3
