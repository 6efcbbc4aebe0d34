"""The chunked linear R-Drop loss against explicit logits: values, gradients, memory, precision."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import dropkit
from dropkit.rdrop_linear import default_chunk_size
from tests.test_rdrop import ref_rdrop


def _problem(shape: tuple[int, ...], hidden: int, vocab: int, seed: int, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    h1 = torch.randn(*shape, hidden, generator=gen, dtype=dtype)
    h2 = h1 + 0.5 * torch.randn(*shape, hidden, generator=gen, dtype=dtype)
    weight = torch.randn(vocab, hidden, generator=gen, dtype=dtype)
    bias = torch.randn(vocab, generator=gen, dtype=dtype)
    target = torch.randint(0, vocab, shape, generator=gen)
    return [t.requires_grad_() for t in (h1, h2, weight, bias)], target


def _explicit(h1, h2, weight, bias, target, alpha, **kw):
    """The unfused path: both passes' logits in full, then rdrop_loss."""
    logits1 = h1 @ weight.T + (0 if bias is None else bias)
    logits2 = h2 @ weight.T + (0 if bias is None else bias)
    return dropkit.rdrop_loss(logits1, logits2, target, alpha, **kw), (logits1, logits2)


def _grads(loss, inputs):
    return torch.autograd.grad(loss, inputs, allow_unused=True)


PADDING = {
    "none": lambda t: t,
    "some": lambda t: t.masked_fill(torch.arange(t.numel()).view_as(t) % 3 == 1, -100),
    "all": lambda t: torch.full_like(t, -100),
}


@settings(max_examples=30, deadline=None)
@given(
    shape=st.sampled_from([(5,), (1,), (2, 3), (3, 1), (1, 4)]),
    hidden=st.integers(1, 5),
    vocab=st.integers(2, 9),
    padding=st.sampled_from(sorted(PADDING)),
    smoothing=st.sampled_from([0.0, 0.1, 1.0]),
    alpha=st.sampled_from([0.0, 0.6, 4.0]),
    use_bias=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_float64_parity_with_rdrop_loss_for_every_chunk_size(
    shape, hidden, vocab, padding, smoothing, alpha, use_bias, seed
) -> None:
    (h1, h2, weight, bias), target = _problem(shape, hidden, vocab, seed)
    bias = bias if use_bias else None
    target = PADDING[padding](target)
    inputs = [t for t in (h1, h2, weight, bias) if t is not None]
    kw = {"label_smoothing": smoothing}
    expected, _ = _explicit(h1, h2, weight, bias, target, alpha, **kw)
    expected_grads = _grads(expected, inputs)
    rows = math.prod(shape)
    for chunk in range(1, rows + 1):
        got = dropkit.rdrop_linear_loss(
            h1, h2, weight, target, alpha, bias=bias, chunk_size=chunk, **kw
        )
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
        for g, e in zip(_grads(got, inputs), expected_grads, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def test_agrees_with_the_python_loop_reference_of_test_rdrop() -> None:
    (h1, h2, weight, bias), target = _problem((4, 3), 6, 7, seed=3)
    target = PADDING["some"](target)
    logits = (h1 @ weight.T + bias, h2 @ weight.T + bias)
    expected, (ce1, ce2), kl = ref_rdrop(logits, target, 1.5, smoothing=0.2)
    got = dropkit.rdrop_linear_terms(
        h1, h2, weight, target, 1.5, bias=bias, label_smoothing=0.2, chunk_size=5
    )
    torch.testing.assert_close(got.loss, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.stack(got.ce), torch.stack([ce1, ce2]), rtol=1e-12, atol=0)
    torch.testing.assert_close(got.kl, kl, rtol=1e-12, atol=0)


@pytest.mark.parametrize("chunk", [1, 2, 6])
@pytest.mark.parametrize("padding", ["none", "some"])
def test_gradcheck(chunk: int, padding: str) -> None:
    (h1, h2, weight, bias), target = _problem((2, 3), 3, 4, seed=chunk)
    target = PADDING[padding](target)

    def loss(a, b, w, c):
        return dropkit.rdrop_linear_loss(
            a, b, w, target, 0.8, bias=c, label_smoothing=0.1, chunk_size=chunk
        )

    assert torch.autograd.gradcheck(loss, (h1, h2, weight, bias))


def test_all_rows_ignored_gives_zero_loss_and_zero_gradients() -> None:
    (h1, h2, weight, _), target = _problem((3,), 4, 5, seed=0)
    loss = dropkit.rdrop_linear_loss(h1, h2, weight, torch.full_like(target, -7), ignore_index=-7)
    assert loss.item() == 0.0
    for g in _grads(loss, (h1, h2, weight)):
        assert torch.count_nonzero(g) == 0


def test_padding_rows_receive_no_gradient_and_do_not_change_the_loss() -> None:
    (h1, h2, weight, bias), target = _problem((6,), 4, 5, seed=1)
    padded = target.clone()
    padded[[1, 4]] = -100
    loss = dropkit.rdrop_linear_loss(h1, h2, weight, padded, 1.0, bias=bias)
    keep = torch.tensor([0, 2, 3, 5])
    kept = dropkit.rdrop_linear_loss(h1[keep], h2[keep], weight, target[keep], 1.0, bias=bias)
    torch.testing.assert_close(loss, kept, rtol=1e-12, atol=0)
    g1, g2 = _grads(loss, (h1, h2))
    assert torch.count_nonzero(g1[[1, 4]]) == 0 and torch.count_nonzero(g2[[1, 4]]) == 0


class _Matmuls(TorchDispatchMode):
    """Counts the matrix products the ops under it run."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.addmm_):
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_no_gradient_is_formed_without_autograd() -> None:
    (h1, h2, weight, bias), target = _problem((8,), 3, 5, seed=2)
    with torch.no_grad(), _Matmuls() as evaluation:
        loss = dropkit.rdrop_linear_loss(h1, h2, weight, target, 1.0, bias=bias, chunk_size=2)
    with _Matmuls() as training:
        dropkit.rdrop_linear_loss(h1, h2, weight, target, 1.0, bias=bias, chunk_size=2)
    assert not loss.requires_grad
    assert evaluation.count == 4  # one logits product per chunk of 2 rows, nothing more
    assert training.count == 12  # and the gradients of hidden states and weight on top
    expected, _ = _explicit(h1, h2, weight, bias, target, 1.0)
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-12, atol=0)


def test_a_second_derivative_is_refused_not_silently_wrong() -> None:
    (h1, h2, weight, _), target = _problem((4,), 3, 5, seed=3)
    loss = dropkit.rdrop_linear_loss(h1, h2, weight, target, 1.0)
    with pytest.raises(RuntimeError, match="no second-order gradients"):
        torch.autograd.grad(loss, h1, create_graph=True)
    (grad,) = torch.autograd.grad(dropkit.rdrop_linear_loss(h1, h2, weight, target, 1.0), h1)
    assert not grad.requires_grad  # a plain first derivative still works


def test_backward_scales_with_the_incoming_gradient_and_reaches_only_what_needs_it() -> None:
    (h1, h2, weight, _), target = _problem((4,), 3, 5, seed=4)
    frozen = weight.detach()
    (3.0 * dropkit.rdrop_linear_loss(h1, h2, frozen, target, 1.0)).backward()
    unfused, _ = _explicit(h1, h2, frozen, None, target, 1.0)
    expected = torch.autograd.grad(3.0 * unfused, h1)[0]
    torch.testing.assert_close(h1.grad, expected, rtol=1e-10, atol=1e-12)
    assert frozen.grad is None


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("chunk", [1, 4, 16])
def test_never_holds_more_than_a_chunk_of_logits_per_pass(chunk: int) -> None:
    rows, hidden, vocab = 64, 4, 300  # N x V = 19 200 logits per pass; the weight is 1 200
    (h1, h2, weight, bias), target = _problem((rows,), hidden, vocab, seed=5, dtype=torch.float32)
    with _LargestTensor() as mode:
        loss = dropkit.rdrop_linear_loss(h1, h2, weight, target, 1.0, bias=bias, chunk_size=chunk)
        loss.backward()
    # one buffer holds a chunk of both passes; nothing else is larger than the inputs (N x H)
    assert mode.largest <= max(2 * chunk * vocab, rows * hidden, vocab * hidden)
    with _LargestTensor() as unfused:
        _explicit(h1, h2, weight, bias, target, 1.0)[0].backward()
    assert unfused.largest >= rows * vocab  # the check can fail: the full logits do show up


def test_bf16_inputs_are_closer_to_the_float64_reference_than_the_unfused_bf16_path() -> None:
    (h1, h2, weight, bias), target = _problem((2, 48), 64, 1000, seed=6, dtype=torch.float32)
    low = [t.detach().to(torch.bfloat16).requires_grad_() for t in (h1, h2, weight, bias)]
    exact = [t.detach().double().requires_grad_() for t in low]  # the same values, in float64
    reference, _ = _explicit(*exact, target, 1.0)
    fused = dropkit.rdrop_linear_loss(*low[:3], target, 1.0, bias=low[3], chunk_size=16)
    unfused, _ = _explicit(*low, target, 1.0)
    assert fused.dtype == torch.float32 and unfused.dtype == torch.float32
    fused_err = (fused.double() - reference).abs().item()
    unfused_err = (unfused.double() - reference).abs().item()
    # stated tolerance: 1e-5 relative (float32 logits from bf16 inputs), and closer than unfused
    assert fused_err <= 1e-5 * reference.abs().item()
    assert fused_err < unfused_err
    ref_grads = _grads(reference, exact)
    for g, r, t in zip(_grads(fused, low), ref_grads, low, strict=True):
        assert g.dtype == t.dtype == torch.bfloat16
        # gradients come back in the inputs' dtype: bf16 rounding (2^-8 relative) bounds them
        torch.testing.assert_close(g.double(), r, rtol=2**-7, atol=2**-7 * r.abs().max().item())


def test_tied_weight_receives_both_the_embedding_and_the_head_gradient() -> None:
    emb = torch.nn.Embedding(7, 4).double()
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    target = torch.tensor([[2, 3, 4], [5, 6, 0]])

    def grad_of(loss_fn) -> torch.Tensor:
        emb.zero_grad()
        h = emb(ids)
        loss_fn(torch.tanh(h), torch.sin(h)).backward()
        return emb.weight.grad.clone()

    fused = grad_of(lambda a, b: dropkit.rdrop_linear_loss(a, b, emb.weight, target, chunk_size=2))
    unfused = grad_of(lambda a, b: _explicit(a, b, emb.weight, None, target, 1.0)[0])
    torch.testing.assert_close(fused, unfused, rtol=1e-12, atol=1e-12)


@settings(max_examples=50, deadline=None)
@given(rows=st.integers(1, 10**6), vocab=st.integers(1, 10**6), hidden=st.integers(1, 10**4))
def test_default_chunk_size_rule(rows: int, vocab: int, hidden: int) -> None:
    chunk = default_chunk_size(rows, vocab, hidden)
    assert 1 <= chunk <= rows
    if chunk < rows:  # a power of two within both bounds (or 1 when they are below 1)
        assert chunk & (chunk - 1) == 0
        assert chunk == 1 or (chunk <= hidden and chunk * vocab <= 2**23)
    assert default_chunk_size(4096, 128_000, 512) == 64
    assert default_chunk_size(4096, 32_000, 512) == 256


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda a: {**a, "hidden2": a["hidden2"][:, :1]}, ValueError, "same inputs"),
        (lambda a: {**a, "weight": a["weight"][:, :2]}, ValueError, "output projection"),
        (lambda a: {**a, "bias": a["bias"][:2]}, ValueError, "one per class"),
        (lambda a: {**a, "target": a["target"][:2]}, ValueError, "without the hidden"),
        (lambda a: {**a, "target": a["target"].double()}, TypeError, "integer class"),
        (lambda a: {**a, "alpha": -1.0}, ValueError, "alpha"),
        (lambda a: {**a, "label_smoothing": 1.5}, ValueError, "label_smoothing"),
        (lambda a: {**a, "chunk_size": 0}, ValueError, "chunk_size"),
        (
            lambda a: {**a, "hidden1": a["hidden1"][0], "hidden2": a["hidden2"][0]},
            ValueError,
            "must be",
        ),
    ],
)
def test_invalid_input_is_refused_with_a_reason(change, error, match) -> None:
    (h1, h2, weight, bias), target = _problem((4,), 3, 5, seed=0)
    args = {"hidden1": h1, "hidden2": h2, "weight": weight, "target": target, "bias": bias}
    with pytest.raises(error, match=match):
        dropkit.rdrop_linear_loss(**change(args))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_under_autocast_it_computes_in_float32_as_outside(dtype) -> None:
    (h1, h2, weight, bias), target = _problem((6, 5), 8, 40, seed=7)
    inputs = [t.detach().float().requires_grad_() for t in (h1, h2, weight, bias)]
    plain = [t.detach().clone().requires_grad_() for t in inputs]
    with torch.autocast("cpu", dtype=dtype):  # a manual loop's, or Lightning's bf16-mixed region
        loss = dropkit.rdrop_linear_loss(*inputs[:3], target, 1.0, bias=inputs[3])
    expected = dropkit.rdrop_linear_loss(*plain[:3], target, 1.0, bias=plain[3])
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)
    loss.backward()
    expected.backward()
    for got, want in zip(inputs, plain):
        torch.testing.assert_close(got.grad, want.grad, rtol=0, atol=0)


def test_fp16_gradients_are_cast_after_the_loss_scale_not_before() -> None:
    g = torch.Generator().manual_seed(11)
    n, hidden, vocab, scale = 2048, 16, 64, 2.0**16
    h1, h2 = (torch.randn(n, hidden, generator=g).half().requires_grad_() for _ in range(2))
    weight = (1e-3 * torch.randn(vocab, hidden, generator=g)).half().requires_grad_()
    target = torch.randint(0, vocab, (n,), generator=g)
    (scale * dropkit.rdrop_linear_loss(h1, h2, weight, target, 1.0)).backward()  # a GradScaler
    wide = [t.detach().float().requires_grad_() for t in (h1, h2, weight)]
    dropkit.rdrop_linear_loss(*wide, target, 1.0).backward()
    expected = (wide[0].grad * scale).half()  # float32 gradient, scaled, then rounded once
    assert torch.equal(h1.grad, expected)
    assert (h1.grad == 0).float().mean() <= (expected == 0).float().mean()


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_a_class_masked_out_by_a_minus_inf_bias_gives_rdrop_losss_value_and_gradients(
    smoothing,
) -> None:
    (h1, h2, weight, bias), target = _problem((6,), 4, 7, seed=11)
    target = target.clamp(max=5)  # the masked class is never a target: the loss stays finite
    masked = bias.detach().clone()
    masked[6] = -math.inf
    masked.requires_grad_()
    inputs = (h1, h2, weight)
    kw = dict(label_smoothing=smoothing)
    loss = dropkit.rdrop_linear_loss(h1, h2, weight, target, 1.5, bias=masked, chunk_size=4, **kw)
    expected, _ = _explicit(h1, h2, weight, masked, target, 1.5, **kw)
    if smoothing:  # smoothing spreads mass onto the -inf class: infinite for both paths alike
        assert math.isinf(loss.item()) and math.isinf(expected.item())
        return
    assert math.isfinite(loss.item())
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    for got, want in zip(_grads(loss, inputs), _grads(expected, inputs)):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_float64_hidden_states_with_a_float32_weight_compute_in_float64() -> None:
    (h1, h2, weight, _), target = _problem((5,), 4, 6, seed=12)
    weight32 = weight.detach().float().requires_grad_()
    loss = dropkit.rdrop_linear_loss(h1, h2, weight32, target, 1.0)
    # the reference: the same float32 weight values, everything else in float64
    expected, _ = _explicit(h1, h2, weight32.detach().double(), None, target, 1.0)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, expected, rtol=1e-13, atol=0)  # float32 math: ~1e-7
    (grad_w,) = torch.autograd.grad(loss, weight32)
    assert grad_w.dtype == torch.float32  # each gradient in its input's dtype


def test_the_parts_are_values_and_a_backward_through_them_is_refused() -> None:
    (h1, h2, weight, bias), target = _problem((6,), 3, 5, seed=13)
    terms = dropkit.rdrop_linear_terms(h1, h2, weight, target, 1.0, bias=bias)
    expected = dropkit.rdrop_terms(_explicit(h1, h2, weight, bias, target, 1.0)[1], target, 1.0)
    for got, want in zip((*terms.ce, terms.kl), (*expected.ce, expected.kl)):
        torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=0)
        with pytest.raises(RuntimeError, match="values for logging"):
            torch.autograd.grad(got, h1, retain_graph=True)
    with pytest.raises(RuntimeError, match="values for logging"):  # also beside the loss
        torch.autograd.grad(terms.loss + terms.kl, h1, retain_graph=True)
    (grad,) = torch.autograd.grad(terms.loss, h1)  # the loss alone still differentiates
    torch.testing.assert_close(grad, torch.autograd.grad(expected.loss, h1)[0], rtol=1e-10, atol=0)


def test_under_torch_compile_the_model_compiles_around_one_graph_break() -> None:
    (h1, h2, weight, bias), target = _problem((2, 5), 4, 9, seed=14, dtype=torch.float32)
    target[0, 1] = -100

    def step(h1, h2, weight, bias, target):
        return 3 * dropkit.rdrop_linear_loss(
            h1.tanh(), h2.tanh(), weight, target, 0.7, bias=bias, chunk_size=3
        )

    inputs = (h1, h2, weight, bias)
    expected = step(*inputs, target)
    explained = torch._dynamo.explain(step)(*inputs, target)
    assert explained.graph_break_count == 1  # was 4: nonzero's data-dependent row count
    assert "torch.compiler.disable" in explained.break_reasons[0].reason
    torch._dynamo.reset()
    loss = torch.compile(step)(*inputs, target)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    for got, want in zip(_grads(loss, inputs), _grads(expected, inputs)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
