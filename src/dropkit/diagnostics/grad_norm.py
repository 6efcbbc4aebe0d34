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

    The norm of the gradient the optimizer is about to use, read from ``.grad``: no extra
    forward or backward pass. Call it after ``loss.backward()`` and before
    ``optimizer.zero_grad()``; with a ``GradScaler``, after ``scaler.unscale_(optimizer)``
    (otherwise the norm is multiplied by the loss scale). Parameters without a gradient are
    skipped.

    Args:
        model: The model (all its parameters are read) or an iterable of parameters, e.g. one
            parameter group's ``params``.

    Returns:
        The Euclidean norm of all the gradients taken together, as a Python float.

    Raises:
        ValueError: If no parameter has a ``.grad`` (called before ``backward()`` or after
            ``zero_grad()``).

    Examples:
        ```python
        from dropkit import diagnostics as dd

        loss.backward()
        norm = dd.gradient_norm(model)
        optimizer.step()
        optimizer.zero_grad()
        ```
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
