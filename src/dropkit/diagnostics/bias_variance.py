"""Bias and variance of the mini-batch gradient as an estimator of the full-data gradient ĝ.

The early-dropout paper argues that dropout makes mini-batch gradients *biased* estimates of ĝ
but removes more *variance* than the bias it adds, so their total error falls early in training.
Over a set G of mini-batch gradients with mean ḡ:

    bias²    = ‖ḡ - ĝ‖²
    variance = 1/|G| Σ_g ‖g - ḡ‖²          (population variance, divided by |G|)
    error    = 1/|G| Σ_g ‖g - ĝ‖²  =  bias² + variance

on raw gradients and on unit-normalised ones (g/‖g‖ against ĝ/‖ĝ‖, the directions GDV and GDE
look at). Streamed in O(|θ|) float64 memory: a Welford running mean for the raw gradients, a
running sum of unit vectors for the normalised ones (whose variance is 1 - ‖mean unit‖²).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import Tensor

from dropkit.diagnostics.direction import add_unit, checked_norm, unit_vector

__all__ = ["BiasVariance", "BiasVarianceAccumulator", "gradient_bias_variance"]


class BiasVariance(NamedTuple):
    """Squared bias, variance and their sum (mean squared error against ĝ).

    What [`gradient_bias_variance`][dropkit.diagnostics.gradient_bias_variance] and
    [`BiasVarianceAccumulator.result`][dropkit.diagnostics.BiasVarianceAccumulator.result]
    return. On raw gradients the terms are in squared gradient units; with ``normalize=True``
    they are on unit vectors, so each lies in [0, 4] and the variance in [0, 1].

    Attributes:
        bias_sq: ‖ḡ - ĝ‖², the squared distance of the mean mini-batch gradient from ĝ.
        variance: 1/|G| Σ_g ‖g - ḡ‖², the spread of the mini-batch gradients around their mean
            (divided by |G|, not |G| - 1).
        error: ``bias_sq + variance``, the mean of ‖g - ĝ‖² over G.
    """

    bias_sq: float
    variance: float
    error: float


class BiasVarianceAccumulator:
    """Feed mini-batch gradients one at a time; read bias² and variance against any ĝ.

    The streaming form of [`gradient_bias_variance`][dropkit.diagnostics.gradient_bias_variance]:
    it holds a float64 running mean of the raw gradients and a running sum of their unit
    vectors (two vectors of |θ| entries), never the gradients themselves, so G may be as large
    as you like. ``result`` may be read at any time, against several ĝ.

    Attributes:
        count: How many gradients have been added.

    Examples:
        ```python
        from dropkit import diagnostics as dd

        acc = dd.BiasVarianceAccumulator()
        for grad in dd.mini_batch_gradients(model, batches):
            acc.update(grad)
        full = dd.full_gradient(model, train_batches)
        acc.result(full), acc.result(full, normalize=True)
        ```
    """

    def __init__(self) -> None:
        self.count = 0
        self._mean: Tensor | None = None  # Welford running mean of the raw gradients
        self._spread = 0.0  # Welford running Σ ‖g - mean‖²
        self._unit_sum: Tensor | None = None

    def update(self, grad: Tensor) -> None:
        """Add one flattened mini-batch gradient.

        Args:
            grad: A 1-D gradient, as
                [`mini_batch_gradients`][dropkit.diagnostics.mini_batch_gradients] yields, with
                as many entries as the earlier ones.

        Raises:
            ValueError: If ``grad`` is not a 1-D tensor, has a zero or non-finite norm (its
                direction is undefined), or differs in length from the earlier gradients.
        """
        what = f"gradient #{self.count}"
        self._unit_sum = add_unit(self._unit_sum, grad, checked_norm(grad, what), what)
        self.count += 1
        if self._mean is None:
            self._mean = grad.detach().to(torch.float64, copy=True)
            return
        # Welford: with delta = g - mean_old, mean_new = mean_old + delta / n and
        # g - mean_new = delta (1 - 1/n), so the spread grows by (1 - 1/n) ‖delta‖².
        delta = grad.detach().to(self._mean.device) - self._mean  # float64 by promotion
        self._mean.add_(delta, alpha=1.0 / self.count)
        self._spread += (1.0 - 1.0 / self.count) * float(torch.dot(delta, delta))

    def result(self, full_grad: Tensor, normalize: bool = False) -> BiasVariance:
        """Bias², variance and error against ``full_grad``; on unit vectors if ``normalize``.

        Args:
            full_grad: ĝ, the 1-D full-data gradient (as
                [`full_gradient`][dropkit.diagnostics.full_gradient] returns), flattening the
                same parameters as the added gradients.
            normalize: Compare directions only: each gradient and ĝ are divided by their norms
                first (default False: raw gradients).

        Returns:
            The squared bias, the variance and their sum.

        Raises:
            ValueError: If no gradient was added, ``full_grad`` is not a 1-D tensor, its length
                differs from the gradients', or (with ``normalize``) it has a zero or non-finite
                norm.
        """
        if self._mean is None or self._unit_sum is None:
            raise ValueError("bias-variance needs at least 1 gradient, got 0")
        if normalize:
            target = unit_vector(full_grad, "full_grad")
            mean = self._unit_sum / self.count
            variance = max(1.0 - float(mean.square().sum()), 0.0)
        else:
            if not isinstance(full_grad, Tensor) or full_grad.ndim != 1:
                raise ValueError("full_grad must be a 1-D tensor (a flattened gradient)")
            target = full_grad.detach().to(torch.float64)
            mean = self._mean
            variance = max(self._spread / self.count, 0.0)
        if target.shape != mean.shape:
            raise ValueError(
                f"full_grad has {target.numel()} entries but the gradients have "
                f"{mean.numel()}: both must flatten the same parameters"
            )
        bias_sq = float((mean - target.to(mean.device)).square().sum())
        return BiasVariance(bias_sq, variance, bias_sq + variance)


def gradient_bias_variance(
    grads: Iterable[Tensor], full_grad: Tensor, normalize: bool = False
) -> BiasVariance:
    """Bias² and variance of mini-batch gradients as estimates of ``full_grad``; streams.

    Finding tested (early-dropout paper, §3): with dropout the bias is larger but the variance
    smaller, and their sum (the error) smaller, early in training. The gradients are consumed
    one at a time (O(|θ|) float64 memory), so ``grads`` may be a generator such as
    [`mini_batch_gradients`][dropkit.diagnostics.mini_batch_gradients].

    Args:
        grads: The set G: 1-D mini-batch gradients of equal length (at least one).
        full_grad: ĝ, the 1-D full-data gradient of the same parameters.
        normalize: Compare directions only, on unit vectors (default False: raw gradients).

    Returns:
        The squared bias, the variance and their sum.

    Raises:
        ValueError: If ``grads`` is empty, a gradient or ``full_grad`` is not 1-D or has a zero
            or non-finite norm, or the lengths differ.

    Examples:
        ```python
        from dropkit import diagnostics as dd

        grads = dd.mini_batch_gradients(model, dd.sample_batches(x, y, 32, 128, seed=0))
        full = dd.full_gradient(model, dd.whole_data_batches(x, y))
        bias_sq, variance, error = dd.gradient_bias_variance(grads, full)
        ```
    """
    accumulator = BiasVarianceAccumulator()
    for grad in grads:
        accumulator.update(grad)
    return accumulator.result(full_grad, normalize)
