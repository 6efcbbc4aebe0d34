"""DynamicsRecorder and tracking schedules: records, values, cost, and training left untouched."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dropkit import diagnostics as dd


def mlp(p: float) -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(p), nn.Linear(16, 3))


def dataset(n: int = 96, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=generator)
    return TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())


# --- tracking schedules -------------------------------------------------------------------------


def test_every_and_at():
    assert [s for s in range(12) if dd.every(3)(s)] == [0, 3, 6, 9]
    assert [s for s in range(12) if dd.every(4, start=2)(s)] == [2, 6, 10]
    assert [s for s in range(12) if dd.at([5, 1])(s)] == [1, 5]
    with pytest.raises(ValueError, match="n=0"):
        dd.every(0)
    with pytest.raises(ValueError, match="at least one"):
        dd.at([])


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 100), st.integers(0, 10**6), st.integers(2, 40))
def test_log_spaced_steps_are_within_range_and_roughly_geometric(start, span, num):
    end = start + span
    steps = sorted(dd.log_spaced(end, num, start=start).steps)
    assert steps[0] == 0 and steps[1] == start and steps[-1] == end
    assert len(steps) <= num + 1
    # Consecutive steps grow by at most the geometric ratio, up to rounding to integers.
    ratio = (end / start) ** (1 / (num - 1))
    for a, b in itertools.pairwise(steps[1:]):
        assert b <= (a + 0.5) * ratio + 0.5


def test_log_spaced_is_dense_early():
    steps = sorted(dd.log_spaced(10_000, 9, include_zero=False).steps)
    assert steps == [1, 3, 10, 32, 100, 316, 1000, 3162, 10000]


# --- the recorder in a training loop ------------------------------------------------------------


def train(model, data, steps, recorder=None, seed=0):
    """A plain loop; returns the losses. The recorder runs after backward, before zero_grad."""
    torch.manual_seed(seed)
    loader = DataLoader(data, batch_size=16, shuffle=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    batches = itertools.cycle(loader)
    for step in range(steps):
        x, y = next(batches)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if recorder is not None:
            recorder.step(step)
        losses.append(loss.item())
    return losses


def all_instruments_recorder(model, data, path, **kwargs):
    return dd.DynamicsRecorder(
        model,
        dd.INSTRUMENTS,
        cadence=dd.every(2),
        path=path,
        run="mlp",
        batches=DataLoader(data, batch_size=16, shuffle=True),  # draws from the RNG as it goes
        n_batches=4,
        full_batches=DataLoader(data, batch_size=32),
        heldout=data[:32],
        passes=3,
        **kwargs,
    )


def test_recorder_leaves_training_bit_identical(tmp_path):
    data = dataset()
    torch.manual_seed(1)
    plain = mlp(0.3)
    watched = mlp(0.3)
    watched.load_state_dict(plain.state_dict())
    expected = train(plain, data, steps=7)
    with all_instruments_recorder(watched, data, tmp_path / "dyn.jsonl") as rec:
        got = train(watched, data, steps=7, recorder=rec)
    assert got == expected
    for a, b in zip(plain.parameters(), watched.parameters(), strict=True):
        assert torch.equal(a, b)


def test_recorder_writes_one_json_object_per_step_and_instrument(tmp_path):
    data = dataset()
    model = mlp(0.3)
    path = tmp_path / "runs" / "dyn.jsonl"
    with all_instruments_recorder(model, data, path) as rec:
        train(model, data, steps=5, recorder=rec)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["step"], r["instrument"]) for r in lines] == [
        (step, name) for step in (0, 2, 4) for name in dd.INSTRUMENTS
    ]
    assert lines == rec.records
    for record in lines:
        assert record["run"] == "mlp" and record["seconds"] >= 0
        if record["instrument"] in ("gdv", "gde", "bias_variance"):
            assert record["num_grads"] == 4
    by_name = {r["instrument"]: r["value"] for r in lines if r["step"] == 4}
    assert 0 <= by_name["gdv"] <= 1 and 0 <= by_name["gde"] <= 1
    assert by_name["grad_norm"] > 0 and by_name["distance"] > 0
    assert set(by_name["bias_variance"]) == {
        "bias_sq",
        "variance",
        "error",
        "unit_bias_sq",
        "unit_variance",
        "unit_error",
    }
    assert by_name["inconsistency"]["kl"] > 0
    # The recorder's own cost is the sum of what it reports per record plus writing.
    spent = sum(r["seconds"] for r in lines) + rec.cost["writing"]
    assert rec.seconds == pytest.approx(spent)
    assert rec.seconds > 0


def test_recorder_values_equal_the_pure_functions_without_dropout():
    data = dataset()
    model = mlp(0.0)
    batches = [data[i : i + 8] for i in range(0, 48, 8)]
    full = [data[:48], data[48:]]
    x, y = data[:16]
    F.cross_entropy(model(x), y).backward()
    rec = dd.DynamicsRecorder(
        model, dd.INSTRUMENTS, batches=batches, full_batches=full, heldout=(x, y)
    )
    with torch.no_grad():
        model[0].weight.add_(0.5)  # move away from W_0
    values = {r["instrument"]: r["value"] for r in rec.step(0)}
    grads = list(dd.mini_batch_gradients(model, batches))
    full_grad = dd.full_gradient(model, full)
    assert values["grad_norm"] == dd.gradient_norm(model)
    assert values["distance"] == pytest.approx(0.5 * math.sqrt(model[0].weight.numel()), rel=1e-6)
    assert values["gdv"] == pytest.approx(dd.gradient_direction_variance(grads), abs=1e-9)
    assert values["gde"] == pytest.approx(dd.gradient_direction_error(grads, full_grad), abs=1e-9)
    raw = dd.gradient_bias_variance(grads, full_grad)
    unit = dd.gradient_bias_variance(grads, full_grad, normalize=True)
    assert values["bias_variance"]["variance"] == pytest.approx(raw.variance, rel=1e-9)
    assert values["bias_variance"]["unit_bias_sq"] == pytest.approx(unit.bias_sq, rel=1e-9)
    assert values["inconsistency"]["kl"] == pytest.approx(0.0, abs=1e-12)


def test_instruments_can_have_their_own_schedules_and_steps_can_be_counted():
    data = dataset()
    model = mlp(0.3)
    rec = dd.DynamicsRecorder(
        model,
        {"distance": None, "gdv": dd.at([1, 3])},
        cadence=2,
        batches=lambda: (data[i : i + 8] for i in itertools.count(0, 8)),  # endless
        n_batches=3,
    )
    seen = [(r["step"], r["instrument"]) for _ in range(5) for r in rec.step()]
    assert seen == [(0, "distance"), (1, "gdv"), (2, "distance"), (3, "gdv"), (4, "distance")]
    assert all(r["num_grads"] == 3 for r in rec.records if r["instrument"] == "gdv")
    assert rec.due(6) == ["distance"]


def test_tensorboard_scalars_are_written(tmp_path):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    data = dataset()
    model = mlp(0.3)
    path = tmp_path / "dyn.jsonl"
    with all_instruments_recorder(model, data, path, tensorboard=True) as rec:
        train(model, data, steps=3, recorder=rec)
    events = event_accumulator.EventAccumulator(str(tmp_path / "dyn_tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"gdv", "grad_norm", "bias_variance/unit_variance", "inconsistency/kl"} <= tags
    gdv = [(e.step, e.value) for e in events.Scalars("gdv")]
    expected = [(r["step"], r["value"]) for r in rec.records if r["instrument"] == "gdv"]
    assert [s for s, _ in gdv] == [s for s, _ in expected]
    assert [v for _, v in gdv] == pytest.approx([v for _, v in expected], rel=1e-6)


def test_recorder_arguments_are_validated():
    model = mlp(0.0)
    with pytest.raises(ValueError, match="unknown instrument"):
        dd.DynamicsRecorder(model, ["gdv_typo"])
    with pytest.raises(ValueError, match="pass batches="):
        dd.DynamicsRecorder(model, ["gdv"])
    with pytest.raises(ValueError, match="pass full_batches="):
        dd.DynamicsRecorder(model, ["gde"], batches=[])
    with pytest.raises(ValueError, match="pass heldout="):
        dd.DynamicsRecorder(model, ["inconsistency"])
    with pytest.raises(TypeError, match="every n steps"):
        dd.DynamicsRecorder(model, ["grad_norm"], cadence="often")
    with pytest.raises(ValueError, match="tensorboard=True"):
        dd.DynamicsRecorder(model, ["grad_norm"], tensorboard=True)
    # refused when built, not at the first measurement hours into a run
    heldout = torch.zeros(2, 6)
    with pytest.raises(ValueError, match="passes=0 must be a positive int"):
        dd.DynamicsRecorder(model, ["inconsistency"], heldout=heldout, passes=0)
    with pytest.raises(TypeError, match="passes must be an int"):
        dd.DynamicsRecorder(model, ["inconsistency"], heldout=heldout, passes=2.5)
    with pytest.raises(ValueError, match="seed=-1 must be a non-negative int"):
        dd.DynamicsRecorder(model, ["grad_norm"], seed=-1)
    with pytest.raises(TypeError, match="seed must be an int, or None"):
        dd.DynamicsRecorder(model, ["grad_norm"], seed="0")
    rec = dd.DynamicsRecorder(model, ["grad_norm"])
    with pytest.raises(ValueError, match="non-negative"):
        rec.step(-1)
    with pytest.raises(ValueError, match=r"after loss.backward\(\)"):
        rec.step(0)
