"""Every Python example in docs/ runs as written, or is marked as one that cannot run here.

Each page's ```python blocks run in order in one namespace, in a temporary working directory, so
a page reads like a session. A block that includes a file of the checkout (``--8<-- "PATH"``, as
the site does) runs that file, and a page that includes files of ``examples/NAME/`` runs in a
copy of that folder, as a reader following it from there would. A block that cannot run on a
CPU-only machine without timm (or that needs ``torchrun``, or a finished demo) carries
``<!-- not run: REASON -->`` on the line right before its fence; it is only parsed, and its
dropkit imports are resolved. A block that is neither runnable nor marked fails the test.
"""

import ast
import re
import shutil
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
FENCE = re.compile(r"^([ \t]*)```[ \t]*(?:python|py|python3)\b[^\n]*\n(.*?)^[ \t]*```", re.S | re.M)
NOT_RUN = re.compile(r"^[ \t]*<!--\s*not run:\s*(\S.*?)\s*-->[ \t]*$")
ANY_MARKER = re.compile(r"<!--\s*not[ _-]?run", re.I)
SNIPPET = re.compile(r'^[ \t]*--8<--[ \t]+"([^"]+)"[ \t]*$', re.M)


def _expand(code: str) -> str:
    """Replace each ``--8<-- "PATH"`` line with the file's text, as pymdownx.snippets does."""
    return SNIPPET.sub(lambda m: (ROOT / m.group(1)).read_text(encoding="utf-8"), code)


def _example_folders(page: Path) -> list[Path]:
    """The ``examples/NAME/`` folders whose files ``page`` includes."""
    text = page.read_text(encoding="utf-8")
    return sorted({(ROOT / path).parent for path in SNIPPET.findall(text)
                   if path.startswith("examples/")})  # fmt: skip


def _blocks(page: Path) -> list[tuple[int, str, str | None]]:
    """``(line, code, reason)`` for each Python block of ``page``; ``reason`` is None if it runs."""
    text = page.read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        indent, body = match.group(1), match.group(2)
        code = _expand("\n".join(line.removeprefix(indent) for line in body.splitlines()))
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = NOT_RUN.match(before)
        line = text.count("\n", 0, match.start()) + 2  # the block's first line of code
        blocks.append((line, code, marker.group(1) if marker else None))
    return blocks


def _compile(code: str, page: Path, line: int):
    # Pad so that tracebacks point at the page's own line numbers.
    return compile("\n" * (line - 1) + code, str(page), "exec")


@pytest.mark.filterwarnings("error:.*will be removed in dropkit:FutureWarning")  # no old names
@pytest.mark.filterwarnings("error::FutureWarning:__docs__")  # nor deprecated calls
@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_page_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for folder in _example_folders(page):  # a reader runs the page from the example's folder
        shutil.copytree(folder, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)  # examples may write runs/, logs/, out/: never into the repo
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    namespace: dict = {"__name__": "__docs__"}
    for line, code, reason in _blocks(page):
        if reason is None:
            exec(_compile(code, page, line), namespace)
            continue
        tree = ast.parse("\n" * (line - 1) + code, str(page))  # must at least be valid Python
        imports = [
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dropkit")
        ]
        for node in imports:  # and what it imports from dropkit must exist
            exec(compile(ast.Module([node], type_ignores=[]), str(page), "exec"), {})


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_not_run_markers_sit_right_before_a_python_block(page: Path) -> None:
    """A marker that is misspelt, or separated from its block, would silently run nothing."""
    markers = [
        n for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
        if ANY_MARKER.search(line)
    ]  # fmt: skip
    marked = [line - 2 for line, _, reason in _blocks(page) if reason is not None]
    assert markers == marked, f"{page}: markers on lines {markers}, marked blocks after {marked}"


def test_the_docs_have_examples_and_few_are_skipped() -> None:
    blocks = [b for page in PAGES for b in _blocks(page)]
    skipped = [b for b in blocks if b[2] is not None]
    assert len(blocks) >= 30
    assert len(skipped) <= 5, [reason for _, _, reason in skipped]


def test_advise_config_example_is_a_valid_setting(tmp_path: Path) -> None:
    from dropkit.experiments.config.parse import load_settings

    text = (DOCS / "guides" / "advise.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    example = next(b for b in blocks if b.startswith("# mine.yaml"))
    (tmp_path / "mine.yaml").write_text(example)
    (setting,) = load_settings(tmp_path / "mine.yaml")
    assert (setting.data, setting.model["kind"], setting.train.epochs) == ("digits", "mlp", 40)


def test_every_module_in_dropkit_all_has_an_api_section() -> None:
    """``::: dropkit`` documents the names of ``__all__``; submodules and lazy names need their
    own directive on the API page."""
    import inspect

    import dropkit

    page = (DOCS / "api" / "dropkit.md").read_text(encoding="utf-8")
    for name in [*dropkit.__all__, "advise"]:  # advise: lazy, and out of __all__ for import *
        obj = getattr(dropkit, name)
        if inspect.ismodule(obj):
            assert f"::: {obj.__name__}\n" in page, name
        elif name not in vars(dropkit):  # served by the module's __getattr__
            assert f"::: {obj.__module__}.{obj.__name__}\n" in page, name


def _imported_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_every_block_imports_the_modules_it_uses(page: Path) -> None:
    """A block copied alone must not fail on a missing import: what any block of the page imports
    (``torch``, ``nn``, ``dropkit``, ...), a block that uses it imports itself."""
    blocks = [(line, ast.parse(code)) for line, code, _ in _blocks(page)]
    imported_on_page = set().union(*(_imported_names(tree) for _, tree in blocks))
    missing = []
    for line, tree in blocks:
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        lacking = sorted((used & imported_on_page) - _imported_names(tree))
        if lacking:
            missing.append(f"line {line}: {', '.join(lacking)}")
    assert not missing, f"{page.name}: blocks using modules they do not import:\n" + "\n".join(
        missing
    )


def test_install_lines_work_without_a_package_index() -> None:
    # dropkit is on no index: `pip install 'dropkit[...]'` fails wherever a user pastes it
    pages = [ROOT / "README.md", *DOCS.rglob("*.md"), *(ROOT / "src").rglob("*.py")]
    offending = [str(p) for p in pages if "dropkit[" in p.read_text(encoding="utf-8")
                 and p.name != "changelog.md"]  # fmt: skip
    assert offending == []


def test_licence_and_citation_match_the_package() -> None:
    import dropkit

    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert citation["version"] == dropkit.__version__ and citation["license"] == "MIT"
    assert {ref["title"] for ref in citation["references"]} == {
        "Dropout Reduces Underfitting",
        "R-Drop: Regularized Dropout for Neural Networks",
    }
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")
    assert 'license = "MIT"' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")


# the FAQ's quoted messages, and the text the source gives them with (f-string fields apart)
FAQ_MESSAGES = {
    "no dropout sites found": "no dropout sites found",
    "the model has no controllable dropout site": "the model has no controllable {kind} site",
    "holds a run of a different config": "holds a run of a different config",
    "... changed since ... was run": "changed since {out} was",
    "returned [...] but the config's claims need [...]": "but the config's claims need",
    "was applied up to step ...": "was applied up to step",
    "was never applied": "was never applied",
    "SystemExit: 2: the function called sys.exit": "the function called sys.exit",
    "SLURM: no timeout_min given": "SLURM: no timeout_min given",
    "is being written by another dropkit command": "is being written by another dropkit command",
    "X is not installed; dropkit needs it ...": "is not installed; dropkit needs it",
    "Cannot tell yet.": "Cannot tell yet. ",
    "rank 1 of 2 failed: ...": "failed: {why['error']}",
    "rank 0 ended without a result": "rank 0 ended without a result",
    "tasks per job run a training function's trial as that many data-parallel ranks": (
        "tasks per job run a training function's trial as that many data-parallel ranks"
    ),
}


def test_the_faqs_error_messages_are_the_ones_dropkit_gives() -> None:
    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "src").rglob("*.py"))
    faq = (DOCS / "faq.md").read_text(encoding="utf-8")
    quoted = [piece.strip().strip('"') for line in re.findall(r'^\*\*("[^*]+")\*\*', faq, re.M)
              for piece in line.split(" / ")]  # fmt: skip
    assert sorted(quoted) == sorted(FAQ_MESSAGES)
    assert [text for text in FAQ_MESSAGES.values() if text not in source] == []


def _outside_names(code: str) -> set[str]:
    """Names a block reads that it neither defines nor imports (nor are builtins)."""
    import builtins

    tree = ast.parse(code)
    defined = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            defined |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            defined.add(node.name)
    read = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return read - defined


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_a_block_that_needs_names_from_elsewhere_says_which(page: Path) -> None:
    """A block read on its own must not look standalone when it is not: the names it takes
    from earlier blocks (or from the reader's own code) are named in its leading comments."""
    unnamed = []
    for line, code, _ in _blocks(page):
        lines = code.splitlines()
        leading = "\n".join(text for text in lines[: next(
            (i for i, text in enumerate(lines) if not text.lstrip().startswith("#")), len(lines)
        )])  # fmt: skip
        missing = sorted(n for n in _outside_names(code) if not re.search(rf"\b{n}\b", leading))
        if missing:
            unnamed.append(f"line {line}: {missing}")
    said = f"{page.name}: blocks using names they do not say come from elsewhere:\n"
    assert not unnamed, said + "\n".join(unnamed)
