"""R-Drop (Liang et al., NeurIPS 2021): make two dropout passes of the same input agree.

Each sample goes through the model ``m`` times (``m = 2`` in the paper) in **one** forward on the
batch concatenated with itself; dropout draws different masks per copy. The loss (paper Eq. 4) is

    sum_i CE(P_i) + alpha / (m (m - 1)) * sum_{i != j} KL(P_i || P_j),

which for two passes is ``ce1 + ce2 + alpha/2 * (KL12 + KL21)``. CE and KL are averaged over the
same rows (samples, or non-ignored tokens), KL is summed over classes. Log-probabilities are taken
once per pass in at least float32 and reused for CE and KL. Regression replaces the KL by the mean
squared difference of the two predictions.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dropkit._checks import check_int, check_real
from dropkit._deprecation import renamed_attribute
from dropkit.sites import Site, find_sites, unwrap

__all__ = [
    "RDropTerms",
    "consistency_mse",
    "mean_pairwise_kl",
    "rdrop_forward",
    "rdrop_loss",
    "rdrop_regression_loss",
    "rdrop_terms",
    "symmetric_kl",
]


class RDropTerms(NamedTuple):
    """The R-Drop loss and its parts, for logging without recomputing.

    Returned by [`rdrop_terms`][dropkit.rdrop_terms], whose parts keep their graph, and by
    [`rdrop_linear_terms`][dropkit.rdrop_linear_terms], whose parts are values only (a backward
    through them raises); formerly ``RDropLoss``. A named tuple: ``loss, ce, kl = terms`` works.

    Attributes:
        loss: The loss to minimise, a 0-dim tensor: ``sum(ce) + alpha * kl``.
        ce: The task loss (cross-entropy) of each pass, one 0-dim tensor per pass, each
            averaged over the non-ignored rows.
        kl: The mean pairwise KL divergence between the passes' predicted distributions, a
            0-dim tensor: ``(KL(P1 || P2) + KL(P2 || P1)) / 2`` for two passes, summed over
            classes and averaged over the non-ignored rows. Unweighted (``alpha`` is not in it).
    """

    loss: Tensor
    ce: tuple[Tensor, ...]
    kl: Tensor


def __getattr__(name: str) -> object:
    return renamed_attribute(__name__, name, {"RDropLoss": ("RDropTerms", lambda: RDropTerms)})


def check_alpha(alpha: float, name: str = "alpha") -> float:
    """``alpha`` as a float, refused unless a finite number >= 0 (a bool, NaN or inf included);
    the one check of R-Drop's consistency weight, for every loss and integration."""
    alpha = check_real(alpha, name)
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"{name}={alpha} must be a finite number >= 0 (the paper uses 0.5 to 5)")
    return alpha


def check_loss_weights(alpha: float, label_smoothing: float) -> None:
    """Refuse a KL weight that is not a finite number >= 0, or a label smoothing that is not a
    number in [0, 1] (a bool, NaN or inf included); shared by every classification loss."""
    check_alpha(alpha)
    label_smoothing = check_real(label_smoothing, "label_smoothing")
    if not 0.0 <= label_smoothing <= 1.0:  # NaN fails this too
        raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1]")


def _log_probs(logits: Tensor) -> Tensor:
    """``log_softmax`` over the last dim in float32 at least (float64 stays float64)."""
    return F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)


def _pairwise_kl_rows(log_probs: Sequence[Tensor]) -> Tensor:
    """Per row, ``sum_{i != j} KL(P_i || P_j)`` in O(m) passes.

    Two passes: ``sum_c (p1 - p2)(log p1 - log p2)``, exactly symmetric. More passes: with mean
    log-probability ``l`` and mean probability ``p``, ``sum_{i,j} KL(P_i || P_j) =
    m * sum_i sum_c (p_i - p)(log p_i - l)``; differences come before products, so close passes
    do not cancel catastrophically. A class that is ``-inf`` in every pass contributes 0 (not
    NaN, in value and gradient); one that is ``-inf`` in some passes only makes the row ``+inf``.
    """
    m = len(log_probs)
    stacked = torch.stack(tuple(log_probs))
    neg_inf = torch.isneginf(stacked)
    ruled_out_everywhere = neg_inf.all(dim=0)
    stacked = stacked.masked_fill(ruled_out_everywhere, 0.0)
    probs = stacked.exp()
    if m == 2:
        rows = ((probs[0] - probs[1]) * (stacked[0] - stacked[1])).sum(dim=-1)
    else:
        centred_log = stacked - stacked.mean(dim=0)
        centred_prob = probs - probs.mean(dim=0)
        rows = m * (centred_prob * centred_log).sum(dim=(0, -1))
    ruled_out_somewhere = (neg_inf.any(dim=0) & ~ruled_out_everywhere).any(dim=-1)
    return rows.masked_fill(ruled_out_somewhere, float("inf"))


def _masked_mean(rows: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return rows.mean()
    if mask.shape != rows.shape:
        raise ValueError(
            f"mask has shape {tuple(mask.shape)} but the logits have {tuple(rows.shape)} rows; "
            "pass a bool mask shaped like the logits without their class dimension"
        )
    mask = mask.to(torch.bool)
    return rows.masked_fill(~mask, 0.0).sum() / mask.sum().clamp(min=1)


def _check_same_shapes(tensors: Sequence[Tensor], what: str) -> None:
    if len(tensors) < 2:
        raise ValueError(f"R-Drop needs at least two passes, got {len(tensors)} {what}")
    first = tuple(tensors[0].shape)
    for i, t in enumerate(tensors[1:], start=2):
        if tuple(t.shape) != first:
            raise ValueError(
                f"{what} of pass 1 have shape {first} but pass {i} has {tuple(t.shape)}; "
                "both passes must come from the same inputs (see dropkit.rdrop_forward)"
            )


def mean_pairwise_kl(logits: Sequence[Tensor], mask: Tensor | None = None) -> Tensor:
    """``1/(m(m-1)) sum_{i != j} KL(P_i || P_j)`` from the logits of ``m`` passes.

    R-Drop's consistency term alone, for a loss you assemble yourself. Log-probabilities are
    taken in float32 at least; a class that is ``-inf`` in every pass contributes 0.

    Args:
        logits: The logits of ``m >= 2`` passes, all the same shape ``(..., C)``, classes last;
            KL is summed over the class dimension.
        mask: Which rows to average over: a bool tensor shaped like a pass's logits without the
            class dimension, True where a row counts. None (the default) averages over all rows.

    Returns:
        A 0-dim tensor (float32, or float64 for float64 logits), 0 if ``mask`` selects no row.

    Raises:
        ValueError: If fewer than two passes are given, their shapes differ, or ``mask`` has
            the wrong shape.

    Examples:
        >>> import torch
        >>> from dropkit import mean_pairwise_kl
        >>> a = torch.tensor([[2.0, 0.0], [0.0, 0.0]])  # two rows, two classes
        >>> b = torch.tensor([[0.0, 2.0], [0.0, 0.0]])  # disagrees on the first row only
        >>> mean_pairwise_kl([a, b])
        tensor(0.7616)
        >>> mean_pairwise_kl([a, b], mask=torch.tensor([False, True]))
        tensor(0.)
    """
    _check_same_shapes(logits, "logits")
    m = len(logits)
    rows = _pairwise_kl_rows([_log_probs(z) for z in logits]) / (m * (m - 1))
    return _masked_mean(rows, mask)


def symmetric_kl(logits1: Tensor, logits2: Tensor, mask: Tensor | None = None) -> Tensor:
    """``(KL(P1 || P2) + KL(P2 || P1)) / 2``: summed over classes, averaged over (unmasked) rows.

    [`mean_pairwise_kl`][dropkit.mean_pairwise_kl] for two passes. Exactly 0 for identical
    inputs, non-negative, symmetric, finite where a class is ``-inf`` in both passes.

    Args:
        logits1: The first pass's logits, ``(N, C)`` or ``(N, T, C)`` (any shape with classes
            last).
        logits2: The second pass's logits, the same shape.
        mask: Which rows to average over: a bool tensor shaped like the logits without the class
            dimension, True where a row counts. None (the default) averages over all rows.

    Returns:
        A 0-dim tensor (float32, or float64 for float64 logits).

    Raises:
        ValueError: If the two shapes differ or ``mask`` has the wrong shape.
    """
    return mean_pairwise_kl((logits1, logits2), mask)


def _cross_entropy_rows(log_probs: Tensor, target: Tensor, label_smoothing: float) -> Tensor:
    nll = -log_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    if label_smoothing == 0.0:
        return nll
    return (1.0 - label_smoothing) * nll - label_smoothing * log_probs.mean(dim=-1)


def rdrop_terms(
    logits: Sequence[Tensor],
    target: Tensor,
    alpha: float = 1.0,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> RDropTerms:
    """R-Drop loss over ``m >= 2`` passes with its parts: ``sum_i CE_i + alpha * mean pairwise KL``.

    Paper Eq. 4, for classification and token-level tasks: the cross-entropy of every pass plus
    ``alpha`` times the mean pairwise KL between them. Positions equal to ``ignore_index``
    (padding) are left out of both CE and KL, which share one normaliser (the number of
    non-ignored positions). Use it instead of [`rdrop_loss`][dropkit.rdrop_loss] to log the parts
    or for more than two passes.

    Args:
        logits: The logits of ``m >= 2`` passes (e.g. from
            [`rdrop_forward`][dropkit.rdrop_forward]), all the same shape ``(N, C)`` or
            ``(N, T, C)``, classes last.
        target: Class indices (an integer tensor) shaped like a pass's logits without the class
            dimension; ``ignore_index`` marks positions to leave out.
        alpha: The weight of the KL term, a finite number >= 0 (the paper uses 0.5 to 5).
        ignore_index: The target value of positions to leave out (-100, as in
            ``torch.nn.functional.cross_entropy``).
        label_smoothing: Label smoothing of the cross-entropy terms, in [0, 1], as in
            ``torch.nn.functional.cross_entropy``.

    Returns:
        The loss and its parts, as [`RDropTerms`][dropkit.RDropTerms]; all keep their graph.
            The parts are computed in float32 at least.

    Raises:
        TypeError: If ``alpha`` or ``label_smoothing`` is not a number.
        ValueError: If fewer than two passes are given, their shapes differ, ``target`` has the
            wrong shape, ``alpha`` is negative or not finite, or ``label_smoothing`` lies
            outside [0, 1].

    Examples:
        ```python
        import torch
        from torch import nn

        import dropkit

        model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 3))
        x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
        terms = dropkit.rdrop_terms(dropkit.rdrop_forward(model, x), y, alpha=1.0)
        terms.loss.backward()
        print(f"ce {sum(terms.ce).item() / 2:.3f}  kl {terms.kl.item():.4f}")
        ```
    """
    _check_same_shapes(logits, "logits")
    if tuple(target.shape) != tuple(logits[0].shape[:-1]):
        raise ValueError(
            f"target has shape {tuple(target.shape)} but the logits have shape "
            f"{tuple(logits[0].shape)}; target must be the logits' shape without the class "
            "dimension (class indices, ignore_index for padding)"
        )
    check_loss_weights(alpha, label_smoothing)
    log_probs = [_log_probs(z) for z in logits]
    valid = target != ignore_index
    safe_target = target.masked_fill(~valid, 0)
    ce = tuple(
        _masked_mean(_cross_entropy_rows(lp, safe_target, label_smoothing), valid)
        for lp in log_probs
    )
    m = len(logits)
    kl = _masked_mean(_pairwise_kl_rows(log_probs) / (m * (m - 1)), valid)
    return RDropTerms(loss=sum(ce) + alpha * kl, ce=ce, kl=kl)


def rdrop_loss(
    logits1: Tensor,
    logits2: Tensor,
    target: Tensor,
    alpha: float = 1.0,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Paper Eq. 4: ``ce1 + ce2 + alpha/2 * (KL12 + KL21)``, averaged over non-ignored rows.

    R-Drop (Liang et al., NeurIPS 2021) for classification: two dropout passes of the same
    batch are trained to agree. Use [`rdrop_terms`][dropkit.rdrop_terms] for the parts (CE per
    pass, KL) or for more than two passes, and
    [`rdrop_linear_loss`][dropkit.rdrop_linear_loss] when the logits of a large vocabulary do
    not fit in memory.

    Args:
        logits1: The first pass's logits, ``(N, C)`` or ``(N, T, C)``, classes last.
        logits2: The second pass's logits, the same shape.
        target: Class indices (an integer tensor) shaped like the logits without the class
            dimension.
        alpha: The weight of the KL term, a finite number >= 0 (the paper uses 0.5 to 5).
        ignore_index: The target value of positions to leave out of CE and KL (-100, as in
            ``torch.nn.functional.cross_entropy``).
        label_smoothing: Label smoothing of the cross-entropy terms, in [0, 1].

    Returns:
        The loss, a 0-dim tensor (float32 at least) with its graph.

    Raises:
        TypeError: If ``alpha`` or ``label_smoothing`` is not a number.
        ValueError: If the two shapes differ, ``target`` has the wrong shape, ``alpha`` is
            negative or not finite, or ``label_smoothing`` lies outside [0, 1].

    Examples:
        ```python
        import torch
        from torch import nn

        import dropkit

        model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 3))
        x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
        logits1, logits2 = dropkit.rdrop_forward(model, x)  # one forward on [x; x]
        loss = dropkit.rdrop_loss(logits1, logits2, y, alpha=1.0)
        loss.backward()
        ```
    """
    return rdrop_terms((logits1, logits2), target, alpha, ignore_index, label_smoothing).loss


def consistency_mse(pred1: Tensor, pred2: Tensor) -> Tensor:
    """Mean squared difference between two passes' predictions (R-Drop for regression).

    The consistency term of [`rdrop_regression_loss`][dropkit.rdrop_regression_loss], in place
    of the KL of classification.

    Args:
        pred1: The first pass's predictions, any shape.
        pred2: The second pass's predictions, the same shape.

    Returns:
        The mean over all elements of ``(pred1 - pred2) ** 2``, a 0-dim tensor (float32 at
            least).

    Raises:
        ValueError: If the two shapes differ.
    """
    _check_same_shapes((pred1, pred2), "predictions")
    dtype = torch.promote_types(pred1.dtype, torch.float32)
    return F.mse_loss(pred1.to(dtype), pred2.to(dtype))


def rdrop_regression_loss(
    pred1: Tensor, pred2: Tensor, target: Tensor, alpha: float = 1.0
) -> Tensor:
    """``mse(pred1, y) + mse(pred2, y) + alpha * mse(pred1, pred2)``: R-Drop for regression.

    Each ``mse`` is the mean over all elements, computed in float32 at least.

    Args:
        pred1: The first pass's predictions.
        pred2: The second pass's predictions, the same shape.
        target: The regression targets, the predictions' shape (squeeze a trailing 1 first).
        alpha: The weight of the consistency term, a finite number >= 0.

    Returns:
        The loss, a 0-dim tensor with its graph.

    Raises:
        TypeError: If ``alpha`` is not a number.
        ValueError: If the shapes differ, or ``alpha`` is negative or not finite.
    """
    _check_same_shapes((pred1, pred2), "predictions")
    if target.shape != pred1.shape:
        raise ValueError(
            f"target has shape {tuple(target.shape)} but predictions have "
            f"{tuple(pred1.shape)}; reshape one to match (e.g. pred.squeeze(-1))"
        )
    check_alpha(alpha)
    dtype = torch.promote_types(pred1.dtype, torch.float32)
    target = target.to(dtype)
    task = F.mse_loss(pred1.to(dtype), target) + F.mse_loss(pred2.to(dtype), target)
    return task + alpha * consistency_mse(pred1, pred2)


# --- one forward on the repeated batch -------------------------------------------------------


def _map_tensors(obj: Any, fn: Callable[[Tensor], Any]) -> Any:
    """Apply ``fn`` to every tensor in nested tuples / lists / dicts, keeping container types."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        items = {k: _map_tensors(v, fn) for k, v in obj.items()}
        if type(obj) is dict:
            return items
        try:  # ModelOutput and other keyword-constructible mappings keep their type
            return type(obj)(**items)
        except TypeError:
            return items
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(_map_tensors(v, fn) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj


def _batch_size(inputs: Any) -> int:
    sizes: set[int] = set()

    def record(t: Tensor) -> None:
        if t.dim() > 0:
            sizes.add(t.shape[0])

    _map_tensors(inputs, record)
    if not sizes:
        raise ValueError("rdrop_forward found no batched tensor in the inputs to repeat")
    if len(sizes) > 1:
        raise ValueError(
            f"the input tensors disagree on the batch size (first dims {sorted(sizes)}); "
            "rdrop_forward repeats every tensor along dim 0, so pass only batch-major tensors "
            "and bind the others in the model (e.g. functools.partial)"
        )
    return sizes.pop()


def _split(outputs: Any, passes: int, batch: int) -> tuple[Any, ...]:
    def chunk(i: int) -> Callable[[Tensor], Tensor]:
        def take(t: Tensor) -> Tensor:
            if t.dim() == 0 or t.shape[0] != passes * batch:
                raise ValueError(
                    f"an output tensor of shape {tuple(t.shape)} is not batch-major (expected "
                    f"first dim {passes} x {batch}); do not let the model reduce over the batch "
                    "(e.g. do not pass labels to a Hugging Face model here: compute the loss "
                    "with dropkit.rdrop_loss)"
                )
            return t[i * batch : (i + 1) * batch]

        return take

    return tuple(_map_tensors(outputs, chunk(i)) for i in range(passes))


_warned_inactive: weakref.WeakSet[nn.Module] = weakref.WeakSet()
_site_cache: weakref.WeakKeyDictionary[nn.Module, list[Site]] = weakref.WeakKeyDictionary()


def _warn_if_no_active_dropout(model: nn.Module) -> None:
    if model in _warned_inactive:
        return
    if model not in _site_cache:
        _site_cache[model] = [s for s in find_sites(model) if s.module is not None]
    active = any(s.p > 0 and s.module is not None and s.module.training for s in _site_cache[model])
    if not active:
        _warned_inactive.add(model)
        warnings.warn(
            "R-Drop: the model has no active dropout (every site is at rate 0 or in eval mode), "
            "so the passes are identical and the KL term is exactly 0; enable dropout "
            "(see dropkit.describe(model))",
            stacklevel=3,
        )


def _check_batchnorm_on_single_sample(model: nn.Module, passes: int) -> list[Any]:
    """Hooks that raise where BatchNorm would normalise copies of one sample (degenerate)."""

    def check(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        x = args[0]
        values_per_channel = x.numel() // max(x.shape[1], 1) if x.dim() > 1 else x.numel()
        if values_per_channel <= passes:
            raise ValueError(
                f"{type(module).__name__} in training mode would normalise over {passes} copies "
                "of a single sample (batch size 1 without spatial dims), which breaks plain "
                "training too; use a batch size > 1, or put BatchNorm in eval mode"
            )

    return [
        m.register_forward_pre_hook(check)
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
    ]


def rdrop_forward(model: nn.Module, *args: Any, passes: int = 2, **kwargs: Any) -> tuple[Any, ...]:
    """Run ``model`` once on the inputs repeated ``passes`` times along dim 0; split the output.

    R-Drop's passes in one forward, as the paper's code does: dropout draws different masks for
    each copy of the batch, and one large forward is faster than ``passes`` small ones. Every
    tensor in ``args`` / ``kwargs`` (nested tuples, lists and dicts included, e.g. a Hugging Face
    batch passed as ``**batch``) is repeated; 0-dim tensors and other values are passed as they
    are. BatchNorm statistics see the repeated batch. In eval mode the model runs once, on the
    batch as given, and the same output is returned for every pass. Under DDP each rank repeats
    its own batch.

    Args:
        model: The model; it must treat dim 0 of every input and output as the batch (no
            reduction over it, e.g. no loss computed inside a Hugging Face model: do not pass
            ``labels``).
        *args: Positional inputs of ``model``.
        passes: The number of passes, at least 2 (the paper uses 2).
        **kwargs: Keyword inputs of ``model``.

    Returns:
        One output per pass, each of the type and structure ``model`` returns (tensors, tuples,
            dicts, ``ModelOutput``), with batch size that of the inputs.

    Raises:
        TypeError: If ``model`` is an ``nn.DataParallel`` (it would split a pair's passes
            across devices), or ``passes`` is not an int.
        ValueError: If ``passes`` is below 2, the inputs hold no batched tensor or disagree on
            the batch size, an output is not batch-major, or a BatchNorm layer in training mode
            would normalise copies of a single sample.

    Warns:
        UserWarning: Once per model, if it has no active dropout (every site at rate 0 or in
            eval mode): the passes are then identical and the KL term is 0.

    Examples:
        ```python
        import torch
        from torch import nn

        import dropkit

        model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 3))
        x = torch.randn(16, 8)
        logits1, logits2 = dropkit.rdrop_forward(model, x)  # each (16, 3), different masks
        ```
    """
    passes = check_int(passes, "passes", 2)
    if isinstance(model, nn.DataParallel):
        raise TypeError(
            "nn.DataParallel splits the repeated batch [x; x] across devices, so a pair's "
            "passes run on different devices; use DistributedDataParallel (each rank repeats "
            "its own batch) or call rdrop_forward(model.module, ...)"
        )
    inputs = (args, kwargs)
    batch = _batch_size(inputs)
    if not model.training:
        outputs = model(*args, **kwargs)
        return (outputs,) * passes
    _warn_if_no_active_dropout(unwrap(model))
    repeated_args, repeated_kwargs = _map_tensors(
        inputs, lambda t: t if t.dim() == 0 else t.repeat(passes, *([1] * (t.dim() - 1)))
    )
    hooks = _check_batchnorm_on_single_sample(model, passes) if batch == 1 else []
    try:
        outputs = model(*repeated_args, **repeated_kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    return _split(outputs, passes, batch)
