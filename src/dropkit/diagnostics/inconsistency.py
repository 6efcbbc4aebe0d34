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
    """What [`train_test_inconsistency`][dropkit.diagnostics.train_test_inconsistency] measured.

    With no active dropout in the model the KL is 0 up to rounding (~1e-17), the disagreement
    and the accuracy gap 0.

    Attributes:
        kl: KL(P̄_mc ‖ P_det) in nats, the mean over rows of the divergence of the deterministic
            prediction from the Monte-Carlo average (float64, at least 0).
        disagreement: The fraction of rows, in [0, 1], whose argmax class differs between the
            deterministic prediction and the Monte-Carlo average.
        accuracy_gap: ``deterministic_accuracy - mc_accuracy``; None without targets.
        deterministic_accuracy: Accuracy of the deterministic (dropout-off) prediction, in
            [0, 1]; None without targets.
        mc_accuracy: Accuracy of the argmax of the averaged Monte-Carlo probabilities, in
            [0, 1]; None without targets.
    """

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

    R-Drop's train/test inconsistency on one batch: the prediction with dropout off (as at test
    time) against the mean of the softmax probabilities of ``passes`` forward passes with
    dropout as in training. Runs under ``torch.no_grad()``; every non-dropout module keeps its
    current mode. Training state (buffers, modes, rates, RNG) is untouched.

    Args:
        model: The model, in the mode it trains in (dropout active).
        inputs: One batch of inputs, in whatever form ``forward`` takes.
        targets: Class indices, one per row of logits (any shape with that many elements);
            ``None`` (default) skips the accuracies.
        passes: Monte-Carlo dropout passes averaged (at least 1; default 8).
        forward: ``forward(model, inputs) -> logits`` of shape ``(..., classes)``; default
            ``model(inputs)``. Pass e.g. ``lambda m, x: m(x).logits`` for a model that returns
            an object.
        ignore_index: Rows whose target equals it are left out of every number (default -100,
            as in ``torch.nn.functional.cross_entropy``).
        seed: Seeds the masks of the Monte-Carlo passes (``None``, the default: derived from the
            global RNG state without advancing it).

    Returns:
        The KL divergence, the disagreement and, with targets, the accuracies.

    Raises:
        TypeError: If ``passes`` is not an int.
        ValueError: If ``passes < 1``, the forward does not return logits with a class
            dimension, ``targets`` does not give one entry per row, or every target equals
            ``ignore_index``.

    Examples:
        ```python
        from dropkit import diagnostics as dd

        result = dd.train_test_inconsistency(model, x_val, y_val, passes=16, seed=0)
        result.kl, result.disagreement, result.accuracy_gap
        ```
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
