"""The experiment core: datasets, models and the vectorized population trainer.

The population trainer is checked against an independent formulation: a plain per-seed training
loop written here (its own init, data order, AdamW and cross-entropy), which must give the same
weights and losses when no randomness is involved.
"""

from __future__ import annotations

import json
import os
import random
import stat

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import dropkit
from dropkit import schedules
from dropkit.experiments.builtin import data as datasets
from dropkit.experiments.builtin.mnist1d_generator import _interp_rows, make_mnist1d
from dropkit.experiments.builtin.models import MLP, Mixer1D, ResMLP, ViT1D, build_model
from dropkit.experiments.builtin.train import (
    Population,
    TrainResult,
    Variant,
    lr_at,
    objective,
    train_variant,
)
from dropkit.experiments.config.training import TrainConfig

# --- data ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist1d(tmp_path_factory: pytest.TempPathFactory) -> datasets.Dataset:
    return datasets.load_mnist1d(cache_dir=tmp_path_factory.mktemp("cache"))


def tiny(n_train: int = 256, n_test: int = 64, features: int = 40, seed: int = 0):
    """A small random dataset with a learnable rule (sign pattern of a few features)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_test, features, generator=gen)
    y = (x[:, :4] > 0).long() @ torch.tensor([1, 2, 4, 1]) % 10
    return datasets.Dataset("tiny", x[:n_train], y[:n_train], x[n_train:], y[n_train:], 10)


def test_mnist1d_canonical_shapes_and_types(mnist1d: datasets.Dataset) -> None:
    assert mnist1d.x.shape == (4000, 40) and mnist1d.x_test.shape == (1000, 40)
    assert mnist1d.x.dtype == torch.float32 and mnist1d.y.dtype == torch.int64
    assert mnist1d.n_classes == 10 and mnist1d.n_features == 40
    assert set(mnist1d.y.tolist()) == set(range(10))
    # make_dataset standardises the whole set to mean 0, sd 1
    everything = torch.cat([mnist1d.x, mnist1d.x_test])
    assert abs(everything.mean().item()) < 1e-4 and abs(everything.std().item() - 1) < 1e-3


def test_mnist1d_cache_is_reused_and_global_rng_untouched(tmp_path, monkeypatch) -> None:
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    first = datasets.load_mnist1d(200, seed=7, cache_dir=tmp_path)
    assert (np.random.rand(), random.random()) == (expected_np, expected_py)
    assert [p.name for p in tmp_path.iterdir()] == ["mnist1d_n200_seed7.npz"]

    def must_not_generate(*args, **kwargs):
        raise AssertionError("the cached arrays should have been read")

    monkeypatch.setattr(datasets, "_generate_mnist1d", must_not_generate)
    again = datasets.load_mnist1d(200, seed=7, cache_dir=tmp_path)
    assert torch.equal(first.x, again.x) and torch.equal(first.y_test, again.y_test)


def test_mnist1d_cache_is_readable_by_colleagues(tmp_path) -> None:
    previous = os.umask(0o022)
    try:
        datasets.load_mnist1d(200, seed=7, cache_dir=tmp_path)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "mnist1d_n200_seed7.npz").stat().st_mode) == 0o644


def test_an_interrupted_cache_write_leaves_nothing(tmp_path, monkeypatch) -> None:
    def interrupted(handle, **arrays):
        handle.write(b"PK half an archive")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        datasets.load_mnist1d(200, seed=7, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_mnist1d_seed_changes_the_data(tmp_path) -> None:
    a = datasets.load_mnist1d(200, seed=1, cache_dir=tmp_path)
    b = datasets.load_mnist1d(200, seed=2, cache_dir=tmp_path)
    assert a.x.shape == b.x.shape == (160, 40)
    assert not torch.equal(a.x, b.x)


def _packages_mnist1d(num_samples: int = 5000, seed: int = 42) -> dict[str, np.ndarray]:
    """``mnist1d.make_dataset``'s arrays (it reseeds the global generators: restored here)."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    state = np.random.get_state(), random.getstate()
    try:
        return make_dataset(args)
    finally:
        np.random.set_state(state[0])
        random.setstate(state[1])


@settings(max_examples=15, deadline=None)
@given(num_samples=st.integers(10, 400), seed=st.integers(0, 2**32 - 1))
def test_mnist1d_generator_gives_the_packages_arrays_bit_for_bit(num_samples, seed) -> None:
    expected, made = _packages_mnist1d(num_samples, seed), make_mnist1d(num_samples, seed)
    for key in datasets.NPZ_KEYS:
        assert made[key].dtype == expected[key].dtype and made[key].shape == expected[key].shape
        assert np.array_equal(made[key], expected[key]), key


def test_mnist1d_generator_matches_the_package_on_the_canonical_set(mnist1d) -> None:
    expected = _packages_mnist1d()  # the package's defaults: 5 000 samples, seed 42
    assert torch.equal(mnist1d.x, torch.from_numpy(expected["x"]).float())
    assert torch.equal(mnist1d.y_test, torch.from_numpy(expected["y_test"]))


@settings(max_examples=60, deadline=None)
@given(
    start=st.floats(-10, 10),
    gaps=st.lists(st.floats(1e-3, 5), min_size=1, max_size=11),
    rows=st.integers(1, 4),
    queries=st.integers(1, 30),
    data=st.data(),
)
def test_row_interpolation_is_np_interp_per_row(start, gaps, rows, queries, data) -> None:
    # increasing knots with finite slopes between them (the generator's are linspace grids)
    x_old = start + np.cumsum([0.0, *gaps])
    values = np.asarray(
        data.draw(
            st.lists(st.floats(-1e3, 1e3), min_size=rows * len(x_old), max_size=rows * len(x_old))
        )
    ).reshape(rows, -1)
    # queries inside the knots' range, some of them exactly on knots
    inside = st.one_of(st.sampled_from(list(x_old)), st.floats(x_old[0], x_old[-1]))
    x_new = np.sort(np.asarray(data.draw(st.lists(inside, min_size=queries, max_size=queries))))
    got = _interp_rows(x_new, x_old, values)
    for row, expected in zip(got, values):
        assert np.array_equal(row, np.interp(x_new, x_old, expected))


def test_digits() -> None:
    digits = datasets.load_digits()
    assert digits.x.shape[1] == 64 and len(digits.x) + len(digits.x_test) == 1797
    assert digits.n_classes == 10 and digits.x.min() >= 0.0 and digits.x.max() <= 1.0
    assert digits.x.dtype == torch.float32 and digits.y.dtype == torch.int64


def test_npz_round_trip_and_missing_keys(tmp_path) -> None:
    x, y = np.random.rand(30, 5), np.arange(30) % 3
    path = tmp_path / "mine.npz"
    np.savez(path, x=x, y=y, x_test=x[:6], y_test=y[:6])
    loaded = datasets.load_dataset(str(path))
    assert loaded.n_classes == 3 and loaded.x.dtype == torch.float32
    np.testing.assert_allclose(loaded.x.numpy(), x.astype(np.float32))
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=x, y=y)
    with pytest.raises(KeyError, match=r"\['x_test', 'y_test'\]"):
        datasets.load_npz(bad)


def test_dataset_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        datasets.load_dataset("cifar")
    with pytest.raises(ValueError, match="mnist1d:NUM_SAMPLES:SEED"):
        datasets.load_dataset("mnist1d:big")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        datasets.load_npz(tmp_path / "missing.npz")
    mismatched = tmp_path / "mismatched.npz"
    np.savez(mismatched, x=np.zeros((4, 3)), y=np.zeros(5), x_test=np.zeros((2, 3)), y_test=[0, 1])
    with pytest.raises(ValueError, match="same N"):
        datasets.load_npz(mismatched)


# --- models ----------------------------------------------------------------------------------


MODELS = {
    "vit": lambda: ViT1D(dim=16, depth=3, heads=2, patch=5),
    "vit-mean": lambda: ViT1D(dim=16, depth=3, heads=2, patch=8, pool="mean"),
    "mixer": lambda: Mixer1D(dim=16, depth=3, patch=5),
    "mlp": lambda: MLP(width=32, depth=2),
    "resmlp": lambda: ResMLP(width=16, depth=3),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_forward_and_sites(name: str) -> None:
    model = MODELS[name]()
    assert model(torch.randn(7, 40)).shape == (7, 10)
    sites = dropkit.find_sites(model)
    assert sites and all(site.controllable and site.p == 0.0 for site in sites)
    kinds = {site.kind for site in sites}
    assert kinds == ({"dropout"} if name == "mlp" else {"dropout", "drop_path"})
    # a model built at rate 0 can be scheduled, and the scheduler reaches every site
    sched = dropkit.DropoutScheduler(
        model, 10, dropout=0.3, drop_path=None if name == "mlp" else 0.2
    )
    rates = {site.name: site.p for site in dropkit.find_sites(model)}
    assert all(rate == 0.3 for n, rate in rates.items() if "drop_path" not in n)
    sched.remove()


def test_drop_path_rates_follow_timm_linear_rule() -> None:
    model = ViT1D(dim=16, depth=5, heads=2, patch=5, drop_path=0.4, dropout=0.1)
    rates = [block.drop_path.drop_prob for block in model.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert all(isinstance(block.drop_path, dropkit.DropPath) for block in model.blocks)
    assert model.blocks[0].attn.attn_drop.p == 0.1 and model.blocks[2].mlp.drop2.p == 0.1
    mixer = Mixer1D(dim=16, depth=3, patch=5, drop_path=0.2)
    assert [b.drop_path.drop_prob for b in mixer.blocks] == pytest.approx([0.0, 0.1, 0.2])
    resmlp = ResMLP(depth=3, drop_path=0.2, dropout=0.3)
    assert [b.drop_path.drop_prob for b in resmlp.blocks] == pytest.approx([0.0, 0.1, 0.2])
    assert {s.p for s in dropkit.find_sites(resmlp) if s.kind == "dropout"} == {0.3}


def test_attention_matches_torch_multihead_attention() -> None:
    """Our attention (eval mode) against nn.MultiheadAttention with the same weights."""
    from dropkit.experiments.builtin.models import Attention

    attention = Attention(dim=12, heads=3, attn_drop=0.0, proj_drop=0.0)
    reference = nn.MultiheadAttention(12, 3, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(attention.qkv.weight)
        reference.in_proj_bias.copy_(attention.qkv.bias)
        reference.out_proj.weight.copy_(attention.proj.weight)
        reference.out_proj.bias.copy_(attention.proj.bias)
    x = torch.randn(4, 6, 12)
    expected, _ = reference(x, x, x, need_weights=False)
    torch.testing.assert_close(attention(x), expected, atol=1e-5, rtol=1e-5)


def test_model_argument_errors() -> None:
    with pytest.raises(ValueError, match="patch=7 does not divide signal_length=40"):
        ViT1D(patch=7)
    with pytest.raises(ValueError, match="divisible by heads"):
        ViT1D(dim=10, heads=4)
    with pytest.raises(ValueError, match="pool='max'"):
        ViT1D(pool="max")
    with pytest.raises(ValueError, match="not one of"):
        build_model("resnet")
    with pytest.raises(TypeError, match="bad arguments for model 'mlp'"):
        build_model("mlp", heads=2)
    assert isinstance(build_model("mixer", dim=8, depth=1, patch=4), Mixer1D)


# --- the population: dropout under vmap --------------------------------------------------------


class Probe(nn.Module):
    """Ones through a dropout and a drop path: the output shows the masks."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.dropout = nn.Dropout(0.0)
        self.drop_path = dropkit.DropPath(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_path(self.dropout(x * self.scale))


def test_rates_set_on_base_reach_every_member_with_independent_masks() -> None:
    population = Population.from_modules([Probe() for _ in range(4)], [0, 1, 2, 3])
    x = torch.ones(64, 32)
    assert torch.equal(population.logits(x, train=True), torch.ones(4, 64, 32))  # rates 0
    sched = dropkit.DropoutScheduler(population.base, 2, dropout=0.5, drop_path=None)
    out = population.logits(x, train=True)
    assert set(out.unique().tolist()) == {0.0, 2.0}
    kept = (out > 0).float()
    assert abs(kept.mean().item() - 0.5) < 0.03
    for a in range(4):  # masks differ between members
        for b in range(a + 1, 4):
            assert not torch.equal(kept[a], kept[b])
    assert torch.equal(population.logits(x, train=False), torch.ones(4, 64, 32))  # eval: off
    sched.remove()
    dropkit.DropoutScheduler(population.base, 2, drop_path=0.5, depth_rule="uniform")
    out = population.logits(x, train=True)
    rows_kept = (out > 0).float()
    # drop path: one draw per sample, so a row is all kept or all dropped ...
    assert torch.equal(rows_kept.amin(-1), rows_kept.amax(-1))
    per_sample = rows_kept[..., 0]  # (members, samples)
    assert 0.3 < per_sample.mean().item() < 0.7
    # ... independently per member and per sample
    assert len({tuple(row.tolist()) for row in per_sample}) == 4
    assert per_sample.sum(1).min() > 0 and per_sample.sum(1).max() < 64


def test_population_logits_and_member_agree() -> None:
    members = [MODELS["vit"]() for _ in range(3)]
    population = Population.from_modules(members, [0, 1, 2])
    x = torch.randn(9, 40)
    logits = population.logits(x, chunk=4)  # chunking must not change anything
    for i, member in enumerate(members):
        torch.testing.assert_close(logits[i], member.eval()(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(population.member(i).eval()(x), member(x))
    per_member = population.logits(torch.stack([x, 2 * x, -x]), per_member=True)
    torch.testing.assert_close(per_member[2], members[2](-x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="per_member=True"):
        population.logits(x, per_member=True)
    live = Population.from_modules(members, [0, 1, 2], base=members[0])
    before = [t.clone() for t in members[0].state_dict().values()]
    torch.testing.assert_close(live.logits(x)[2], members[2](x), atol=1e-5, rtol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(before, members[0].state_dict().values()))
    with pytest.raises(ValueError, match="3 modules but 2 seeds"):
        Population.from_modules(members, [0, 1])
    loss, acc = population.evaluate(x, torch.arange(9))
    expected = F.cross_entropy(members[1](x), torch.arange(9))
    torch.testing.assert_close(loss[1], expected, atol=1e-5, rtol=1e-5)
    assert acc.shape == (3,)


# --- training: against a plain per-seed loop ---------------------------------------------------


def reference_run(model_fn, data, seed: int, epochs: int, batch: int, lr: float, wd: float):
    """One seed trained the textbook way: module, AdamW, randperm per epoch, cross-entropy."""
    torch.manual_seed(seed)
    model = model_fn().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    order_gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(data.x), generator=order_gen)
        for i in range(len(data.x) // batch):
            idx = order[i * batch : (i + 1) * batch]
            loss = F.cross_entropy(model(data.x[idx]), data.y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        test_acc = (model(data.x_test).argmax(1) == data.y_test).float().mean().item()
    return model, losses, test_acc


@pytest.mark.parametrize("name", ["mlp", "vit"])
def test_population_equals_separate_runs_without_dropout(name: str) -> None:
    """In float64, so that Adam's normalisation cannot blow up rounding noise in gradients that
    are 0 in exact arithmetic (e.g. the attention key bias)."""
    single = tiny()
    data = datasets.Dataset(
        "tiny64", single.x.double(), single.y, single.x_test.double(), single.y_test, 10
    )

    def model_fn() -> nn.Module:
        return MODELS[name]().double()

    config = TrainConfig(epochs=2, batch_size=32, lr=3e-3, weight_decay=0.1, warmup_frac=0.0,
                         lr_schedule="constant", log_every=1)  # fmt: skip
    seeds = [3, 5, 11]
    results = {
        vec: train_variant(model_fn, data, Variant("none"), seeds, config, vectorize=vec)
        for vec in (True, False)
    }
    for s, seed in enumerate(seeds):
        model, losses, test_acc = reference_run(model_fn, data, seed, 2, 32, 3e-3, 0.1)
        for result in results.values():
            curve = result.train_loss[s]
            np.testing.assert_allclose(curve, losses, rtol=1e-6)
            assert result.test_acc[s] == pytest.approx(test_acc)
            member = result.population.member(s)
            for (key, got), want in zip(member.state_dict().items(), model.state_dict().values()):
                torch.testing.assert_close(got, want, atol=1e-8, rtol=1e-6, msg=key)


def test_training_is_deterministic_with_dropout_and_rdrop() -> None:
    data = tiny()
    config = TrainConfig(epochs=2, batch_size=32, log_every=3)
    variant = Variant(
        "rdrop", dropout=schedules.standard(0.3), drop_path=schedules.late(0.2, 0.5),
        rdrop_alpha=1.0,
    )  # fmt: skip
    torch.manual_seed(1)
    first = train_variant(MODELS["vit"], data, variant, [0, 1], config).to_dict()
    torch.manual_seed(2)  # the caller's global RNG does not matter ...
    second = train_variant(MODELS["vit"], data, variant, [0, 1], config).to_dict()
    assert first.pop("seconds") > 0 and second.pop("seconds") > 0
    assert first == second
    # ... and is left as it was
    torch.manual_seed(9)
    expected = torch.rand(3)
    torch.manual_seed(9)
    train_variant(MODELS["mlp"], data, Variant("do", dropout=0.5), [0], config)
    assert torch.equal(torch.rand(3), expected)


def test_schedule_is_applied_per_step_and_logged() -> None:
    data = tiny(n_train=320)
    config = TrainConfig(epochs=3, batch_size=32, log_every=1)  # 30 steps
    early = schedules.early(0.4, cutoff=12, shape="linear")
    late = schedules.late(0.3, cutoff=0.5)
    result = train_variant(
        MODELS["vit"], data, Variant("early", dropout=early, drop_path=late), [0, 1], config
    )
    assert result.total_steps == 30 and result.log_steps == list(range(1, 31))
    assert result.rates["dropout"] == pytest.approx([early(k, 30) for k in range(30)])
    assert result.rates["drop_path"] == pytest.approx([late(k, 30) for k in range(30)])
    base_sites = dropkit.find_sites(result.population.base)
    # after the run the base holds the last step's rates: dropout off, drop path on (by depth)
    assert {s.p for s in base_sites if s.kind == "dropout"} == {0.0}
    assert max(s.p for s in base_sites if s.kind == "drop_path") == pytest.approx(0.3)
    none = train_variant(MODELS["vit"], data, Variant("none"), [0, 1], config)
    assert none.rates == {}


def test_dropout_changes_training_only_while_on() -> None:
    """With a schedule that is 0 from step 0, the run equals the no-dropout run exactly."""
    data = tiny()
    config = TrainConfig(epochs=1, batch_size=32)
    off = train_variant(MODELS["mlp"], data, Variant("off", dropout=0.0), [0, 1], config)
    none = train_variant(MODELS["mlp"], data, Variant("none"), [0, 1], config)
    assert off.train_loss == none.train_loss and off.test_acc == none.test_acc
    on = train_variant(MODELS["mlp"], data, Variant("on", dropout=0.5), [0, 1], config)
    assert on.train_loss != none.train_loss


def test_result_serialises_to_json() -> None:
    result = train_variant(MODELS["mlp"], tiny(), Variant("none"), [0, 1], TrainConfig(epochs=1))
    text = json.dumps(result.to_dict())
    restored = TrainResult.from_dict(json.loads(text))
    assert restored == result  # the population is not part of equality or of the JSON
    assert restored.population is None and "population" not in json.loads(text)
    assert len(result.final_train_loss) == len(result.test_acc) == 2


def test_final_train_metrics_use_eval_mode_on_the_subset() -> None:
    data = tiny(n_train=256)
    config = TrainConfig(epochs=1, batch_size=64, train_eval_samples=100)
    result = train_variant(MODELS["mlp"], data, Variant("do", dropout=0.5), [4], config)
    model = result.population.member(0).eval()
    with torch.no_grad():
        expected = F.cross_entropy(model(data.x[:100]), data.y[:100]).item()
    assert result.final_train_loss[0] == pytest.approx(expected, rel=1e-5)


def test_on_step_sees_every_step_and_the_live_population() -> None:
    seen = []

    def on_step(step: int, population: Population) -> None:
        seen.append((step, population.size, population.params["head.bias"].detach().clone()))

    for vectorize in (True, False):
        seen.clear()
        train_variant(MODELS["mlp"], tiny(), Variant("none"), [0, 1], TrainConfig(epochs=1,
                      batch_size=64), vectorize=vectorize, on_step=on_step)  # fmt: skip
        assert [s for s, _, _ in seen] == [1, 2, 3, 4] and seen[0][1] == 2
        assert not torch.equal(seen[0][2], seen[-1][2])  # the weights moved


def test_train_errors() -> None:
    data = tiny(n_train=40)
    with pytest.raises(ValueError, match="batch_size=64 exceeds the 40 training samples"):
        train_variant(MODELS["mlp"], data, Variant("none"), [0], TrainConfig(batch_size=64))
    with pytest.raises(ValueError, match="duplicates"):
        train_variant(MODELS["mlp"], data, Variant("none"), [0, 0], TrainConfig(batch_size=8))
    with pytest.raises(ValueError, match="no controllable drop_path site"):
        train_variant(
            MODELS["mlp"], data, Variant("sd", drop_path=0.1), [0], TrainConfig(batch_size=8)
        )
    with pytest.raises(ValueError, match="rdrop_alpha"):
        Variant("bad", rdrop_alpha=-1.0)
    with pytest.raises(ValueError, match=r"TrainConfig\.epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")


# --- pure pieces -----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    total=st.integers(1, 500), warmup=st.floats(0.0, 0.9), step=st.integers(0, 499),
    lr=st.floats(1e-5, 1.0),
)  # fmt: skip
def test_lr_schedule_laws(total: int, warmup: float, step: int, lr: float) -> None:
    step = step % total
    config = TrainConfig(lr=lr, warmup_frac=warmup)
    value = lr_at(step, total, config)
    assert 0.0 <= value <= lr * (1 + 1e-12)
    n_warm = round(warmup * total)
    if step < n_warm:  # linear warm-up reaching lr at its last step
        assert value == pytest.approx(lr * (step + 1) / n_warm)
    elif step == n_warm:
        assert value == pytest.approx(lr)
    if step + 1 < total and step >= n_warm:  # cosine never increases after warm-up
        assert lr_at(step + 1, total, config) <= value + 1e-15
    flat = TrainConfig(lr=lr, warmup_frac=warmup, lr_schedule="constant")
    if step >= n_warm:
        assert lr_at(step, total, flat) == lr


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 6), classes=st.integers(2, 5), alpha=st.floats(0.0, 5.0))
def test_objective_under_vmap_matches_a_loop(batch: int, classes: int, alpha: float) -> None:
    """The per-member objective vmapped over members equals calling it member by member, and
    the R-Drop form equals the paper's Eq. 4 written out in float64."""
    gen = torch.Generator().manual_seed(batch * 31 + classes)
    n_rows = 2 * batch if alpha > 0 else batch  # R-Drop's logits are those of [x; x]
    logits = torch.randn(3, n_rows, classes, generator=gen)
    target = torch.randint(0, classes, (3, batch), generator=gen)
    batched = torch.func.vmap(lambda z, t: objective(z, t, alpha))(logits, target)
    for m in range(3):
        loss, ce = objective(logits[m], target[m], alpha)
        torch.testing.assert_close(batched[0][m], loss)
        torch.testing.assert_close(batched[1][m], ce)
        if alpha == 0:
            want = F.cross_entropy(logits[m].double(), target[m])
            assert loss.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6)
            assert ce.item() == loss.item()
            continue
        p1, p2 = logits[m].double().chunk(2)
        lp1, lp2 = p1.log_softmax(-1), p2.log_softmax(-1)
        rows = range(batch)
        ce1 = sum(-lp1[i, target[m, i]] for i in rows) / batch
        ce2 = sum(-lp2[i, target[m, i]] for i in rows) / batch
        kl12 = sum((lp1[i].exp() * (lp1[i] - lp2[i])).sum() for i in rows) / batch
        kl21 = sum((lp2[i].exp() * (lp2[i] - lp1[i])).sum() for i in rows) / batch
        want = ce1 + ce2 + alpha / 2 * (kl12 + kl21)
        assert loss.item() == pytest.approx(want.item(), rel=1e-4, abs=1e-5)
        assert ce.item() == pytest.approx(((ce1 + ce2) / 2).item(), rel=1e-4, abs=1e-5)


def test_doubled_batch_control_is_rdrop_without_the_kl() -> None:
    """R-Drop's alpha = 0 control: the same doubled forward, CE of both passes summed, no KL."""
    torch.manual_seed(0)
    logits, target = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 5, (4,))
    loss, logged = objective(logits, target, alpha=0.0, doubled=True)
    ce1 = F.cross_entropy(logits[:4], target)
    ce2 = F.cross_entropy(logits[4:], target)
    assert loss.item() == pytest.approx((ce1 + ce2).item()) and logged.item() == pytest.approx(
        ((ce1 + ce2) / 2).item()
    )
    rdrop, _ = objective(logits, target, alpha=1.0)  # the KL term is what R-Drop adds
    assert rdrop.item() > loss.item()
    # with dropout off both passes agree, so CE1 + CE2 is twice the plain CE: AdamW is
    # invariant to that scale (up to its eps), so the control trains like the plain run
    data = tiny()
    config = TrainConfig(epochs=1, batch_size=32)
    control = Variant("control", dropout=0.0, double_batch=True)
    assert control.doubled and not Variant("none").doubled
    doubled = train_variant(MODELS["mlp"], data, control, [0, 1], config)
    plain = train_variant(MODELS["mlp"], data, Variant("none", dropout=0.0), [0, 1], config)
    np.testing.assert_allclose(doubled.train_loss, plain.train_loss, rtol=1e-4)
    assert doubled.train_loss != plain.train_loss  # the doubled forward really ran
