"""Gradients for the diagnostics, taken without disturbing training.

- [`mini_batch_gradients`][dropkit.diagnostics.mini_batch_gradients] yields the flattened
  gradient of each mini-batch with dropout as in training (the set G of the early-dropout
  paper), either vectorised with ``torch.func`` (``vmap`` over chunks of mini-batches,
  ``randomness="different"`` so every mini-batch draws its own dropout masks) or in a plain loop;
  ``method="auto"`` tries ``vmap`` and falls back to the loop where ``vmap`` cannot run the model
  (BatchNorm in train mode writes its running statistics, which ``vmap`` refuses).
- [`full_gradient`][dropkit.diagnostics.full_gradient] is the paper's ĝ: the gradient of the
  mean loss over the batches you pass (the whole training set, or a fixed large subset) with
  dropout switched off through its sites and every other module left in its current (training)
  mode.

A loss function has the form ``loss_fn(model, batch) -> scalar tensor``; the default,
[`cross_entropy_loss`][dropkit.diagnostics.cross_entropy_loss], reads ``batch`` as
``(inputs, targets)``. Flattened gradients follow the order of ``model.named_parameters()``
restricted to parameters that require grad.

Parameters, ``.grad``, buffers (BatchNorm running statistics), every module's train/eval flag,
the dropout rates and the global RNG state are exactly as before after each call (and, for the
generator, between the gradients it yields).
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dropkit._checks import check_int
from dropkit.diagnostics._state import (
    DiagnosticRNG,
    dropout_off,
    kept_buffers_and_modes,
    trainable_parameters,
)

__all__ = [
    "LossFn",
    "Method",
    "VmapFallbackWarning",
    "cross_entropy_loss",
    "flatten_gradients",
    "full_gradient",
    "mini_batch_gradients",
]

LossFn = Callable[[nn.Module, Any], Tensor]
"""``loss_fn(model, batch) -> mean loss``: how the gradient helpers score a batch.

Called with the model and one batch exactly as the batch source gives it (a tuple, a dict, ...),
it returns the batch's *mean* loss as a scalar tensor (any tensor with one element). The default
everywhere is [`cross_entropy_loss`][dropkit.diagnostics.cross_entropy_loss], for batches
``(inputs, targets)``; for other layouts pass e.g.
``lambda model, batch: F.mse_loss(model(batch["x"]), batch["y"])``.
"""
Method = Literal["auto", "vmap", "loop"]
"""How mini-batch gradients are taken: ``"auto"``, ``"vmap"`` or ``"loop"``.

- ``"vmap"``: stack up to ``chunk_size`` consecutive mini-batches of equal shapes and
  differentiate them at once with ``torch.func.vmap`` (each draws its own dropout masks); fastest
  for small models, and an error when the model cannot be vectorised.
- ``"loop"``: one forward / backward per mini-batch; runs any model.
- ``"auto"`` (the default): try ``"vmap"``, and fall back to the loop with a
  [`VmapFallbackWarning`][dropkit.diagnostics.VmapFallbackWarning] (once per model) where it
  fails, e.g. BatchNorm in train mode.

Without active dropout the methods give the same numbers (up to floating-point rounding); with
it, both draw every mini-batch's masks afresh from the same distribution, not necessarily the
same masks.
"""
METHODS: tuple[str, ...] = ("auto", "vmap", "loop")

# Models on which vmap failed under method="auto": later calls go straight to the loop.
_vmap_failed: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


class VmapFallbackWarning(UserWarning):
    """``method="auto"`` could not vectorise the model and used the sequential loop.

    Warned once per model (later calls on the same model go straight to the loop); the message
    names the error ``vmap`` met. Pass ``method="loop"`` to skip the attempt, or filter the
    warning with ``warnings.filterwarnings("ignore", category=VmapFallbackWarning)``.
    """


def cross_entropy_loss(model: nn.Module, batch: Any) -> Tensor:
    """Mean cross-entropy of ``model(inputs)`` for ``batch = (inputs, targets)``.

    The default [`LossFn`][dropkit.diagnostics.LossFn]. Logits of shape ``(..., C)`` are
    compared with class-index targets of shape ``(...)`` (sequences of tokens included); targets
    equal to -100 are ignored, as in ``torch.nn.functional.cross_entropy``.

    Args:
        model: The model; ``model(inputs)`` must return logits.
        batch: A pair ``(inputs, targets)`` (a tuple or a list).

    Returns:
        The mean cross-entropy, a scalar tensor attached to the graph.

    Raises:
        ValueError: If ``batch`` is not a pair.
    """
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError(
            "cross_entropy_loss expects batch = (inputs, targets); for other batch layouts pass "
            "loss_fn=lambda model, batch: <scalar loss>"
        )
    inputs, targets = batch
    logits = model(inputs)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def flatten_gradients(grads: Iterable[Tensor | None], params: Iterable[Tensor]) -> Tensor:
    """One 1-D tensor from per-parameter gradients; a missing gradient counts as zeros.

    The layout every diagnostic uses: the gradients reshaped to 1-D and concatenated in the
    order given.

    Args:
        grads: One gradient per parameter, ``None`` for a parameter the loss does not reach
            (what ``torch.autograd.grad(..., allow_unused=True)`` returns).
        params: The parameters, in the same order (their shapes, dtypes and devices fill in the
            zeros of a missing gradient).

    Returns:
        A 1-D tensor with one entry per parameter element, in the gradients' dtype.
    """
    parts = [
        torch.zeros(p.numel(), dtype=p.dtype, device=p.device) if g is None else g.reshape(-1)
        for g, p in zip(grads, params, strict=True)
    ]
    return torch.cat(parts)


def _check_loss(loss: object) -> Tensor:
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(
            f"loss_fn must return a scalar tensor, got {shape}; reduce it (e.g. .mean()) inside "
            "loss_fn"
        )
    return loss.reshape(())


def check_method(method: str) -> Method:
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {METHODS}")
    return cast(Method, method)


def check_chunk_size(chunk_size: int) -> int:
    return check_int(chunk_size, "chunk_size", 1)


def _loop_gradient(model: nn.Module, loss_fn: LossFn, params: list[nn.Parameter], batch: Any):
    loss = _check_loss(loss_fn(model, batch))
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return flatten_gradients(grads, params).detach()


def _signature(batch: Any) -> Any:
    """What must agree for mini-batches to be stacked into one vmap chunk."""
    if isinstance(batch, Tensor):
        return ("tensor", tuple(batch.shape), batch.dtype, batch.device)
    if isinstance(batch, (tuple, list)):
        return (type(batch), tuple(_signature(b) for b in batch))
    if isinstance(batch, Mapping):
        return (dict, tuple((k, _signature(v)) for k, v in batch.items()))
    return ("value", batch)


def _stack(batches: list[Any]) -> tuple[Any, Any]:
    """Stack a chunk along a new leading dim; returns the stacked batch and vmap's in_dims."""
    first = batches[0]
    if isinstance(first, Tensor):
        return torch.stack(batches), 0
    if isinstance(first, (tuple, list)):
        pairs = [_stack([b[i] for b in batches]) for i in range(len(first))]
        return tuple(s for s, _ in pairs), tuple(d for _, d in pairs)
    if isinstance(first, Mapping):
        by_key = {k: _stack([b[k] for b in batches]) for k in first}
        return {k: s for k, (s, _) in by_key.items()}, {k: d for k, (_, d) in by_key.items()}
    return first, None


class _ChunkReader:
    """Consecutive mini-batches in chunks of at most ``size`` with equal signatures.

    Batches are pulled only when `next_chunk` is called, so a caller can pull them inside
    the diagnostic RNG stream (a shuffling DataLoader draws from the global RNG as it iterates).
    """

    def __init__(self, batches: Iterable[Any], size: int) -> None:
        self._batches = batches
        self._iterator: Iterator[Any] | None = None
        self._pending: list[Any] = []
        self.size = size

    def next_chunk(self) -> list[Any]:
        if self._iterator is None:
            self._iterator = iter(self._batches)
        chunk, self._pending = self._pending, []
        for batch in self._iterator:
            if chunk and _signature(batch) != _signature(chunk[0]):
                self._pending = [batch]
                break
            chunk.append(batch)
            if len(chunk) == self.size:
                break
        return chunk


class _LossModule(nn.Module):
    """``loss_fn(model, batch)`` as a module, so ``functional_call`` can swap the parameters."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> Tensor:
        return _check_loss(self.loss_fn(self.model, batch))


def _batchable_attention() -> AbstractContextManager[object]:
    """Route ``scaled_dot_product_attention`` to its math backend, which vmap can batch.

    The fused kernels (flash attention) have no batching rule: vmap would run them once per
    mini-batch with copies in between, several times slower than the loop.
    """
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3: nothing to select
        return nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


def _vmap_gradients(
    model: nn.Module, loss_fn: LossFn, names: list[str], params: list[nn.Parameter], chunk: list
) -> Tensor:
    """Per-mini-batch gradients of a chunk as rows of a ``(len(chunk), |θ|)`` tensor."""
    wrapper = _LossModule(model, loss_fn)
    detached = {f"model.{n}": p.detach() for n, p in zip(names, params)}

    def loss_of(theta: dict[str, Tensor], batch: Any) -> Tensor:
        return torch.func.functional_call(wrapper, theta, (batch,))

    stacked, in_dims = _stack(chunk)
    per_batch = torch.func.vmap(
        torch.func.grad(loss_of), in_dims=(None, in_dims), randomness="different"
    )
    with warnings.catch_warnings(), _batchable_attention():
        # torch notes ops without a batching rule and loops over them internally; the numbers
        # are right, and the benchmark reports the real cost.
        warnings.filterwarnings("ignore", message="There is a performance drop because")
        grads = per_batch(detached, stacked)
    return torch.cat([grads[f"model.{n}"].reshape(len(chunk), -1) for n in names], dim=1)


def mini_batch_gradients(
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: LossFn = cross_entropy_loss,
    *,
    method: Method = "auto",
    chunk_size: int = 8,
    seed: int | None = None,
) -> Iterator[Tensor]:
    """Yield the flattened gradient of ``loss_fn(model, batch)`` for each mini-batch.

    The set G of the early-dropout paper. Dropout is as in training (the model's current rates
    and modes) and each mini-batch draws its own masks from a private random stream, so the
    masks training draws next are untouched. ``method="vmap"`` stacks up to ``chunk_size``
    consecutive mini-batches of equal shapes and differentiates them at once with
    ``torch.func``; ``"loop"`` does one forward / backward per mini-batch; ``"auto"`` tries vmap
    and falls back to the loop (with a
    [`VmapFallbackWarning`][dropkit.diagnostics.VmapFallbackWarning], once per model). Memory
    holds at most one chunk of gradients. Parameters, ``.grad``, buffers, modes and the global
    RNG are restored around every chunk, so the consumer may do anything between yielded
    gradients.

    Args:
        model: The model, in the mode it trains in (usually train mode).
        batches: The mini-batches, in any form ``loss_fn`` accepts; iterated lazily, inside the
            private random stream (a shuffling ``DataLoader`` does not advance training's RNG).
        loss_fn: ``loss_fn(model, batch) -> mean loss`` (default
            [`cross_entropy_loss`][dropkit.diagnostics.cross_entropy_loss]).
        method: ``"auto"`` (default), ``"vmap"`` or ``"loop"``; see
            [`Method`][dropkit.diagnostics.Method].
        chunk_size: How many mini-batches ``vmap`` differentiates at once (at least 1; default
            8). Larger is faster and holds more gradients in memory.
        seed: Seeds the private random stream of the dropout masks (``None``, the default,
            derives one from the global RNG state at the call, without advancing it).

    Returns:
        An iterator of float 1-D tensors, one per mini-batch in order, each with one entry per
            trainable parameter element (``named_parameters()`` order, parameters with
            ``requires_grad``), on the parameters' device.

    Raises:
        ValueError: At the call, if ``method`` is unknown, ``chunk_size < 1`` or the model has
            no trainable parameter; while iterating, if ``loss_fn`` does not return a scalar
            tensor.
        TypeError: At the call, if ``chunk_size`` is not an int.

    Examples:
        ```python
        from dropkit import diagnostics as dd

        batches = dd.sample_batches(x_train, y_train, n_batches=16, batch_size=64, seed=0)
        for grad in dd.mini_batch_gradients(model, batches, seed=0):
            print(grad.norm())
        ```
    """
    check_method(method)
    check_chunk_size(chunk_size)
    names, params = trainable_parameters(model)
    use_vmap = method == "vmap" or (method == "auto" and model not in _vmap_failed)
    reader = _ChunkReader(batches, chunk_size if use_vmap else 1)
    return _generate(model, loss_fn, names, params, reader, method, use_vmap, DiagnosticRNG(seed))


def _generate(
    model: nn.Module,
    loss_fn: LossFn,
    names: list[str],
    params: list[nn.Parameter],
    reader: _ChunkReader,
    method: str,
    use_vmap: bool,
    rng: DiagnosticRNG,
) -> Iterator[Tensor]:
    while True:
        with rng, kept_buffers_and_modes(model):
            chunk = reader.next_chunk()
            if not chunk:
                return
            rows: Tensor | list[Tensor] = []
            if use_vmap:
                try:
                    rows = _vmap_gradients(model, loss_fn, names, params, chunk)
                except Exception as err:
                    if method == "vmap":
                        raise
                    use_vmap = False
                    reader.size = 1
                    _warn_fallback(model, err)
            if not use_vmap:
                rows = [_loop_gradient(model, loss_fn, params, batch) for batch in chunk]
        yield from rows


def _warn_fallback(model: nn.Module, err: Exception) -> None:
    reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    _vmap_failed[model] = reason
    warnings.warn(
        f"vmap cannot run {type(model).__name__} ({reason}); using the sequential loop, which "
        "gives the same numbers. Pass method='loop' to skip the attempt.",
        VmapFallbackWarning,
        stacklevel=3,
    )


def _batch_size(batch: Any) -> int:
    """Leading-dim size of the first tensor in ``batch`` that has one (0 when none has)."""
    if isinstance(batch, Tensor):
        return int(batch.shape[0]) if batch.ndim else 0
    if isinstance(batch, Mapping):
        children: Iterable[Any] = batch.values()
    else:
        children = batch if isinstance(batch, (tuple, list)) else ()
    for child in children:
        size = _batch_size(child)
        if size:
            return size
    return 0


def full_gradient(
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: LossFn = cross_entropy_loss,
    *,
    seed: int | None = None,
) -> Tensor:
    """The paper's ĝ: gradient of the mean loss over ``batches`` with dropout off.

    Dropout and drop-path sites get rate 0 for the duration of the call (restored afterwards);
    every other module keeps its current mode, so call this while the model is in train mode.
    ``loss_fn`` must return the *mean* loss of a batch; batch gradients are combined weighted by
    batch size (the leading dim of the first tensor in each batch), so unequal batches give the
    exact full-data mean. One forward / backward per batch, in a loop (with dropout off there
    are no masks to vectorise over). Training state is left as it was.

    Args:
        model: The model, in the mode it trains in.
        batches: The batches to average over: the whole training set (see
            [`whole_data_batches`][dropkit.diagnostics.whole_data_batches]) or a fixed large
            subset.
        loss_fn: ``loss_fn(model, batch) -> mean loss`` (default
            [`cross_entropy_loss`][dropkit.diagnostics.cross_entropy_loss]).
        seed: Seeds the private random stream for anything random left in the forward (other
            than dropout) and for the iteration of ``batches`` (``None``, the default: derived
            from the global RNG state without advancing it).

    Returns:
        ĝ as a float64 1-D tensor, laid out like the gradients of
            [`mini_batch_gradients`][dropkit.diagnostics.mini_batch_gradients].

    Raises:
        ValueError: If ``batches`` is empty, a batch holds no tensor with a leading dimension
            (its size cannot be told), the model has no trainable parameter, or ``loss_fn``
            does not return a scalar tensor.

    Examples:
        ```python
        from dropkit import diagnostics as dd

        full = dd.full_gradient(model, dd.whole_data_batches(x_train, y_train))
        ```
    """
    _, params = trainable_parameters(model)
    total: Tensor | None = None
    count = 0
    with DiagnosticRNG(seed), kept_buffers_and_modes(model), dropout_off(model):
        for batch in batches:
            weight = _batch_size(batch)
            if weight == 0:
                raise ValueError(
                    "cannot tell the batch size: full_gradient weights each batch by the leading "
                    "dim of its first tensor, and this batch holds no tensor with a leading dim"
                )
            grad = _loop_gradient(model, loss_fn, params, batch).to(torch.float64) * weight
            total = grad if total is None else total.add_(grad)
            count += weight
    if total is None:
        raise ValueError("full_gradient got no batches; pass the training set (or a subset)")
    return total.div_(count)
