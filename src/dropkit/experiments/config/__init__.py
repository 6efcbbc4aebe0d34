"""The experiment config: what is trained and compared, the claims, and where jobs run.

``specs`` holds the frozen dataclasses everything downstream reads; ``parse`` builds them from
YAML and checks every field; ``claim`` and ``training`` are a claim's and a built-in setting's
optimisation specs. Its public names (``dropkit.experiments.config.X``) are those of ``specs``
and ``parse``.
"""

from dropkit.experiments.config import parse, specs
from dropkit.experiments.config.parse import *  # noqa: F403 (the package's public names)
from dropkit.experiments.config.specs import *  # noqa: F403

__all__ = [*specs.__all__, *parse.__all__]
