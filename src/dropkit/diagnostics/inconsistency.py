"""Train/test inconsistency of dropout (R-Drop's motivation), measured on a held-out batch.

At test time the network runs with dropout off (the *deterministic* prediction); in training it
is a random sub-network. R-Drop argues the two disagree and that making sub-networks agree
shrinks the gap. On one batch we compare the deterministic prediction with the average of
``passes`` Monte-Carlo dropout passes (the sub-network ensemble it stands in for):

- ``kl``: KL(P̄_mc ‖ P_det), mean over rows of Σ_c p̄ (log p̄ - log p_det), in float64;
- ``disagreement``: fraction of rows whose argmax differs between the two;
- ``accuracy_gap``: accuracy(deterministic) - accuracy(MC average), when targets are given.

Both predictions run with every non-dropout module in its current mode; only the dropout rates
differ (the deterministic one zeroes them through the sites, see ``dropout_off``), so the numbers
isolate dropout. All are 0 when the model has no active dropout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from dropkit._checks import check_int
from dropkit.diagnostics._state import DiagnosticRNG, dropout_off, kept_buffers_and_modes

__all__ = ["Inconsistency", "train_test_inconsistency"]


class Inconsistency(NamedTuple):
    """What :func:`train_test_inconsistency` measured; the accuracies are None without targets."""

    kl: float
    disagreement: float
    accuracy_gap: float | None
    deterministic_accuracy: float | None
    mc_accuracy: float | None


def _rows(logits: Tensor) -> Tensor:
    if not isinstance(logits, Tensor) or logits.ndim < 2:
        raise ValueError(
            "the forward must return logits of shape (..., classes); pass forward=lambda model, "
            "inputs: model(inputs).logits (or similar) for models that return something else"
        )
    return logits.detach().reshape(-1, logits.shape[-1]).to(torch.float64)


def train_test_inconsistency(
    model: nn.Module,
    inputs: Any,
    targets: Tensor | None = None,
    *,
    passes: int = 8,
    forward: Callable[[nn.Module, Any], Tensor] | None = None,
    ignore_index: int = -100,
    seed: int | None = None,
) -> Inconsistency:
    """KL, argmax disagreement and accuracy gap between the deterministic and MC predictions.

    ``forward(model, inputs)`` returns logits (default ``model(inputs)``). Rows whose target is
    ``ignore_index`` are left out. Training state (buffers, modes, rates, RNG) is untouched.
    """
    passes = check_int(passes, "passes", 1, " (Monte-Carlo passes)")
    run = forward or (lambda m, x: m(x))
    with torch.no_grad(), DiagnosticRNG(seed), kept_buffers_and_modes(model):
        probs = (_rows(run(model, inputs)).softmax(dim=-1) for _ in range(passes))
        mc_probs = sum(probs, torch.zeros(())) / passes  # a 0-d start: the sum is a Tensor
        with dropout_off(model):
            det_log_probs = _rows(run(model, inputs)).log_softmax(dim=-1)
    keep = torch.ones(mc_probs.shape[0], dtype=torch.bool, device=mc_probs.device)
    flat_targets = None
    if targets is not None:
        flat_targets = targets.reshape(-1).to(mc_probs.device)
        if flat_targets.numel() != mc_probs.shape[0]:
            raise ValueError(
                f"targets has {flat_targets.numel()} entries for {mc_probs.shape[0]} rows of "
                "logits: pass one class index per row"
            )
        keep = flat_targets != ignore_index
    if not bool(keep.any()):
        raise ValueError("every target equals ignore_index: no row to measure")
    mc_probs, det_log_probs = mc_probs[keep], det_log_probs[keep]
    # KL >= 0; identical distributions give rounding noise of either sign (~1e-18), clamped
    kl_rows = torch.xlogy(mc_probs, mc_probs).sum(-1) - (mc_probs * det_log_probs).sum(-1)
    kl_rows = kl_rows.clamp(min=0.0)
    det_class, mc_class = det_log_probs.argmax(-1), mc_probs.argmax(-1)
    disagreement = float((det_class != mc_class).to(torch.float64).mean())
    if flat_targets is None:
        return Inconsistency(float(kl_rows.mean()), disagreement, None, None, None)
    kept_targets = flat_targets[keep]
    det_acc = float((det_class == kept_targets).to(torch.float64).mean())
    mc_acc = float((mc_class == kept_targets).to(torch.float64).mean())
    return Inconsistency(float(kl_rows.mean()), disagreement, det_acc - mc_acc, det_acc, mc_acc)
