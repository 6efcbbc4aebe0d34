import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch

from dropkit import sites

# Tiny models on a small shared CPU (pytest -n 2 on 2 cores): one intra-op thread per worker, or
# the workers' thread pools fight and small steps stall.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolate() -> None:
    """Each test starts with a fixed seed and no user site registrations."""
    torch.manual_seed(0)
    saved = list(sites._user_rules)
    yield
    sites._user_rules[:] = saved
