"""Inverted dropout and stochastic depth: pure functions plus thin, always-schedulable modules.

The modules exist at every rate, including 0, so a site built "switched off" can still be switched
on later by a schedule (unlike models that substitute ``nn.Identity`` when a rate is 0).

Under ``torch.compile`` the modules read their rate from a 0-dim tensor buffer instead of a Python
float: Dynamo guards on float attributes and would recompile at every new rate, whereas a tensor's
value is an input of the compiled graph, so a schedule can change it every step for free. Beside
it they keep one Python bool, ``active`` (rate > 0), which Dynamo does guard on: while it is
False the compiled graph is the graph without the site (no random numbers drawn, nothing
multiplied), so a model pays nothing for dropout once a schedule has turned it off. The bool
flips only when a rate crosses 0, so any schedule compiles at most two graphs per model (one
with the sites active, one without), never one per rate.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from dropkit._checks import check_real
from dropkit._deprecation import renamed_keyword

__all__ = ["DropPath", "Dropout", "check_rate", "drop_path", "dropout"]


def check_rate(p: float, name: str = "p") -> float:
    """Return ``p`` as a float, or raise if it is not a probability.

    The one check of a dropout rate, shared by the layers, the schedules and the scheduler.

    Args:
        p: The rate to check: a Python or numpy number, not a bool.
        name: The name the error messages give the rate.

    Returns:
        ``p`` as a ``float`` in [0, 1].

    Raises:
        TypeError: If ``p`` is not a number (or is a bool).
        ValueError: If ``p`` lies outside [0, 1] or is NaN.
    """
    p = check_real(p, name, " in [0, 1]")
    if not 0.0 <= p <= 1.0:  # also rejects NaN
        raise ValueError(f"{name}={p} is not a probability: pass a rate in [0, 1]")
    return p


def _zeros_keeping_graph(x: Tensor) -> Tensor:
    # Exact zeros (even where x is inf/NaN) that still carry a zero gradient back to x.
    return x.masked_fill(torch.ones((), dtype=torch.bool, device=x.device), 0.0)


def _keep_with_tensor_rate(x: Tensor, p: Tensor, mask_shape: tuple[int, ...]) -> Tensor:
    # Branch-free, so the rate's value never becomes a compile-time constant: keep where
    # U >= p for U ~ Uniform[0, 1), which happens with probability 1 - p (always at p = 0, never
    # at p = 1); survivors are scaled by 1 / (1 - p), and the scale is 0 at p = 1.
    dtype = torch.promote_types(x.dtype, torch.float32)  # draw half-precision masks in float32
    p = p.to(device=x.device, dtype=dtype)
    keep = torch.rand(mask_shape, dtype=dtype, device=x.device) >= p
    scale = torch.where(p < 1.0, 1.0 / (1.0 - p), 0.0)
    return torch.where(keep, x * scale.to(x.dtype), 0.0)


def dropout(x: Tensor, p: float | Tensor, training: bool = True) -> Tensor:
    """Inverted dropout: zero each element with probability ``p``, scale survivors by 1/(1-p).

    The expected value of the output equals the input, so nothing needs rescaling at test time.
    The functional form of [`Dropout`][dropkit.Dropout], for models that call dropout in their
    ``forward`` rather than holding a module.

    Args:
        x: The input, of any shape; each element is kept or zeroed independently.
        p: The probability of zeroing an element, in [0, 1]. It may be a 0-dim tensor (the
            graph-friendly form used under ``torch.compile``); a tensor rate is not validated,
            since that would need its value on the host.
        training: Apply dropout; when False the input is returned unchanged, as in eval mode.

    Returns:
        A tensor shaped like ``x``: ``x`` itself when ``training`` is False or ``p == 0``, all
            zeros when ``p == 1`` (with a zero gradient back to ``x``), otherwise ``x`` with each
            element zeroed with probability ``p`` and the survivors scaled by ``1 / (1 - p)``.

    Raises:
        TypeError: If a non-tensor ``p`` is not a number (or is a bool).
        ValueError: If a non-tensor ``p`` lies outside [0, 1] or is NaN.

    Examples:
        >>> import torch
        >>> from dropkit import dropout
        >>> x = torch.ones(4)
        >>> dropout(x, 0.5, training=False)
        tensor([1., 1., 1., 1.])
        >>> set(dropout(x, 0.5).tolist()) <= {0.0, 2.0}  # survivors scaled by 1 / (1 - 0.5)
        True
    """
    if isinstance(p, Tensor):
        return _keep_with_tensor_rate(x, p, x.shape) if training else x
    p = check_rate(p)
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return _zeros_keeping_graph(x)
    keep = torch.empty_like(x).bernoulli_(1.0 - p).div_(1.0 - p)
    return x * keep


def drop_path(
    x: Tensor,
    drop_prob: float | Tensor | None = None,
    training: bool | None = None,
    *,
    p: float | Tensor | None = None,
) -> Tensor:
    """Stochastic depth, "row" mode: drop a whole sample's residual branch with ``drop_prob``.

    One Bernoulli draw per sample (dimension 0), survivors scaled by 1/(1-drop_prob), as in
    timm's ``drop_path`` and torchvision's ``StochasticDepth(mode="row")``. Apply it to the output
    of a residual branch before adding it back (``x + drop_path(branch(x), rate, self.training)``):
    a dropped sample then skips the branch. The functional form of
    [`DropPath`][dropkit.DropPath].

    Args:
        x: The branch output, batch first: ``(N, ...)``.
        drop_prob: The probability of dropping a sample's branch, in [0, 1]; None (the default)
            means 0. It may be a 0-dim tensor, not validated, as for
            [`dropout`][dropkit.dropout].
        training: Apply stochastic depth; when False the input is returned unchanged. The names
            are timm's, whose ``training`` defaults to False: dropkit's defaulted to True, so
            leaving it out warns and still drops until dropkit 0.3, when the default becomes
            False. Pass it (``self.training`` in a module).
        p: Deprecated name of drop_prob.

    Returns:
        A tensor shaped like ``x``: ``x`` itself when ``training`` is False or the rate is 0,
            all zeros when it is 1, otherwise ``x`` with each sample zeroed with probability
            ``drop_prob`` and the kept ones scaled by ``1 / (1 - drop_prob)``.

    Raises:
        TypeError: If both ``drop_prob`` and ``p`` are given, or a non-tensor rate is not a
            number (or is a bool).
        ValueError: If a non-tensor rate lies outside [0, 1] or is NaN.

    Warns:
        FutureWarning: If ``training`` is left out, or the rate is passed as ``p``.

    Examples:
        >>> import torch
        >>> from dropkit import drop_path
        >>> _ = torch.manual_seed(0)
        >>> branch = torch.ones(8, 3)
        >>> out = drop_path(branch, drop_prob=0.25, training=True)
        >>> sorted(set(out.sum(dim=1).tolist()) - {0.0})  # whole rows kept (x 1 / 0.75) or zeroed
        [4.0]
    """
    drop_prob = renamed_keyword("drop_path", "p", "drop_prob", p, drop_prob, default=0.0)
    if training is None:
        warnings.warn(
            "drop_path(x, drop_prob) without training=: the default is True here but False in "
            "timm, and becomes False in dropkit 0.3; pass training=True (or module.training)",
            FutureWarning,
            stacklevel=2,
        )
        training = True
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    if isinstance(drop_prob, Tensor):
        return _keep_with_tensor_rate(x, drop_prob, shape) if training else x
    rate = check_rate(drop_prob, "drop_prob")
    if not training or rate == 0.0:
        return x
    if rate == 1.0:
        return _zeros_keeping_graph(x)
    keep = x.new_empty(shape).bernoulli_(1.0 - rate).div_(1.0 - rate)
    return x * keep


class Dropout(nn.Module):
    """Inverted dropout whose rate ``p`` may be changed at any time (validated on write).

    A drop-in replacement for ``nn.Dropout`` built for schedules: it exists at every rate,
    including 0, so a site built "switched off" can be switched on later, and under
    ``torch.compile`` a changing rate causes no recompilation. The rate is mirrored in a private,
    non-persistent 0-dim buffer, which the forward reads under ``torch.compile``, and in
    ``active``, so that a compiled site at rate 0 is no op at all. Set the rate through ``p``
    only: the mirrors follow it (writing the buffer would bypass ``active`` and the eager path).
    [`find_sites`][dropkit.find_sites] recognises it as a ``"dropout"`` site.

    Args:
        p: The initial dropout rate, in [0, 1].

    Attributes:
        active: Whether the rate is above 0; kept in step with ``p``, read under
            ``torch.compile`` (do not set it).

    Raises:
        TypeError: If ``p`` is not a number (or is a bool), here or when ``p`` is set later.
        ValueError: If ``p`` lies outside [0, 1] or is NaN, here or when ``p`` is set later.

    Examples:
        >>> import torch
        >>> from dropkit import Dropout
        >>> layer = Dropout(0.0)
        >>> layer.p = 0.2  # what a schedule does: used from the next forward
        >>> layer
        Dropout(p=0.2)
        >>> layer.eval()(torch.ones(3))
        tensor([1., 1., 1.])
    """

    _p_tensor: Tensor

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("_p_tensor", torch.zeros(()), persistent=False)
        self.p = p

    @property
    def p(self) -> float:
        """The dropout rate in [0, 1]; a new value is validated and used from the next forward."""
        return self._p

    @p.setter
    def p(self, value: float) -> None:
        self._p = check_rate(value, "Dropout.p")
        self.active = self._p > 0.0  # guarded by Dynamo: flips only when the rate crosses 0
        self._p_tensor.fill_(self._p)

    def forward(self, x: Tensor) -> Tensor:
        """Zero each element with probability ``p`` and scale survivors by ``1 / (1 - p)``
        in training; the identity in eval mode or at rate 0."""
        if torch.compiler.is_compiling():
            if not (self.active and self.training):
                return x  # the graph without the site: no random op, no multiply
            return dropout(x, self._p_tensor)
        return dropout(x, self._p, self.training)

    def extra_repr(self) -> str:
        """The rate, shown in ``print(model)``."""
        return f"p={self._p}"


class DropPath(nn.Module):
    """Stochastic depth on a residual branch; ``drop_prob`` may be changed at any time.

    The module form of [`drop_path`][dropkit.drop_path]: in training it zeroes the whole input
    of a sample with probability ``drop_prob`` (and scales the kept ones by
    ``1 / (1 - drop_prob)``), so wrap a residual branch's output with it. The attribute is named
    ``drop_prob`` as in timm, so code written for timm's ``DropPath`` (including the official
    early-dropout scheduler) works on it unchanged. Like [`Dropout`][dropkit.Dropout], it exists
    at every rate including 0 and mirrors the rate in a private 0-dim buffer and in ``active``,
    read under ``torch.compile``; set the rate through ``drop_prob`` only.
    [`find_sites`][dropkit.find_sites] recognises it as a ``"drop_path"`` site.

    Args:
        drop_prob: The initial probability of dropping a sample's branch, in [0, 1].

    Attributes:
        active: Whether the rate is above 0; kept in step with ``drop_prob``, read under
            ``torch.compile`` (do not set it).

    Raises:
        TypeError: If ``drop_prob`` is not a number (or is a bool), here or when it is set
            later.
        ValueError: If ``drop_prob`` lies outside [0, 1] or is NaN, here or when it is set
            later.

    Examples:
        ```python
        from torch import nn

        from dropkit import DropPath


        class Block(nn.Module):
            def __init__(self, dim: int, drop_prob: float = 0.0) -> None:
                super().__init__()
                self.mlp = nn.Linear(dim, dim)
                self.drop_path = DropPath(drop_prob)  # schedulable even when built at 0

            def forward(self, x):
                return x + self.drop_path(self.mlp(x))
        ```
    """

    _drop_prob_tensor: Tensor

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("_drop_prob_tensor", torch.zeros(()), persistent=False)
        self.drop_prob = drop_prob

    @property
    def drop_prob(self) -> float:
        """The probability of dropping the branch per sample, in [0, 1]; validated on write."""
        return self._drop_prob

    @drop_prob.setter
    def drop_prob(self, value: float) -> None:
        self._drop_prob = check_rate(value, "DropPath.drop_prob")
        self.active = self._drop_prob > 0.0  # guarded by Dynamo: flips only when the rate crosses 0
        self._drop_prob_tensor.fill_(self._drop_prob)

    def forward(self, x: Tensor) -> Tensor:
        """Zero the whole branch of each sample with probability ``drop_prob`` and scale the
        kept ones by ``1 / (1 - drop_prob)`` in training; the identity in eval mode or at 0."""
        if torch.compiler.is_compiling():
            if not (self.active and self.training):
                return x  # the graph without the site: no random op, no multiply
            return drop_path(x, self._drop_prob_tensor, True)
        return drop_path(x, self._drop_prob, self.training)

    def extra_repr(self) -> str:
        """The rate, shown in ``print(model)``."""
        return f"drop_prob={self._drop_prob}"
