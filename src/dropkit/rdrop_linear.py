"""R-Drop straight from hidden states and the output projection, chunked over rows.

``rdrop_linear_loss(h1, h2, W, y, alpha)`` is ``rdrop_loss(h1 @ W.T + b, h2 @ W.T + b, y, alpha)``
without ever holding the logits of all rows: rows are processed ``chunk_size`` at a time, and
each chunk's gradients with respect to its logits are formed in the forward, in closed form, then
pushed through the projection at once (``∂/∂h = g @ W``, ``∂/∂W += gᵀ h``), so neither pass keeps
more than a chunk of logits alive and the backward is a multiplication by the incoming scalar.

Per row, with ``p``, ``q`` the two passes' softmax, ``d = log p - log q`` and ``n`` the number of
non-ignored rows (paper Eq. 4: ``ce1 + ce2 + alpha/2 * (KL(p||q) + KL(q||p))``, mean over rows):

    ∂ce/∂z1 = p - (1 - ε) onehot(y) - ε / V                (ε: label smoothing)
    ∂(KL(p||q) + KL(q||p))/∂z1 = p ⊙ (d - KL(p||q)) + (p - q)

and symmetrically for ``z2``; ``∂loss/∂z1 = (∂ce/∂z1 + alpha/2 ∂KL/∂z1) / n``. A class whose
bias is ``-inf`` (masked out) has ``p = q = 0`` and contributes nothing to the KL or its gradient.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from dropkit._checks import check_int
from dropkit.rdrop import RDropTerms, check_loss_weights

__all__ = ["default_chunk_size", "rdrop_linear_loss", "rdrop_linear_terms"]

# per pass, a chunk holds at most this many logits (32 MiB in float32)
_CHUNK_LOGITS = 1 << 23


def default_chunk_size(rows: int, vocab: int, hidden: int) -> int:
    """Rows per chunk when ``chunk_size=None``: a power of two, ``<= hidden``, ``<= 2**23 / vocab``.

    The first bound keeps a chunk's logits no larger than the projection itself (``V x H``), the
    second caps them at 32 MiB per pass in float32.

    Args:
        rows: The number of rows to score (non-ignored positions).
        vocab: The number of classes ``V``.
        hidden: The hidden size ``H``.

    Returns:
        The rows per chunk: at least 1 and at most ``rows``.

    Examples:
        >>> from dropkit.rdrop_linear import default_chunk_size
        >>> default_chunk_size(4096, vocab=32_000, hidden=512)
        256
        >>> default_chunk_size(4096, vocab=128_000, hidden=512)
        64
    """
    cap = max(1, min(hidden, _CHUNK_LOGITS // max(vocab, 1)))
    return max(1, min(rows, 1 << int(math.log2(cap))))


def _check(
    hidden1: Tensor,
    hidden2: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    alpha: float,
    label_smoothing: float,
    chunk_size: int | None,
) -> None:
    if hidden1.shape != hidden2.shape:
        raise ValueError(
            f"hidden1 has shape {tuple(hidden1.shape)} but hidden2 has {tuple(hidden2.shape)}; "
            "both passes must come from the same inputs (see dropkit.rdrop_forward)"
        )
    if hidden1.dim() not in (2, 3):
        raise ValueError(
            f"hidden states must be (N, H) or (N, T, H), got shape {tuple(hidden1.shape)}"
        )
    if weight.dim() != 2 or weight.shape[1] != hidden1.shape[-1]:
        raise ValueError(
            f"weight has shape {tuple(weight.shape)} but the hidden size is "
            f"{hidden1.shape[-1]}; pass the output projection's weight, shaped (V, H) like "
            "nn.Linear(H, V).weight"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(
            f"bias has shape {tuple(bias.shape)}; it must be ({weight.shape[0]},), one per class"
        )
    if tuple(target.shape) != tuple(hidden1.shape[:-1]):
        raise ValueError(
            f"target has shape {tuple(target.shape)} but the hidden states have "
            f"{tuple(hidden1.shape)}; target must be their shape without the hidden dimension "
            "(class indices, ignore_index for padding)"
        )
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
    sharded = [name for name, t in (("hidden1", hidden1), ("hidden2", hidden2), ("weight", weight),
               ("bias", bias)) if t is not None and _is_dtensor(t)]  # fmt: skip
    if sharded:
        raise TypeError(
            f"{' and '.join(sharded)} is a DTensor: FSDP2 gathers a module's parameters only "
            "inside that module's forward, and this loss reads the output layer's weight outside "
            "it. Call the loss inside the forward of the fully_shard-ed module that holds the "
            "output layer: keep that layer in the model's root fully_shard group and compute the "
            "loss in the model's forward, or shard a small module that holds the layer and "
            "computes the loss in its forward (see the R-Drop guide, section FSDP)"
        )
    check_loss_weights(alpha, label_smoothing)
    if chunk_size is not None:
        check_int(chunk_size, "chunk_size", 1, " (rows per chunk), or None to choose")


def _is_dtensor(tensor: Tensor) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


class _RDropLinear(torch.autograd.Function):
    """Loss and CE/KL parts in the forward; the gradients, formed there too, scaled in backward.

    The parts are outputs that require grad only so that a backward through them can be refused
    (their gradients are never formed): ``set_materialize_grads(False)`` hands backward ``None``
    for an output that the loss being differentiated does not use.
    """

    @staticmethod
    def forward(
        ctx: Any,  # FunctionCtx, plus the attributes set here (present)
        hidden1: Tensor,
        hidden2: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        target: Tensor,
        alpha: float,
        ignore_index: int,
        label_smoothing: float,
        chunk_size: int | None,
        form_grads: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        # under torch.no_grad() (form_grads False) no gradient is formed: the loss alone
        need_h1, need_h2, need_w, need_b = (n and form_grads for n in ctx.needs_input_grad[:4])
        compute = torch.float32  # at least: float64 anywhere computes in float64
        for tensor in (hidden1, hidden2, weight, bias):
            if tensor is not None:
                compute = torch.promote_types(compute, tensor.dtype)
        hidden_size, vocab = hidden1.shape[-1], weight.shape[0]
        flat1 = hidden1.reshape(-1, hidden_size)
        flat2 = hidden2.reshape(-1, hidden_size)
        rows = target.reshape(-1).ne(ignore_index).nonzero().squeeze(1)  # padding is skipped
        n = rows.numel()
        chunk = chunk_size or default_chunk_size(max(n, 1), vocab, hidden_size)
        weight_c = weight.to(compute)
        bias_c = None if bias is None else bias.to(compute)
        half, eps = alpha / 2.0, label_smoothing
        # classes masked out by a -inf bias are -inf in both passes: log p - log q is NaN there
        ruled_out = None
        if bias_c is not None and bool(torch.isneginf(bias_c).any()):
            ruled_out = torch.isneginf(bias_c)

        sums = torch.zeros(3, dtype=compute, device=weight.device)  # ce1, ce2, kl (row sums)
        grad_flat1 = torch.zeros_like(flat1, dtype=compute) if need_h1 else None
        grad_flat2 = torch.zeros_like(flat2, dtype=compute) if need_h2 else None
        grad_w = torch.zeros_like(weight_c) if need_w else None
        grad_b = torch.zeros(vocab, dtype=compute, device=weight.device) if need_b else None
        any_grad = need_h1 or need_h2 or need_w or need_b
        for start in range(0, n, chunk):
            idx = rows[start : start + chunk]
            c = idx.numel()
            h = torch.cat((flat1.index_select(0, idx), flat2.index_select(0, idx))).to(compute)
            y = target.reshape(-1).index_select(0, idx).to(torch.long)
            both_targets = torch.cat((y, y)).unsqueeze(1)
            z = h @ weight_c.T if bias_c is None else torch.addmm(bias_c, h, weight_c.T)
            z -= torch.logsumexp(z, dim=1, keepdim=True)  # log-probabilities of both passes
            log_p, log_q = z[:c], z[c:]
            nll = -z.gather(1, both_targets).squeeze(1)
            ce = (1.0 - eps) * nll - eps * z.mean(dim=1) if eps else nll
            d = log_p - log_q
            if ruled_out is not None:
                d.masked_fill_(ruled_out, 0.0)  # p = q = 0 there: no KL, no gradient
            z.exp_()  # probabilities, in place
            p, q = z[:c], z[c:]
            kl_pq = (p * d).sum(dim=1)
            kl_qp = -(q * d).sum(dim=1)
            sums += torch.stack((ce[:c].sum(), ce[c:].sum(), ((kl_pq + kl_qp) / 2).sum()))
            if not any_grad:
                continue
            # g = dloss/dz (times n): CE part and KL part, pass 1 on top of pass 2
            g = torch.empty_like(z)
            g1, g2 = g[:c], g[c:]
            torch.sub(d, kl_pq.unsqueeze(1), out=g1).mul_(p).mul_(half)
            g1.add_(p, alpha=1.0 + half).sub_(q, alpha=half)
            d.neg_().sub_(kl_qp.unsqueeze(1))
            torch.mul(d, q, out=g2).mul_(half)
            g2.add_(q, alpha=1.0 + half).sub_(p, alpha=half)
            del d
            if eps:
                g.sub_(eps / vocab)
            g.scatter_add_(
                1, both_targets, torch.full((2 * c, 1), eps - 1.0, dtype=compute, device=g.device)
            )
            g.div_(n)
            if grad_flat1 is not None or grad_flat2 is not None:
                gh = g @ weight_c
                if grad_flat1 is not None:
                    grad_flat1.index_copy_(0, idx, gh[:c])
                if grad_flat2 is not None:
                    grad_flat2.index_copy_(0, idx, gh[c:])
            if grad_w is not None:
                grad_w.addmm_(g.T, h)
            if grad_b is not None:
                grad_b += g.sum(dim=0)
        ce1, ce2, kl = (sums / max(n, 1)).unbind()
        loss = ce1 + ce2 + alpha * kl
        ctx.set_materialize_grads(False)
        # kept in the compute dtype: cast to the inputs' dtypes only in backward, after the
        # incoming gradient (a GradScaler's scale) is applied, so fp16 gradients do not flush
        grads = (
            None if grad_flat1 is None else grad_flat1.view_as(hidden1),
            None if grad_flat2 is None else grad_flat2.view_as(hidden2),
            grad_w,
            None if bias is None else grad_b,
        )
        ctx.present = tuple(g is not None for g in grads)
        ctx.dtypes = (
            hidden1.dtype,
            hidden2.dtype,
            weight.dtype,
            None if bias is None else bias.dtype,
        )
        ctx.save_for_backward(*(g for g in grads if g is not None))  # freed after backward
        return loss, ce1, ce2, kl

    @staticmethod
    def backward(
        ctx: Any, grad_loss: Tensor | None, *grad_parts: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        if any(g is not None for g in grad_parts):
            raise RuntimeError(
                "the parts of rdrop_linear_terms (ce, kl) are values for logging: their "
                "gradients are not formed (only the loss's are). Weight the KL with alpha, or use "
                "dropkit.rdrop_terms on explicit logits to differentiate the parts separately"
            )
        if torch.is_grad_enabled():  # create_graph=True: a gradient of these gradients is asked
            raise RuntimeError(
                "rdrop_linear_loss / rdrop_linear_terms have no second-order gradients (its "
                "gradients are formed in the forward, as constants): a gradient penalty or any "
                "create_graph=True through it would be silently wrong. Use dropkit.rdrop_loss on "
                "explicit logits (hidden @ weight.T) for that"
            )
        if grad_loss is None:  # reached only through unused outputs
            return (None,) * 10
        saved = iter(ctx.saved_tensors)
        grads = tuple(
            (next(saved) * grad_loss).to(dtype) if present else None
            for present, dtype in zip(ctx.present, ctx.dtypes)
        )
        return (*grads, None, None, None, None, None, None)


@torch.compiler.disable  # the row count after padding is data-dependent: one clean graph break
def rdrop_linear_terms(
    hidden1: Tensor,
    hidden2: Tensor,
    weight: Tensor,
    target: Tensor,
    alpha: float = 1.0,
    *,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    chunk_size: int | None = None,
) -> RDropTerms:
    """[`rdrop_linear_loss`][dropkit.rdrop_linear_loss] with its parts: CE of each pass and the
    mean pairwise KL.

    The gradient flows through ``loss`` only: ``ce`` and ``kl`` are values for logging, and a
    backward through them raises ``RuntimeError`` (their own gradients are never formed; use
    [`rdrop_terms`][dropkit.rdrop_terms] on explicit logits for that). Under ``torch.no_grad()``
    only the loss is computed (no gradient is formed), and a second derivative
    (``create_graph=True``, e.g. a gradient penalty) raises ``RuntimeError``.

    Args:
        hidden1: The first pass's final hidden states, ``(N, H)`` or ``(N, T, H)``.
        hidden2: The second pass's, the same shape.
        weight: The output projection's weight, ``(V, H)``: an ``nn.Linear(H, V).weight``, tied
            embeddings included.
        target: Class indices, an integer tensor shaped like the hidden states without ``H``.
        alpha: The weight of the KL term, a finite number >= 0 (the paper uses 0.5 to 5).
        bias: The output projection's bias, ``(V,)``, or None; an entry of ``-inf`` masks its
            class out.
        ignore_index: The target value of rows to skip (-100).
        label_smoothing: Label smoothing of the cross-entropy terms, in [0, 1].
        chunk_size: Rows scored at a time, at least 1; None (the default) picks
            [`default_chunk_size`][dropkit.rdrop_linear.default_chunk_size].

    Returns:
        The loss and its parts, as [`RDropTerms`][dropkit.RDropTerms] with two ``ce`` entries;
            0-dim tensors in float32 (float64 if an input is float64).

    Raises:
        TypeError: If ``target`` does not hold integers, an input is a ``DTensor`` (FSDP2:
            call the loss inside the sharded module's forward), or ``alpha``,
            ``label_smoothing`` or ``chunk_size`` has the wrong type.
        ValueError: If the shapes do not fit together, ``alpha`` is negative or not finite,
            ``label_smoothing`` lies outside [0, 1], or ``chunk_size`` is below 1.
    """
    _check(hidden1, hidden2, weight, bias, target, alpha, label_smoothing, chunk_size)
    # autocast would run the products in bf16 / fp16: this loss computes in float32 (or
    # float64) as promised, whatever region it is called from (backward only scales and casts)
    with torch.autocast(device_type=weight.device.type, enabled=False):
        loss, ce1, ce2, kl = _RDropLinear.apply(
            hidden1,
            hidden2,
            weight,
            bias,
            target,
            float(alpha),
            int(ignore_index),
            float(label_smoothing),
            chunk_size,
            torch.is_grad_enabled(),
        )
    return RDropTerms(loss=loss, ce=(ce1, ce2), kl=kl)


def rdrop_linear_loss(
    hidden1: Tensor,
    hidden2: Tensor,
    weight: Tensor,
    target: Tensor,
    alpha: float = 1.0,
    *,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    chunk_size: int | None = None,
) -> Tensor:
    """R-Drop's loss (paper Eq. 4) from two passes' hidden states and the output projection.

    Equal to ``rdrop_loss(hidden1 @ weight.T + bias, hidden2 @ weight.T + bias, target, alpha,
    ignore_index, label_smoothing)``, with gradients for ``hidden1``, ``hidden2``, ``weight`` and
    ``bias``, but computed ``chunk_size`` rows at a time so at most a chunk of logits per pass is
    alive, in forward and backward: use it where ``N x V`` logits do not fit (language models,
    vocabularies over ~10k). Rows equal to ``ignore_index`` are skipped.

    Logits, log-sum-exp, softmax and every reduction run in float32 (float64 stays float64),
    inside ``torch.autocast`` regions too; bf16 / fp16 inputs are upcast chunk by chunk, and the
    weight once. The gradients are formed in the forward and kept in float32 until backward has
    applied the incoming gradient (a ``GradScaler``'s scale), then cast to the inputs' dtypes:
    for low-precision inputs that holds float32 buffers of the hidden states' and the weight's
    sizes between forward and backward. There are no second-order gradients.

    Under ``torch.compile`` the loss runs eagerly, as one graph break (the number of rows left
    after padding is data-dependent); the model around it compiles, and ``fullgraph=True``
    refuses it. Under FSDP2 call it inside the forward of the sharded module that holds the
    output layer (a weight still sharded as a ``DTensor`` is refused, with how to fix it).

    Args:
        hidden1: The first pass's final hidden states, ``(N, H)`` or ``(N, T, H)``.
        hidden2: The second pass's, the same shape.
        weight: The output projection's weight, ``(V, H)``: an ``nn.Linear(H, V).weight``, tied
            embeddings included.
        target: Class indices, an integer tensor shaped like the hidden states without ``H``.
        alpha: The weight of the KL term, a finite number >= 0 (the paper uses 0.5 to 5).
        bias: The output projection's bias, ``(V,)``, or None; an entry of ``-inf`` masks its
            class out, as in [`rdrop_loss`][dropkit.rdrop_loss].
        ignore_index: The target value of rows to skip (-100).
        label_smoothing: Label smoothing of the cross-entropy terms, in [0, 1].
        chunk_size: Rows scored at a time, at least 1; None (the default) picks
            [`default_chunk_size`][dropkit.rdrop_linear.default_chunk_size].

    Returns:
        The loss, a 0-dim tensor in float32 (float64 if an input is float64).

    Raises:
        TypeError: If ``target`` does not hold integers, an input is a ``DTensor``, or
            ``alpha``, ``label_smoothing`` or ``chunk_size`` has the wrong type.
        ValueError: If the shapes do not fit together, ``alpha`` is negative or not finite,
            ``label_smoothing`` lies outside [0, 1], or ``chunk_size`` is below 1.
        RuntimeError: In backward, if a second derivative is asked for
            (``create_graph=True``).

    Examples:
        ```python
        import torch
        from torch import nn

        import dropkit

        body = nn.Sequential(nn.Embedding(1000, 64), nn.Dropout(0.1))  # stands for a decoder
        head = nn.Linear(64, 1000)  # the output projection: (V, H) = (1000, 64)
        tokens = torch.randint(0, 1000, (4, 16))
        hidden1, hidden2 = dropkit.rdrop_forward(body, tokens)  # (4, 16, 64) each
        loss = dropkit.rdrop_linear_loss(
            hidden1[:, :-1], hidden2[:, :-1], head.weight, tokens[:, 1:], alpha=1.0,
            bias=head.bias,
        )  # next-token R-Drop, never holding a pass's (4, 15, 1000) logits at once
        loss.backward()
        ```
    """
    return rdrop_linear_terms(
        hidden1,
        hidden2,
        weight,
        target,
        alpha,
        bias=bias,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        chunk_size=chunk_size,
    ).loss
