"""Which regime is a model in, and which dropout schedule should it train with?

`probe` trains the short probes (a built-in setting's model and data: `advise`; a training
function: `advise_function`); `judge` turns their numbers into an `Advice` (`advice`); `emit`
writes the experiment that tests it (`emit_config`). The names below are the public ones
(``dropkit.experiments.advise.X``; ``dropkit.advise`` is `advise`).
"""

from dropkit.experiments.advise.advice import RECOMMENDATIONS, Advice
from dropkit.experiments.advise.emit import emit_config
from dropkit.experiments.advise.probe import advise, advise_function, default_budget
from dropkit.experiments.builtin.data import split_validation

# their documented home (``dropkit.experiments.advise.X``), as repr, pickle and the docs name them
for _public in (Advice, advise, advise_function, default_budget, emit_config):
    _public.__module__ = __name__

__all__ = [
    "RECOMMENDATIONS",
    "Advice",
    "advise",
    "advise_function",
    "default_budget",
    "emit_config",
    "split_validation",
]
