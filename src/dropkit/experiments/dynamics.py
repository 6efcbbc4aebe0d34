"""The early-dropout paper's analyses, measured inside a population's training run.

At log-spaced checkpoints (step 0 included), each seed's model is copied out of the population
and measured with :mod:`dropkit.diagnostics`: a set G of mini-batch gradients (dropout as in
training), the whole-data gradient (dropout off, over a fixed subset of the training set), and
the distance from that seed's initialisation. Training is not disturbed: measurements run on a
copy, from a private random stream seeded by (seed, step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dropkit import diagnostics as dd
from dropkit.experiments.config import DynamicsSpec
from dropkit.experiments.data import Dataset
from dropkit.experiments.train import Population, build_members

__all__ = ["INSTRUMENTS", "DynamicsProbe"]

INSTRUMENTS = ("grad_norm", "distance", "gdv", "gde", "bias_sq", "variance")


class DynamicsProbe:
    """Measures one variant's seeds at ``spec.checkpoints`` log-spaced steps of a run."""

    def __init__(
        self,
        spec: DynamicsSpec,
        model_fn: Callable[[], nn.Module],
        data: Dataset,
        seeds: Sequence[int],
        total_steps: int,
        batch_size: int,
        variant: str = "",
    ) -> None:
        self.spec = spec
        self.data = data
        self.seeds = list(seeds)
        self.batch_size = batch_size
        self.variant = variant
        self.steps = sorted(dd.log_spaced(total_steps, spec.checkpoints).steps)
        self.records: list[dict[str, Any]] = []
        initial = build_members(model_fn, self.seeds)
        self.initial_params = [
            {name: p.detach().clone() for name, p in m.named_parameters()} for m in initial
        ]
        full = min(spec.full_batch, len(data.x))
        self.full_batches = list(
            zip(data.x[:full].split(1024), data.y[:full].split(1024), strict=True)
        )
        for i, model in enumerate(initial):
            self._measure(i, 0, model.train())

    def maybe_measure(self, step: int, population: Population) -> None:
        """Call after every optimizer step; measures every seed when ``step`` is a checkpoint."""
        if step in self.steps and step > 0:
            for i in range(population.size):
                self._measure(i, step, population.member(i).train())

    def _mini_batches(self, generator: torch.Generator) -> list[tuple[Tensor, Tensor]]:
        n = len(self.data.x)
        batches = []
        for _ in range(self.spec.n_batches):
            index = torch.randint(0, n, (self.batch_size,), generator=generator)
            batches.append((self.data.x[index], self.data.y[index]))
        return batches

    def _measure(self, index: int, step: int, model: nn.Module) -> None:
        seed = self.seeds[index]
        stream = 1_000_003 * seed + step
        batches = self._mini_batches(torch.Generator().manual_seed(stream))
        direction, spread = dd.DirectionAccumulator(), dd.BiasVarianceAccumulator()
        norms = []
        for grad in dd.mini_batch_gradients(model, batches, seed=stream):
            direction.update(grad)
            spread.update(grad)
            norms.append(float(grad.double().norm()))
        full = dd.full_gradient(model, self.full_batches, seed=stream)
        bias_variance = spread.result(full, normalize=True)
        values = {
            "grad_norm": sum(norms) / len(norms),
            "distance": dd.parameter_distance(
                dict(model.named_parameters()), self.initial_params[index]
            ),
            "gdv": direction.variance(),
            "gde": direction.error(full),
            "bias_sq": bias_variance.bias_sq,
            "variance": bias_variance.variance,
        }
        for instrument, value in values.items():
            self.records.append(
                {
                    "variant": self.variant,
                    "seed": seed,
                    "step": step,
                    "instrument": instrument,
                    "value": value,
                }
            )

    def series(self) -> dict[str, Any]:
        """``{"steps": [...], "values": {instrument: [[per checkpoint] per seed]}}``."""
        table = {(r["instrument"], r["seed"], r["step"]): r["value"] for r in self.records}
        return {
            "steps": self.steps,
            "values": {
                name: [[table[(name, seed, step)] for step in self.steps] for seed in self.seeds]
                for name in INSTRUMENTS
            },
        }
