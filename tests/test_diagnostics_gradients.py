"""Gradient helpers and inconsistency: naive references, vmap == loop, training left untouched."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dropkit
from dropkit import diagnostics as dd
from dropkit.diagnostics._state import dropout_off


def mlp(p: float = 0.0) -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(p), nn.Linear(16, 3))


class AttentionNet(nn.Module):
    """Attention dropout is a float on nn.MultiheadAttention; dropkit.Dropout has a rate buffer."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.attn = nn.MultiheadAttention(8, 2, dropout=p, batch_first=True)
        self.drop = dropkit.Dropout(p)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        return self.head(self.drop(h).mean(dim=1))


class NormNet(nn.Module):
    """BatchNorm in train mode (vmap refuses it), dropout, and a user-frozen submodule."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(p))
        self.frozen_norm = nn.BatchNorm1d(16)
        self.head = nn.Linear(16, 3)
        self.frozen_norm.eval()  # a user choice the diagnostics must keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.frozen_norm(self.body(x)))


def classification_batches(sizes, features=(6,), classes=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(n, *features, generator=generator),
            torch.randint(0, classes, (n,), generator=generator),
        )
        for n in sizes
    ]


def sequence_batches(sizes, seed=0):
    return classification_batches(sizes, features=(5, 6), seed=seed)


# --- naive references ---------------------------------------------------------------------------


def ref_batch_gradient(model: nn.Module, batch) -> torch.Tensor:
    """Backward on a copy and read .grad."""
    clone = copy.deepcopy(model)
    x, y = batch
    F.cross_entropy(clone(x), y).backward()
    return torch.cat([p.grad.reshape(-1) for p in clone.parameters()])


def ref_full_gradient(model: nn.Module, batches) -> torch.Tensor:
    """One batch of all the data, on a copy whose dropout was zeroed by hand, in float64."""
    clone = copy.deepcopy(model).double()
    for module in clone.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(module, nn.MultiheadAttention):
            module.dropout = 0.0
        if isinstance(module, dropkit.Dropout):
            module.p = 0.0
    x = torch.cat([b[0] for b in batches]).double()
    y = torch.cat([b[1] for b in batches])
    F.cross_entropy(clone(x), y).backward()
    return torch.cat([p.grad.reshape(-1) for p in clone.parameters()])


def training_state(model: nn.Module) -> dict:
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "buffers": [b.clone() for b in model.buffers()],
        "modes": [m.training for m in model.modules()],
        "rates": [s.p for s in dropkit.find_sites(model)],
        "rng": torch.get_rng_state(),
    }


def assert_same_state(before: dict, after: dict) -> None:
    for key in ("params", "buffers"):
        assert all(torch.equal(a, b) for a, b in zip(before[key], after[key], strict=True)), key
    for a, b in zip(before["grads"], after["grads"], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    assert before["modes"] == after["modes"]
    assert before["rates"] == after["rates"]
    assert torch.equal(before["rng"], after["rng"])


# --- per-mini-batch gradients -------------------------------------------------------------------


@pytest.mark.parametrize("method", ["vmap", "loop"])
@pytest.mark.parametrize(
    "build, batches",
    [(mlp, classification_batches([8] * 5)), (AttentionNet, sequence_batches([4] * 5))],
)
def test_mini_batch_gradients_match_backward_on_a_copy(method, build, batches):
    model = build(0.0)
    got = list(dd.mini_batch_gradients(model, batches, method=method, chunk_size=2))
    assert len(got) == len(batches)
    for grad, batch in zip(got, batches):
        torch.testing.assert_close(grad, ref_batch_gradient(model, batch), rtol=1e-5, atol=1e-6)


def test_vmap_and_loop_give_the_same_numbers_without_dropout_including_ragged_chunks():
    model = mlp(0.0)
    batches = classification_batches([8, 8, 8, 5, 8, 8, 3])  # shapes change mid-chunk
    vmap = list(dd.mini_batch_gradients(model, batches, method="vmap", chunk_size=3))
    loop = list(dd.mini_batch_gradients(model, batches, method="loop"))
    for a, b in zip(vmap, loop, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert dd.gradient_direction_variance(vmap) == pytest.approx(
        dd.gradient_direction_variance(loop), abs=1e-6
    )


def test_vmap_handles_dict_batches_with_non_tensor_entries():
    model = mlp(0.0)

    def loss_fn(m, batch):
        assert batch["split"] == "train"
        return F.cross_entropy(m(batch["x"]), batch["y"])

    batches = [{"x": x, "y": y, "split": "train"} for x, y in classification_batches([4] * 4)]
    vmap = list(dd.mini_batch_gradients(model, batches, loss_fn, method="vmap", chunk_size=4))
    loop = list(dd.mini_batch_gradients(model, batches, loss_fn, method="loop"))
    for a, b in zip(vmap, loop, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_vmap_and_loop_draw_fresh_masks_per_mini_batch_from_the_same_distribution():
    model = mlp(0.5)
    batches = classification_batches([16]) * 256  # one batch repeated: only dropout varies
    vmap = torch.stack(
        list(dd.mini_batch_gradients(model, batches, method="vmap", chunk_size=64, seed=1))
    )
    loop = torch.stack(list(dd.mini_batch_gradients(model, batches, method="loop", seed=2)))
    for grads in (vmap, loop):
        assert torch.unique(grads, dim=0).shape[0] == len(batches)  # independent masks

    def mean_gap_over_noise(a: torch.Tensor, b: torch.Tensor) -> float:
        gap = (a.double().mean(0) - b.double().mean(0)).square().sum()
        noise = (a.double().var(0) + b.double().var(0)).sum() / len(batches)
        return float(gap / noise)  # about 1 when both come from one distribution

    assert mean_gap_over_noise(vmap, loop) < 2.0
    assert dd.gradient_direction_variance(vmap) == pytest.approx(
        dd.gradient_direction_variance(loop), abs=0.03
    )
    other_rate = mlp(0.1)
    other_rate.load_state_dict(model.state_dict())
    other = torch.stack(list(dd.mini_batch_gradients(other_rate, batches, method="loop", seed=3)))
    assert mean_gap_over_noise(vmap, other) > 2.0  # the check can tell distributions apart


def test_seed_makes_dropout_gradients_reproducible():
    model = mlp(0.5)
    batches = classification_batches([8] * 4)

    def grads(seed, method):
        return torch.stack(list(dd.mini_batch_gradients(model, batches, method=method, seed=seed)))

    for method in ("vmap", "loop"):
        assert torch.equal(grads(7, method), grads(7, method))
        assert not torch.equal(grads(7, method), grads(8, method))


def test_auto_falls_back_to_the_loop_for_batchnorm_once_per_model():
    model = NormNet(0.0)
    batches = classification_batches([8] * 4)
    with pytest.warns(dd.VmapFallbackWarning, match="method='loop'"):
        auto = list(dd.mini_batch_gradients(model, batches, method="auto", chunk_size=4))
    loop = list(dd.mini_batch_gradients(model, batches, method="loop"))
    for a, b in zip(auto, loop, strict=True):
        torch.testing.assert_close(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error", dd.VmapFallbackWarning)
        list(dd.mini_batch_gradients(model, batches, method="auto"))  # remembered: no retry
    with pytest.raises(RuntimeError):
        list(dd.mini_batch_gradients(model, batches, method="vmap"))


def test_invalid_arguments_name_the_fix():
    model = mlp()
    batches = classification_batches([4])
    with pytest.raises(ValueError, match="scalar"):
        list(dd.mini_batch_gradients(model, batches, lambda m, b: m(b[0]), method="loop"))
    with pytest.raises(ValueError, match="method="):
        list(dd.mini_batch_gradients(model, batches, method="fast"))
    with pytest.raises(ValueError, match="chunk_size"):
        list(dd.mini_batch_gradients(model, batches, chunk_size=0))
    with pytest.raises(ValueError, match=r"\(inputs, targets\)"):
        dd.cross_entropy_loss(model, batches[0][0])
    with pytest.raises(ValueError, match="no batches"):
        dd.full_gradient(model, [])
    frozen = mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad"):
        list(dd.mini_batch_gradients(frozen, batches))


def test_cross_entropy_loss_handles_token_logits():
    class Tokens(nn.Module):
        def forward(self, x):
            return x

    logits = torch.randn(2, 5, 4)
    targets = torch.randint(0, 4, (2, 5))
    targets[0, 0] = -100
    expected = F.cross_entropy(logits.permute(0, 2, 1), targets)
    torch.testing.assert_close(dd.cross_entropy_loss(Tokens(), (logits, targets)), expected)


# --- full-data gradient -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, batches",
    [(mlp, classification_batches([10, 10, 7])), (AttentionNet, sequence_batches([6, 4, 3]))],
)
def test_full_gradient_has_dropout_off_and_weights_batches_by_size(build, batches):
    model = build(0.5)  # dropout on in training; ĝ must not see it
    got = dd.full_gradient(model, batches)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, ref_full_gradient(model, batches), rtol=1e-5, atol=1e-7)


class ManualDropPath(nn.Module):
    """Matches the drop-path rule by name but keeps its rate where find_sites cannot set it."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.rate = (p,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropkit.drop_path(x, self.rate[0], self.training)


def test_full_gradient_puts_uncontrollable_dropout_in_eval_mode_and_back():
    model = nn.Sequential(nn.Linear(6, 16), ManualDropPath(0.5), nn.Linear(16, 3))
    assert not dropkit.find_sites(model)[0].controllable
    batches = classification_batches([8, 8])
    before = training_state(model)
    reference = copy.deepcopy(model)
    reference[1].rate = (0.0,)
    torch.testing.assert_close(
        dd.full_gradient(model, batches), ref_full_gradient(reference, batches)
    )
    assert_same_state(before, training_state(model))


def test_dropout_off_on_its_own_zeroes_rates_and_restores_rates_and_flags():
    model = nn.Sequential(AttentionNet(0.3), ManualDropPath(0.5))
    rates = [s.p for s in dropkit.find_sites(model)]
    assert sorted(rates) == [0.0, 0.3, 0.3]  # MHA float, dropkit.Dropout, uncontrollable (0)
    with dropout_off(model):
        assert all(s.p == 0.0 for s in dropkit.find_sites(model))
        assert not model[1].training and model[0].training
    assert [s.p for s in dropkit.find_sites(model)] == rates
    assert all(m.training for m in model.modules())


# --- training left untouched --------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, batches, method",
    [
        (NormNet, classification_batches([8] * 4), "auto"),
        (NormNet, classification_batches([8] * 4), "loop"),
        (AttentionNet, sequence_batches([4] * 4), "vmap"),
    ],
)
def test_helpers_leave_training_exactly_as_it_was(build, batches, method):
    model = build(0.3)
    x, y = batches[0]
    F.cross_entropy(model(x), y).backward()  # .grad and running stats as mid-training
    before = training_state(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dd.VmapFallbackWarning)
        grads = dd.mini_batch_gradients(model, batches, method=method, chunk_size=2)
        for _ in grads:
            assert_same_state(before, training_state(model))  # also between yields
    assert_same_state(before, training_state(model))
    dd.full_gradient(model, batches)
    assert_same_state(before, training_state(model))
    dd.train_test_inconsistency(model, x, y, passes=3)
    assert_same_state(before, training_state(model))


def test_modes_are_restored_even_if_loss_fn_changes_them():
    model = mlp(0.0)

    def eval_mode_loss(m, batch):
        m.eval()
        return dd.cross_entropy_loss(m, batch)

    list(
        dd.mini_batch_gradients(
            model, classification_batches([4, 4]), eval_mode_loss, method="loop"
        )
    )
    assert all(m.training for m in model.modules())


# --- train/test inconsistency -------------------------------------------------------------------


def ref_inconsistency(model, x, y, passes, seed):
    """Same masks (torch.manual_seed), deterministic pass via .eval(), explicit loops over rows."""
    torch.manual_seed(seed)
    with torch.no_grad():
        mc = [model(x).double().softmax(-1) for _ in range(passes)]
        det = copy.deepcopy(model).eval()(x).double().softmax(-1)
    classes = det.shape[-1]
    mc = [p.reshape(-1, classes) for p in mc]
    det, targets = det.reshape(-1, classes), y.reshape(-1)
    kept = [r for r in range(det.shape[0]) if int(targets[r]) != -100]
    kl, disagree, det_hits, mc_hits = 0.0, 0, 0, 0
    for r in kept:
        mean = [sum(float(p[r, c]) for p in mc) / passes for c in range(classes)]
        kl += sum(
            m * (math.log(m) - math.log(float(det[r, c]))) for c, m in enumerate(mean) if m > 0
        )
        det_class = int(det[r].argmax())
        mc_class = max(range(classes), key=lambda c: mean[c])
        disagree += det_class != mc_class
        det_hits += det_class == int(targets[r])
        mc_hits += mc_class == int(targets[r])
    n = len(kept)
    return kl / n, disagree / n, (det_hits - mc_hits) / n


def test_inconsistency_matches_explicit_reference():
    model = mlp(0.5)
    x, y = classification_batches([64])[0]
    got = dd.train_test_inconsistency(model, x, y, passes=5, seed=3)
    kl, disagreement, gap = ref_inconsistency(model, x, y, passes=5, seed=3)
    assert got.kl == pytest.approx(kl, rel=1e-9)
    assert got.kl > 0
    assert got.disagreement == pytest.approx(disagreement)
    assert got.accuracy_gap == pytest.approx(gap)
    assert got.accuracy_gap == pytest.approx(got.deterministic_accuracy - got.mc_accuracy)


@pytest.mark.parametrize(
    "build, batch",
    [(mlp, classification_batches([32])[0]), (AttentionNet, sequence_batches([16])[0])],
)
def test_inconsistency_is_zero_without_dropout(build, batch):
    got = dd.train_test_inconsistency(build(0.0), *batch, passes=4)
    assert 0.0 <= got.kl <= 1e-12  # rounding noise never makes a KL negative
    assert got.disagreement == 0.0
    assert got.accuracy_gap == 0.0


def test_inconsistency_on_tokens_skips_ignored_rows_and_works_without_targets():
    model = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.5), nn.Linear(16, 4))
    x = torch.randn(3, 7, 6)
    y = torch.randint(0, 4, (3, 7))
    y[:, :3] = -100
    got = dd.train_test_inconsistency(model, x, y, passes=4, seed=0)
    kl, disagreement, gap = ref_inconsistency(model, x, y, passes=4, seed=0)
    assert got.kl == pytest.approx(kl, rel=1e-9)
    assert got.disagreement == pytest.approx(disagreement)
    assert got.accuracy_gap == pytest.approx(gap)
    unlabelled = dd.train_test_inconsistency(model, x, passes=4, seed=0)
    assert unlabelled.accuracy_gap is None and unlabelled.mc_accuracy is None
    assert unlabelled.kl > 0
    with pytest.raises(ValueError, match="one class index per row"):
        dd.train_test_inconsistency(model, x, y[:, :2], passes=2)
    with pytest.raises(ValueError, match="passes"):
        dd.train_test_inconsistency(model, x, y, passes=0)
