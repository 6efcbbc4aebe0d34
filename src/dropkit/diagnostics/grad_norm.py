"""Gradient norm ‖g‖₂ of the whole model, read from ``.grad`` after backward (no extra pass).

Finding tested (early-dropout paper, §3): the gradient norm is smaller with dropout.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

__all__ = ["gradient_norm"]


def gradient_norm(model: nn.Module | Iterable[Tensor]) -> float:
    """‖g‖₂ over every parameter's ``.grad`` (accumulated in float64).

    Call it after ``loss.backward()`` and before ``optimizer.zero_grad()``; with a
    ``GradScaler``, after ``scaler.unscale_(optimizer)``. Parameters without a gradient are
    skipped; if none has one, a ``ValueError`` says so.
    """
    params = model.parameters() if isinstance(model, nn.Module) else model
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        raise ValueError(
            "no parameter has a .grad: call gradient_norm after loss.backward() and before "
            "optimizer.zero_grad()"
        )
    norms = torch.stack(
        [torch.linalg.vector_norm(g.detach(), dtype=torch.float64).cpu() for g in grads]
    )
    return float(torch.linalg.vector_norm(norms))
