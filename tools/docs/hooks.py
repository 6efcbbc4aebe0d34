"""mkdocs hooks: the site shows the version of the dropkit it documents (``dropkit.__version__``,
the one place the version is written), in every page's header."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

INIT = Path(__file__).resolve().parents[2] / "src" / "dropkit" / "__init__.py"


def version() -> str:
    """``dropkit.__version__``, read from the source without importing torch."""
    found = re.search(r'^__version__ = "([^"]+)"$', INIT.read_text(encoding="utf-8"), re.M)
    if found is None:
        raise RuntimeError(f"no __version__ line in {INIT}")
    return found.group(1)


def on_config(config: Any) -> Any:
    """Name the site ``dropkit <version>``."""
    config["site_name"] = f"{config['site_name']} {version()}"
    return config
