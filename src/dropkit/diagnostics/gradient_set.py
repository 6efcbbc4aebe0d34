"""The one measurement path for a set G of mini-batch gradients (GDV, GDE, bias², variance).

Every caller that measures G (the [`DynamicsRecorder`][dropkit.diagnostics.DynamicsRecorder],
the demo's dynamics probe, the advisor) goes through here, so they draw G, take ĝ and seed the
dropout masks the same way:

- [`step_seed`][dropkit.diagnostics.step_seed] is the seeding rule: a measurement of run seed
  ``s`` at step ``t`` uses the seed ``step_seed(s, t)`` for both G's draw and the dropout masks;
- [`sample_batches`][dropkit.diagnostics.sample_batches] is the rule for drawing G: mini-batches
  of indices drawn uniformly with replacement from a private generator seeded by ``seed``;
- [`whole_data_batches`][dropkit.diagnostics.whole_data_batches] is the rule for ĝ: the whole
  given training set, in chunks;
- [`measure_gradient_set`][dropkit.diagnostics.measure_gradient_set] streams G once (O(|θ|)
  memory) and returns [`GradientSetStats`][dropkit.diagnostics.GradientSetStats]; the one
  ``seed`` it gets seeds the masks of both passes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from dropkit._checks import check_int
from dropkit.diagnostics.bias_variance import BiasVarianceAccumulator
from dropkit.diagnostics.direction import DirectionAccumulator, checked_norm
from dropkit.diagnostics.gradients import (
    LossFn,
    Method,
    cross_entropy_loss,
    full_gradient,
    mini_batch_gradients,
)

__all__ = [
    "GradientSetStats",
    "measure_gradient_set",
    "sample_batches",
    "step_seed",
    "whole_data_batches",
]


def step_seed(seed: int, step: int) -> int:
    """The seed of a measurement of run ``seed`` at optimizer ``step`` (a 63-bit int).

    Mixed by numpy's ``SeedSequence``, so nearby (seed, step) pairs give unrelated streams and
    no two pairs collide the way ``a * seed + step`` would. Pass the result as the ``seed`` of
    [`sample_batches`][dropkit.diagnostics.sample_batches] and of
    [`measure_gradient_set`][dropkit.diagnostics.measure_gradient_set] to measure as the
    recorder does.

    Args:
        seed: The run's seed (a non-negative int).
        step: The optimizer step measured at (a non-negative int).

    Returns:
        A seed in ``[0, 2**63)``, the same for the same pair on every platform.

    Raises:
        TypeError: If ``seed`` or ``step`` is not an int.
        ValueError: If either is negative.
    """
    seed, step = check_int(seed, "seed", 0), check_int(step, "step", 0)
    return int(np.random.SeedSequence([seed, step]).generate_state(1, np.uint64)[0] >> 1)


def _check_pair(x: object, y: object) -> int:
    """Number of samples in ``(x, y)``; raises unless both are tensors of one non-zero length."""
    if not isinstance(x, Tensor) or not isinstance(y, Tensor) or x.ndim == 0 or y.ndim == 0:
        raise ValueError(
            "x and y must be tensors with a leading sample dim, got "
            f"{type(x).__name__} and {type(y).__name__}"
        )
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}: they must pair up")
    if len(x) == 0:
        raise ValueError("x and y hold no samples: there is nothing to draw batches from")
    return len(x)


def sample_batches(
    x: Tensor, y: Tensor, n_batches: int, batch_size: int, seed: int
) -> list[tuple[Tensor, Tensor]]:
    """G's mini-batches: ``n_batches`` batches of ``batch_size`` samples of ``(x, y)``.

    Indices are drawn uniformly with replacement, batch after batch, from a private CPU
    ``torch.Generator`` seeded with ``seed``: the same seed gives the same G, and the global
    RNG (what training draws next) is not touched.

    Args:
        x: Inputs with a leading sample dimension.
        y: Targets, one per sample of ``x``.
        n_batches: |G|, how many mini-batches to draw (at least 1).
        batch_size: Samples per mini-batch (at least 1; may exceed ``len(x)``, since samples are
            drawn with replacement).
        seed: Seeds the draw (an int; e.g. ``step_seed(run_seed, step)``).

    Returns:
        ``n_batches`` pairs ``(x[index], y[index])``, on the devices of ``x`` and ``y``.

    Raises:
        TypeError: If ``n_batches``, ``batch_size`` or ``seed`` is not an int.
        ValueError: If ``x`` or ``y`` is not a tensor with a leading dimension, their lengths
            differ or are 0, or ``n_batches`` or ``batch_size`` is below 1.

    Examples:
        ```python
        from dropkit import diagnostics as dd

        batches = dd.sample_batches(x_train, y_train, n_batches=32, batch_size=128, seed=0)
        ```
    """
    n = _check_pair(x, y)
    n_batches = check_int(n_batches, "n_batches", 1)
    batch_size = check_int(batch_size, "batch_size", 1)
    seed = check_int(seed, "seed", what=": it is what makes G reproducible")
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        index = torch.randint(0, n, (batch_size,), generator=generator).to(x.device)
        batches.append((x[index], y[index.to(y.device)]))
    return batches


def whole_data_batches(x: Tensor, y: Tensor, chunk: int = 8192) -> list[tuple[Tensor, Tensor]]:
    """ĝ's batches: the whole of ``(x, y)`` in consecutive chunks of at most ``chunk`` samples.

    Every sample appears exactly once;
    [`full_gradient`][dropkit.diagnostics.full_gradient] weights each chunk by its size, so the
    last, shorter chunk still gives the exact whole-data mean gradient.

    Args:
        x: Inputs with a leading sample dimension.
        y: Targets, one per sample of ``x``.
        chunk: The most samples per batch (at least 1; default 8192). Memory, not the result,
            depends on it.

    Returns:
        The pairs ``(x_chunk, y_chunk)`` in order (views of ``x`` and ``y``, no copy).

    Raises:
        TypeError: If ``chunk`` is not an int.
        ValueError: If ``x`` or ``y`` is not a tensor with a leading dimension, their lengths
            differ or are 0, or ``chunk < 1``.
    """
    _check_pair(x, y)
    check_int(chunk, "chunk", 1)
    return list(zip(x.split(chunk), y.split(chunk), strict=True))


class GradientSetStats(NamedTuple):
    """What one measurement of G gives.

    What [`measure_gradient_set`][dropkit.diagnostics.measure_gradient_set] returns. The
    terms that compare G with ĝ are None when no full batches were given.

    Attributes:
        gdv: Gradient direction variance of G, in [0, 1]; None with fewer than 2 gradients.
        gde: Gradient direction error of G against ĝ, in [0, 1]; None without full batches.
        bias_sq: ‖ḡ - ĝ‖² on raw gradients; None without full batches.
        variance: 1/|G| Σ ‖g - ḡ‖² on raw gradients; None without full batches.
        unit_bias_sq: The squared bias on unit-normalised gradients (g/‖g‖ against ĝ/‖ĝ‖);
            None without full batches.
        unit_variance: The variance on unit-normalised gradients, in [0, 1]; None without full
            batches.
        mean_batch_grad_norm: The mean of ‖g_i‖₂ over G (float64), not the norm of the
            training step's ``.grad``.
        num_grads: |G|, how many mini-batch gradients were measured.
    """

    gdv: float | None
    gde: float | None
    bias_sq: float | None
    variance: float | None
    unit_bias_sq: float | None
    unit_variance: float | None
    mean_batch_grad_norm: float
    num_grads: int

    @property
    def error(self) -> float | None:
        """Mean squared error of the raw gradients against ĝ (``bias_sq + variance``)."""
        if self.bias_sq is None or self.variance is None:
            return None
        return self.bias_sq + self.variance

    @property
    def unit_error(self) -> float | None:
        """The same on unit-normalised gradients (``unit_bias_sq + unit_variance``)."""
        if self.unit_bias_sq is None or self.unit_variance is None:
            return None
        return self.unit_bias_sq + self.unit_variance

    def to_dict(self) -> dict[str, Any]:
        """The statistics as a plain dict (for JSON records).

        Returns:
            ``{field: value}`` for the eight fields (not the ``error`` properties).
        """
        return self._asdict()


def measure_gradient_set(
    model: nn.Module,
    batches: Iterable[Any],
    full_batches: Iterable[Any] | None = None,
    loss_fn: LossFn = cross_entropy_loss,
    *,
    method: Method = "auto",
    chunk_size: int = 8,
    seed: int | None = None,
) -> GradientSetStats:
    """GDV, GDE, bias² / variance and the mean gradient norm of the set G that ``batches`` give.

    One streamed pass of
    [`mini_batch_gradients`][dropkit.diagnostics.mini_batch_gradients] (dropout as in
    training) feeds all the statistics, and ĝ is
    [`full_gradient`][dropkit.diagnostics.full_gradient] over ``full_batches`` (dropout off)
    when given. One seed fixes the whole measurement. Training state (parameters, ``.grad``,
    buffers, modes, dropout rates, the global RNG) is left as is.

    Args:
        model: The model, in the mode it trains in.
        batches: G's mini-batches, e.g. from
            [`sample_batches`][dropkit.diagnostics.sample_batches] (at least one).
        full_batches: The batches ĝ is taken over, e.g. from
            [`whole_data_batches`][dropkit.diagnostics.whole_data_batches]; ``None`` (default)
            skips ĝ and the statistics that need it.
        loss_fn: ``loss_fn(model, batch) -> mean loss`` (default
            [`cross_entropy_loss`][dropkit.diagnostics.cross_entropy_loss]).
        method: How the mini-batch gradients are taken: ``"auto"`` (default), ``"vmap"`` or
            ``"loop"``; see [`Method`][dropkit.diagnostics.Method].
        chunk_size: Mini-batches ``vmap`` differentiates at once (default 8).
        seed: Seeds the dropout masks of both passes (``None``, the default: derived from the
            global RNG state, which is never advanced).

    Returns:
        The statistics of G; GDV needs at least 2 mini-batches, and the terms against ĝ need
            ``full_batches``.

    Raises:
        ValueError: If ``batches`` is empty, a gradient has a zero or non-finite norm, or as
            [`mini_batch_gradients`][dropkit.diagnostics.mini_batch_gradients] and
            [`full_gradient`][dropkit.diagnostics.full_gradient] raise.

    Examples:
        ```python
        from dropkit import diagnostics as dd

        seed = dd.step_seed(run_seed, step)
        stats = dd.measure_gradient_set(
            model,
            dd.sample_batches(x_train, y_train, n_batches=32, batch_size=128, seed=seed),
            dd.whole_data_batches(x_train, y_train),
            seed=seed,
        )
        stats.gdv, stats.gde, stats.error
        ```
    """
    direction = DirectionAccumulator()
    spread = None if full_batches is None else BiasVarianceAccumulator()
    norm_sum = 0.0
    grads = mini_batch_gradients(
        model, batches, loss_fn, method=method, chunk_size=chunk_size, seed=seed
    )
    for grad in grads:
        norm_sum += checked_norm(grad, f"gradient #{direction.count}")
        direction.update(grad)
        if spread is not None:
            spread.update(grad)
    count = direction.count
    if count == 0:
        raise ValueError("measure_gradient_set got no batches: G needs at least one mini-batch")
    gdv = direction.variance() if count >= 2 else None
    gde = bias_sq = variance = unit_bias_sq = unit_variance = None
    if spread is not None and full_batches is not None:
        full = full_gradient(model, full_batches, loss_fn, seed=seed)
        gde = direction.error(full)
        bias_sq, variance, _ = spread.result(full)
        unit_bias_sq, unit_variance, _ = spread.result(full, normalize=True)
    return GradientSetStats(
        gdv, gde, bias_sq, variance, unit_bias_sq, unit_variance, norm_sum / count, count
    )
