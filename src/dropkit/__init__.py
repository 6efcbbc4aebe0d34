"""dropkit: dropout that does more than fight overfitting.

Early / late dropout schedules ("Dropout Reduces Underfitting", Liu et al., ICML 2023) on any
PyTorch model, through the sites where dropout and stochastic depth happen, and R-Drop
consistency regularization (Liang et al., NeurIPS 2021).

Start with [`describe`][dropkit.describe], which lists the dropout sites of a model; schedule
them with [`DropoutScheduler`][dropkit.DropoutScheduler] and the [`schedules`][dropkit.schedules];
train with R-Drop through [`rdrop_forward`][dropkit.rdrop_forward] and
[`rdrop_loss`][dropkit.rdrop_loss] (or [`rdrop_linear_loss`][dropkit.rdrop_linear_loss] for large
vocabularies).
"""

import importlib

from dropkit import schedules
from dropkit._deprecation import renamed_attribute
from dropkit.dropout_scheduler import DropoutScheduler
from dropkit.layers import Dropout, DropPath, drop_path, dropout
from dropkit.rdrop import (
    RDropTerms,
    consistency_mse,
    mean_pairwise_kl,
    rdrop_forward,
    rdrop_loss,
    rdrop_regression_loss,
    rdrop_terms,
    symmetric_kl,
)
from dropkit.rdrop_linear import rdrop_linear_loss, rdrop_linear_terms
from dropkit.schedules import drop_schedule
from dropkit.sites import (
    Site,
    add_dropout_sites,
    describe,
    find_sites,
    register_site,
    replace_placeholders,
    unregister_site,
)

__version__ = "0.2.0.dev0"
"""The version of dropkit."""


_SUBPACKAGES = frozenset({"diagnostics", "experiments", "integrations"})


def __getattr__(name: str) -> object:
    # The subpackages and ``dropkit.advise`` (experiments tier: it trains probes) load on first
    # use, as torch's do, so ``import dropkit`` stays light and the core never loads the tiers
    # above it. ``advise`` is left out of ``__all__`` so that ``from dropkit import *`` does not
    # load it either.
    if name in _SUBPACKAGES:
        return importlib.import_module(f"dropkit.{name}")
    if name == "advise":
        from dropkit.experiments.advise import advise

        return advise
    return renamed_attribute(__name__, name, {"RDropLoss": ("RDropTerms", lambda: RDropTerms)})


__all__ = [
    "DropPath",
    "Dropout",
    "DropoutScheduler",
    "RDropTerms",
    "Site",
    "__version__",
    "add_dropout_sites",
    "consistency_mse",
    "describe",
    "drop_path",
    "drop_schedule",
    "dropout",
    "find_sites",
    "mean_pairwise_kl",
    "rdrop_forward",
    "rdrop_linear_loss",
    "rdrop_linear_terms",
    "rdrop_loss",
    "rdrop_regression_loss",
    "rdrop_terms",
    "register_site",
    "replace_placeholders",
    "schedules",
    "symmetric_kl",
    "unregister_site",
]
