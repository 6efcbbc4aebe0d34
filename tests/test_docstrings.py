"""Every public name has a docstring: the API reference (docs/api/) is generated from them.

Public names are those of each module's ``__all__`` (a submodule listed there is walked too), and
the public methods and properties defined on public classes by dropkit itself. Classes need a
docstring of their own, not the signature that ``NamedTuple`` / ``dataclass`` write in its place;
data and type aliases, which cannot carry ``__doc__``, need the attribute docstring (the string
right after the assignment) that the API reference shows.
"""

import functools
import importlib
import inspect
import re
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

MODULES = [
    "dropkit",
    "dropkit.diagnostics",
    "dropkit.integrations",
    "dropkit.integrations.lightning",
    "dropkit.integrations.transformers",
    "dropkit.experiments",
    "dropkit.experiments.advise",  # dropkit.advise, lazy and out of dropkit.__all__
]
OPTIONAL = {
    "dropkit.integrations.lightning": "lightning",
    "dropkit.integrations.transformers": "transformers",
}


def _own_doc(obj: Any) -> str:
    if inspect.isclass(obj):
        doc = vars(obj).get("__doc__") or ""
        if re.fullmatch(rf"{re.escape(obj.__name__)}\(.*\)", doc.strip(), flags=re.S):
            return ""  # written by NamedTuple / dataclass, not by us
        return doc.strip()
    return (getattr(obj, "__doc__", None) or "").strip()


def _documented_objects(module: ModuleType) -> Iterator[tuple[str, ModuleType, str, Any]]:
    """``(qualified name, module, name, object)`` for each name of ``module.__all__``."""
    for name in module.__all__:
        obj = getattr(module, name)
        yield f"{module.__name__}.{name}", module, name, obj
        if (
            inspect.ismodule(obj)
            and obj.__name__.startswith("dropkit.")
            and hasattr(obj, "__all__")
        ):
            yield from _documented_objects(obj)


def _members(cls: type) -> Iterator[tuple[str, Any]]:
    """Public methods and properties defined on ``cls`` or its dropkit base classes."""
    seen = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("dropkit"):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_") or name in seen:
                continue
            seen.add(name)
            if isinstance(value, (classmethod, staticmethod)):
                value = value.__func__
            if isinstance(value, (property, functools.cached_property)) or inspect.isfunction(
                value
            ):
                yield name, value


def _attribute_docstring(qualified: str) -> str:
    """The docstring griffe (and so the API reference) sees for a data name or type alias."""
    griffe = pytest.importorskip("griffe")
    package = griffe.load(qualified.split(".")[0])
    obj = package[qualified.split(".", 1)[1]]
    return (obj.docstring.value if obj.docstring else "").strip()


@pytest.mark.parametrize("module_name", MODULES)
def test_every_public_name_has_a_docstring(module_name: str) -> None:
    if module_name in OPTIONAL:
        pytest.importorskip(OPTIONAL[module_name])
    module = importlib.import_module(module_name)
    assert module.__all__, f"{module_name} has an empty __all__"
    missing = []
    for qualified, _, _, obj in _documented_objects(module):
        if inspect.ismodule(obj) or inspect.isclass(obj) or inspect.isroutine(obj):
            if not _own_doc(obj):
                missing.append(qualified)
        elif not _attribute_docstring(qualified):
            missing.append(f"{qualified} (data: a string literal right after the assignment)")
        if inspect.isclass(obj) and obj.__module__.startswith("dropkit"):
            missing += [
                f"{qualified}.{name}" for name, member in _members(obj) if not _own_doc(member)
            ]
    assert not missing, "public names without a docstring:\n  " + "\n  ".join(missing)


def test_auto_generated_class_docstrings_do_not_count() -> None:
    from dataclasses import dataclass
    from typing import NamedTuple

    class Pair(NamedTuple):
        a: int

    @dataclass
    class Box:
        a: int

    class Told(NamedTuple):
        """A pair, documented."""

        a: int

    assert _own_doc(Pair) == "" and _own_doc(Box) == ""
    assert _own_doc(Told) == "A pair, documented."
