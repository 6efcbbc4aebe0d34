"""R-Drop losses against an explicit float64 reference, laws, gradients and the doubled forward."""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import dropkit
from dropkit.rdrop import mean_pairwise_kl, rdrop_regression_loss, rdrop_terms

# --- the reference: explicit probabilities, xlogy, python loops over rows and pairs ------------


def ref_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) summed over the last dim; 0 log 0 = 0 via xlogy."""
    return (torch.special.xlogy(p, p) - torch.special.xlogy(p, q)).sum(-1)


def ref_probs(logits: torch.Tensor) -> torch.Tensor:
    z = logits.double()
    z = z - z.max(dim=-1, keepdim=True).values
    e = z.exp()
    return e / e.sum(-1, keepdim=True)


def ref_ce(probs: torch.Tensor, target: int, smoothing: float) -> torch.Tensor:
    n_classes = probs.shape[-1]
    wanted = torch.full((n_classes,), smoothing / n_classes, dtype=torch.float64)
    wanted[target] += 1.0 - smoothing
    return -(wanted * probs.log()).sum()


def ref_rdrop(logits, target, alpha, ignore_index=-100, smoothing=0.0):
    """sum_i CE_i + alpha/(m(m-1)) sum_{i != j} KL(P_i||P_j), rows averaged over kept targets."""
    m = len(logits)
    probs = [ref_probs(z).reshape(-1, z.shape[-1]) for z in logits]
    flat_target = target.reshape(-1)
    ce = [torch.zeros((), dtype=torch.float64) for _ in range(m)]
    kl = torch.zeros((), dtype=torch.float64)
    kept = 0
    for row, t in enumerate(flat_target.tolist()):
        if t == ignore_index:
            continue
        kept += 1
        for i in range(m):
            ce[i] = ce[i] + ref_ce(probs[i][row], t, smoothing)
        for i, j in itertools.permutations(range(m), 2):
            kl = kl + ref_kl(probs[i][row], probs[j][row])
    kl = kl / (m * (m - 1)) / kept
    ce = [c / kept for c in ce]
    return sum(ce) + alpha * kl, ce, kl


# --- symmetric_kl ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(7, 5), (3, 4, 6)])
def test_symmetric_kl_matches_reference(shape):
    a, b = torch.randn(shape) * 3, torch.randn(shape) * 3
    p, q = ref_probs(a), ref_probs(b)
    expected = ((ref_kl(p, q) + ref_kl(q, p)) / 2).mean()
    assert torch.allclose(dropkit.symmetric_kl(a, b).double(), expected, rtol=1e-5, atol=1e-6)


def test_symmetric_kl_mask_averages_only_kept_rows():
    a, b = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 0, 0, 1], [0, 1, 1, 0, 0]], dtype=torch.bool)
    p, q = ref_probs(a[mask]), ref_probs(b[mask])
    expected = ((ref_kl(p, q) + ref_kl(q, p)) / 2).mean()
    got = dropkit.symmetric_kl(a, b, mask=mask)
    assert torch.allclose(got.double(), expected, rtol=1e-5)


def test_symmetric_kl_finite_with_classes_masked_to_minus_inf_in_both_passes():
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    a[:, 4:] = float("-inf")
    b[:, 4:] = float("-inf")
    got = dropkit.symmetric_kl(a, b)
    p, q = ref_probs(a), ref_probs(b)
    expected = ((ref_kl(p, q) + ref_kl(q, p)) / 2).mean()
    assert torch.isfinite(got)
    assert torch.allclose(got.double(), expected, rtol=1e-5)
    a.requires_grad_(True)
    dropkit.symmetric_kl(a, b).backward()
    assert torch.isfinite(a.grad).all()


def test_symmetric_kl_is_inf_where_only_one_pass_rules_a_class_out():
    a, b = torch.zeros(1, 3), torch.zeros(1, 3)
    b[0, 2] = float("-inf")
    assert torch.isinf(dropkit.symmetric_kl(a, b))


def test_symmetric_kl_computes_in_float32_for_half_precision_logits():
    a, b = torch.randn(16, 10), torch.randn(16, 10)
    full = dropkit.symmetric_kl(a.bfloat16().float(), b.bfloat16().float())
    half = dropkit.symmetric_kl(a.bfloat16(), b.bfloat16())
    assert half.dtype == torch.float32
    assert torch.equal(half, full)


logit_rows = st.integers(1, 5).flatmap(
    lambda n: st.integers(2, 6).flatmap(
        lambda c: st.tuples(
            st.lists(st.floats(-20, 20, width=32), min_size=n * c, max_size=n * c),
            st.lists(st.floats(-20, 20, width=32), min_size=n * c, max_size=n * c),
            st.just((n, c)),
        )
    )
)


@settings(max_examples=60, deadline=None)
@given(logit_rows)
def test_symmetric_kl_laws(data):
    a_values, b_values, shape = data
    a, b = torch.tensor(a_values).reshape(shape), torch.tensor(b_values).reshape(shape)
    ab, ba = dropkit.symmetric_kl(a, b), dropkit.symmetric_kl(b, a)
    assert ab >= 0
    assert torch.equal(ab, ba)  # symmetric, bit for bit
    assert dropkit.symmetric_kl(a, a) == 0  # exactly zero for identical passes
    # invariant to shifting every logit of a row (softmax does not see it)
    shifted = dropkit.symmetric_kl(a + 3.0, b - 2.0)
    assert torch.allclose(shifted, ab, rtol=1e-4, atol=1e-5)


def test_symmetric_kl_gradcheck_float64():
    a = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 0, 1, 1], [1, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda x, y: dropkit.symmetric_kl(x, y, mask), (a, b))


def test_symmetric_kl_rejects_mismatched_shapes_and_masks():
    with pytest.raises(ValueError, match="pass 2 has"):
        dropkit.symmetric_kl(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="mask has shape"):
        dropkit.symmetric_kl(torch.randn(4, 3), torch.randn(4, 3), mask=torch.ones(4, 3) > 0)


# --- rdrop_loss / rdrop_terms ----------------------------------------------------------------


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("alpha", [0.0, 0.7, 5.0])
def test_rdrop_loss_matches_reference_on_samples(alpha, smoothing):
    a, b = torch.randn(9, 7) * 2, torch.randn(9, 7) * 2
    target = torch.randint(0, 7, (9,))
    expected, _, _ = ref_rdrop((a, b), target, alpha, smoothing=smoothing)
    got = dropkit.rdrop_loss(a, b, target, alpha=alpha, label_smoothing=smoothing)
    assert torch.allclose(got.double(), expected, rtol=1e-5)


def test_rdrop_loss_on_tokens_leaves_padding_out_of_ce_and_kl():
    a, b = torch.randn(3, 6, 11), torch.randn(3, 6, 11)
    target = torch.randint(0, 11, (3, 6))
    target[0, 4:] = -100
    target[2, 1:] = -100
    expected, ce, kl = ref_rdrop((a, b), target, alpha=1.5, smoothing=0.1)
    terms = rdrop_terms((a, b), target, alpha=1.5, label_smoothing=0.1)
    assert torch.allclose(terms.loss.double(), expected, rtol=1e-5)
    assert torch.allclose(terms.kl.double(), kl, rtol=1e-5)
    for got, want in zip(terms.ce, ce):
        assert torch.allclose(got.double(), want, rtol=1e-5)
    # padding logits are irrelevant: changing them changes nothing
    a2 = a.clone()
    a2[2, 1:] = 1e3 * torch.randn_like(a2[2, 1:])
    assert torch.equal(dropkit.rdrop_loss(a2, b, target, 1.5, label_smoothing=0.1), terms.loss)


def test_ce_parts_agree_with_torch_cross_entropy():
    a, b = torch.randn(5, 4, 9), torch.randn(5, 4, 9)
    target = torch.randint(0, 9, (5, 4))
    target[1, 2] = 3 - 103  # custom ignore index
    terms = rdrop_terms((a, b), target, ignore_index=-100, label_smoothing=0.2)
    torch_ce = F.cross_entropy(a.reshape(-1, 9), target.reshape(-1), label_smoothing=0.2)
    assert torch.allclose(terms.ce[0], torch_ce, rtol=1e-6)


def test_three_passes_match_the_pairwise_reference():
    logits = [torch.randn(4, 3, 5) for _ in range(3)]
    target = torch.randint(0, 5, (4, 3))
    target[3, 0] = -100
    expected, _, kl = ref_rdrop(logits, target, alpha=2.0)
    terms = rdrop_terms(logits, target, alpha=2.0)
    assert len(terms.ce) == 3
    assert torch.allclose(terms.loss.double(), expected, rtol=1e-5)
    assert torch.allclose(mean_pairwise_kl(logits, target != -100).double(), kl, rtol=1e-5)


def test_two_pass_terms_are_the_paper_equation():
    a, b = torch.randn(8, 5), torch.randn(8, 5)
    y = torch.randint(0, 5, (8,))
    kl12 = F.kl_div(
        F.log_softmax(b, -1), F.log_softmax(a, -1), reduction="batchmean", log_target=True
    )
    kl21 = F.kl_div(
        F.log_softmax(a, -1), F.log_softmax(b, -1), reduction="batchmean", log_target=True
    )
    paper = F.cross_entropy(a, y) + F.cross_entropy(b, y) + 0.5 / 2 * (kl12 + kl21)
    assert torch.allclose(dropkit.rdrop_loss(a, b, y, alpha=0.5), paper, rtol=1e-6)


def test_rdrop_loss_rejects_bad_inputs():
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.raises(ValueError, match="target has shape"):
        dropkit.rdrop_loss(a, b, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="pass 2 has"):
        dropkit.rdrop_loss(a, torch.randn(4, 4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="alpha"):
        dropkit.rdrop_loss(a, b, torch.zeros(4, dtype=torch.long), alpha=-1)
    with pytest.raises(ValueError, match="at least two passes"):
        rdrop_terms([a], torch.zeros(4, dtype=torch.long))


def test_all_targets_ignored_gives_zero_not_nan():
    a, b = torch.randn(2, 3, requires_grad=True), torch.randn(2, 3)
    loss = dropkit.rdrop_loss(a, b, torch.full((2,), -100))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(a.grad, torch.zeros_like(a))


# --- regression ------------------------------------------------------------------------------


def test_regression_loss_matches_explicit_sums():
    p1, p2, y = torch.randn(6, 2), torch.randn(6, 2), torch.randn(6, 2)
    mse = lambda u, v: ((u.double() - v.double()) ** 2).sum() / u.numel()  # noqa: E731
    expected = mse(p1, y) + mse(p2, y) + 0.3 * mse(p1, p2)
    assert torch.allclose(rdrop_regression_loss(p1, p2, y, alpha=0.3).double(), expected)
    assert torch.allclose(dropkit.consistency_mse(p1, p2).double(), mse(p1, p2))
    with pytest.raises(ValueError, match="squeeze"):
        rdrop_regression_loss(p1[:, :1], p2[:, :1], y[:, 0])


# --- rdrop_forward ---------------------------------------------------------------------------


class Recorder(nn.Module):
    """Returns a dict and a tuple, counting calls and remembering the input batch size."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.drop = nn.Dropout(0.5)
        self.calls: list[int] = []

    def forward(self, x, extra=None):
        self.calls.append(x.shape[0])
        h = self.drop(self.lin(x))
        if extra is not None:
            h = h + extra["bias"]
        return {"logits": h, "pair": (h * 2, h.sum(-1))}


def test_rdrop_forward_is_one_forward_on_the_repeated_batch():
    model = Recorder()
    x = torch.randn(5, 4)
    extra = {"bias": torch.randn(5, 3)}
    out1, out2 = dropkit.rdrop_forward(model, x, extra=extra)
    assert model.calls == [10]
    assert out1["logits"].shape == (5, 3) and out2["pair"][1].shape == (5,)
    assert not torch.equal(out1["logits"], out2["logits"])  # different dropout masks
    # each half is the model on x with its own mask: with dropout off, both halves equal model(x)
    model.drop.p = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        o1, o2 = dropkit.rdrop_forward(model, x, extra=extra)
    plain = model(x, extra=extra)["logits"]
    assert torch.allclose(o1["logits"], plain) and torch.allclose(o2["logits"], plain)


def test_rdrop_forward_pairs_rows_in_order():
    model = nn.Sequential(nn.Dropout(0.3))
    x = torch.arange(1.0, 7.0).reshape(3, 2)
    outs = dropkit.rdrop_forward(model, x, passes=3)
    for out in outs:  # a surviving entry is the same sample's value scaled by 1/(1-p)
        kept = out != 0
        assert torch.allclose(out[kept], (x / 0.7)[kept])


def test_rdrop_forward_splits_a_hugging_face_model_output():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, num_labels=3,
    )  # fmt: skip
    model = transformers.BertForSequenceClassification(config).train()
    batch = {
        "input_ids": torch.randint(0, 50, (4, 7)),
        "attention_mask": torch.ones(4, 7, dtype=torch.long),
    }
    out1, out2 = dropkit.rdrop_forward(model, **batch)
    assert type(out1) is type(out2) and type(out1).__name__ == "SequenceClassifierOutput"
    assert out1.logits.shape == (4, 3)
    loss = dropkit.rdrop_loss(out1.logits, out2.logits, torch.randint(0, 3, (4,)), alpha=1.0)
    loss.backward()
    with pytest.raises(ValueError, match="do not pass labels"):
        dropkit.rdrop_forward(model, **batch, labels=torch.zeros(4, dtype=torch.long))


def test_rdrop_forward_eval_mode_runs_once():
    model = Recorder().eval()
    out1, out2 = dropkit.rdrop_forward(model, torch.randn(3, 4))
    assert model.calls == [3] and out1 is out2


def test_rdrop_forward_warns_once_without_active_dropout():
    model = nn.Sequential(nn.Linear(4, 2), nn.Dropout(0.0))
    with pytest.warns(UserWarning, match="no active dropout"):
        dropkit.rdrop_forward(model, torch.randn(3, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dropkit.rdrop_forward(model, torch.randn(3, 4))  # once per model


def test_rdrop_forward_guardrails():
    model = nn.Sequential(nn.Linear(4, 2), nn.Dropout(0.2))
    with pytest.raises(ValueError, match="disagree on the batch size"):
        dropkit.rdrop_forward(lambda a, b: a, torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="passes"):
        dropkit.rdrop_forward(model, torch.randn(3, 4), passes=1)
    with pytest.raises(TypeError, match="DataParallel"):
        dropkit.rdrop_forward(nn.DataParallel(model), torch.randn(3, 4))


def test_batchnorm_single_sample_raises_only_when_it_would_break():
    flat = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.2), nn.BatchNorm1d(3))
    with pytest.raises(ValueError, match="batch size > 1"):
        dropkit.rdrop_forward(flat, torch.randn(1, 4))
    assert not flat[2]._forward_pre_hooks  # hooks are removed even on error
    dropkit.rdrop_forward(flat, torch.randn(2, 4))  # a real batch is fine
    spatial = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Dropout(0.2), nn.BatchNorm1d(3))
    out1, _ = dropkit.rdrop_forward(spatial, torch.randn(1, 2, 8))  # stats over length: fine
    assert out1.shape == (1, 3, 6)


@pytest.mark.slow
def test_rdrop_makes_dropout_passes_agree_on_held_out_digits():
    """End to end on real 8x8 digits: R-Drop lowers the held-out KL between two dropout passes."""
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    x_train, y_train, x_test = x[:1300], y[:1300], x[1300:]

    def train(alpha: float) -> float:
        torch.manual_seed(1)
        model = nn.Sequential(
            nn.Linear(64, 256), nn.ReLU(), nn.Dropout(0.3), nn.Linear(256, 10)
        )  # fmt: skip
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        for _ in range(15):
            for idx in torch.randperm(1300).split(64):
                out1, out2 = dropkit.rdrop_forward(model, x_train[idx])
                loss = dropkit.rdrop_loss(out1, out2, y_train[idx], alpha=alpha)
                opt.zero_grad()
                loss.backward()
                opt.step()
        torch.manual_seed(2)
        with torch.no_grad():
            out1, out2 = dropkit.rdrop_forward(model, x_test)
            return dropkit.symmetric_kl(out1, out2).item()

    assert train(alpha=1.0) < train(alpha=0.0)


@pytest.mark.parametrize(
    ("alpha", "label_smoothing", "error"),
    [
        (math.nan, 0.0, ValueError),
        (math.inf, 0.0, ValueError),
        (1.0, math.nan, ValueError),
        (1.0, True, TypeError),  # a bool is not a smoothing amount
        (True, 0.0, TypeError),
    ],
)
def test_loss_weights_must_be_real_finite_numbers(alpha, label_smoothing, error) -> None:
    logits = torch.randn(4, 3)
    target = torch.tensor([0, 1, 2, 0])
    with pytest.raises(error, match=r"alpha|label_smoothing"):
        dropkit.rdrop_loss(logits, logits, target, alpha=alpha, label_smoothing=label_smoothing)
    with pytest.raises(error, match=r"alpha|label_smoothing"):
        dropkit.rdrop_linear_loss(torch.randn(4, 2), torch.randn(4, 2), torch.randn(3, 2), target,
                                  alpha, label_smoothing=label_smoothing)  # fmt: skip
    if label_smoothing == 0.0:  # regression has no smoothing; its alpha has the same check
        with pytest.raises(error, match="alpha"):
            dropkit.rdrop_regression_loss(logits, logits, logits, alpha=alpha)
