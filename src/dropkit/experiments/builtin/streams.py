"""One random stream per seed: dropout masks keyed by (seed, site, step), never by the population.

``vmap(..., randomness="different")`` slices one draw of the global generator across the members,
so a member's masks would depend on which seeds train beside it. Here a mask is a pure function
of a 64-bit key and the element's index: ``keyed_uniform(key, shape)`` hashes both into a
uniform in [0, 1) with integer ops that ``vmap`` batches, and the trainer hands every member its
own key per site and step (``step_keys``), as a buffer. A seed trained alone, in any population,
or in any split of the seeds into jobs draws the same masks.

``keyed_sites(model)`` swaps a model's ``nn.Dropout`` and [`DropPath`][dropkit.DropPath] modules
for keyed subclasses (the sites, their rates and their schedules are unchanged); other sites (a
float attention dropout, say) keep the global generator.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dropkit.layers import DropPath

__all__ = [
    "KeyedDropPath",
    "KeyedDropout",
    "keyed_sites",
    "keyed_uniform",
    "set_keyed",
    "step_keys",
]

_MASK32 = 0xFFFFFFFF
_MASK64 = (1 << 64) - 1


def _mix64(value: int) -> int:
    """splitmix64's finalizer: a bijection of 64-bit integers that spreads every input bit."""
    value = (value ^ (value >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
    value = (value ^ (value >> 27)) * 0x94D049BB133111EB & _MASK64
    return value ^ (value >> 31)


def _signed64(value: int) -> int:
    """An unsigned 64-bit integer as the signed one with the same bits (torch's int64)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _key(seed: int, site: int, step: int) -> int:
    """The key of one member's site at one step."""
    return _signed64(_mix64(_mix64(_mix64(seed + 0x9E3779B97F4A7C15) + site) + step))


def step_keys(seeds: list[int], n_sites: int, step: int) -> Tensor:
    """``(len(seeds), n_sites)`` int64 keys: member ``s``'s site ``j`` at ``step``."""
    return torch.tensor(
        [[_key(seed, site, step) for site in range(n_sites)] for seed in seeds], dtype=torch.int64
    )


def _int32(value: Tensor) -> Tensor:
    """The low 32 bits of an int64 tensor as int32 (two's complement, the same bits)."""
    return (((value & _MASK32) ^ 0x80000000) - 0x80000000).to(torch.int32)


def _shr(x: Tensor, bits: int) -> Tensor:
    # a logical right shift of int32 bits (torch's >> is arithmetic: mask the sign copies off)
    return (x >> bits) & ((1 << (32 - bits)) - 1)


def _hash32(x: Tensor) -> Tensor:
    # a 32-bit integer hash; int32 products wrap mod 2**32 (2 to 4x faster than int64 on a CPU,
    # the same bits)
    x = (_shr(x, 16) ^ x) * 0x45D9F3B
    x = (_shr(x, 16) ^ x) * 0x45D9F3B
    return _shr(x, 16) ^ x


def _keyed_bits(key: Tensor, shape: tuple[int, ...] | torch.Size) -> Tensor:
    """24 random bits (int32 in [0, 2**24)) per element of ``shape``: the top of a 32-bit hash
    of ``a * i + b`` (mod 2**32) for the flat index ``i``, where the key's halves give an odd
    ``a`` and ``b``, so different keys hash different sequences, not shifts or permutations of
    one."""
    index = torch.arange(int(torch.Size(shape).numel()), dtype=torch.int32, device=key.device)
    scale, offset = _int32(key | 1), _int32(key >> 32)
    return _shr(_hash32(index.view(shape) * scale + offset), 8)


def keyed_uniform(key: Tensor, shape: tuple[int, ...] | torch.Size) -> Tensor:
    """Uniforms in [0, 1) (float32, 24 random bits) of ``shape``, a pure function of the int64
    ``key`` and each element's index (what a keyed site compares its rate with)."""
    return _keyed_bits(key, shape).to(torch.float32) * 2.0**-24


def _salt(call: int) -> int:
    """What a site's ``call``-th use in one step mixes into its key (0 for the first)."""
    return 0 if call == 0 else _signed64(_mix64(call))


class _Keyed:
    """The keyed state of a site: its key buffer (set per step), how often it was called since
    (a module used twice in one forward, like a block's shared DropPath, draws twice), and its
    rate as the mask's integer threshold and the survivors' scale, 0-dim buffers that a
    compiled step reads as inputs (a new rate recompiles nothing; ``active`` flips only at 0)."""

    key: Tensor
    keyed: bool
    calls: int
    active: bool
    _threshold: Tensor
    _scale: Tensor

    def _init_key(self, rate: float) -> None:
        register = self.register_buffer  # type: ignore[attr-defined]
        register("key", torch.zeros((), dtype=torch.int64), persistent=False)
        register("_threshold", torch.zeros((), dtype=torch.int32), persistent=False)
        register("_scale", torch.ones(()), persistent=False)
        self.keyed = False
        self.calls = 0
        self._mirror(rate)

    def _mirror(self, rate: float) -> None:
        """Follow a new rate: kept where the 24 hashed bits are >= ceil(rate * 2**24), i.e.
        with probability 1 - rate; survivors scaled by 1 / (1 - rate), or 0 at rate 1."""
        self.active = rate > 0.0
        if hasattr(self, "_threshold"):  # not yet while the parent class's __init__ runs
            self._threshold.fill_(math.ceil(rate * 2**24))
            scale = torch.tensor(1.0) / (1.0 - rate) if rate < 1.0 else torch.zeros(())
            self._scale.copy_(scale)

    def _mask_shape(self, x: Tensor) -> tuple[int, ...]:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """The keyed mask while ``keyed`` (the identity in eval mode or at rate 0); otherwise
        exactly the replaced module's forward (next in the method resolution order)."""
        if not self.keyed:
            return super().forward(x)  # type: ignore[misc]
        if not (self.training and self.active):  # type: ignore[attr-defined]
            return x
        return self._keep(x, self._mask_shape(x))

    def _keep(self, x: Tensor, shape: tuple[int, ...]) -> Tensor:
        key = self.key ^ _salt(self.calls)
        self.calls += 1
        keep = _keyed_bits(key, shape) >= self._threshold
        if torch.compiler.is_compiling():  # Inductor stores a saved bool mask 5x slower than uint8
            keep = keep.to(torch.uint8)
        return x * (keep.to(x.dtype) * self._scale.to(x.dtype))


class KeyedDropout(_Keyed, nn.Dropout):
    """``nn.Dropout`` whose masks come from its ``key`` buffer while ``keyed`` is True (set by
    the trainer for each step); otherwise exactly ``nn.Dropout``."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(p)
        self._init_key(self.p)

    @property
    def p(self) -> float:
        """The dropout rate (``nn.Dropout``'s attribute; a schedule writes it)."""
        return self._p

    @p.setter
    def p(self, value: float) -> None:
        self._p = value
        self._mirror(value)

    def _mask_shape(self, x: Tensor) -> tuple[int, ...]:
        return tuple(x.shape)  # one draw per element


class KeyedDropPath(_Keyed, DropPath):
    """[`DropPath`][dropkit.DropPath] with one keyed draw per sample while ``keyed`` is True."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__(drop_prob)
        self._init_key(self.drop_prob)

    @property
    def drop_prob(self) -> float:
        """The probability of dropping the branch per sample (``DropPath``'s, mirrored)."""
        return self._drop_prob

    @drop_prob.setter
    def drop_prob(self, value: float) -> None:
        DropPath.drop_prob.fset(self, value)  # type: ignore[attr-defined]
        self._mirror(self._drop_prob)

    def _mask_shape(self, x: Tensor) -> tuple[int, ...]:
        return (x.shape[0],) + (1,) * (x.ndim - 1)  # one draw per sample


def keyed_sites(model: nn.Module) -> list[str]:
    """Swap ``model``'s ``nn.Dropout`` / ``DropPath`` modules (exactly those classes) for keyed
    ones at the same rates, in place; return their names in module order (the site index of
    [`step_keys`][dropkit.experiments.builtin.streams.step_keys])."""
    names = []
    for name, module in list(model.named_modules()):
        if type(module) is nn.Dropout:
            replacement: nn.Module = KeyedDropout(module.p)
        elif type(module) is DropPath:
            replacement = KeyedDropPath(module.drop_prob)
        elif isinstance(module, _Keyed):
            names.append(name)
            continue
        else:
            continue
        replacement.train(module.training)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, replacement)
        names.append(name)
    return names


def set_keyed(model: nn.Module, keyed: bool) -> None:
    """Switch every keyed site of ``model`` to its key (True) or to the global generator, and
    start its call count afresh (call it before each step's forward)."""
    for module in model.modules():
        if isinstance(module, _Keyed):
            module.keyed = keyed
            module.calls = 0
