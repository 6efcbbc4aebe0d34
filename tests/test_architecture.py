"""The package's layers, read from its imports: no import circle, and each stage of
``dropkit.experiments`` imports only the stages below it (lazy and type-only imports count).

Stages, from the bottom: the core (``dropkit.*`` outside experiments, integrations and the CLI),
then ``experiments.base``, ``experiments.config``, then ``builtin``, ``engine`` and ``evidence``
(side by side: none imports another), then the top (``runner``, ``status``, ``preflight``,
``advise``, the package itself and its public aliases), then the CLI.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import dropkit

SRC = Path(dropkit.__file__).parent
EXP = "dropkit.experiments"
# the stages of dropkit.experiments: rank (lower is below), and the rooms that share a rank
STAGES = {"base": 0, "config": 1, "builtin": 2, "engine": 2, "evidence": 2}
TOP = 3
# public paths kept for users (re-exports); nothing inside dropkit imports them
ALIASES = {f"{EXP}.data", f"{EXP}.train", f"{EXP}.stats"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in SRC.rglob("*.py")}


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[tuple[str, int]]:
    """Every dropkit module ``name`` imports, at any depth of its code, with the line."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "dropkit":
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the package
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            if base.split(".")[0] != "dropkit":
                continue
            for alias in node.names:  # `from pkg import module` imports the module
                target = f"{base}.{alias.name}"
                yield (target if target in MODULES else base), node.lineno


GRAPH = {name: sorted(set(_imports(name, path))) for name, path in MODULES.items()}


def _stage(module: str) -> tuple[int, str]:
    """(rank, room) of a module; the core ranks -1, the CLI above the top."""
    if module == "dropkit.cli":
        return TOP + 1, "cli"
    if not module.startswith(f"{EXP}.") and module != EXP:
        return -1, "core"
    room = module.removeprefix(f"{EXP}").lstrip(".").split(".")[0]
    return (STAGES[room], room) if room in STAGES else (TOP, "top")


def test_the_walk_sees_the_stages_and_their_imports() -> None:
    rooms = {_stage(m)[1] for m in MODULES if m.startswith(EXP)}
    assert rooms == {*STAGES, "top"}
    # a lazy import inside a function is found (the CLI imports the runner there)
    assert f"{EXP}.runner" in {target for target, _ in GRAPH["dropkit.cli"]}


def test_no_import_circle() -> None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target, _ in GRAPH.get(module, []):
            if target == module or target not in MODULES:
                continue
            if state.get(target) == 1:
                circle = [*path[path.index(target) :], target]
                pytest.fail("import circle: " + " -> ".join(circle))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_stage_imports_only_stages_below_it(module: str) -> None:
    rank, room = _stage(module)
    wrong = []
    for target, line in GRAPH[module]:
        if target == module or module == "dropkit":  # the package's lazy `dropkit.advise`
            continue
        target_rank, target_room = _stage(target)
        if target in ALIASES:
            wrong.append(f"line {line}: {target} is a public alias; import what it re-exports")
        elif room == "core" and target_room != "core":
            wrong.append(f"line {line}: the core imports {target}")
        elif target_rank > rank or (target_rank == rank and target_room != room):
            wrong.append(f"line {line}: {room} imports {target} ({target_room})")
    assert not wrong, f"{module}:\n" + "\n".join(wrong)
