"""Gradient direction variance (GDV) and gradient direction error (GDE), streamed.

For a set G of mini-batch gradients (early-dropout paper, §3):

    GDV = 2 / (|G| (|G| - 1)) · Σ_{i<j} ½ (1 - cos(g_i, g_j))    how much mini-batch directions
                                                                   disagree with each other
    GDE = 1 / |G| · Σ_g ½ (1 - cos(g, ĝ))                          how far they point from the
                                                                   full-data gradient ĝ

Both are in [0, 1]: 0 for perfect agreement, ½ for orthogonal directions, 1 for opposite ones.
Neither needs the gradients stored: with unit vectors u_i = g_i / ‖g_i‖ and S = Σ u_i,
Σ_{i<j} cos(g_i, g_j) = (‖S‖² - |G|) / 2 and Σ_i cos(g_i, ĝ) = ⟨S, ĝ⟩ / ‖ĝ‖, so one running sum
in float64 gives both in O(|θ|) memory.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = ["DirectionAccumulator", "gradient_direction_error", "gradient_direction_variance"]


def checked_norm(grad: Tensor, what: str = "gradient") -> float:
    """‖grad‖₂ accumulated in float64; raises if ``grad`` is not 1-D or has no direction."""
    if not isinstance(grad, Tensor) or grad.ndim != 1:
        shape = tuple(grad.shape) if isinstance(grad, Tensor) else type(grad).__name__
        raise ValueError(
            f"{what} must be a 1-D tensor (a flattened gradient), got {shape}; flatten with "
            "torch.cat([g.reshape(-1) for g in grads])"
        )
    norm = float(torch.linalg.vector_norm(grad.detach(), dtype=torch.float64))
    if not norm > 0.0 or norm == float("inf"):
        raise ValueError(
            f"{what} has norm {norm}: its direction is undefined. A zero gradient means the loss "
            "does not depend on the parameters for that batch; a non-finite one means the loss "
            "diverged"
        )
    return norm


def unit_vector(grad: Tensor, what: str = "gradient") -> Tensor:
    """``grad / ‖grad‖`` in float64; raises if the direction is undefined."""
    return grad.detach().to(torch.float64) / checked_norm(grad, what)


def add_unit(total: Tensor | None, grad: Tensor, norm: float, what: str) -> Tensor:
    """``total + grad / norm`` in place, in float64, without a float64 copy of ``grad``."""
    if total is None:
        return grad.detach().to(torch.float64) / norm
    if grad.shape != total.shape:
        raise ValueError(
            f"{what} has {grad.numel()} entries, the earlier ones {total.numel()}: all gradients "
            "must flatten the same parameters"
        )
    return total.add_(grad.detach().to(total.device), alpha=1.0 / norm)


class DirectionAccumulator:
    """Running sum of unit gradients: feed gradients one at a time, read GDV and GDE.

    The streaming form of
    [`gradient_direction_variance`][dropkit.diagnostics.gradient_direction_variance] and
    [`gradient_direction_error`][dropkit.diagnostics.gradient_direction_error]: one float64
    vector of |θ| entries, whatever the number of gradients. Both may be read at any time.

    Attributes:
        count: How many gradients have been added.

    Examples:
        ```python
        from dropkit import diagnostics as dd

        acc = dd.DirectionAccumulator()
        for grad in dd.mini_batch_gradients(model, batches):
            acc.update(grad)
        gdv, gde = acc.variance(), acc.error(dd.full_gradient(model, train_batches))
        ```
    """

    def __init__(self) -> None:
        self.count = 0
        self._unit_sum: Tensor | None = None

    def update(self, grad: Tensor) -> None:
        """Add one flattened mini-batch gradient.

        Args:
            grad: A 1-D gradient with as many entries as the earlier ones.

        Raises:
            ValueError: If ``grad`` is not a 1-D tensor, has a zero or non-finite norm (its
                direction is undefined), or differs in length from the earlier gradients.
        """
        what = f"gradient #{self.count}"
        self._unit_sum = add_unit(self._unit_sum, grad, checked_norm(grad, what), what)
        self.count += 1

    def variance(self) -> float:
        """GDV of the gradients added so far (needs at least two).

        Returns:
            The mean of ½ (1 - cos) over all pairs of gradients, in [0, 1].

        Raises:
            ValueError: If fewer than 2 gradients were added.
        """
        n = self.count
        if n < 2 or self._unit_sum is None:
            raise ValueError(f"GDV needs at least 2 gradients, got {n}")
        sum_of_cosines = (float(self._unit_sum.square().sum()) - n) / 2.0
        gdv = 0.5 - sum_of_cosines / (n * (n - 1))
        return min(max(gdv, 0.0), 1.0)  # rounding can step outside [0, 1] by ~1e-16

    def error(self, full_grad: Tensor) -> float:
        """GDE of the gradients added so far against the full-data gradient ``full_grad``.

        Args:
            full_grad: ĝ, the 1-D full-data gradient of the same parameters.

        Returns:
            The mean of ½ (1 - cos(g, ĝ)) over the gradients, in [0, 1].

        Raises:
            ValueError: If no gradient was added, or ``full_grad`` is not 1-D, has a zero or
                non-finite norm, or differs in length from the gradients.
        """
        if self.count < 1 or self._unit_sum is None:
            raise ValueError("GDE needs at least 1 gradient, got 0")
        full_unit = unit_vector(full_grad, "full_grad").to(self._unit_sum.device)
        if full_unit.shape != self._unit_sum.shape:
            raise ValueError(
                f"full_grad has {full_unit.numel()} entries but the gradients have "
                f"{self._unit_sum.numel()}: both must flatten the same parameters"
            )
        mean_cosine = float(self._unit_sum @ full_unit) / self.count
        return min(max(0.5 * (1.0 - mean_cosine), 0.0), 1.0)


def gradient_direction_variance(grads: Iterable[Tensor]) -> float:
    """The paper's GDV over flattened gradients, in [0, 1]; streams (O(|θ|) memory).

    Gradient direction variance: the mean over pairs of ½ (1 - cos(g_i, g_j)). 0 when all
    mini-batch gradients point the same way, ½ for orthogonal ones. Lower means mini-batch
    gradients agree more in direction. Finding tested (early-dropout paper, §3): lower with
    dropout early in training; the order flips later.

    Args:
        grads: The set G: 1-D mini-batch gradients of equal length (at least two), e.g. the
            generator [`mini_batch_gradients`][dropkit.diagnostics.mini_batch_gradients]
            returns.

    Returns:
        GDV, in [0, 1].

    Raises:
        ValueError: If ``grads`` holds fewer than 2 gradients, or a gradient is not 1-D, has
            a zero or non-finite norm, or differs in length from the others.

    Examples:
        ```python
        from dropkit import diagnostics as dd

        batches = dd.sample_batches(x, y, n_batches=32, batch_size=128, seed=0)
        gdv = dd.gradient_direction_variance(dd.mini_batch_gradients(model, batches))
        ```
    """
    accumulator = DirectionAccumulator()
    for grad in grads:
        accumulator.update(grad)
    return accumulator.variance()


def gradient_direction_error(grads: Iterable[Tensor], full_grad: Tensor) -> float:
    """The paper's GDE of flattened gradients against ĝ, in [0, 1]; streams (O(|θ|) memory).

    Gradient direction error: the mean over G of ½ (1 - cos(g, ĝ)). Lower means mini-batch
    gradients point closer to the full-data gradient. Finding tested (early-dropout paper, §3):
    lower with dropout early in training.

    Args:
        grads: The set G: 1-D mini-batch gradients of equal length (at least one).
        full_grad: ĝ, the 1-D full-data gradient of the same parameters, as
            [`full_gradient`][dropkit.diagnostics.full_gradient] returns.

    Returns:
        GDE, in [0, 1].

    Raises:
        ValueError: If ``grads`` is empty, a gradient or ``full_grad`` is not 1-D or has a zero
            or non-finite norm, or the lengths differ.

    Examples:
        ```python
        from dropkit import diagnostics as dd

        grads = dd.mini_batch_gradients(model, dd.sample_batches(x, y, 32, 128, seed=0))
        full = dd.full_gradient(model, dd.whole_data_batches(x, y))
        gde = dd.gradient_direction_error(grads, full)
        ```
    """
    accumulator = DirectionAccumulator()
    for grad in grads:
        accumulator.update(grad)
    return accumulator.error(full_grad)
