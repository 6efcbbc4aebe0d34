"""Every public name has a docstring: the API reference (docs/api/) is generated from them.

Public names are those of each module's ``__all__`` (a submodule listed there is walked too), and
the public methods and properties defined on public classes by dropkit itself. Classes need a
docstring of their own, not the signature that ``NamedTuple`` / ``dataclass`` write in its place;
data and type aliases, which cannot carry ``__doc__``, need the attribute docstring (the string
right after the assignment) that the API reference shows.
"""

import dataclasses
import functools
import importlib
import importlib.util
import inspect
import re
from collections.abc import Iterator
from pathlib import Path
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


@functools.cache
def _api_pages_rules() -> ModuleType:
    """tools/docs/griffe_api_pages.py: what the API pages hide (plumbing, deprecated params)."""
    path = Path(__file__).resolve().parents[1] / "tools" / "docs" / "griffe_api_pages.py"
    spec = importlib.util.spec_from_file_location("griffe_api_pages", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sections(obj: Any) -> dict[str, list[Any]]:
    """The Google-style sections of ``obj``'s own docstring, by kind (``parameters``, ...)."""
    griffe = pytest.importorskip("griffe")
    text = inspect.cleandoc(getattr(obj, "__doc__", None) or "")
    out: dict[str, list[Any]] = {}
    for section in griffe.parse_google(griffe.Docstring(text), warnings=False):
        if isinstance(section.value, list):
            out.setdefault(section.kind.value, []).extend(section.value)
    return out


def _signature_params(fn: Any) -> list[str]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature
        return []
    names = []
    for p in params:
        if p.name in ("self", "cls"):
            continue
        prefix = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
        names.append(prefix + p.name)
    return names


def _undocumented(where: str, fn: Any, docstring_owner: Any) -> list[str]:
    """``where``'s signature parameters that ``docstring_owner``'s ``Args`` does not describe."""
    documented = {p.name for p in _sections(docstring_owner).get("parameters", [])}
    missing = [p for p in _signature_params(fn) if p not in documented]
    return [f"{where}: {', '.join(missing)}"] if missing else []


def _fields(cls: type) -> list[str]:
    if hasattr(cls, "_fields"):  # NamedTuple
        return list(cls._fields)
    return [f.name for f in dataclasses.fields(cls)]


def _drives_a_framework(cls: type) -> bool:
    rules = _api_pages_rules()
    return any(base.__name__ in rules.FRAMEWORK_BASES for base in cls.__mro__[1:])


@pytest.mark.parametrize("module_name", MODULES)
def test_every_parameter_and_field_is_documented(module_name: str) -> None:
    """Google style, as the API pages parse it: each parameter of a public callable in ``Args``
    (a class's in the class docstring, as ``merge_init_into_class`` shows it), each field of a
    dataclass / NamedTuple in ``Attributes``, and a ``Returns`` section for a function that
    returns something. Framework plumbing the pages hide (``forward``, callback hooks) is exempt.
    """
    if module_name in OPTIONAL:
        pytest.importorskip(OPTIONAL[module_name])
    rules = _api_pages_rules()
    module = importlib.import_module(module_name)
    missing: list[str] = []
    for qualified, _, _, obj in _documented_objects(module):
        if inspect.isclass(obj) and obj.__module__.startswith("dropkit"):
            if dataclasses.is_dataclass(obj) or hasattr(obj, "_fields"):
                documented = {a.name for a in _sections(obj).get("attributes", [])}
                fields = [f for f in _fields(obj) if f not in documented]
                missing += [f"{qualified} (Attributes): {', '.join(fields)}"] if fields else []
            elif "__init__" in vars(obj):
                missing += _undocumented(qualified, obj.__init__, obj)
            framework = _drives_a_framework(obj)
            for name, member in _members(obj):
                if framework and rules.PLUMBING.match(name):
                    continue
                if inspect.isfunction(member):
                    missing += _undocumented(f"{qualified}.{name}", member, member)
                    missing += _no_returns(f"{qualified}.{name}", member)
        elif inspect.isfunction(obj) and obj.__module__.startswith("dropkit"):
            missing += _undocumented(qualified, obj, obj)
            missing += _no_returns(qualified, obj)
    assert not missing, "undocumented (Google-style Args / Attributes / Returns):\n  " + (
        "\n  ".join(missing)
    )


def _no_returns(where: str, fn: Any) -> list[str]:
    annotation = inspect.signature(fn).return_annotation
    if annotation in (None, "None", inspect.Signature.empty) or fn.__name__ == "__init__":
        return []
    sections = _sections(fn)
    if "returns" in sections or "yields" in sections:
        return []
    return [f"{where}: Returns"]


def test_no_raw_sphinx_role_in_the_sources() -> None:
    """The API pages are Markdown: a ``:func:`x``` would show as text. Cross-reference with
    ``[`x`][dropkit.x]`` (mkdocstrings) or write ``x`` as code."""
    src = Path(__file__).resolve().parents[1] / "src" / "dropkit"
    role = re.compile(r":(?:func|class|meth|mod|data|attr|obj|exc):`")
    found = [
        f"{path.relative_to(src)}:{n}"
        for path in sorted(src.rglob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if role.search(line)
    ]
    assert not found, found
