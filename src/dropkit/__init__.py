"""dropkit: dropout that does more than fight overfitting.

Early / late dropout schedules ("Dropout Reduces Underfitting", Liu et al., ICML 2023) on any
PyTorch model, through the sites where dropout and stochastic depth happen.
"""

from dropkit import schedules
from dropkit.layers import Dropout, DropPath, drop_path, dropout
from dropkit.scheduler import DropoutScheduler
from dropkit.schedules import drop_schedule
from dropkit.sites import (
    Site,
    describe,
    find_sites,
    register_site,
    replace_placeholders,
    unregister_site,
)

__version__ = "0.1.0"

__all__ = [
    "DropPath",
    "Dropout",
    "DropoutScheduler",
    "Site",
    "__version__",
    "describe",
    "drop_path",
    "drop_schedule",
    "dropout",
    "find_sites",
    "register_site",
    "replace_placeholders",
    "schedules",
    "unregister_site",
]
