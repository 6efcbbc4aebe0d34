import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from dropkit import Dropout, DropPath, drop_path, dropout

N = 400_000


def _tolerance(p: float, n: int) -> float:
    """Five standard errors of a Bernoulli(p) proportion over n draws."""
    return 5 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_drop_fraction_and_mean_match_torch(p: float) -> None:
    x = torch.ones(N)
    ours = dropout(x, p)
    theirs = F.dropout(x, p, training=True)
    for out in (ours, theirs):
        assert abs((out == 0).float().mean().item() - p) < _tolerance(p, N)
        # inverted scaling preserves the mean: E[out] = 1, std of the mean = sqrt(p/(1-p)/N)
        assert abs(out.mean().item() - 1.0) < 5 * math.sqrt(p / (1 - p) / N)
    assert torch.allclose(ours[ours != 0], torch.full_like(ours[ours != 0], 1 / (1 - p)))


@settings(max_examples=50, deadline=None)
@given(p=st.floats(0.01, 0.99), seed=st.integers(0, 2**31 - 1))
def test_dropout_output_is_zero_or_scaled_input(p: float, seed: int) -> None:
    torch.manual_seed(seed)
    x = torch.randn(7, 5)
    out = dropout(x, p)
    kept = out != 0
    assert torch.allclose(out[kept], x[kept] / (1 - p))


def test_dropout_edge_rates_and_eval() -> None:
    x = torch.randn(4, 3)
    assert dropout(x, 0.0) is x
    assert dropout(x, 0.7, training=False) is x
    special = torch.tensor([1.0, float("inf"), float("nan")], requires_grad=True)
    zeros = dropout(special, 1.0)
    assert torch.equal(zeros, torch.zeros(3))
    zeros.sum().backward()
    assert torch.equal(special.grad, torch.zeros(3))


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_rate_out_of_range_is_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="probability"):
        dropout(torch.ones(2), bad)
    with pytest.raises(ValueError, match=r"Dropout\.p"):
        Dropout(bad)
    with pytest.raises(ValueError, match=r"DropPath\.drop_prob"):
        DropPath(0.1).drop_prob = bad
    with pytest.raises(TypeError):
        Dropout("0.1")  # type: ignore[arg-type]


@pytest.mark.parametrize("p", [0.2, 0.6])
def test_drop_path_drops_whole_samples(p: float) -> None:
    x = torch.randn(20_000, 3, 4)
    out = drop_path(x, p, training=True)
    dropped = (out == 0).flatten(1).all(1)
    assert abs(dropped.float().mean().item() - p) < _tolerance(p, 20_000)
    assert torch.allclose(out[~dropped], x[~dropped] / (1 - p))
    assert drop_path(x, p, training=False) is x
    assert torch.equal(drop_path(x, 1.0, training=True), torch.zeros_like(x))


def test_modules_built_at_zero_can_be_switched_on() -> None:
    x = torch.ones(10_000)
    drop, path = Dropout(0.0), DropPath(0.0)
    assert torch.equal(drop(x), x) and torch.equal(path(x), x)
    drop.p, path.drop_prob = 0.5, 0.5
    assert (drop(x) == 0).any() and (path(x) == 0).any()
    drop.eval()
    assert torch.equal(drop(x), x)
    assert "p=0.5" in repr(drop) and "drop_prob=0.5" in repr(path)


def test_modules_at_rate_zero_return_their_input_and_track_active() -> None:
    x = torch.randn(4, 3)
    drop, path = Dropout(0.0), DropPath(0.0)
    assert drop.train()(x) is x and path.train()(x) is x  # eager: no mask drawn, no multiply
    assert (drop.active, path.active) == (False, False)
    drop.p, path.drop_prob = 0.2, 1.0
    assert (drop.active, path.active) == (True, True)
    drop.p = 0.0
    assert drop.active is False
