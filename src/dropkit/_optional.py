"""Optional dependencies, imported on first use through one helper that names the extra.

dropkit's core needs only torch and numpy. Everything else belongs to an extra of
``pyproject.toml`` and is imported here, never at the import of a dropkit module that does not
need it:

| package | extra | needed for |
| --- | --- | --- |
| pyyaml | `data` | experiment configs ([`dropkit.experiments`][dropkit.experiments]) |
| scipy | `data` | the confidence intervals of reports and advice |
| tqdm | `data` | the progress bars of `dropkit run` / `demo` |
| mnist1d, scikit-learn | `data` | the built-in datasets |
| matplotlib | `plot` | the figures of reports and advice |
| tensorboard | `tensorboard` | `DynamicsRecorder(tensorboard=...)` |
| lightning | `lightning` | [`dropkit.integrations.lightning`][dropkit.integrations.lightning] |
| transformers | `hf` | [`dropkit.integrations.transformers`][dropkit.integrations.transformers] |

A missing one raises ``MissingDependency``, an ``ImportError`` whose message gives the pip
line: ``scipy is not installed; dropkit needs it for the confidence intervals: pip install
scipy (or the whole `data` extra, from a dropkit checkout: pip install '.[data]')``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
from collections.abc import Iterator
from types import ModuleType

__all__ = ["MissingDependency", "import_optional", "optional_imports", "require"]


class MissingDependency(ImportError):
    """An optional package dropkit needs is not installed (or does not import); the message
    names the package and the extra that installs it (`pip_line`)."""


# import names whose distribution on the package index is named otherwise
_DISTRIBUTIONS = {"yaml": "pyyaml", "sklearn": "scikit-learn"}


def pip_line(module: str, extra: str) -> str:
    """How to install ``module``: the package itself (works wherever dropkit came from), and
    the extra that holds it, from a dropkit checkout (dropkit is on no package index)."""
    top = module.partition(".")[0]
    return (
        f"pip install {_DISTRIBUTIONS.get(top, top)} (or the whole `{extra}` extra, from a "
        f"dropkit checkout: pip install '.[{extra}]')"
    )


def _missing(module: str, extra: str, purpose: str, err: ImportError | None) -> MissingDependency:
    pip = pip_line(module, extra)
    if err is None or isinstance(err, ModuleNotFoundError):
        name = err.name if err is not None and err.name else module
        if name.partition(".")[0] == module.partition(".")[0]:  # the package, not a submodule
            name = module.partition(".")[0]
        message = f"{name} is not installed; dropkit needs it {purpose}: {pip}"
    else:  # installed, but broken or of a version without what dropkit imports
        name = module
        message = (
            f"{module} is installed but does not import ({err}); dropkit needs it {purpose}: "
            f"{pip.replace('pip install ', 'pip install --upgrade ', 1)}"
        )
    error = MissingDependency(message)
    error.name = name
    return error


def require(module: str, extra: str, purpose: str) -> None:
    """Raise ``MissingDependency`` unless ``module`` can be found (it is not imported).

    For checks before any work starts: ``require("matplotlib", "plot", "for the report's
    figures")`` fails with "matplotlib is not installed; dropkit needs it for the report's
    figures: pip install matplotlib (or the whole `plot` extra, ...)".
    """
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module without a spec
        found = False
    if not found:
        raise _missing(module, extra, purpose, None)


def import_optional(module: str, extra: str, purpose: str) -> ModuleType:
    """Import and return ``module``, or raise ``MissingDependency`` naming ``extra``.

    ``import_optional("scipy.stats", "data", "for confidence intervals").t`` is
    ``scipy.stats.t``; a ``None`` in ``sys.modules`` (how tests hide a package) counts as
    missing.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise _missing(module, extra, purpose, err) from err


@contextlib.contextmanager
def optional_imports(module: str, extra: str, purpose: str) -> Iterator[None]:
    """Module-level imports of an optional package, for the modules that exist to use it (the
    integrations): a failing import inside the block raises ``MissingDependency``.

    Unlike ``import_optional`` the imports stay plain ``import`` statements, so type
    checkers see the package::

        with optional_imports("lightning", "lightning", "for dropkit.integrations.lightning"):
            import lightning.pytorch as pl
    """
    try:
        yield
    except MissingDependency:
        raise
    except ImportError as err:
        raise _missing(module, extra, purpose, err) from err
