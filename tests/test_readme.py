"""The README's Python examples run as written."""

import ast
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_plain_loop_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "DropoutScheduler(" in b and "for step in" in b)
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert namespace["sched"].get_last_p() == {"dropout": 0.0}
    assert namespace["model"][2].p == 0.0


def test_rdrop_loop_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "rdrop_forward(model, x)" in b and "for step in" in b)
    assert len(example.strip().splitlines()) <= 12
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert namespace["loss"].item() > 0
    assert namespace["logits1"].shape == namespace["logits2"].shape == (32, 3)


def test_diagnostics_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "DirectionAccumulator()" in b)
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    acc, full = namespace["acc"], namespace["full"]
    assert 0.0 < acc.variance() < 1.0
    assert 0.0 < acc.error(full) < 1.0
    assert full.dtype == namespace["torch"].float64


def test_every_dropkit_import_in_the_readme_resolves() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    imports = [
        node
        for block in blocks
        for node in ast.walk(ast.parse(block))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dropkit")
    ]
    assert imports  # the diagnostics example
    for node in imports:
        exec(compile(ast.Module([node], type_ignores=[]), "README.md", "exec"), {})


def test_readme_links_to_pages_that_exist() -> None:
    links = re.findall(r"\]\((docs/[^)#]+)", README.read_text())
    assert "docs/index.md" in links and len(links) >= 10
    for link in links:
        assert (README.parent / link).is_file(), link
