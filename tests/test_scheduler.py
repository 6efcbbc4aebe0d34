import json
import pickle
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import dropkit
from dropkit import DropoutScheduler, drop_schedule, find_sites, register_site, schedules
from tests import lookalikes


def transformer(dropout: float = 0.1) -> nn.Module:
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=dropout, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)


def dropout_rates(model: nn.Module) -> list[float]:
    return [s.p for s in find_sites(model) if s.kind == "dropout" and s.controllable]


def test_constructor_applies_step_zero_and_steps_follow_the_schedule() -> None:
    model = transformer()
    schedule = schedules.early(0.3, cutoff=6, shape="linear")
    sched = DropoutScheduler(model, total_steps=10, dropout=schedule)
    seen = []
    for step in range(10):
        rates = dropout_rates(model)
        assert len(rates) == 8 and len(set(rates)) == 1  # every site, attention floats included
        seen.append(rates[0])
        assert sched.get_last_p() == {"dropout": schedule(step, 10)}
        assert sched.last_step == step
        sched.step()
    assert seen == drop_schedule(0.3, 10, 1, 6, "early", "linear").tolist()


def test_array_and_float_schedules() -> None:
    model = transformer()
    arr = drop_schedule(0.2, 2, 3, 1, "late")
    sched = DropoutScheduler(model, total_steps=6, dropout=arr)
    seen = [dropout_rates(model)[0]]
    for _ in range(5):
        sched.step()
        seen.append(dropout_rates(model)[0])
    assert seen == arr.tolist()
    DropoutScheduler(model, total_steps=6, dropout=0.05)
    assert set(dropout_rates(model)) == {0.05}
    with pytest.raises(TypeError, match="not a schedule"):
        DropoutScheduler(model, total_steps=6, dropout="early")


def test_drop_path_follows_linear_depth_rule_per_block() -> None:
    model = lookalikes.TimmViT(depth=4, drop_path_rate=0.1)  # block 0 holds Identity placeholders
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # block 0's placeholders get rate 0: nothing to warn about
        sched = DropoutScheduler(model, total_steps=4, drop_path=schedules.late(0.4, cutoff=2))
    for rate in [0.0, 0.0, 0.4, 0.4]:
        for i, block in enumerate(model.blocks):
            for dp in (block.drop_path1, block.drop_path2):
                if i == 0:
                    assert isinstance(dp, nn.Identity)
                else:
                    assert dp.drop_prob == pytest.approx(rate * i / 3, abs=1e-15)
        assert sched.get_last_p() == {"drop_path": rate}
        sched.step()
    # dropout sites were not scheduled and keep their rates
    assert set(dropout_rates(model)) == {0.0}


def test_uniform_depth_rule_and_both_kinds() -> None:
    model = lookalikes.TimmViT(depth=3, drop_path_rate=0.2)
    dropkit.replace_placeholders(model)
    DropoutScheduler(model, 10, dropout=0.1, drop_path=0.3, depth_rule="uniform")
    assert {s.p for s in find_sites(model) if s.kind == "drop_path"} == {0.3}
    assert set(dropout_rates(model)) == {0.1}


def test_placeholder_where_depth_rule_wants_a_rate_warns() -> None:
    model = lookalikes.TimmViT(depth=3, drop_path_rate=0.0)  # every block is a placeholder
    model.blocks[2].drop_path1 = lookalikes.DropPath(0.0)
    with pytest.warns(UserWarning, match=r"cannot be scheduled.*blocks\.1\.drop_path1"):
        DropoutScheduler(model, 10, drop_path=0.2)
    assert model.blocks[2].drop_path1.drop_prob == pytest.approx(0.2)
    # the warning gives the stuck sites' own reason, whatever site comes first in the model
    model = lookalikes.TimmViT(depth=3, drop_path_rate=0.0)
    model.blocks[0].drop_path1 = lookalikes.DropPath(0.0)
    with pytest.warns(UserWarning, match=r"blocks\.1\.drop_path1.*replace_placeholders"):
        DropoutScheduler(model, 10, drop_path=0.2)


def test_no_sites_raises_with_listing_or_warns() -> None:
    model = nn.Sequential(nn.Linear(3, 3), lookalikes.StochasticDepth(0.1))
    with pytest.raises(ValueError, match=r"no controllable dropout site(.|\n)*StochasticDepth|1 "):
        DropoutScheduler(model, 10, dropout=0.1)
    with pytest.warns(UserWarning, match="no controllable dropout site"):
        DropoutScheduler(model, 10, dropout=0.1, on_missing="warn")
    with pytest.raises(ValueError, match="nothing to schedule"):
        DropoutScheduler(model, 10)
    with pytest.raises(ValueError, match="total_steps"):
        DropoutScheduler(model, 0, drop_path=0.1)


def test_state_dict_is_plain_and_resume_continues_exactly() -> None:
    schedule = schedules.early(0.5, cutoff=0.5, shape="linear")
    reference, resumed = transformer(), transformer()
    ref = DropoutScheduler(reference, 20, dropout=schedule)
    for _ in range(7):
        ref.step()
    state = ref.state_dict()
    assert json.loads(json.dumps(state)) == state
    pickle.dumps(state)
    sched = DropoutScheduler(resumed, 20, dropout=schedule)
    sched.load_state_dict(state)
    assert dropout_rates(resumed) == dropout_rates(reference)  # re-applied at once
    for _ in range(13):  # to the end of the run, not past it
        ref.step()
        sched.step()
        assert dropout_rates(resumed) == dropout_rates(reference)
        assert sched.get_last_p() == ref.get_last_p()
    with pytest.raises(KeyError, match="last_step"):
        sched.load_state_dict({"total_steps": 20})
    with pytest.warns(UserWarning, match="total_steps=30"):
        DropoutScheduler(transformer(), 30, dropout=schedule).load_state_dict(state)


def test_global_step_schedule_state_round_trips_before_and_after_its_start() -> None:
    from dropkit.integrations import GlobalStepSchedule

    schedule = schedules.early(0.5, cutoff=0.5, shape="linear")
    unstarted = GlobalStepSchedule(schedule, None, {})
    unstarted.load_state_dict(unstarted.state_dict())  # a checkpoint taken before fit: {}
    model = transformer()
    assert unstarted.start(model, 20).last_step == 0
    with pytest.raises(KeyError, match="last_step"):  # refused at once, not at the start
        GlobalStepSchedule(schedule, None, {}).load_state_dict({"total_steps": 20})
    unstarted.go_to(7)
    resumed = GlobalStepSchedule(schedule, None, {})
    resumed.load_state_dict(unstarted.state_dict())
    other = transformer()
    assert resumed.start(other, 20).last_step == 7
    assert dropout_rates(other) == dropout_rates(model)


def test_past_total_steps_holds_last_rate_and_warns_once() -> None:
    model = transformer()
    sched = DropoutScheduler(model, 3, dropout=schedules.late(0.2, cutoff=2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):  # the step() after the last optimizer step is not "past the end"
            sched.step()
    with pytest.warns(UserWarning, match="past total_steps=3"):
        sched.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sched.step()
    assert set(dropout_rates(model)) == {0.2} and sched.last_step == 5


def test_remove_restores_built_rates() -> None:
    model = transformer(dropout=0.15)
    sched = DropoutScheduler(model, 5, dropout=schedules.early(0.5, 2))
    sched.step()
    sched.remove()
    assert set(dropout_rates(model)) == {0.15}
    with pytest.raises(RuntimeError, match="removed"):
        sched.step()


def test_remove_leaves_kinds_it_does_not_schedule() -> None:
    model = lookalikes.TimmViT(depth=3, drop_path_rate=0.2)
    rates = {
        kind: [s.p for s in find_sites(model) if s.kind == kind]
        for kind in ("dropout", "drop_path")
    }
    drop_path = DropoutScheduler(model, 10, drop_path=schedules.late(0.4, cutoff=2))
    dropout = DropoutScheduler(model, 10, dropout=0.3)
    for site in find_sites(model):
        if site.kind == "drop_path" and site.controllable:
            site.set_p(0.05)  # set by hand while the dropout scheduler runs
    dropout.remove()
    assert [s.p for s in find_sites(model) if s.kind == "dropout"] == rates["dropout"]
    assert {s.p for s in find_sites(model) if s.kind == "drop_path" and s.controllable} == {0.05}
    drop_path.remove()
    assert [s.p for s in find_sites(model) if s.kind == "drop_path"] == rates["drop_path"]


def test_writes_only_when_the_rate_changes() -> None:
    class CountingDropout(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.writes = 0
            self._rate = 0.0

        @property
        def rate(self) -> float:
            return self._rate

        @rate.setter
        def rate(self, value: float) -> None:
            self.writes += 1
            self._rate = value

    register_site(CountingDropout, attr="rate")
    module = CountingDropout()
    sched = DropoutScheduler(module, 100, dropout=schedules.early(0.1, 10))
    for _ in range(99):
        sched.step()
    assert module.writes == 2  # 0.1 at step 0, 0.0 at step 10


def test_invalid_rate_from_schedule_names_the_step() -> None:
    with pytest.raises(ValueError, match="dropout schedule at step 0"):
        DropoutScheduler(transformer(), 5, dropout=lambda step, total: 1.5)


def test_training_loop_with_compiled_wrapper() -> None:
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.0), nn.Linear(16, 2))
    wrapped = torch.compile(model, backend="eager")
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    sched = DropoutScheduler(wrapped, 6, dropout=schedules.early(0.4, 0.5, "linear"))
    seen = []
    for _ in range(6):
        loss = nn.functional.cross_entropy(wrapped(torch.randn(8, 4)), torch.randint(0, 2, (8,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen.append(model[2].p)
        sched.step()
    assert seen == drop_schedule(0.4, 6, 1, 3, "early", "linear").tolist()


def test_numpy_scalars_are_rates_and_cutoffs_like_python_numbers() -> None:
    """The argument rule of ``dropkit._checks``: numpy scalars count as the numbers they hold
    (float32 is not a ``float`` subclass, unlike float64)."""
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.0))
    sched = dropkit.DropoutScheduler(model, 10, dropout=np.float32(0.25))
    assert sched.get_last_p() == {"dropout": pytest.approx(0.25)}
    early = dropkit.schedules.early(0.1, np.float32(0.5))
    assert early(4, 10) == 0.1 and early(5, 10) == 0.0


def test_an_unknown_depth_rule_is_refused_even_without_drop_path_sites() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.0))
    with pytest.raises(ValueError, match="depth_rule='bogus'"):
        dropkit.DropoutScheduler(model, 10, dropout=0.1, depth_rule="bogus")


def _their_train(model: nn.Module, steps: int) -> None:
    """Someone else's loop: it builds its own optimizer and knows nothing of dropkit."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(steps):
        loss = model(torch.randn(4, 4)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_follow_optimizers_steps_the_schedule_after_each_optimizer_step_in_the_block() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.0), nn.Linear(8, 2))
    schedule = schedules.early(0.4, cutoff=5, shape="linear")
    scheduler = DropoutScheduler(model, 10, dropout=schedule)
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(model[1].p))
    with scheduler.follow_optimizers() as followed:
        assert followed is scheduler
        _their_train(model, 7)
    assert scheduler.last_step == 7
    assert seen == pytest.approx([schedule(step, 10) for step in range(7)])
    _their_train(model, 2)  # outside the block: the hook is gone
    assert scheduler.last_step == 7
