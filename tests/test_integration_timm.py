"""timm and torchvision models, untouched: sites found, drop-path profile follows model depth.

Look-alikes (tests/lookalikes.py) stand in where the libraries cannot install; the real-library
tests run where they import (e.g. a GPU machine with timm and torchvision).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dropkit
from dropkit import DropoutScheduler, find_sites, schedules
from tests import lookalikes


def drop_path_rates(model: nn.Module) -> list[float]:
    return [s.p for s in find_sites(model) if s.kind == "drop_path" and s.controllable]


@pytest.mark.parametrize(
    "build",
    [
        lambda: lookalikes.TimmConvNeXt(depths=(2, 2, 4), rate=0.2),
        lambda: lookalikes.TorchvisionSwin(depths=(2, 2, 2), p=0.2),
    ],
    ids=["timm-convnext", "torchvision-swin"],
)
def test_scheduled_profile_matches_how_the_library_builds_depth(build) -> None:
    model = build()
    built = drop_path_rates(model)  # the library's own linear profile at its built rate 0.2
    sched = DropoutScheduler(model, total_steps=10, drop_path=schedules.late(0.4, cutoff=5))
    assert drop_path_rates(model) == [0.0] * len(built)
    for _ in range(5):
        sched.step()
    assert drop_path_rates(model) == pytest.approx([2 * r for r in built], abs=1e-7)
    model.train()
    assert model(torch.randn(4, 5, 8)).shape == (4, 3)
    sched.remove()
    assert drop_path_rates(model) == pytest.approx(built, abs=1e-12)


def test_convnext_placeholder_block_keeps_its_depth_slot() -> None:
    model = lookalikes.TimmConvNeXt(depths=(1, 3), rate=0.3)  # block 0 is an Identity
    dropkit.replace_placeholders(model)
    DropoutScheduler(model, total_steps=4, drop_path=0.3)
    assert drop_path_rates(model) == pytest.approx([0.0, 0.1, 0.2, 0.3])


@pytest.mark.parametrize(
    "name", ["vit_tiny_patch16_224", "convnext_atto", "swin_tiny_patch4_window7_224"]
)
def test_real_timm_models_follow_the_schedule(name: str) -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model(name, pretrained=False, drop_path_rate=0.1, num_classes=3)
    dropkit.replace_placeholders(model)  # block 0 was built as nn.Identity
    sched = DropoutScheduler(model, 4, drop_path=schedules.early(0.2, cutoff=2, shape="constant"))
    rates = drop_path_rates(model)
    assert rates[0] == 0.0 and max(rates) == pytest.approx(0.2)
    assert rates == sorted(rates)  # deeper blocks drop more
    model.train()
    assert model(torch.randn(2, 3, 224, 224)).shape == (2, 3)
    sched.step()
    sched.step()
    assert set(drop_path_rates(model)) == {0.0}


@pytest.mark.parametrize("name", ["swin_t", "convnext_tiny", "efficientnet_b0"])
def test_real_torchvision_models_follow_the_schedule(name: str) -> None:
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.get_model(name, weights=None, num_classes=3)
    DropoutScheduler(model, 4, drop_path=0.3)
    rates = drop_path_rates(model)
    assert rates[0] == 0.0 and max(rates) == pytest.approx(0.3)
    assert rates == sorted(rates)
    model.train()
    assert model(torch.randn(2, 3, 224, 224)).shape == (2, 3)
