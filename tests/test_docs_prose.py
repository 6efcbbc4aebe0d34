"""Names in the docs' prose are checked like code: every ``dropkit`` name written in an inline
code span of a page (or of the README) resolves, and a call written there uses the keywords and
the parameter names of the real signature.

The code blocks run in ``test_docs.py``; this covers the sentences around them, where
``dropkit.advise(model_fn, data, train_config)`` or ``rdrop_terms(logits_list, ...)`` could say
what the code does not.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]
FENCED = re.compile(r"^[ \t]*```.*?^[ \t]*```", re.S | re.M)
SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
DOTTED = re.compile(r"\bdropkit(?:\.[A-Za-z_]\w*)+")
# short names the prose uses without the package: every public name of these modules
MODULES = (
    "dropkit",
    "dropkit.schedules",
    "dropkit.diagnostics",
    "dropkit.experiments",
    "dropkit.integrations",
    "dropkit.integrations.lightning",
    "dropkit.integrations.transformers",
)


def _short_names() -> dict[str, Any]:
    names: dict[str, Any] = {"advise": importlib.import_module("dropkit").advise}
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            names.setdefault(name, getattr(module, name))
    names["schedules"] = importlib.import_module("dropkit.schedules")
    return names


def _resolve(dotted: str) -> Any:
    """The object at ``dotted`` (``dropkit.x.y``), importing modules on the way."""
    parts = dotted.split(".")
    obj: Any = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], 1):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            obj = importlib.import_module(".".join(parts[: i + 1]))
    return obj


def _spans(page: Path) -> list[tuple[int, str]]:
    text = FENCED.sub(lambda m: "\n" * m.group(0).count("\n"), page.read_text(encoding="utf-8"))
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in SPAN.finditer(text)]


def _call(span: str) -> ast.Call | None:
    try:
        node = ast.parse(span.strip().replace("…", "..."), mode="eval").body
    except SyntaxError:
        return None
    return node if isinstance(node, ast.Call) else None


def _callee(node: ast.expr, short: dict[str, Any]) -> tuple[str, Any] | None:
    """The dropkit object a call's function names, if it names one."""
    name = ast.unparse(node)
    if DOTTED.fullmatch(name):
        return name, _resolve(name)
    head, _, rest = name.partition(".")
    if head in short:
        obj = short[head]
        for part in rest.split(".") if rest else []:
            obj = getattr(obj, part)
        return name, obj
    return None


def _check_call(call: ast.Call, name: str, obj: Any) -> list[str]:
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return []
    if inspect.isclass(obj):
        params = params[1:]  # self
    names = {p.name for p in params}
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params)
    problems = [
        f"{name}() has no parameter {kw.arg!r}"
        for kw in call.keywords
        if kw.arg is not None and kw.arg not in names and not takes_kwargs
    ]
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    signature_like = all(isinstance(a, (ast.Name, ast.Constant)) for a in call.args)
    if signature_like and any(kw.value is not None for kw in call.keywords):
        # written as a signature (placeholders, then keywords with defaults): names must match
        for arg, param in zip(call.args, positional):
            if isinstance(arg, ast.Name) and arg.id != param.name:
                problems.append(f"{name}(): positional {arg.id!r} is the parameter {param.name!r}")
    return problems


def _problems(page: Path, short: dict[str, Any]) -> list[str]:
    problems = []
    for line, span in _spans(page):
        where = f"{page.name}:{line} `{span}`"
        for dotted in DOTTED.findall(span):
            try:
                _resolve(dotted)
            except (AttributeError, ImportError):
                problems.append(f"{where}: {dotted} does not exist")
        call = _call(span)
        if call is None:
            continue
        try:
            found = _callee(call.func, short)
        except (AttributeError, ImportError):
            problems.append(f"{where}: {ast.unparse(call.func)} does not exist")
            continue
        if found is not None:
            problems += [f"{where}: {p}" for p in _check_call(call, *found)]
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_names_and_keywords_in_the_prose_exist(page: Path) -> None:
    problems = _problems(page, _short_names())
    assert not problems, "\n".join(problems)


def test_the_check_catches_what_it_is_for(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "Call `dropkit.advise(model_fn, data, train_config=None)` or `dropkit.no_such`;\n"
        "`rdrop_terms(logits_list, target, alpha, ignore_index=-100)` and\n"
        "`DropoutScheduler(model, total_steps=10, dropuot=0.1)`.\n"
        "```python\ndropkit.inside_a_block_is_test_docs_business\n```\n",
        encoding="utf-8",
    )
    problems = [p.split(": ", 1)[1] for p in _problems(page, _short_names())]
    assert problems == [
        "dropkit.advise() has no parameter 'train_config'",
        "dropkit.no_such does not exist",
        "rdrop_terms(): positional 'logits_list' is the parameter 'logits'",
        "DropoutScheduler() has no parameter 'dropuot'",
    ]
