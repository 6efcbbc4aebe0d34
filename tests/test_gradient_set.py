"""The one measurement path for gradient sets: its rules, a naive reference, and its callers."""

from __future__ import annotations

import copy
import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dropkit import diagnostics as dd
from dropkit.diagnostics import gradient_set
from dropkit.experiments.advise.probe import _gde
from dropkit.experiments.builtin.data import Dataset
from dropkit.experiments.builtin.dynamics import INSTRUMENTS, DynamicsProbe
from dropkit.experiments.config.specs import DynamicsSpec


def mlp(p: float) -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(p), nn.Linear(16, 3))


def random_data(n: int = 100, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=generator)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


# --- the rules for G and ĝ ----------------------------------------------------------------------


def test_sample_batches_is_the_seeded_uniform_with_replacement_rule():
    x, y = random_data()
    generator = torch.Generator().manual_seed(7)
    indices = [torch.randint(0, len(x), (5,), generator=generator) for _ in range(4)]
    batches = dd.sample_batches(x, y, n_batches=4, batch_size=5, seed=7)
    assert len(batches) == 4
    for (bx, by), index in zip(batches, indices, strict=True):
        assert torch.equal(bx, x[index]) and torch.equal(by, y[index])


def test_sample_batches_is_deterministic_per_seed_and_leaves_the_global_rng_alone():
    x, y = random_data()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = dd.sample_batches(x, y, 3, 8, seed=1)
    again = dd.sample_batches(x, y, 3, 8, seed=1)
    other = dd.sample_batches(x, y, 3, 8, seed=2)
    assert torch.equal(torch.get_rng_state(), before)
    for (ax, ay), (bx, by) in zip(first, again, strict=True):
        assert torch.equal(ax, bx) and torch.equal(ay, by)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"n_batches": 0}, ValueError, "n_batches"),
        ({"batch_size": -1}, ValueError, "batch_size"),
        ({"batch_size": True}, TypeError, "batch_size"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"seed": None}, TypeError, "seed"),
        ({"y": torch.zeros(3, dtype=torch.long)}, ValueError, "pair up"),
        ({"x": torch.zeros(0, 6), "y": torch.zeros(0, dtype=torch.long)}, ValueError, "no samples"),
        ({"x": [[0.0]]}, ValueError, "tensors"),
    ],
)
def test_sample_batches_validates_its_arguments(kwargs, error, message):
    x, y = random_data()
    args = {"x": x, "y": y, "n_batches": 2, "batch_size": 4, "seed": 0, **kwargs}
    with pytest.raises(error, match=message):
        dd.sample_batches(**args)


@pytest.mark.parametrize(("n", "chunk"), [(100, 8192), (100, 7), (100, 25), (1, 1)])
def test_whole_data_batches_cover_every_sample_exactly_once_in_order(n, chunk):
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1).repeat(1, 6)
    y = torch.arange(n)
    batches = dd.whole_data_batches(x, y, chunk)
    assert len(batches) == math.ceil(n / chunk)
    assert all(len(bx) <= chunk and len(bx) == len(by) for bx, by in batches)
    assert torch.equal(torch.cat([by for _, by in batches]), y)  # each index once, in order
    assert torch.equal(torch.cat([bx for bx, _ in batches]), x)
    with pytest.raises(ValueError, match="chunk"):
        dd.whole_data_batches(x, y, 0)


# --- measure_gradient_set against a naive reference ---------------------------------------------


def naive_reference(model, batches, x, y, seed):
    """Everything stored, plain loops: G by autograd with dropout drawn from ``seed`` in order,
    GDV from pairwise cosines, ĝ in one backward over all the data in eval mode."""
    params = [p for p in model.parameters() if p.requires_grad]

    def flat(loss):
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]).double()

    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        grads = [flat(F.cross_entropy(model(bx), by)) for bx, by in batches]
    frozen = copy.deepcopy(model).eval()  # dropout-only model: eval = dropout off
    frozen_params = list(frozen.parameters())
    full_parts = torch.autograd.grad(F.cross_entropy(frozen(x), y), frozen_params)
    full = torch.cat([g.reshape(-1) for g in full_parts]).double()

    def cos(a, b):
        return float(a @ b) / (float(a.norm()) * float(b.norm()))

    n = len(grads)
    pairs = list(itertools.combinations(range(n), 2))
    gdv = sum(0.5 * (1 - cos(grads[i], grads[j])) for i, j in pairs) / len(pairs)
    gde = sum(0.5 * (1 - cos(g, full)) for g in grads) / n
    mean = sum(grads) / n
    units = [g / g.norm() for g in grads]
    unit_mean = sum(units) / n
    full_unit = full / full.norm()
    return {
        "gdv": gdv,
        "gde": gde,
        "bias_sq": float((mean - full).square().sum()),
        "variance": sum(float((g - mean).square().sum()) for g in grads) / n,
        "unit_bias_sq": float((unit_mean - full_unit).square().sum()),
        "unit_variance": sum(float((u - unit_mean).square().sum()) for u in units) / n,
        "mean_batch_grad_norm": sum(float(g.norm()) for g in grads) / n,
    }


@pytest.mark.parametrize(("p", "method"), [(0.3, "loop"), (0.0, "vmap"), (0.0, "loop")])
def test_measure_gradient_set_matches_a_naive_reference(p, method):
    x, y = random_data()
    torch.manual_seed(0)
    model = mlp(p).train()
    batches = dd.sample_batches(x, y, n_batches=6, batch_size=10, seed=3)
    stats = dd.measure_gradient_set(
        model, batches, dd.whole_data_batches(x, y, chunk=30), method=method, seed=11
    )
    expected = naive_reference(model, batches, x, y, seed=11)
    assert stats.num_grads == 6
    for name, value in expected.items():
        # G alone is float64 from float32 gradients: with the loop they are the reference's own
        # gradients, equal to rounding; vmap forms them with batched kernels whose float32 sums
        # run in another order on some CPUs (seen: GDV off by 3e-9 relative), so 1e-6 there.
        # ĝ is float32 chunk by chunk here and in one backward there: what uses it is 1e-5.
        own = 1e-12 if method == "loop" else 1e-6
        rel = 1e-5 if name in ("gde", "bias_sq", "unit_bias_sq") else own
        assert getattr(stats, name) == pytest.approx(value, rel=rel, abs=0), name
    assert stats.error == stats.bias_sq + stats.variance
    assert stats.unit_error == stats.unit_bias_sq + stats.unit_variance
    assert set(stats.to_dict()) == set(expected) | {"num_grads"}


def test_without_full_batches_only_the_set_itself_is_measured():
    x, y = random_data()
    model = mlp(0.3).train()
    batches = dd.sample_batches(x, y, 4, 10, seed=0)
    stats = dd.measure_gradient_set(model, batches, seed=5)
    assert 0 <= stats.gdv <= 1 and stats.mean_batch_grad_norm > 0 and stats.num_grads == 4
    assert stats.gde is None and stats.bias_sq is None and stats.unit_variance is None
    assert stats.error is None and stats.unit_error is None
    with_full = dd.measure_gradient_set(model, batches, dd.whole_data_batches(x, y), seed=5)
    assert with_full.gdv == stats.gdv  # same seed, same masks: ĝ does not change G
    assert dd.measure_gradient_set(model, batches[:1], seed=5).gdv is None  # GDV needs two
    with pytest.raises(ValueError, match="no batches"):
        dd.measure_gradient_set(model, [], seed=5)


def test_measure_gradient_set_leaves_training_state_and_rng_untouched():
    x, y = random_data()
    model = mlp(0.3).train()
    state = copy.deepcopy(model.state_dict())
    torch.manual_seed(9)
    before = torch.get_rng_state()
    dd.measure_gradient_set(
        model, dd.sample_batches(x, y, 3, 10, seed=0), dd.whole_data_batches(x, y)
    )
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert model.training and all(p.grad is None for p in model.parameters())


# --- the three callers route through the one function -------------------------------------------


def test_demo_probe_recorder_and_advisor_measure_the_same_numbers(monkeypatch):
    calls = []  # every pass over G and ĝ the three callers make goes through gradient_set
    for name in ("mini_batch_gradients", "full_gradient"):
        original = getattr(gradient_set, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls.append((_name, kwargs["seed"]))
            return _original(*args, **kwargs)

        monkeypatch.setattr(gradient_set, name, counted)
    x, y = random_data(120)
    data = Dataset("random", x, y, x[:10], y[:10], 3)
    n_batches, batch_size, step = 5, 12, 4
    stream = dd.step_seed(0, step)  # the one seeding rule: run seed 0 measured at `step`
    model_fn = lambda: mlp(0.3)  # noqa: E731
    torch.manual_seed(0)
    model = model_fn().train()

    spec = DynamicsSpec(variants=("v",), every=1, window=1, until=1, n_batches=n_batches)
    probe = DynamicsProbe(spec, model_fn, data, [0], 1, batch_size, "v")
    probe.records.clear()
    calls.clear()  # the probe's step-0 measurement of its own initialisation
    probe._measure(0, step, copy.deepcopy(model))
    demo = {r["instrument"]: r["value"] for r in probe.records}
    assert set(demo) == set(INSTRUMENTS)

    batches = dd.sample_batches(x, y, n_batches, batch_size, seed=stream)
    recorder = dd.DynamicsRecorder(
        copy.deepcopy(model),
        ["gdv", "gde", "bias_variance"],
        batches=batches,
        full_batches=dd.whole_data_batches(x, y),
        seed=0,
    )
    recorded = {r["instrument"]: r["value"] for r in recorder.step(step)}

    population = SimpleNamespace(member=lambda i: copy.deepcopy(model))
    advised = _gde(SimpleNamespace(seeds=[0], population=population), data, batch_size, 5, step)

    direct = dd.measure_gradient_set(model, batches, dd.whole_data_batches(x, y), seed=stream)
    assert demo["gdv"] == recorded["gdv"] == direct.gdv
    assert demo["gde"] == recorded["gde"] == advised[0] == direct.gde
    assert demo["bias_sq"] == recorded["bias_variance"]["unit_bias_sq"] == direct.unit_bias_sq
    assert demo["variance"] == recorded["bias_variance"]["unit_variance"] == direct.unit_variance
    assert recorded["bias_variance"]["variance"] == direct.variance
    assert demo["batch_grad_norm"] == direct.mean_batch_grad_norm
    assert 0 < direct.gdv < 1 and 0 < direct.gde < 1
    assert calls == [("mini_batch_gradients", stream), ("full_gradient", stream)] * 4


def test_step_seed_is_the_recorders_rule_and_separates_nearby_pairs():
    seeds = {dd.step_seed(s, t) for s in range(20) for t in range(20)}
    assert len(seeds) == 400 and all(0 <= v < 2**63 for v in seeds)
    expected = int(np.random.SeedSequence([3, 7]).generate_state(1, np.uint64)[0] >> 1)
    assert dd.step_seed(3, 7) == expected
    with pytest.raises(ValueError, match="step"):
        dd.step_seed(0, -1)


def test_the_probe_takes_g_hat_over_the_first_reference_samples_when_asked():
    x, y = random_data(120)
    data = Dataset("random", x, y, x[:10], y[:10], 3)
    model_fn = lambda: mlp(0.3)  # noqa: E731
    spec = DynamicsSpec(variants=("v",), every=1, window=1, until=1, n_batches=3,
                        reference_samples=50)  # fmt: skip
    probe = DynamicsProbe(spec, model_fn, data, [0], 1, 12, "v")
    torch.manual_seed(0)
    model = model_fn().train()
    probe.records.clear()
    probe._measure(0, 4, copy.deepcopy(model))
    batches = dd.sample_batches(x, y, 3, 12, seed=dd.step_seed(0, 4))
    subset = dd.measure_gradient_set(model, batches, dd.whole_data_batches(x[:50], y[:50]),
                                     seed=dd.step_seed(0, 4))  # fmt: skip
    whole = dd.measure_gradient_set(model, batches, dd.whole_data_batches(x, y),
                                    seed=dd.step_seed(0, 4))  # fmt: skip
    measured = {r["instrument"]: r["value"] for r in probe.records}
    assert measured["gde"] == subset.gde != whole.gde
