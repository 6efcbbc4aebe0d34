"""A griffe extension for the API pages: what users call, not the plumbing around it.

Hidden from the pages (mkdocs.yml loads this file):

- members that frameworks call, never users, on classes that a framework drives: ``forward`` /
  ``extra_repr`` of an ``nn.Module``, the hooks of Lightning / Hugging Face callbacks, the
  overrides of the ``Trainer`` (``PLUMBING``);
- deprecated keyword parameters, those whose ``Args`` entry starts with "Deprecated": they still
  work (with a ``FutureWarning``), so they stay in the code and its docstring, but a reader of the
  reference meets only the current names.

``tests/test_docstrings.py`` uses the same rules to decide what must be documented.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

PLUMBING = re.compile(
    r"^(forward|extra_repr|setup|teardown|on_[a-z_]+|state_dict|load_state_dict|compute_loss|log)$"
)
"""Member names hidden on classes that frameworks drive (modules, callbacks, trainers)."""

FRAMEWORK_BASES = ("Module", "Callback", "TrainerCallback", "Trainer")
"""Base class names of the classes whose plumbing members are hidden."""


def is_deprecated(description: str) -> bool:
    """Whether an ``Args`` entry documents a deprecated parameter."""
    return description.strip().lower().startswith("deprecated")


def _drop_deprecated(docstring: griffe.Docstring | None, func: griffe.Function | None) -> None:
    """Remove deprecated parameters from ``docstring``'s Args and from ``func``'s signature."""
    if docstring is None or "deprecated" not in docstring.value.lower():
        return  # parse only where needed: parsing warns about docstrings the pages never show
    deprecated: set[str] = set()
    for section in docstring.parsed:
        if section.kind is griffe.DocstringSectionKind.parameters:
            deprecated |= {p.name for p in section.value if is_deprecated(p.description)}
            section.value = [p for p in section.value if p.name not in deprecated]
    if deprecated and func is not None:
        func.parameters = griffe.Parameters(
            *(p for p in func.parameters if p.name not in deprecated)
        )


class APIPages(griffe.Extension):
    """Hide framework plumbing and deprecated parameters from the rendered reference."""

    def on_class_members(self, *, cls: griffe.Class, **kwargs: Any) -> None:
        init = cls.members.get("__init__")
        _drop_deprecated(cls.docstring, init if isinstance(init, griffe.Function) else None)
        if any(str(base).rsplit(".", 1)[-1] in FRAMEWORK_BASES for base in cls.bases):
            for name in [name for name in cls.members if PLUMBING.match(name)]:
                cls.del_member(name)  # off the pages, also where the class is re-exported

    def on_function_instance(self, *, func: griffe.Function, **kwargs: Any) -> None:
        _drop_deprecated(func.docstring, func)
