"""One random stream per seed: a seed's dropout masks depend on its seed, the site and the step,
never on the seeds it trains beside (issue 21, item 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import vmap

import dropkit
from dropkit import schedules
from dropkit.experiments.builtin.streams import (
    KeyedDropout,
    KeyedDropPath,
    keyed_sites,
    keyed_uniform,
    set_keyed,
    step_keys,
)
from dropkit.experiments.builtin.train import Variant, train_variant
from dropkit.experiments.config.training import TrainConfig
from tests.test_experiments_core import MODELS, tiny


def test_keyed_uniforms_are_uniform_independent_and_a_function_of_the_key() -> None:
    keys = step_keys([0, 1, 7], n_sites=2, step=5)
    u = keyed_uniform(keys[0, 0], (256, 256)).flatten().numpy()
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.005  # 65 536 draws: sd of the mean 0.0011
    assert abs((u < 0.1).mean() - 0.1) < 0.005
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.02  # neighbours
    other = keyed_uniform(keys[1, 0], (256, 256)).flatten().numpy()
    assert abs(np.corrcoef(u, other)[0, 1]) < 0.02  # another seed
    assert torch.equal(keyed_uniform(keys[0, 0], (3, 4)), keyed_uniform(keys[0, 0], (3, 4)))
    batched = vmap(lambda key: keyed_uniform(key, (3, 4)))(keys[:, 1])  # as in a population
    for s in range(3):
        assert torch.equal(batched[s], keyed_uniform(keys[s, 1], (3, 4)))
    assert (
        len(
            {int(k) for k in step_keys([0, 1], 3, 0).flatten()}
            | {int(k) for k in step_keys([0, 1], 3, 1).flatten()}
        )
        == 12
    )  # every (seed, site, step) its own key


def test_keyed_sites_drop_as_their_rate_says_and_stay_schedulable() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.0), dropkit.DropPath(0.0))
    names = keyed_sites(model)
    assert names == ["1", "2"]
    assert isinstance(model[1], KeyedDropout) and isinstance(model[2], KeyedDropPath)
    sched = dropkit.DropoutScheduler(model, 10, dropout=0.5, drop_path=0.25, depth_rule="uniform")
    assert [s.p for s in dropkit.find_sites(model)] == [0.5, 0.25]
    x = torch.ones(4096, 8)
    drop, path = model[1], model[2]
    set_keyed(model, True)
    out = drop(x)
    assert set(out.unique().tolist()) == {0.0, 2.0} and abs((out > 0).float().mean() - 0.5) < 0.02
    rows = path(x)
    assert torch.equal(rows.amin(1), rows.amax(1))  # one draw per sample
    assert abs((rows[:, 0] > 0).float().mean() - 0.75) < 0.03
    set_keyed(model, True)  # a new step: the call count starts again ...
    first, second = drop(x), drop(x)  # ... and a site used twice in one step draws twice
    assert not torch.equal(first, second) and torch.equal(first, out)
    model.eval()
    assert torch.equal(drop(x), x)
    sched.remove()


def test_an_unkeyed_site_is_exactly_the_module_it_replaced() -> None:
    keyed = nn.Sequential(nn.Dropout(0.3))
    keyed_sites(keyed)
    x = torch.randn(64, 16)
    torch.manual_seed(0)
    want = nn.Dropout(0.3)(x)
    torch.manual_seed(0)
    assert torch.equal(keyed(x), want)


CONFIG = TrainConfig(epochs=2, batch_size=32, log_every=2)
VARIANTS = [
    Variant("dropout_and_sd", dropout=schedules.standard(0.3), drop_path=schedules.late(0.2, 0.5)),
    Variant("rdrop", dropout=schedules.standard(0.2), rdrop_alpha=1.0),
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_a_seed_trains_alike_alone_in_a_population_and_in_any_split_into_jobs(variant) -> None:
    """Measured: identical to the last bit alone, in the population and split 2 + 1 (the vmap
    of one member and of three gives the same floats on this CPU); lock step (one module per
    seed) within 1e-6 of the population."""
    data = tiny()
    seeds = [0, 1, 2]
    together = train_variant(MODELS["vit"], data, variant, seeds, CONFIG)
    alone = train_variant(MODELS["vit"], data, variant, [2], CONFIG)
    first_two = train_variant(MODELS["vit"], data, variant, [0, 1], CONFIG)
    lockstep = train_variant(MODELS["vit"], data, variant, seeds, CONFIG, vectorize=False)
    split = {0: (first_two, 0), 1: (first_two, 1), 2: (alone, 0)}
    for s, seed in enumerate(seeds):
        other, i = split[seed]
        np.testing.assert_allclose(other.train_loss[i], together.train_loss[s], rtol=1e-6)
        assert other.test_loss[i] == pytest.approx(together.test_loss[s], rel=1e-6)
        np.testing.assert_allclose(lockstep.train_loss[s], together.train_loss[s], rtol=1e-5)
        assert lockstep.test_loss[s] == pytest.approx(together.test_loss[s], rel=1e-5)
    assert len({round(loss, 6) for loss in together.test_loss}) == 3  # the seeds do differ


def test_a_keyed_site_reads_its_rate_as_a_tensor_under_compile() -> None:
    """A schedule moving the rate recompiles nothing (the rate is a buffer the graph reads),
    and the compiled masks are the eager keyed masks, at every rate including 0 and 1."""
    torch._dynamo.reset()
    model = nn.Sequential(nn.Dropout(0.1), dropkit.DropPath(0.1))
    keyed_sites(model)
    model[0].key.fill_(12345)
    model[1].key.fill_(678)
    x = torch.randn(64, 32)

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        set_keyed(model, True)
        return model(inputs)

    compiled = torch.compile(forward, backend="aot_eager")  # the graph, without a C++ build
    with torch._dynamo.config.patch(error_on_recompile=True):
        for rate in (0.1, 0.35, 0.7, 1.0):
            model[0].p = rate
            model[1].drop_prob = rate / 2
            assert torch.equal(compiled(x), forward(x))
    assert torch.equal(compiled(x), torch.zeros_like(x))  # p = 1 drops everything
    model[0].p = 0.0  # a site switched off: one more graph, without it
    assert torch.equal(compiled(x), forward(x))


COMPILED = TrainConfig(epochs=2, batch_size=32, log_every=2, compile=True)


@pytest.mark.slow
def test_a_compiled_population_trains_as_the_eager_one() -> None:
    """Measured: the compiled step's losses equal the eager step's within 1e-6 (relative),
    with the same masks (the seeds still differ)."""
    data = tiny()
    variant = Variant("both", dropout=schedules.standard(0.2), drop_path=schedules.standard(0.3))
    eager = train_variant(MODELS["resmlp"], data, variant, [0, 1, 2], CONFIG)
    compiled = train_variant(MODELS["resmlp"], data, variant, [0, 1, 2], COMPILED)
    np.testing.assert_allclose(compiled.train_loss, eager.train_loss, rtol=1e-5)
    np.testing.assert_allclose(compiled.test_loss, eager.test_loss, rtol=1e-5)
    assert compiled.config["compile"] and not eager.config["compile"]


@pytest.mark.slow
def test_each_compiled_population_compiles_however_many_trained_before_it(caplog) -> None:
    """A worker trains many populations of different models: without a fresh compiler state
    per population the step's graphs pile up on one function until Dynamo's recompile limit
    (8 by default, 1 here) makes it fall back to eager, silently slower (found in a --full run)."""
    data = tiny()
    variant = Variant("dropout", dropout=schedules.standard(0.2))
    with torch._dynamo.config.patch(recompile_limit=1), caplog.at_level("WARNING"):
        for name in ("mlp", "resmlp"):
            train_variant(MODELS[name], data, variant, [0, 1], COMPILED, max_steps=2)
    assert not [r for r in caplog.records if "recompile_limit" in r.getMessage()]


def test_a_population_trains_eagerly_where_compiling_fails() -> None:
    """No usable C++ compiler: the run warns, says why, and trains on the eager step."""
    torch._dynamo.reset()
    data = tiny()
    variant = Variant("dropout", dropout=schedules.standard(0.2))
    no_compiler = torch._inductor.config.patch({"cpp.cxx": ("/nonexistent/c++",)})
    with no_compiler, pytest.warns(RuntimeWarning, match="torch.compile failed.*eagerly"):
        fallback = train_variant(MODELS["mlp"], data, variant, [0, 1], COMPILED)
    eager = train_variant(MODELS["mlp"], data, variant, [0, 1], CONFIG)
    np.testing.assert_allclose(fallback.train_loss, eager.train_loss, rtol=1e-6)


def test_compile_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="compile='yes' must be true or false"):
        TrainConfig(compile="yes")
