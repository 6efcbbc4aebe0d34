"""The early-dropout paper's analyses, measured inside a population's training run.

At the spec's checkpoint steps (step 0 included), each seed's model is copied out of the
population and measured with
[`dropkit.diagnostics.measure_gradient_set`][dropkit.diagnostics.measure_gradient_set]: a set G
of mini-batch gradients (dropout as in training; ``sample_batches``), the gradient over the
whole training set (dropout off; ``whole_data_batches``), and the distance from that seed's
initialisation. Training is not disturbed: measurements run on a copy, with G and its dropout
masks drawn from one private stream, ``dd.step_seed(seed, step)``.

``batch_grad_norm`` is the mean over G of the mini-batch gradient norms ‖g_i‖₂ (not the
library's ``grad_norm``, the norm of the training step's ``.grad``); ``bias_sq`` and
``variance`` are on unit-normalised gradients, the directions GDV and GDE look at.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from dropkit import diagnostics as dd
from dropkit.experiments.base.record import DynamicsSeries
from dropkit.experiments.builtin.data import Dataset
from dropkit.experiments.builtin.train import Population, build_members
from dropkit.experiments.config.specs import DynamicsSpec

__all__ = ["INSTRUMENTS", "DynamicsProbe"]

INSTRUMENTS = ("batch_grad_norm", "distance", "gdv", "gde", "bias_sq", "variance")


class DynamicsProbe:
    """Measures one variant's seeds at the checkpoint steps ``spec`` lays out for a run."""

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
        self.steps = list(spec.checkpoint_steps(total_steps))
        self.records: list[dict[str, Any]] = []
        initial = build_members(model_fn, self.seeds)
        self.initial_params = [
            {name: p.detach().clone() for name, p in m.named_parameters()} for m in initial
        ]
        reference = slice(spec.reference_samples)  # None: the whole training set
        self.full_batches = dd.whole_data_batches(data.x[reference], data.y[reference])
        for i, model in enumerate(initial):
            self._measure(i, 0, model.train())

    def maybe_measure(self, step: int, population: Population) -> None:
        """Call after every optimizer step; measures every seed when ``step`` is a checkpoint."""
        if step in self.steps and step > 0:
            for i in range(population.size):
                self._measure(i, step, population.member(i).train())

    def _measure(self, index: int, step: int, model: nn.Module) -> None:
        seed = self.seeds[index]
        values: dict[str, float | None]
        if not all(torch.isfinite(p).all() for p in model.parameters()):  # it diverged
            values = dict.fromkeys(INSTRUMENTS, math.nan)
        else:
            values = self._values(index, step, model)
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

    def _values(self, index: int, step: int, model: nn.Module) -> dict[str, float | None]:
        stream = dd.step_seed(self.seeds[index], step)
        batches = dd.sample_batches(
            self.data.x, self.data.y, self.spec.n_batches, self.batch_size, seed=stream
        )
        stats = dd.measure_gradient_set(model, batches, self.full_batches, seed=stream)
        return {
            "batch_grad_norm": stats.mean_batch_grad_norm,
            "distance": dd.parameter_distance(
                dict(model.named_parameters()), self.initial_params[index]
            ),
            "gdv": stats.gdv,
            "gde": stats.gde,
            "bias_sq": stats.unit_bias_sq,
            "variance": stats.unit_variance,
        }

    def series(self) -> DynamicsSeries:
        """Every instrument as ``values[instrument][seed][checkpoint]``."""
        table = {(r["instrument"], r["seed"], r["step"]): r["value"] for r in self.records}
        return DynamicsSeries(
            steps=self.steps,
            values={
                name: [[table[(name, seed, step)] for step in self.steps] for seed in self.seeds]
                for name in INSTRUMENTS
            },
        )
