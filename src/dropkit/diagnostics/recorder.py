"""DynamicsRecorder: run chosen instruments on their cadences, write JSON Lines.

One recorder per run. Call ``rec.step(step)`` once per optimizer step, after ``loss.backward()``
(``grad_norm`` reads ``.grad``, so before ``optimizer.zero_grad()``); instruments whose cadence
is due run and each writes one JSON object per (step, instrument):

```json
{"run": "vit-early", "step": 100, "instrument": "gdv", "value": 0.41, "seconds": 0.21,
 "num_grads": 32}
```

Instruments ([`INSTRUMENTS`][dropkit.diagnostics.INSTRUMENTS]):

- ``grad_norm``: ‖g‖₂ from ``.grad`` (free);
- ``distance``: ‖W_t - W_0‖₂, W_0 snapshotted when the recorder is built;
- ``gdv``, ``gde``, ``bias_variance``: over ``n_batches`` mini-batch gradients from ``batches``
  and ĝ from ``full_batches`` (dropout off), one shared
  [`measure_gradient_set`][dropkit.diagnostics.measure_gradient_set] per step;
- ``inconsistency``: deterministic vs Monte-Carlo dropout prediction on the ``heldout`` batch.

``value`` is a float, or a dict of floats for ``bias_variance`` and ``inconsistency``.
``seconds`` is the wall time the record cost; a pass shared by several instruments at a step is
split evenly among them, so the ``seconds`` of a run add up to the instruments' entries of
``rec.cost``; ``rec.seconds``, the recorder's whole cost, adds ``rec.cost["writing"]`` (file and
TensorBoard I/O), which no record carries.
Training state (parameters, ``.grad``, buffers, modes, dropout rates, RNG) is left untouched.
"""

from __future__ import annotations

import itertools
import json
import numbers
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from dropkit._checks import check_int
from dropkit._deprecation import renamed_keyword
from dropkit._optional import import_optional, optional_imports
from dropkit.diagnostics._state import DiagnosticRNG
from dropkit.diagnostics.distance import DistanceFromInit
from dropkit.diagnostics.grad_norm import gradient_norm
from dropkit.diagnostics.gradient_set import measure_gradient_set, step_seed
from dropkit.diagnostics.gradients import (
    LossFn,
    Method,
    check_chunk_size,
    check_method,
    cross_entropy_loss,
)
from dropkit.diagnostics.inconsistency import train_test_inconsistency
from dropkit.diagnostics.tracking import Cadence, every

__all__ = ["INSTRUMENTS", "BatchSource", "DynamicsRecorder"]

INSTRUMENTS: tuple[str, ...] = (
    "grad_norm",
    "distance",
    "gdv",
    "gde",
    "bias_variance",
    "inconsistency",
)
"""The instruments a [`DynamicsRecorder`][dropkit.diagnostics.DynamicsRecorder] can run, by name.

``grad_norm`` (‖g‖₂ of ``.grad``), ``distance`` (‖W_t - W_0‖₂), ``gdv``, ``gde`` and
``bias_variance`` (over the mini-batch gradients G and ĝ) and ``inconsistency`` (deterministic vs
Monte-Carlo dropout prediction).
"""
_GRADIENT_SET = ("gdv", "gde", "bias_variance")
_NEEDS_FULL = ("gde", "bias_variance")

BatchSource = Callable[[], Iterable[Any]] | Iterable[Any]
"""Where a [`DynamicsRecorder`][dropkit.diagnostics.DynamicsRecorder] gets its batches.

Either a re-iterable of batches, iterated afresh at every measured step (a list gives the same
batches every time, a ``DataLoader`` with ``shuffle=True`` fresh ones), or a callable with no
arguments that returns an iterable, called at every measured step (e.g.
``lambda: dd.sample_batches(x, y, 32, 128, seed=next(seeds))``). A batch is whatever the
recorder's ``loss_fn`` accepts, ``(inputs, targets)`` by default. It is read inside the
recorder's private random stream, so a shuffling source does not advance training's RNG.
"""


class _Batches:
    """Re-iterable view of a batch source, opened lazily (inside the diagnostic RNG stream)."""

    def __init__(self, source: BatchSource, limit: int | None) -> None:
        self.source = source
        self.limit = limit

    def __iter__(self) -> Iterator[Any]:
        batches = self.source() if callable(self.source) else self.source
        return iter(batches if self.limit is None else itertools.islice(batches, self.limit))


def _as_cadence(cadence: Cadence | int, name: str) -> Cadence:
    if isinstance(cadence, numbers.Integral) and not isinstance(cadence, bool):
        return every(int(cadence))
    if callable(cadence):
        return cadence
    raise TypeError(
        f"cadence for {name!r} must be an int (every n steps) or a callable step -> bool such "
        f"as dropkit.diagnostics.log_spaced(...), got {cadence!r}"
    )


def _step_seed(seed: int | None, step: int) -> int | None:
    return None if seed is None else step_seed(seed, step)


class DynamicsRecorder:
    """Runs diagnostic instruments on their cadences and records them (JSONL, TensorBoard).

    One recorder per run. Call [`step`][dropkit.diagnostics.DynamicsRecorder.step] once per
    optimizer step, after ``loss.backward()`` and before ``optimizer.zero_grad()`` (``grad_norm``
    reads ``.grad``); the instruments whose cadence is due run, and each writes one record
    ``{"run", "step", "instrument", "value", "seconds"}`` (plus ``"num_grads"`` for the
    gradient-set instruments) to ``records``, to ``path`` as a JSON line, and to TensorBoard.
    ``value`` is a float, or a dict of floats for ``bias_variance`` (``bias_sq``, ``variance``,
    ``error`` and their ``unit_*`` forms) and ``inconsistency`` (the fields of
    [`Inconsistency`][dropkit.diagnostics.Inconsistency]). Training state (parameters,
    ``.grad``, buffers, modes, dropout rates, RNG) is left untouched. Use it as a context manager,
    or call [`close`][dropkit.diagnostics.DynamicsRecorder.close] at the end.

    Args:
        model: The model being trained (``loss_fn`` and ``forward`` receive it).
        instruments: Names from [`INSTRUMENTS`][dropkit.diagnostics.INSTRUMENTS] (a single name
            works too), or a mapping ``{name: cadence}`` giving instruments their own cadences
            (``None``: the shared ``cadence``). Default ``("grad_norm", "distance")``.
        cadence: When instruments run: an int ``n`` (every n steps, from step 0) or a callable
            ``step -> bool`` such as [`every`][dropkit.diagnostics.every],
            [`log_spaced`][dropkit.diagnostics.log_spaced] or [`at`][dropkit.diagnostics.at];
            ``None`` (default): every step.
        path: A JSON Lines file to append the records to (its folder is created); ``None``
            (default): records are only kept in ``records``.
        run: A name written into every record, to tell runs apart in one file; ``None``
            (default) leaves the key out.
        loss_fn: ``loss_fn(model, batch) -> mean loss`` for the gradient-set instruments
            (default [`cross_entropy_loss`][dropkit.diagnostics.cross_entropy_loss], batches
            ``(inputs, targets)``).
        batches: Where G's mini-batches come from (see
            [`BatchSource`][dropkit.diagnostics.BatchSource]); needed by ``gdv``, ``gde`` and
            ``bias_variance``.
        n_batches: |G|: at most this many batches are taken from ``batches`` per measured step
            (at least 1; ``gdv`` needs 2). ``None`` (default) takes them all.
        full_batches: The batches ĝ is taken over (the training set or a fixed subset, e.g.
            [`whole_data_batches`][dropkit.diagnostics.whole_data_batches]), in the same forms;
            needed by ``gde`` and ``bias_variance``.
        heldout: The batch ``inconsistency`` measures on: ``(inputs, targets)``, or ``inputs``
            alone (no accuracies), or a callable with no arguments returning one of those.
            A tuple or list of length 2 is always read as ``(inputs, targets)``.
        forward: ``forward(model, inputs) -> logits`` for ``inconsistency``, when
            ``model(inputs)`` does not return logits (default ``None``: ``model(inputs)``).
        passes: Monte-Carlo dropout passes for ``inconsistency`` (default 8).
        method: How mini-batch gradients are taken: ``"auto"`` (default), ``"vmap"`` or
            ``"loop"``; see [`Method`][dropkit.diagnostics.Method].
        chunk_size: Mini-batches differentiated at once by ``vmap`` (at least 1; default 8).
        seed: Seeds the diagnostics' randomness per step: the measurement at step ``t`` uses
            ``step_seed(seed, t)`` for its dropout masks and for reading its batches (default 0).
            ``None`` derives it from the training RNG state. Training's own random stream is
            never advanced either way.
        snapshot_device: Where W_0 for ``distance`` is kept: ``"cpu"`` spares accelerator
            memory; ``None`` (default) keeps each tensor on its parameter's device.
        init_params: W_0 as ``{name: tensor}`` (e.g. saved at initialisation, for a resumed
            run), instead of a snapshot of the model now.
        tensorboard: ``True`` writes scalars to ``<path without suffix>_tb/`` next to ``path``,
            a path writes them there, ``False`` (default) writes none. Needs the
            ``tensorboard`` package.
        schedule: Deprecated name of ``cadence``.
        num_batches: Deprecated name of ``n_batches``.

    Attributes:
        records: Every record written so far, in order.
        cost: Wall-clock seconds spent per instrument, plus ``"writing"`` for file and
            TensorBoard I/O; [`seconds`][dropkit.diagnostics.DynamicsRecorder.seconds] is their
            sum. A pass shared by several instruments at a step is split evenly among them, so
            the records' ``seconds`` add up to the instruments' entries (writing is in no
            record).
        path: The JSON Lines file, or None.
        cadences: Each chosen instrument's cadence, ``{name: step -> bool}``.

    Raises:
        ValueError: If an instrument name is unknown or none is given, an instrument lacks its
            data (``batches``, ``full_batches`` or ``heldout``), ``n_batches``, ``chunk_size``,
            ``passes``, ``seed`` or ``method`` is out of range, or ``tensorboard=True`` without a
            ``path``.
        TypeError: If a cadence is neither an int nor a callable, ``n_batches``,
            ``chunk_size``, ``passes`` or ``seed`` is not an int, or both ``cadence`` and
            ``schedule`` (or ``n_batches`` and ``num_batches``) are given.
        ImportError: If ``tensorboard`` is requested but the package is not installed (the
            message names the ``pip install`` line).

    Examples:
        ```python
        from dropkit import diagnostics as dd

        with dd.DynamicsRecorder(
            model,
            {"grad_norm": 1, "gdv": dd.log_spaced(total_steps, num=20)},
            path="dynamics.jsonl",
            run="early-dropout",
            batches=dd.sample_batches(x_train, y_train, n_batches=16, batch_size=64, seed=0),
        ) as recorder:
            for step, (x, y) in enumerate(loader):
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                recorder.step(step)
                optimizer.step()
                optimizer.zero_grad()
        ```
    """

    def __init__(
        self,
        model: nn.Module,
        instruments: Sequence[str] | Mapping[str, Cadence | int | None] = (
            "grad_norm",
            "distance",
        ),
        *,
        cadence: Cadence | int | None = None,
        path: str | os.PathLike[str] | None = None,
        run: str | None = None,
        loss_fn: LossFn = cross_entropy_loss,
        batches: BatchSource | None = None,
        n_batches: int | None = None,
        full_batches: BatchSource | None = None,
        heldout: Any = None,
        forward: Callable[[nn.Module, Any], Tensor] | None = None,
        passes: int = 8,
        method: Method = "auto",
        chunk_size: int = 8,
        seed: int | None = 0,
        snapshot_device: str | None = None,
        init_params: Mapping[str, Tensor] | None = None,
        tensorboard: bool | str | os.PathLike[str] = False,
        schedule: Cadence | int | None = None,
        num_batches: int | None = None,
    ) -> None:
        cadence = renamed_keyword(
            "DynamicsRecorder", "schedule", "cadence", schedule, cadence, default=1
        )
        n_batches = renamed_keyword(
            "DynamicsRecorder", "num_batches", "n_batches", num_batches, n_batches
        )
        if isinstance(instruments, str):
            instruments = [instruments]
        chosen = (
            dict(instruments) if isinstance(instruments, Mapping) else dict.fromkeys(instruments)
        )
        unknown = [name for name in chosen if name not in INSTRUMENTS]
        if unknown or not chosen:
            raise ValueError(f"unknown instrument(s) {unknown}; choose from {INSTRUMENTS}")
        self.cadences = {
            name: _as_cadence(cadence if own is None else own, name) for name, own in chosen.items()
        }
        needs = {
            "batches": [n for n in chosen if n in _GRADIENT_SET and batches is None],
            "full_batches": [n for n in chosen if n in _NEEDS_FULL and full_batches is None],
            "heldout": [n for n in chosen if n == "inconsistency" and heldout is None],
        }
        for argument, names in needs.items():
            if names:
                raise ValueError(f"instrument(s) {names} need data: pass {argument}=...")
        if n_batches is not None:
            n_batches = check_int(n_batches, "n_batches", 1, ", or None for every batch")
        self.model = model
        self.run = run
        self.loss_fn = loss_fn
        self.batches = None if batches is None else _Batches(batches, n_batches)
        self.full_batches = None if full_batches is None else _Batches(full_batches, None)
        self.heldout = heldout
        self.forward = forward
        self.passes = check_int(passes, "passes", 1, " (Monte-Carlo passes)")
        self.method = check_method(method)
        self.chunk_size = check_chunk_size(chunk_size)
        self.seed = None if seed is None else check_int(seed, "seed", 0, ", or None")
        self.distance = (
            DistanceFromInit(model, snapshot_device, init_params) if "distance" in chosen else None
        )
        self.records: list[dict[str, Any]] = []
        self.cost: dict[str, float] = dict.fromkeys([*chosen, "writing"], 0.0)
        self._counter = 0
        self._file = None
        self.path = None if path is None else Path(path)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        self._writer = self._open_tensorboard(tensorboard)

    def _open_tensorboard(self, tensorboard: bool | str | os.PathLike[str]) -> Any:
        if tensorboard is False:
            return None
        if tensorboard is True:
            if self.path is None:
                raise ValueError("tensorboard=True writes next to path; pass path= or a directory")
            log_dir = self.path.with_name(self.path.stem + "_tb")
        else:
            log_dir = Path(tensorboard)
        purpose = "for DynamicsRecorder(tensorboard=...)"
        import_optional("tensorboard", "tensorboard", purpose)  # torch's own error names no extra
        with optional_imports("tensorboard", "tensorboard", purpose):
            from torch.utils.tensorboard import SummaryWriter
        return SummaryWriter(log_dir=str(log_dir))

    @property
    def seconds(self) -> float:
        """Total wall-clock seconds the recorder has spent (instruments and writing)."""
        return sum(self.cost.values())

    def due(self, step: int) -> list[str]:
        """The instruments whose cadence runs at ``step``.

        Args:
            step: An optimizer step.

        Returns:
            The names of the instruments due, in the order they were given (empty if none).
        """
        return [name for name, cadence in self.cadences.items() if cadence(step)]

    def step(self, step: int | None = None) -> list[dict[str, Any]]:
        """Run the instruments due at ``step`` and write their records.

        Call it once per optimizer step, after ``loss.backward()`` and before
        ``optimizer.zero_grad()``.

        Args:
            step: The 0-based optimizer step; ``None`` (default) means one more than the last
                call's (0 on the first call).

        Returns:
            The records written at this step, one per instrument due (empty when none is due).

        Raises:
            TypeError: If ``step`` is not an int.
            ValueError: If ``step`` is negative, ``gdv`` gets fewer than 2 gradients, or an
                instrument fails (e.g. ``grad_norm`` called after ``zero_grad()``, see
                [`gradient_norm`][dropkit.diagnostics.gradient_norm]).
        """
        if step is None:
            step = self._counter
        step = check_int(step, "step", 0, " (the optimizer step)")
        self._counter = step + 1
        due = self.due(step)
        if not due:
            return []
        values: dict[str, Any] = {}
        seconds: dict[str, float] = dict.fromkeys(due, 0.0)
        extra: dict[str, dict[str, Any]] = {name: {} for name in due}
        for name in due:
            if name in ("grad_norm", "distance", "inconsistency"):
                start = time.perf_counter()
                values[name] = self._single(name, step)
                seconds[name] += time.perf_counter() - start
        shared = [name for name in due if name in _GRADIENT_SET]
        if shared:
            self._gradient_set(shared, step, values, seconds, extra)
        records = [
            {
                **({"run": self.run} if self.run is not None else {}),
                "step": step,
                "instrument": name,
                "value": values[name],
                "seconds": seconds[name],
                **extra[name],
            }
            for name in due
        ]
        for name in due:
            self.cost[name] += seconds[name]
        start = time.perf_counter()
        self._write(records)
        self.cost["writing"] += time.perf_counter() - start
        return records

    def _single(self, name: str, step: int) -> Any:
        if name == "grad_norm":
            return gradient_norm(self.model)
        if name == "distance":
            assert self.distance is not None
            return self.distance()
        with DiagnosticRNG(_step_seed(self.seed, step)):
            heldout = self.heldout() if callable(self.heldout) else self.heldout
        inputs, targets = (
            heldout if isinstance(heldout, (tuple, list)) and len(heldout) == 2 else (heldout, None)
        )
        result = train_test_inconsistency(
            self.model,
            inputs,
            targets,
            passes=self.passes,
            forward=self.forward,
            seed=_step_seed(self.seed, step),
        )
        return result._asdict()

    def _gradient_set(
        self,
        names: list[str],
        step: int,
        values: dict[str, Any],
        seconds: dict[str, float],
        extra: dict[str, dict[str, Any]],
    ) -> None:
        assert self.batches is not None
        start = time.perf_counter()
        needs_full = any(name in _NEEDS_FULL for name in names)
        stats = measure_gradient_set(
            self.model,
            self.batches,
            self.full_batches if needs_full else None,
            self.loss_fn,
            method=self.method,
            chunk_size=self.chunk_size,
            seed=_step_seed(self.seed, step),
        )
        if "gdv" in names and stats.gdv is None:
            raise ValueError(
                f"GDV needs at least 2 gradients, got {stats.num_grads}: give the recorder more "
                "batches (or n_batches >= 2)"
            )
        for name in names:
            if name == "gdv":
                values[name] = stats.gdv
            elif name == "gde":
                values[name] = stats.gde
            else:
                values[name] = {
                    "bias_sq": stats.bias_sq,
                    "variance": stats.variance,
                    "error": stats.error,
                    "unit_bias_sq": stats.unit_bias_sq,
                    "unit_variance": stats.unit_variance,
                    "unit_error": stats.unit_error,
                }
            extra[name]["num_grads"] = stats.num_grads
        elapsed = time.perf_counter() - start  # one shared measurement: its cost split evenly
        for name in names:
            seconds[name] += elapsed / len(names)

    def _write(self, records: list[dict[str, Any]]) -> None:
        self.records.extend(records)
        if self._file is not None:
            self._file.writelines(json.dumps(record) + "\n" for record in records)
            self._file.flush()
        if self._writer is not None:
            for record in records:
                value, name = record["value"], record["instrument"]
                scalars = value if isinstance(value, dict) else {"": value}
                for key, scalar in scalars.items():
                    if scalar is not None:
                        tag = f"{name}/{key}" if key else name
                        self._writer.add_scalar(tag, scalar, record["step"])
            self._writer.flush()

    def close(self) -> None:
        """Close the JSONL file and the TensorBoard writer (records stay in ``records``).

        Leaving a ``with`` block calls it; calling it again does nothing.
        """
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> DynamicsRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
