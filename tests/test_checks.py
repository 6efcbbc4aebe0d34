"""One rule for argument checks: TypeError for a wrong type, ValueError for a wrong value, numpy
scalars accepted wherever the Python number is."""

import numpy as np
import pytest
from torch import nn

import dropkit
from dropkit import diagnostics as dd
from dropkit import schedules
from dropkit._checks import check_int, check_real


@pytest.mark.parametrize("value", [3, np.int64(3), np.int32(3), np.uint8(3)])
def test_integers_of_any_kind_are_ints(value) -> None:
    assert check_int(value, "n", 1) == 3 and type(check_int(value, "n", 1)) is int


@pytest.mark.parametrize("value", [True, np.bool_(True), 3.0, np.float64(3), "3", None])
def test_anything_else_is_a_type_error(value) -> None:
    with pytest.raises(TypeError, match="n must be an int"):
        check_int(value, "n")


def test_a_number_out_of_range_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="n=0 must be a positive int"):
        check_int(0, "n", 1)
    with pytest.raises(ValueError, match="n=-1 must be a non-negative int"):
        check_int(-1, "n", 0)
    with pytest.raises(ValueError, match="n=2 must be an int >= 3"):
        check_int(2, "n", 3)


def test_reals_accept_numpy_and_refuse_bools() -> None:
    assert check_real(np.float32(0.5), "p") == 0.5 and check_real(1, "p") == 1.0
    with pytest.raises(TypeError):
        check_real(True, "p")


def test_the_public_api_follows_the_rule_with_numpy_integers() -> None:
    steps = np.int64(10)
    sched = dropkit.DropoutScheduler(nn.Dropout(0.0), steps, dropout=0.1)  # refused before
    assert sched.get_last_p() == {"dropout": 0.1}
    assert schedules.early(0.1, cutoff=np.int64(4))(np.int64(2), steps) == 0.1
    assert dd.step_seed(np.int64(1), np.int64(2)) == dd.step_seed(1, 2)
    with pytest.raises(TypeError, match="total_steps"):
        dropkit.DropoutScheduler(nn.Dropout(0.0), 10.0, dropout=0.1)
    with pytest.raises(ValueError, match="total_steps"):
        dropkit.DropoutScheduler(nn.Dropout(0.0), 0, dropout=0.1)
