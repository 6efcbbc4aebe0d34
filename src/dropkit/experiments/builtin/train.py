"""Train one variant (a dropout / drop-path schedule, optionally R-Drop) over several seeds at once.

On a CPU, training a tiny model is dominated by per-step overhead, so the seeds of a variant are
trained as one vectorized *population*: the members' parameters are stacked
(``torch.func.stack_module_state``) and one forward runs all of them through
``vmap(functional_call(base, ...))``. Rates live on the ``base`` module whose structure
``functional_call`` uses: a [`DropoutScheduler`][dropkit.DropoutScheduler] on it sets the rate
for every member at once.

One AdamW over the stacked parameters is exactly S independent AdamWs (AdamW is elementwise;
nothing here mixes members, e.g. no global-norm clipping). Each seed fixes its member's
initialisation, its data order and its dropout masks: the model's ``nn.Dropout`` and
[`DropPath`][dropkit.DropPath] sites draw from a stream keyed by (seed, site, step)
(``dropkit.experiments.builtin.streams``), so a seed trains alike alone, in any population
and in any split of the seeds into jobs. Other sites (a float attention dropout of a user's
model) draw from a generator seeded by all the seeds, through ``randomness="different"``.

``vectorize=False`` trains the same members one module each, in lock step, with the same API: a
reference path, equal to the population up to float rounding (masks included). Measured on one CPU
thread (``benchmarks/demo_calibration.py --compare-loop``), vectorizing pays for small models
whose steps are overhead-bound (about 1.5x for an 18k-parameter residual MLP) and not for wider
ones, which are compute-bound (0.95x to 1.1x).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from dropkit._checks import check_int
from dropkit.dropout_scheduler import DropoutScheduler, ScheduleLike
from dropkit.experiments.config.specs import trains_doubled
from dropkit.experiments.config.training import EVAL_BATCH, TrainConfig
from dropkit.rdrop import rdrop_terms

from .data import Dataset
from .streams import keyed_sites, set_keyed, step_keys

__all__ = [
    "Population",
    "TrainResult",
    "Variant",
    "build_members",
    "lr_at",
    "objective",
    "train_variant",
]


@dataclass(frozen=True)
class Variant:
    """What is compared: schedules for dropout and drop-path sites, and the R-Drop weight.

    A schedule is anything [`DropoutScheduler`][dropkit.DropoutScheduler] accepts
    (``dropkit.schedules`` objects, a float, an array of per-step rates); ``None`` leaves those
    sites at the rate the model was built with. ``rdrop_alpha > 0`` trains with R-Drop (paper
    Eq. 4, two passes as one forward on ``[x; x]``) at the same number of optimizer steps;
    ``double_batch=True`` with ``rdrop_alpha=0`` is its control, the same doubled forward and
    summed CEs without the KL.
    """

    name: str
    dropout: ScheduleLike | None = None
    drop_path: ScheduleLike | None = None
    rdrop_alpha: float = 0.0
    double_batch: bool = False

    @property
    def doubled(self) -> bool:
        """Whether each step trains on ``[x; x]`` (R-Drop, or its alpha = 0 control)."""
        return trains_doubled(self.rdrop_alpha, self.double_batch)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a variant needs a non-empty name, got {self.name!r}")
        if not self.rdrop_alpha >= 0:
            raise ValueError(f"variant {self.name!r}: rdrop_alpha={self.rdrop_alpha} must be >= 0")

    def describe(self) -> dict[str, str]:
        return {
            "dropout": repr(self.dropout),
            "drop_path": repr(self.drop_path),
            "rdrop_alpha": repr(self.rdrop_alpha),
            "double_batch": repr(self.double_batch),
        }


def lr_at(step: int, total_steps: int, config: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then cosine or flat."""
    warmup = round(config.warmup_frac * total_steps)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    if config.lr_schedule == "constant":
        return config.lr
    progress = (step - warmup) / max(1, total_steps - warmup)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


class Population:
    """S models of one architecture with stacked weights: ``params[name]`` has shape (S, ...).

    ``base`` supplies the structure and the dropout rates (its own weights are never used).
    """

    def __init__(
        self,
        base: nn.Module,
        params: dict[str, Tensor],
        buffers: dict[str, Tensor],
        seeds: list[int],
    ) -> None:
        self.base = base
        self.params = params
        self.buffers = buffers
        self.seeds = seeds

    @classmethod
    def from_modules(
        cls, modules: Sequence[nn.Module], seeds: Sequence[int], base: nn.Module | None = None
    ) -> Population:
        """Stack copies of the weights of ``modules`` (one architecture) into a population.

        ``base`` defaults to a copy of the first module; passing a live module instead makes
        the population follow that module's rates (its own weights are left alone).
        """
        if len(modules) != len(seeds):
            raise ValueError(f"{len(modules)} modules but {len(seeds)} seeds; pass one per module")
        params, buffers = stack_module_state(list(modules))
        persistent = set(modules[0].state_dict())  # rate mirrors are non-persistent: left out
        buffers = {name: b for name, b in buffers.items() if name in persistent}
        base = copy.deepcopy(modules[0]) if base is None else base
        return cls(base, params, buffers, list(seeds))

    @property
    def size(self) -> int:
        return len(self.seeds)

    def _forward(self, x: Tensor, shared_input: bool) -> Tensor:
        def member(params: dict[str, Tensor], buffers: dict[str, Tensor], inputs: Tensor):
            return functional_call(self.base, (params, buffers), (inputs,))

        in_dims = (0, 0, None if shared_input else 0)
        return vmap(member, in_dims=in_dims, randomness="different")(self.params, self.buffers, x)

    def logits(
        self, x: Tensor, train: bool = False, per_member: bool = False, chunk: int = EVAL_BATCH
    ) -> Tensor:
        """Logits ``(S, N, C)`` of every member on ``x``.

        ``x`` is ``(N, ...)``, shared by all members, or with ``per_member=True`` ``(S, N, ...)``,
        one set each. ``train=True`` keeps dropout on at the base's current rates, with an
        independent mask per member and sample (MC dropout); otherwise dropout is off.
        """
        if per_member and x.shape[0] != self.size:
            raise ValueError(
                f"per_member=True needs inputs shaped (S={self.size}, N, ...), got {tuple(x.shape)}"
            )
        was_training = self.base.training
        self.base.train(train)
        try:
            with torch.no_grad():
                axis = 1 if per_member else 0
                parts = [self._forward(part, not per_member) for part in x.split(chunk, dim=axis)]
        finally:
            self.base.train(was_training)
        return torch.cat(parts, dim=1)

    def evaluate(self, x: Tensor, y: Tensor, chunk: int = EVAL_BATCH) -> tuple[Tensor, Tensor]:
        """Per-member mean cross-entropy and accuracy on ``(x, y)`` with dropout off: two (S,)."""
        logits = self.logits(x, train=False, chunk=chunk)
        loss = F.cross_entropy(logits.flatten(0, 1), y.repeat(self.size), reduction="none")
        acc = (logits.argmax(-1) == y).float().mean(1)
        return loss.view(self.size, -1).mean(1), acc

    def member(self, index: int) -> nn.Module:
        """A standalone copy of member ``index`` (current rates and train/eval mode of base)."""
        module = copy.deepcopy(self.base)
        state = {name: t[index].detach().clone() for name, t in self.params.items()}
        state.update({name: t[index].detach().clone() for name, t in self.buffers.items()})
        module.load_state_dict(state)
        return module


@dataclass
class TrainResult:
    """What a variant's population run produced; ``to_dict()`` is JSON-serialisable.

    Per-seed lists are in the order of ``seeds``; every per-seed table is indexed seed first.
    ``train_loss[s][k]`` is seed ``s``'s mean mini-batch cross-entropy over the window ending at
    step ``log_steps[k]`` (steps done; with a doubled batch the mean CE of the two passes,
    without the KL term). ``rates[kind][k]`` is the rate
    the schedule applied at the last step of that window (only scheduled kinds appear).
    ``final_train_*`` are measured with dropout off on the training set (or its first
    ``train_eval_samples``), ``test_*`` on the test set with dropout off. ``diverged_at[s]`` is
    the step at which seed ``s``'s loss first became non-finite (None if it never did); such a
    seed's final metrics are NaN, and when every seed has diverged training stops there.
    """

    variant: str
    seeds: list[int]
    total_steps: int
    steps_per_epoch: int
    log_steps: list[int]
    train_loss: list[list[float]]
    rates: dict[str, list[float]]
    final_train_loss: list[float]
    final_train_acc: list[float]
    test_loss: list[float]
    test_acc: list[float]
    diverged_at: list[int | None]
    seconds: float
    vectorized: bool
    spec: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    population: Population | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del out["population"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainResult:
        names = {f.name for f in dataclasses.fields(cls)} - {"population"}
        missing = names - data.keys() - {"spec", "config"}
        if missing:
            raise KeyError(f"a TrainResult dict lacks {sorted(missing)}")
        return cls(**{k: v for k, v in data.items() if k in names})


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds is empty: pass at least one seed")
    seeds = [check_int(s, "each seed", 0) for s in seeds]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={seeds} has duplicates; each member needs its own seed")
    return seeds


def build_members(model_fn: Callable[[], nn.Module], seeds: Sequence[int]) -> list[nn.Module]:
    """One model per seed, exactly as `train_variant` initialises its members.

    Each is built by ``model_fn()`` under ``torch.manual_seed(seed)``; the caller's global RNG
    is left as it was.
    """
    members = []
    for seed in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            members.append(model_fn())
    return members


def _order_generators(seeds: list[int]) -> list[torch.Generator]:
    """One generator per member for its data order, independent of the global RNG."""
    return [torch.Generator().manual_seed(seed) for seed in seeds]


def _mask_seed(seeds: list[int]) -> int:
    """One seed for the masks of sites that are not keyed per seed (see the module docstring),
    derived from all of the population's seeds."""
    value = 0x9E3779B97F4A7C15
    for seed in seeds:
        value = (value * 6364136223846793005 + seed + 1442695040888963407) % 2**63
    return value


def objective(
    logits: Tensor, target: Tensor, alpha: float, doubled: bool | None = None
) -> tuple[Tensor, Tensor]:
    """Training loss and the logged cross-entropy for one member's logits.

    Plain training: both are ``cross_entropy(logits, target)``. Doubled (R-Drop, the default
    when ``alpha > 0``, or its control): the logits are those of ``[x; x]``; the loss is
    ``ce1 + ce2 + alpha/2 (KL12 + KL21)`` ([`rdrop_terms`][dropkit.rdrop_terms];
    ``alpha = 0`` leaves the summed CEs) and the logged value is ``(ce1 + ce2) / 2``.
    """
    if not (alpha > 0 if doubled is None else doubled):
        ce = F.cross_entropy(logits, target)
        return ce, ce
    first, second = logits.chunk(2)
    terms = rdrop_terms((first, second), target, alpha=alpha)
    return terms.loss, (terms.ce[0] + terms.ce[1]) / 2


def _scheduler(model: nn.Module, total: int, variant: Variant) -> DropoutScheduler | None:
    if variant.dropout is None and variant.drop_path is None:
        return None
    return DropoutScheduler(model, total, dropout=variant.dropout, drop_path=variant.drop_path)


class _Log:
    """Window means of the per-step, per-member training loss, the rates at window ends, and
    the step at which each member's loss first became non-finite (it diverged)."""

    def __init__(self, total: int, size: int, every: int) -> None:
        self.losses = torch.full((total, size), math.nan, dtype=torch.float64)  # NaN: not run
        self.every = every
        self.total = total
        self.rates: dict[str, list[float]] = {}
        self.diverged_at: list[int | None] = [None] * size

    def record(self, step: int, loss: Tensor, rates: dict[str, float]) -> None:
        self.losses[step] = loss.detach()
        for member in torch.nonzero(~torch.isfinite(loss.detach())).flatten().tolist():
            if self.diverged_at[member] is None:
                self.diverged_at[member] = step
        if (step + 1) % self.every == 0 or step + 1 == self.total:
            for kind, rate in rates.items():
                self.rates.setdefault(kind, []).append(rate)

    @property
    def all_diverged(self) -> bool:
        return all(step is not None for step in self.diverged_at)

    def windows(self) -> tuple[list[int], list[list[float]]]:
        """Window end steps and the window means, ``means[seed][window]``."""
        ends = [*range(self.every, self.total + 1, self.every)]
        if not ends or ends[-1] != self.total:
            ends.append(self.total)
        starts = [0, *ends[:-1]]
        means = torch.stack([self.losses[a:b].mean(0) for a, b in zip(starts, ends)], dim=1)
        return ends, means.tolist()


def train_variant(
    model_fn: Callable[[], nn.Module],
    data: Dataset,
    variant: Variant,
    seeds: Sequence[int],
    config: TrainConfig = TrainConfig(),
    *,
    vectorize: bool = True,
    on_step: Callable[[int, Population], None] | None = None,
    max_steps: int | None = None,
) -> TrainResult:
    """Train ``variant`` once per seed on ``data``; return losses, accuracies and the population.

    ``model_fn()`` builds one model; it is called once per seed under ``torch.manual_seed(seed)``,
    so the seed fixes the initialisation. Each seed also fixes its member's data order and, for
    ``nn.Dropout`` / ``DropPath`` sites, its masks (one stream per seed, site and step; other
    sites draw from a generator seeded by all ``seeds``). The caller's global RNG is left
    untouched, and the same call gives the same numbers. ``on_step(steps_done, population)``
    runs after every optimizer step (progress bars, diagnostics); with ``vectorize=False`` it
    gets a stacked copy of the members, built only when ``on_step`` is given. ``max_steps``
    stops after that many optimizer steps of the run the config lays out (its LR and dropout
    schedules unchanged): the first part of the intended run, as the advisor's probes train.
    ``config.compile`` compiles the population's step (see `TrainConfig`); the lock-step
    path stays eager.
    """
    seeds = _check_seeds(seeds)
    if max_steps is not None:
        max_steps = check_int(max_steps, "max_steps", 1, ", or None")
    n_train = len(data.x)
    if config.batch_size > n_train:
        raise ValueError(
            f"batch_size={config.batch_size} exceeds the {n_train} training samples of "
            f"{data.name}; use a smaller batch"
        )
    steps_per_epoch = n_train // config.batch_size
    total = config.epochs * steps_per_epoch
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_mask_seed(seeds))
        run = _train_population if vectorize else _train_lockstep
        stop = total if max_steps is None else min(max_steps, total)
        population, log = run(model_fn, data, variant, seeds, config, total, stop, on_step)
    n_eval = config.train_eval_samples or n_train
    train_loss, train_acc = population.evaluate(data.x[:n_eval], data.y[:n_eval], config.eval_batch)
    test_loss, test_acc = population.evaluate(data.x_test, data.y_test, config.eval_batch)
    diverged = torch.tensor([step is not None for step in log.diverged_at])
    for metric in (train_loss, train_acc, test_loss, test_acc):  # a diverged seed has no result
        metric[diverged] = math.nan
    log_steps, window_losses = log.windows()
    return TrainResult(
        variant=variant.name,
        seeds=seeds,
        total_steps=total,
        steps_per_epoch=steps_per_epoch,
        log_steps=log_steps,
        train_loss=window_losses,
        rates=log.rates,
        final_train_loss=train_loss.tolist(),
        final_train_acc=train_acc.tolist(),
        test_loss=test_loss.tolist(),
        test_acc=test_acc.tolist(),
        diverged_at=log.diverged_at,
        seconds=time.perf_counter() - start,
        vectorized=vectorize,
        spec=variant.describe(),
        config=dataclasses.asdict(config),
        population=population,
    )


def _batch_indices(
    seeds: list[int], n: int, batch: int, steps_per_epoch: int, stop: int
) -> Iterator[tuple[int, Tensor]]:
    """``(step, index)`` for the first ``stop`` steps: ``index[s]`` is seed ``s``'s mini-batch,
    from a fresh permutation of its own data order each epoch (the last partial batch dropped)."""
    generators = _order_generators(seeds)
    step = 0
    while step < stop:
        orders = torch.stack([torch.randperm(n, generator=g) for g in generators])
        for i in range(min(steps_per_epoch, stop - step)):
            yield step, orders[:, i * batch : (i + 1) * batch]
            step += 1


def _compiled_or_eager(
    step: Callable[..., tuple[Tensor, Tensor]],
) -> Callable[..., tuple[Tensor, Tensor]]:
    """``torch.compile(step)``, falling back to ``step`` itself (with a warning) for good if
    compiling fails, e.g. where no C++ compiler is installed."""
    compiled = torch.compile(step, dynamic=False)
    current = [compiled]

    def run(*args: Any) -> tuple[Tensor, Tensor]:
        try:
            return current[0](*args)
        except torch._dynamo.exc.BackendCompilerFailed as err:
            if current[0] is step:
                raise
            reason = str(err).strip().splitlines()[0]
            warnings.warn(
                f"torch.compile failed ({reason}); training this population eagerly instead",
                RuntimeWarning,
                stacklevel=2,
            )
            current[0] = step
            return step(*args)

    return run


def _train_population(
    model_fn: Callable[[], nn.Module],
    data: Dataset,
    variant: Variant,
    seeds: list[int],
    config: TrainConfig,
    total: int,
    stop: int,
    on_step: Callable[[int, Population], None] | None,
) -> tuple[Population, _Log]:
    population = Population.from_modules(build_members(model_fn, seeds), seeds)
    base = population.base.train()
    sites = keyed_sites(base)  # each member's masks from its own seed's stream
    scheduler = _scheduler(base, total, variant)
    params = list(population.params.values())
    optimizer = torch.optim.AdamW(
        params, lr=config.lr, weight_decay=config.weight_decay, fused=config.compile or None
    )
    alpha, doubled = variant.rdrop_alpha, variant.doubled
    steps_per_epoch = total // config.epochs

    def member_objective(
        params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, y: Tensor
    ) -> tuple[Tensor, Tensor]:
        inputs = torch.cat([x, x]) if doubled else x
        return objective(functional_call(base, (params, buffers), (inputs,)), y, alpha, doubled)

    batched_objective = vmap(member_objective, randomness="different")
    if config.compile:
        # a fresh compiler state: the graphs of populations trained before in this process (a
        # worker trains many) would pile up on the one vmapped function until Dynamo's
        # recompile limit makes it fall back to eager; Inductor's disk cache keeps this cheap
        torch.compiler.reset()
        batched_objective = _compiled_or_eager(batched_objective)
    log = _Log(stop, len(seeds), config.log_every)
    for step, index in _batch_indices(seeds, len(data.x), config.batch_size, steps_per_epoch, stop):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total, config)
        keys = step_keys(seeds, len(sites), step)
        buffers = {**population.buffers, **{f"{n}.key": keys[:, j] for j, n in enumerate(sites)}}
        set_keyed(base, True)
        losses, logged = batched_objective(population.params, buffers, data.x[index], data.y[index])
        set_keyed(base, False)  # MC passes and member copies keep the global generator
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()  # members are independent: each gets its own gradient
        optimizer.step()
        log.record(step, logged, scheduler.get_last_p() if scheduler else {})
        if log.all_diverged:  # nothing left to learn: don't burn the remaining steps
            break
        if scheduler is not None:
            scheduler.step()
        if on_step is not None:
            on_step(step + 1, population)
    base.eval()
    return population, log


def _train_lockstep(
    model_fn: Callable[[], nn.Module],
    data: Dataset,
    variant: Variant,
    seeds: list[int],
    config: TrainConfig,
    total: int,
    stop: int,
    on_step: Callable[[int, Population], None] | None,
) -> tuple[Population, _Log]:
    members = [m.train() for m in build_members(model_fn, seeds)]
    sites = keyed_sites(members[0])  # one architecture: every member has these names
    for member in members[1:]:
        keyed_sites(member)
    schedulers = [_scheduler(m, total, variant) for m in members]
    optimizers = [
        torch.optim.AdamW(m.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        for m in members
    ]
    alpha, doubled = variant.rdrop_alpha, variant.doubled
    steps_per_epoch = total // config.epochs
    log = _Log(stop, len(seeds), config.log_every)
    for step, index in _batch_indices(seeds, len(data.x), config.batch_size, steps_per_epoch, stop):
        logged = torch.zeros(len(seeds))
        keys = step_keys(seeds, len(sites), step)
        for s, (model, optimizer) in enumerate(zip(members, optimizers)):
            x, y = data.x[index[s]], data.y[index[s]]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, config)
            for j, name in enumerate(sites):
                model.get_buffer(f"{name}.key").fill_(keys[s, j])
            set_keyed(model, True)
            loss, ce = objective(model(torch.cat([x, x]) if doubled else x), y, alpha, doubled)
            set_keyed(model, False)
            logged[s] = ce.detach()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        log.record(step, logged, schedulers[0].get_last_p() if schedulers[0] else {})
        if log.all_diverged:
            break
        for scheduler in schedulers:
            if scheduler is not None:
                scheduler.step()
        if on_step is not None:  # a stacked snapshot, following the first member's rates
            on_step(step + 1, Population.from_modules(members, seeds, base=members[0]))
    population = Population.from_modules(members, seeds)
    population.base.eval()
    return population, log
