"""Pure diagnostics (GDV, GDE, bias-variance, gradient norm, distance) against naive references.

References store every gradient and use an explicit pairwise cosine matrix / explicit loops in
float64; laws are checked with hypothesis.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from dropkit import diagnostics as dd

# --- naive references: all gradients stored, explicit pairs, float64 ----------------------------


def ref_cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


def ref_gdv(grads: list[torch.Tensor]) -> float:
    matrix = torch.stack([g.double() for g in grads])
    unit = matrix / matrix.norm(dim=1, keepdim=True)
    cosines = unit @ unit.T
    n = len(grads)
    total = sum(0.5 * (1.0 - float(cosines[i, j])) for i, j in itertools.combinations(range(n), 2))
    return 2.0 / (n * (n - 1)) * total


def ref_gde(grads: list[torch.Tensor], full: torch.Tensor) -> float:
    return sum(0.5 * (1.0 - ref_cos(g, full)) for g in grads) / len(grads)


def ref_bias_variance(grads, full, normalize=False):
    matrix = torch.stack([g.double() for g in grads])
    target = full.double()
    if normalize:
        matrix = matrix / matrix.norm(dim=1, keepdim=True)
        target = target / target.norm()
    mean = matrix.mean(dim=0)
    bias_sq = float(((mean - target) ** 2).sum())
    variance = sum(float(((row - mean) ** 2).sum()) for row in matrix) / len(grads)
    error = sum(float(((row - target) ** 2).sum()) for row in matrix) / len(grads)
    return bias_sq, variance, error


# --- strategies ---------------------------------------------------------------------------------

finite = st.floats(-10.0, 10.0, allow_nan=False, width=32)


@st.composite
def gradient_sets(draw, min_size: int = 2):
    """Lists of same-length gradients, each with a well-defined direction."""
    dim = draw(st.integers(1, 12))
    count = draw(st.integers(min_size, 8))
    vector = st.lists(finite, min_size=dim, max_size=dim).map(
        lambda v: torch.tensor(v, dtype=torch.float64)
    )
    grads = draw(st.lists(vector, min_size=count, max_size=count))
    assume(all(float(g.norm()) > 1e-3 for g in grads))
    return grads


# --- GDV ----------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(gradient_sets())
def test_gdv_matches_pairwise_cosine_reference(grads):
    value = dd.gradient_direction_variance(grads)
    assert value == pytest.approx(ref_gdv(grads), abs=1e-9)
    assert 0.0 <= value <= 1.0


@settings(max_examples=40, deadline=None)
@given(
    st.lists(finite, min_size=1, max_size=10).filter(lambda v: math.hypot(*v) > 1e-2),
    st.lists(st.floats(0.01, 100.0), min_size=2, max_size=8),
)
def test_gdv_is_zero_for_positive_multiples_of_one_gradient(vector, scales):
    base = torch.tensor(vector)
    assert dd.gradient_direction_variance([s * base for s in scales]) == pytest.approx(0, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(gradient_sets(), st.data())
def test_gdv_is_invariant_to_positive_rescaling_of_each_gradient(grads, data):
    scales = data.draw(st.lists(st.floats(0.01, 100.0), min_size=len(grads), max_size=len(grads)))
    rescaled = [s * g for s, g in zip(scales, grads)]
    assert dd.gradient_direction_variance(rescaled) == pytest.approx(
        dd.gradient_direction_variance(grads), abs=1e-9
    )


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 16), st.integers(0, 2**31 - 1))
def test_gdv_is_one_half_for_orthogonal_directions(count, seed):
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(32, 32, generator=generator, dtype=torch.float64))
    scales = torch.rand(count, generator=generator, dtype=torch.float64) + 0.1
    grads = [scales[i] * basis[:, i] for i in range(count)]  # orthogonal, arbitrary lengths
    assert dd.gradient_direction_variance(grads) == pytest.approx(0.5, abs=1e-12)


def test_gdv_of_random_directions_is_one_half_on_average():
    grads = torch.randn(64, 20_000)  # random high-dimensional directions are nearly orthogonal
    assert dd.gradient_direction_variance(grads) == pytest.approx(0.5, abs=0.005)


def test_gdv_is_one_for_opposite_pairs():
    g = torch.randn(50)
    assert dd.gradient_direction_variance([g, -3.0 * g]) == pytest.approx(1.0, abs=1e-12)


def test_gdv_streams_from_a_generator_without_a_list():
    grads = [torch.randn(40) for _ in range(10)]
    assert dd.gradient_direction_variance(g for g in grads) == pytest.approx(ref_gdv(grads))


# --- GDE ----------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(gradient_sets(min_size=1), st.data())
def test_gde_matches_explicit_loop_reference(grads, data):
    dim = grads[0].numel()
    full = torch.tensor(data.draw(st.lists(finite, min_size=dim, max_size=dim)))
    if float(full.norm()) < 1e-3:
        full = full + 1.0
    value = dd.gradient_direction_error(grads, full)
    assert value == pytest.approx(ref_gde(grads, full), abs=1e-9)
    assert 0.0 <= value <= 1.0


@settings(max_examples=40, deadline=None)
@given(
    st.lists(finite, min_size=1, max_size=10).filter(lambda v: math.hypot(*v) > 1e-2),
    st.lists(st.floats(0.01, 100.0), min_size=1, max_size=8),
)
def test_gde_is_zero_when_every_gradient_points_like_the_full_gradient(vector, scales):
    full = torch.tensor(vector)
    assert dd.gradient_direction_error([s * full for s in scales], full) == pytest.approx(
        0.0, abs=1e-9
    )


@settings(max_examples=40, deadline=None)
@given(gradient_sets(), st.data())
def test_direction_laws_link_gdv_gde_and_unit_bias_variance(grads, data):
    """GDV = n/(2(n-1)) · unit variance and GDE = unit error / 4: two formulations agree."""
    dim, n = grads[0].numel(), len(grads)
    full = torch.tensor(data.draw(st.lists(finite, min_size=dim, max_size=dim))) + 0.5
    assume(float(full.norm()) > 1e-3)  # e.g. a draw of -0.5 in one dimension has no direction
    unit = dd.gradient_bias_variance(grads, full, normalize=True)
    assert dd.gradient_direction_variance(grads) == pytest.approx(
        n / (2 * (n - 1)) * unit.variance, abs=1e-9
    )
    assert dd.gradient_direction_error(grads, full) == pytest.approx(unit.error / 4, abs=1e-9)


def test_direction_inputs_are_validated():
    with pytest.raises(ValueError, match="at least 2"):
        dd.gradient_direction_variance([torch.ones(3)])
    with pytest.raises(ValueError, match="direction is undefined"):
        dd.gradient_direction_variance([torch.ones(3), torch.zeros(3)])
    with pytest.raises(ValueError, match="direction is undefined"):
        dd.gradient_direction_variance([torch.ones(3), torch.tensor([1.0, float("nan"), 0.0])])
    with pytest.raises(ValueError, match="1-D"):
        dd.gradient_direction_variance([torch.ones(2, 2), torch.ones(2, 2)])
    with pytest.raises(ValueError, match="same parameters"):
        dd.gradient_direction_variance([torch.ones(3), torch.ones(4)])
    with pytest.raises(ValueError, match="same parameters"):
        dd.gradient_direction_error([torch.ones(3)], torch.ones(4))


# --- bias-variance ------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(gradient_sets(min_size=1), st.data(), st.booleans())
def test_bias_variance_matches_stored_reference(grads, data, normalize):
    dim = grads[0].numel()
    full = torch.tensor(data.draw(st.lists(finite, min_size=dim, max_size=dim))) + 0.5
    assume(float(full.norm()) > 1e-3)  # normalizing needs a direction
    got = dd.gradient_bias_variance(grads, full, normalize=normalize)
    bias_sq, variance, error = ref_bias_variance(grads, full, normalize)
    assert got.bias_sq == pytest.approx(bias_sq, rel=1e-9, abs=1e-9)
    assert got.variance == pytest.approx(variance, rel=1e-9, abs=1e-9)
    assert got.error == pytest.approx(error, rel=1e-9, abs=1e-9)  # bias² + variance = MSE


def test_bias_variance_welford_keeps_precision_under_a_large_mean():
    """A naive E‖g‖² - ‖E g‖² would lose the small variance to cancellation."""
    generator = torch.Generator().manual_seed(1)
    offset = torch.full((1000,), 1e4, dtype=torch.float64)
    grads = [
        offset + 1e-3 * torch.randn(1000, generator=generator, dtype=torch.float64)
        for _ in range(20)
    ]
    got = dd.gradient_bias_variance(grads, offset)
    _, variance, _ = ref_bias_variance(grads, offset)
    assert got.variance == pytest.approx(variance, rel=1e-6)


def test_bias_variance_is_zero_bias_for_the_mean_and_zero_variance_for_identical():
    grads = [torch.randn(30) for _ in range(5)]
    mean = torch.stack(grads).double().mean(0)
    assert dd.gradient_bias_variance(grads, mean).bias_sq == pytest.approx(0, abs=1e-12)
    same = dd.gradient_bias_variance([grads[0]] * 4, grads[1])
    assert same.variance == pytest.approx(0, abs=1e-12)


# --- gradient norm and distance -----------------------------------------------------------------


def test_gradient_norm_matches_concatenated_grads():
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2))
    model(torch.randn(4, 5)).square().sum().backward()
    reference = torch.cat([p.grad.double().reshape(-1) for p in model.parameters()]).norm()
    assert dd.gradient_norm(model) == pytest.approx(float(reference), rel=1e-12)
    assert dd.gradient_norm(model.parameters()) == pytest.approx(float(reference), rel=1e-12)


def test_gradient_norm_without_grads_says_when_to_call():
    with pytest.raises(ValueError, match=r"after loss.backward\(\)"):
        dd.gradient_norm(nn.Linear(3, 3))


def test_distance_is_zero_at_init_and_the_update_norm_after_a_step():
    model = nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 2))
    distance = dd.DistanceFromInit(model, device="cpu")
    assert distance() == 0.0
    before = [p.detach().double() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    moves = [p.detach().double() - b for p, b in zip(model.parameters(), before)]
    expected = math.sqrt(sum(float(m.square().sum()) for m in moves))
    assert distance() == pytest.approx(expected, rel=1e-12)


def test_distance_snapshot_is_a_copy_and_reference_can_be_given():
    model = nn.Linear(4, 3)
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    distance = dd.DistanceFromInit(model)
    with torch.no_grad():
        model.weight.mul_(2.0)
    assert distance() == pytest.approx(float(initial["weight"].double().norm()), rel=1e-12)
    resumed = dd.DistanceFromInit(model, reference=initial)
    assert resumed() == pytest.approx(distance(), rel=1e-12)
    with pytest.raises(ValueError, match="lacks"):
        dd.parameter_distance(dict(model.named_parameters()), {"weight": initial["weight"]})
