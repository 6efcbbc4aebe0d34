import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dropkit import drop_schedule, schedules
from dropkit.schedules import cutoff_steps, depth_profile, from_array


def naive_official(p: float, epochs: int, ipe: int, cutoff_epoch: int, mode: str, shape: str):
    """The official drop_scheduler semantics (PAPERS.md), written as an explicit per-step loop."""
    c = cutoff_epoch * ipe
    rates = []
    for k in range(epochs * ipe):
        if mode == "standard":
            rates.append(p)
        elif mode == "late":
            rates.append(0.0 if k < c else p)
        elif k >= c:
            rates.append(0.0)
        elif shape == "constant":
            rates.append(p)
        else:
            rates.append(p if c == 1 else p * (1 - k / (c - 1)))
    return np.array(rates)


def test_hand_written_arrays() -> None:
    assert drop_schedule(0.1, 3, 2, 1, "early", "linear").tolist() == [0.1, 0.0, 0, 0, 0, 0]
    assert drop_schedule(0.1, 3, 2, 1, "early", "constant").tolist() == [0.1, 0.1, 0, 0, 0, 0]
    assert drop_schedule(0.3, 2, 2, 1, "late").tolist() == [0, 0, 0.3, 0.3]
    assert drop_schedule(0.3, 2, 2, 1, "standard", "linear").tolist() == [0.3] * 4
    np.testing.assert_array_equal(
        drop_schedule(0.4, 2, 3, 1, "early", "linear"), [0.4, 0.2, 0.0, 0, 0, 0]
    )


modes = st.sampled_from(
    [("standard", "constant"), ("early", "constant"), ("early", "linear"), ("late", "constant")]
)


@st.composite
def official_args(draw):
    p = draw(st.floats(0.0, 1.0))
    epochs = draw(st.integers(1, 40))
    ipe = draw(st.integers(1, 30))
    mode, shape = draw(modes)
    cutoff = draw(st.integers(1 if mode == "early" else 0, epochs))
    return p, epochs, ipe, cutoff, mode, shape


@settings(max_examples=300, deadline=None)
@given(official_args())
def test_drop_schedule_matches_naive_official_semantics(args) -> None:
    p, epochs, ipe, cutoff, mode, shape = args
    arr = drop_schedule(p, epochs, ipe, cutoff, mode, shape)
    expected = naive_official(*args)
    assert arr.shape == (epochs * ipe,) and arr.dtype == np.float64
    np.testing.assert_allclose(arr, expected, rtol=0, atol=1e-15)
    c = cutoff * ipe
    if mode == "early":  # exact endpoints: p at step 0, exactly 0 at step C-1 and after
        assert arr[0] == p and arr[c - 1] == (p if shape == "constant" or c == 1 else 0.0)
        assert np.all(arr[c:] == 0.0)
        assert np.all(np.diff(arr) <= 0)
    if mode == "late":
        assert np.all(arr[:c] == 0.0) and np.all(arr[c:] == p)


def _callable_for(p, epochs, cutoff, mode, shape, as_fraction):
    cutoff_arg = cutoff / epochs if as_fraction else cutoff
    if mode == "standard":
        return schedules.standard(p)
    if mode == "late":
        return schedules.late(p, cutoff_arg)
    return schedules.early(p, cutoff_arg, shape)


@settings(max_examples=300, deadline=None)
@given(official_args(), st.booleans())
def test_callables_equal_drop_schedule_bit_for_bit(args, as_fraction: bool) -> None:
    p, epochs, ipe, cutoff, mode, shape = args
    if mode == "late" and cutoff in (0, epochs):
        return  # the callable asks for a cutoff inside the run: 0 is standard(p), the end never
    arr = drop_schedule(p, epochs, ipe, cutoff, mode, shape)
    total = epochs * ipe
    if as_fraction:
        sched = _callable_for(p, epochs, cutoff, mode, shape, True)
    else:
        sched = _callable_for(p, epochs, cutoff * ipe, mode, shape, False)
    assert [sched(k, total) for k in range(total)] == arr.tolist()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(drop_rate=1.5, epochs=3, iters_per_epoch=2), "drop_rate"),
        (dict(drop_rate=-0.1, epochs=3, iters_per_epoch=2), "drop_rate"),
        (dict(drop_rate=0.1, epochs=0, iters_per_epoch=2), "epochs"),
        (dict(drop_rate=0.1, epochs=3, iters_per_epoch=-1), "iters_per_epoch"),
        (dict(drop_rate=0.1, epochs=3, iters_per_epoch=2, cutoff_epoch=-1), "cutoff_epoch"),
        (dict(drop_rate=0.1, epochs=3, iters_per_epoch=2, cutoff_epoch=4, mode="early"), "exceeds"),
        (dict(drop_rate=0.1, epochs=3, iters_per_epoch=2, mode="early"), "cutoff_epoch=0"),
        (
            dict(
                drop_rate=0.1,
                epochs=3,
                iters_per_epoch=2,
                cutoff_epoch=1,
                mode="late",
                schedule="linear",
            ),
            "constant",
        ),
        (dict(drop_rate=0.1, epochs=3, iters_per_epoch=2, mode="middle"), "mode"),
        (dict(drop_rate=0.1, epochs=3, iters_per_epoch=2, schedule="cosine"), "schedule"),
    ],
)
def test_drop_schedule_bad_inputs(kwargs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        drop_schedule(**kwargs)


def test_callable_bad_inputs() -> None:
    with pytest.raises(ValueError, match="fraction"):
        schedules.early(0.1, 1.5)
    with pytest.raises(ValueError, match=">= 1"):
        schedules.late(0.1, 0)
    with pytest.raises(ValueError, match="never be on"):
        schedules.late(0.1, 1.0)
    with pytest.raises(ValueError, match="never be on"):
        schedules.late(0.1, 10)(0, 10)
    with pytest.raises(ValueError, match="never be on"):  # 0.999 of 10 steps rounds to 10
        schedules.late(0.1, 0.999)(0, 10)
    with pytest.raises(TypeError, match="cutoff"):
        schedules.early(0.1, "10")
    with pytest.raises(ValueError, match="shape"):
        schedules.early(0.1, 0.2, "cosine")
    with pytest.raises(ValueError, match="probability"):
        schedules.standard(2.0)
    with pytest.raises(ValueError, match="rounds to 0"):
        schedules.early(0.1, 0.001)(0, 100)
    with pytest.raises(ValueError, match="exceeds total_steps"):
        schedules.early(0.1, 500)(0, 100)
    with pytest.raises(ValueError, match="step"):
        schedules.standard(0.1)(-1, 100)
    with pytest.raises(ValueError, match="total_steps"):
        schedules.standard(0.1)(0, 0)


def test_cutoff_steps_and_contract_example() -> None:
    assert cutoff_steps(0.2, 1000) == 200 and cutoff_steps(7, 1000) == 7
    # The contract in DESIGN.md: callable at (k, epochs * ipe) == drop_schedule(...)[k].
    epochs, ipe = 300, 4
    arr = drop_schedule(0.1, epochs, ipe, cutoff_epoch=50, mode="early", schedule="linear")
    sched = schedules.early(0.1, cutoff=50 * ipe, shape="linear")
    assert all(sched(k, epochs * ipe) == arr[k] for k in range(0, epochs * ipe, 7))


def test_depth_profile_and_array_schedule() -> None:
    assert depth_profile(4) == [0.0, 1 / 3, 2 / 3, 1.0]
    assert depth_profile(1) == [0.0]
    assert depth_profile(3, "uniform") == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="depth rule"):
        depth_profile(3, "cubic")
    sched = from_array([0.3, 0.2, 0.1])
    assert [sched(k, 3) for k in range(5)] == [0.3, 0.2, 0.1, 0.1, 0.1]
    with pytest.raises(ValueError, match=r"rates\[1\]"):
        from_array([0.1, 1.2])
