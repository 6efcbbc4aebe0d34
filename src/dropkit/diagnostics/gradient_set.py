"""The one measurement path for a set G of mini-batch gradients (GDV, GDE, bias², variance).

Every caller that measures G (the :class:`~dropkit.diagnostics.DynamicsRecorder`, the demo's
dynamics probe, the advisor) goes through here, so they draw G, take ĝ and seed the dropout
masks the same way:

- :func:`step_seed` is the seeding rule: a measurement of run seed ``s`` at step ``t`` uses the
  seed ``step_seed(s, t)`` for both G's draw and the dropout masks;
- :func:`sample_batches` is the rule for drawing G: mini-batches of indices drawn uniformly
  with replacement from a private generator seeded by ``seed``;
- :func:`whole_data_batches` is the rule for ĝ: the whole given training set, in chunks;
- :func:`measure_gradient_set` streams G once (O(|θ|) memory) and returns
  :class:`GradientSetStats`; the one ``seed`` it gets seeds the masks of both passes.
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
    no two pairs collide the way ``a * seed + step`` would.
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

    Indices are drawn uniformly with replacement, batch after batch, from a private
    ``torch.Generator`` seeded with ``seed``: the same seed gives the same G, and the global
    RNG (what training draws next) is not touched.
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

    Every sample appears exactly once; ``full_gradient`` weights each chunk by its size, so the
    last, shorter chunk still gives the exact whole-data mean gradient.
    """
    _check_pair(x, y)
    check_int(chunk, "chunk", 1)
    return list(zip(x.split(chunk), y.split(chunk), strict=True))


class GradientSetStats(NamedTuple):
    """What one measurement of G gives.

    ``gdv`` is None with fewer than 2 gradients; ``gde`` and the bias / variance terms are None
    when no full batches were given (they compare G with ĝ). ``bias_sq`` / ``variance`` are on
    raw gradients, ``unit_*`` on unit-normalised ones; ``mean_batch_grad_norm`` is the mean of
    ‖g_i‖₂ over G (float64), not the norm of the training step's ``.grad``.
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
        """The statistics as a plain dict (for JSON records)."""
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

    One streamed pass of :func:`mini_batch_gradients` (dropout as in training) feeds all the
    statistics, and ĝ is :func:`full_gradient` over ``full_batches`` (dropout off) when given.
    ``seed`` seeds the masks of both calls (``None``: derived from the global RNG state, which
    is never advanced), so one seed fixes the whole measurement. Training state is left as is.
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
