"""torch.compile under a per-step schedule: no recompile storm, and the compiled model drops at
the scheduled rate.

Recompiles are Dynamo's decision (its guards fail), made before any backend runs, so Dynamo's own
count of the graphs it compiled (``counters["stats"]["unique_graphs"]``: the first compile plus
one per recompile, for these models without graph breaks) is direct evidence whatever the
backend. The backend is ``aot_eager``, so AOTAutograd also traces the forward and backward graphs
as it would for Inductor, without minutes of C++ compilation.
"""

import math

import pytest
import torch
import torch._dynamo
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch._dynamo.utils import counters

import dropkit
from dropkit import DropoutScheduler, drop_path, dropout, schedules

STEPS = 24
SCHEDULE = schedules.early(0.6, cutoff=0.75, shape="linear")  # 18 distinct rates, then 0


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> None:
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _dynamo_compiles() -> int:
    """Graphs Dynamo compiled: 1 for the first call, plus 1 per recompile."""
    return counters["stats"]["unique_graphs"]


def _five_se(p: float, n: int) -> float:
    return 5 * math.sqrt(p * (1 - p) / n) + 1e-12


class Probe(nn.Module):
    """Shows the rates a forward actually used: zeros in its outputs are the drops."""

    def __init__(self, drop: nn.Module, path: nn.Module) -> None:
        super().__init__()
        self.drop, self.path = drop, path

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.drop(x), self.path(x)


@settings(max_examples=40, deadline=None)
@given(p=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1))
def test_tensor_rate_output_is_zero_or_scaled_input(p: float, seed: int) -> None:
    torch.manual_seed(seed)
    x = torch.randn(6, 5, dtype=torch.float64)
    rate = torch.tensor(p, dtype=torch.float64)  # so 1 / (1 - p) is exact to float64 near p = 1
    for out, per_sample in ((dropout(x, rate), False), (drop_path(x, rate, True), True)):
        kept = out != 0
        if p == 1.0:
            assert not kept.any()
        else:
            assert torch.allclose(out[kept], x[kept] / (1 - p))
        if per_sample:  # a sample is kept or dropped as a whole
            assert torch.equal(kept.all(1), kept.any(1))


@pytest.mark.parametrize("p", [0.0, 0.15, 0.5, 0.9])
def test_tensor_rate_drops_at_the_rate_like_the_float_form(p: float) -> None:
    n = 200_000
    x = torch.ones(n)
    for fn in (dropout, drop_path):
        as_tensor, as_float = fn(x, torch.tensor(p), True), fn(x, p, True)
        for out in (as_tensor, as_float):
            assert abs((out == 0).float().mean().item() - p) < _five_se(p, n)
        assert torch.allclose(as_tensor[as_tensor != 0], torch.tensor(1 / (1 - p)))
    assert torch.equal(dropout(x, torch.tensor(0.0)), x)  # rate 0 keeps everything, unscaled
    assert dropout(x, torch.tensor(0.5), training=False) is x


def test_tensor_rate_one_gives_exact_zeros_and_zero_gradients() -> None:
    special = torch.tensor([[1.0, float("inf"), float("nan")]], requires_grad=True)
    for fn in (dropout, drop_path):
        out = fn(special, torch.tensor(1.0), True)
        assert torch.equal(out, torch.zeros_like(out))
        (grad,) = torch.autograd.grad(out.sum(), special)
        assert torch.equal(grad, torch.zeros_like(grad))


def test_modules_mirror_their_rate_in_a_private_non_persistent_buffer() -> None:
    drop, path = dropkit.Dropout(0.2), dropkit.DropPath(0.0)
    drop.p, path.drop_prob = 0.35, 0.5
    assert drop._p_tensor.item() == pytest.approx(0.35) and path._drop_prob_tensor.item() == 0.5
    assert drop.state_dict() == {} and path.state_dict() == {}  # checkpoints are unchanged
    # the mirror is not API: code that wrote a public p_tensor (bypassing `active`, which a
    # compiled site at rate 0 obeys) now fails loudly instead of being silently ignored
    for site, old in ((drop, "p_tensor"), (path, "drop_prob_tensor")):
        with pytest.raises(AttributeError):
            getattr(site, old).fill_(0.3)


def test_dropkit_modules_compile_twice_at_most_and_drop_at_every_scheduled_rate() -> None:
    probe = Probe(dropkit.Dropout(0.0), dropkit.DropPath(0.0))
    compiled = torch.compile(probe, backend="aot_eager", fullgraph=True)
    sched = DropoutScheduler(
        compiled, STEPS, dropout=SCHEDULE, drop_path=SCHEDULE, depth_rule="uniform"
    )
    n = 40_000
    x = torch.ones(n, 3)
    for step in range(STEPS):
        rate = SCHEDULE(step, STEPS)
        assert probe.drop.p == rate and probe.path.drop_prob == rate
        with torch.no_grad():
            dropped, pathed = compiled(x)
        assert abs((dropped == 0).float().mean().item() - rate) < _five_se(rate, 3 * n)
        assert abs((pathed[:, 0] == 0).float().mean().item() - rate) < _five_se(rate, n)
        sched.step()
    # 17 rates > 0 share one graph; at rate 0 this probe is the identity (no graph to count)
    assert _dynamo_compiles() <= 2


def test_compiled_training_loop_with_dropkit_modules_does_not_recompile() -> None:
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), dropkit.Dropout(0.0), nn.Linear(32, 3))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    opt = torch.optim.SGD(compiled.parameters(), lr=0.1)
    sched = DropoutScheduler(compiled, STEPS, dropout=SCHEDULE)
    seen = []
    for _ in range(STEPS):
        loss = nn.functional.cross_entropy(compiled(torch.randn(16, 6)), torch.randint(0, 3, (16,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen.append(model[2].p)
        sched.step()
    assert seen == [SCHEDULE(k, STEPS) for k in range(STEPS)]
    assert len(set(seen)) > torch._dynamo.config.recompile_limit  # would storm as floats
    assert _dynamo_compiles() == 2  # active while the rate is > 0, then the graph without it
    assert counters["aot_autograd"]["ok"] == 2  # forward + backward traced once per graph


def _compiles_for_float_sites(compile_levels: int | None) -> tuple[int, list[float]]:
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.0), nn.Linear(32, 3))
    compiled = torch.compile(model, backend="aot_eager")
    sched = DropoutScheduler(compiled, STEPS, dropout=SCHEDULE, compile_levels=compile_levels)
    seen = []
    for _ in range(STEPS):
        compiled(torch.randn(4, 6)).sum().backward()
        seen.append(model[2].p)
        sched.step()
    return _dynamo_compiles(), seen


def test_float_sites_storm_without_compile_levels() -> None:
    # The failure the mode exists for: one recompile per new rate until Dynamo gives up.
    compiles, _ = _compiles_for_float_sites(compile_levels=None)
    assert compiles == torch._dynamo.config.recompile_limit
    gave_up = [reason for reason in counters["unimplemented"] if "recompile limit" in reason]
    assert gave_up  # ... and then silently ran the model eagerly


def test_compile_levels_bound_recompiles_for_float_sites() -> None:
    compiles, seen = _compiles_for_float_sites(compile_levels=4)
    levels = [0.0, 0.6 / 3, 0.6 * 2 / 3, 0.6]
    nearest = [min(levels, key=lambda v: abs(v - SCHEDULE(k, STEPS))) for k in range(STEPS)]
    assert seen == pytest.approx(nearest, abs=1e-12)
    assert seen[0] == 0.6 and seen[-1] == 0.0  # the ends are exact
    assert compiles == len(set(seen)) == 4


@settings(max_examples=60, deadline=None)
@given(
    rates=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=30),
    levels=st.integers(2, 8),
)
def test_snapped_rate_is_the_nearest_level_of_the_peak(rates: list[float], levels: int) -> None:
    model = nn.Sequential(nn.Dropout(0.0))
    sched = DropoutScheduler(model, len(rates), dropout=rates, compile_levels=levels)
    peak = max(rates)
    grid = [peak * i / (levels - 1) for i in range(levels)]
    for rate in rates:
        snapped = sched.get_last_p()["dropout"]
        assert model[0].p == snapped
        assert any(snapped == pytest.approx(level, abs=1e-12) for level in grid)
        assert abs(snapped - rate) <= min(abs(level - rate) for level in grid) + 1e-12
        sched.step()


def test_compile_levels_scan_a_custom_schedule_for_its_peak() -> None:
    model = nn.Sequential(nn.Dropout(0.0))
    bump = lambda step, total: 0.3 * math.sin(math.pi * step / (total - 1))  # noqa: E731
    sched = DropoutScheduler(model, 11, dropout=bump, compile_levels=3)
    assert sched.get_last_p() == {"dropout": 0.0}
    for _ in range(5):
        sched.step()
    assert sched.get_last_p() == {"dropout": 0.3}  # the peak (mid-run) is a level


@pytest.mark.parametrize(
    ("levels", "error"), [(1, ValueError), (True, TypeError), (2.5, TypeError)]
)
def test_invalid_compile_levels_are_rejected(levels: object, error: type) -> None:
    with pytest.raises(error, match="compile_levels"):
        DropoutScheduler(nn.Dropout(), 10, dropout=0.1, compile_levels=levels)


def test_compile_levels_above_the_recompile_limit_are_rejected() -> None:
    too_many = torch._dynamo.config.recompile_limit + 1
    with pytest.raises(ValueError, match="recompile_limit"):
        DropoutScheduler(nn.Dropout(), 10, dropout=0.1, compile_levels=too_many)


# --- a site at rate 0 costs nothing compiled: the graph has no random op -------------------------

RANDOM_OPS = ("bernoulli", "rand", "native_dropout", "uniform", "normal")


class GraphRecorder:
    """An AOTAutograd backend that keeps the aten-level forward and backward graphs it compiles."""

    def __init__(self) -> None:
        from functorch.compile import make_boxed_func
        from torch._dynamo.backends.common import aot_autograd

        self.graphs: list[list[str]] = []

        def record(gm: torch.fx.GraphModule, _inputs: object):
            self.graphs.append([str(n.target) for n in gm.graph.nodes if n.op == "call_function"])
            return make_boxed_func(gm.forward)

        self.backend = aot_autograd(fw_compiler=record, bw_compiler=record)

    def random_ops(self) -> list[str]:
        return [t for graph in self.graphs for t in graph if any(r in t for r in RANDOM_OPS)]


class Block(nn.Module):
    """Linear, dropout, residual branch with stochastic depth: both kinds of site."""

    def __init__(self, drop: nn.Module, path: nn.Module) -> None:
        super().__init__()
        self.inp, self.branch, self.drop, self.path = (
            nn.Linear(8, 16),
            nn.Linear(16, 16),
            drop,
            path,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.inp(x))
        return h + self.path(self.branch(h))


def _train_steps(model: nn.Module, sched: DropoutScheduler, recorder: GraphRecorder, steps: int):
    """Compiled forward + backward for ``steps`` steps; the random ops of each new graph."""
    compiled = torch.compile(model, backend=recorder.backend, fullgraph=True)
    per_step = []
    for _ in range(steps):
        before = len(recorder.graphs)
        compiled(torch.randn(4, 8)).sum().backward()
        new = recorder.graphs[before:]
        per_step.append([t for g in new for t in g if any(r in t for r in RANDOM_OPS)])
        sched.step()
    return per_step


def test_dropkit_sites_at_rate_zero_compile_to_the_graph_without_them() -> None:
    recorder = GraphRecorder()
    model = Block(dropkit.Dropout(0.0), dropkit.DropPath(0.0)).train()
    early = schedules.early(0.3, cutoff=6, shape="linear")  # rates > 0 for steps 0-4, 0 from 5
    sched = DropoutScheduler(model, 12, dropout=early, drop_path=early, depth_rule="uniform")
    per_step = _train_steps(model, sched, recorder, 12)
    assert per_step[0] and all(not ops for ops in per_step[1:5])  # one graph while active ...
    assert len(recorder.graphs) == 4  # ... forward + backward, then the inactive pair once
    inactive_graphs = recorder.graphs[2:]
    assert not [t for g in inactive_graphs for t in g if any(r in t for r in RANDOM_OPS)]
    assert _dynamo_compiles() == 2
    reference = GraphRecorder()  # the same model with no sites at all
    plain = Block(nn.Identity(), nn.Identity()).train()
    torch.compile(plain, backend=reference.backend, fullgraph=True)(
        torch.randn(4, 8)
    ).sum().backward()
    assert inactive_graphs == reference.graphs  # node for node the graph without the sites


def test_late_schedule_turns_sites_on_with_one_recompile() -> None:
    recorder = GraphRecorder()
    model = Block(dropkit.Dropout(0.0), dropkit.DropPath(0.0)).train()
    late = schedules.late(0.4, cutoff=3)
    sched = DropoutScheduler(model, 8, dropout=late, drop_path=late, depth_rule="uniform")
    per_step = _train_steps(model, sched, recorder, 8)
    assert per_step[:3] == [[], [], []] and per_step[3]  # off, then one graph with the masks
    assert _dynamo_compiles() == 2


def test_float_sites_at_level_zero_compile_without_random_ops() -> None:
    # nn.Dropout(p=0.0) in training: torch itself drops the op (aten.dropout returns its input),
    # so with compile_levels the level-0 graph has no random op; shown, not assumed.
    recorder = GraphRecorder()
    model = Block(nn.Dropout(0.0), nn.Identity()).train()
    sched = DropoutScheduler(
        model, 8, dropout=schedules.early(0.3, cutoff=4, shape="linear"), compile_levels=4
    )
    per_step = _train_steps(model, sched, recorder, 8)
    assert model.drop.p == 0.0
    assert all("native_dropout" in " ".join(ops) for ops in per_step[:3] if ops)
    level_zero = recorder.graphs[-2:]  # the last forward + backward compiled: rate 0
    assert not [t for g in level_zero for t in g if any(r in t for r in RANDOM_OPS)]


def test_compiled_eval_mode_never_draws() -> None:
    recorder = GraphRecorder()
    model = Block(dropkit.Dropout(0.5), dropkit.DropPath(0.5)).eval()
    with torch.no_grad():
        torch.compile(model, backend=recorder.backend, fullgraph=True)(torch.randn(4, 8))
    assert recorder.graphs and not recorder.random_ops()
