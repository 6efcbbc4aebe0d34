"""Leaving training undisturbed: what the gradient helpers save, switch and restore.

A diagnostic runs extra forward / backward passes in the middle of training. Those passes must
not change what training does next, so around every pass we keep

- the buffers (BatchNorm running statistics and ``num_batches_tracked``, rate buffers, ...),
- every submodule's ``training`` flag,
- the global RNG state (torch CPU and, when CUDA is initialised, every CUDA device),
- the dropout rates (when a pass switches dropout off),

exactly as they were. Parameters and ``.grad`` are never written: gradients are taken with
``torch.autograd.grad`` / ``torch.func.grad``, which return them instead of accumulating them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from dropkit.sites import find_sites

__all__ = ["DiagnosticRNG", "dropout_off", "kept_buffers_and_modes", "trainable_parameters"]

_SALT = 0x5EED_D1A6  # separates diagnostic dropout masks from the ones training draws next


def trainable_parameters(model: nn.Module) -> tuple[list[str], list[nn.Parameter]]:
    """Names and tensors of the parameters that require grad, in ``named_parameters`` order.

    This order defines the layout of every flattened gradient the diagnostics produce.
    """
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError(
            f"{type(model).__name__} has no parameters with requires_grad=True, so there is no "
            "gradient to diagnose"
        )
    return [name for name, _ in named], [p for _, p in named]


@contextmanager
def kept_buffers_and_modes(model: nn.Module) -> Iterator[None]:
    """Restore every buffer's values and every submodule's ``training`` flag on exit."""
    modes = [(module, module.training) for module in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        for module, training in modes:
            module.training = training


@contextmanager
def dropout_off(model: nn.Module) -> Iterator[None]:
    """Switch every dropout and drop-path site off, leaving all other modules as they are.

    Controllable sites (``nn.Dropout*``, drop path, attention-dropout floats such as
    ``nn.MultiheadAttention.dropout``) get rate 0 and their rate back on exit; this keeps the
    rest of the model in train mode, as the paper's "inference-mode dropout, otherwise train
    mode" asks. A site that matches a dropout class but has no numeric rate is put in eval mode
    instead (its flag is restored on exit); ``nn.Identity`` placeholders compute nothing anyway.
    """
    sites = find_sites(model)
    rates = [(site, site.p) for site in sites if site.controllable]
    frozen = [
        (site.module, site.module.training)
        for site in sites
        if not site.controllable
        and site.module is not None
        and type(site.module) is not nn.Identity
    ]
    try:
        for site, _ in rates:
            site.set_p(0.0)
        for module, _ in frozen:
            module.eval()
        yield
    finally:
        for site, rate in rates:
            site.set_p(rate)
        for module, training in frozen:
            module.train(training)


def _cuda_devices() -> list[int]:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return list(range(torch.cuda.device_count()))
    return []


class DiagnosticRNG:
    """A private random stream for diagnostic passes; the global RNG state is left untouched.

    Entering swaps the global CPU (and CUDA) generator states for the stream's, exiting saves the
    stream's progress and puts the training states back, so successive passes of one diagnostic
    draw fresh masks while the masks training draws next are exactly the ones it would have drawn.
    ``seed=None`` derives the seed from the current global state without advancing it: results
    are reproducible for a seeded run, and the diagnostic's masks differ from training's.
    """

    def __init__(self, seed: int | None = None) -> None:
        if seed is None:
            peek = torch.Generator()
            peek.set_state(torch.get_rng_state())
            seed = int(torch.randint(0, 2**62, (), generator=peek)) ^ _SALT
        self.seed = int(seed)
        self._cpu: Tensor | None = None
        self._cuda: list[Tensor] | None = None
        self._saved: tuple[Tensor, list[Tensor]] | None = None

    def __enter__(self) -> DiagnosticRNG:
        devices = _cuda_devices()
        self._saved = (torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices])
        if self._cpu is None:
            # Seed only the generators whose state is restored on exit (torch.manual_seed would
            # also queue a seed for CUDA devices that are not initialised yet).
            torch.default_generator.manual_seed(self.seed)
            for device in devices:
                torch.cuda.default_generators[device].manual_seed(self.seed)
        else:
            torch.set_rng_state(self._cpu)
            for device, state in zip(devices, self._cuda or []):
                torch.cuda.set_rng_state(state, device)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._saved is not None
        devices = _cuda_devices()
        self._cpu = torch.get_rng_state()
        self._cuda = [torch.cuda.get_rng_state(d) for d in devices]
        cpu, cuda = self._saved
        torch.set_rng_state(cpu)
        for device, state in zip(devices, cuda):
            torch.cuda.set_rng_state(state, device)
        self._saved = None
