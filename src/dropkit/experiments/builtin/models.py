"""Small, CPU-friendly analogues of the papers' models for 1-D signals and flat feature vectors.

- `ViT1D`: a ViT over non-overlapping 1-D patches (patch embedding, learned positions, cls
  token or mean pooling, pre-norm blocks with attention / projection / MLP dropout and drop path);
- `Mixer1D`: an MLP-Mixer over the same patches (token-mixing and channel-mixing MLPs);
- `MLP`: fully connected layers with ``nn.Dropout`` after each hidden activation;
- `ResMLP`: pre-norm residual MLP blocks with dropout and drop path (the cheapest model
  with both kinds of site).

Every dropout site is built whatever its rate (``nn.Dropout(0.0)``, ``dropkit.DropPath(0.0)``),
so a model built "without dropout" can still be driven by a schedule; drop-path rates follow
timm's linear depth rule (block ``i`` of ``L`` gets ``drop_path * i / (L - 1)``), which is also
what [`dropkit.DropoutScheduler`][dropkit.DropoutScheduler] writes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from dropkit._checks import check_int
from dropkit.layers import DropPath
from dropkit.schedules import depth_profile

__all__ = ["MLP", "Mixer1D", "ResMLP", "ViT1D", "build_model", "model_factory"]


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        check_int(value, name, 1)


class PatchEmbed1D(nn.Module):
    """Cut a ``(B, L)`` or ``(B, 1, L)`` signal into ``L // patch`` patches, embed each linearly."""

    def __init__(self, signal_length: int, patch: int, dim: int) -> None:
        super().__init__()
        if signal_length % patch:
            raise ValueError(
                f"patch={patch} does not divide signal_length={signal_length}; pick a divisor "
                f"(e.g. {[d for d in range(2, 11) if signal_length % d == 0]})"
            )
        self.patch = patch
        self.n_patches = signal_length // patch
        self.proj = nn.Linear(patch, dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], self.n_patches, self.patch)
        return self.proj(x)


def _softmax(scores: Tensor) -> Tensor:
    """Softmax over the last dim, written out: on CPU rows as short as a 1-D ViT's (about 10
    tokens) make ``Tensor.softmax`` 4x slower than these elementwise ops (2.3x forward and
    backward)."""
    exp = (scores - scores.detach().amax(dim=-1, keepdim=True)).exp()
    return exp / exp.sum(dim=-1, keepdim=True)


class Attention(nn.Module):
    """Multi-head self-attention with dropout on the attention weights and after the projection."""

    def __init__(self, dim: int, heads: int, attn_drop: float, proj_drop: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, T, head_dim)
        attn = self.attn_drop(_softmax(q @ k.transpose(-2, -1) * self.scale))
        out = (attn @ v).transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj_drop(self.proj(out))


class FeedForward(nn.Module):
    """Linear, GELU, dropout, linear, dropout (timm's ``Mlp``)."""

    def __init__(self, dim: int, hidden: int, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class ViTBlock(nn.Module):
    """Pre-norm transformer block; both residual branches go through the same drop path."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, attn_drop=drop, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, int(dim * mlp_ratio), drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ViT1D(nn.Module):
    """A small vision transformer over 1-D patches of a signal (MNIST-1D: length 40).

    Args:
        signal_length: length of the input signal.
        n_classes: number of output classes.
        patch: patch length (must divide ``signal_length``).
        dim, depth, heads, mlp_ratio: transformer width, number of blocks, heads, MLP expansion.
        dropout: rate of every ``nn.Dropout`` (attention weights, projection, MLP).
        drop_path: stochastic-depth rate of the last block (linear in depth, block 0 gets 0).
        pool: ``"cls"`` (a learned class token) or ``"mean"`` (average over patch tokens).
    """

    def __init__(
        self,
        signal_length: int = 40,
        n_classes: int = 10,
        patch: int = 4,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        drop_path: float = 0.0,
        pool: str = "cls",
    ) -> None:
        super().__init__()
        _check_sizes(
            signal_length=signal_length, n_classes=n_classes, patch=patch, dim=dim, depth=depth,
            heads=heads,
        )  # fmt: skip
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool={pool!r} must be 'cls' or 'mean'")
        self.pool = pool
        self.embed = PatchEmbed1D(signal_length, patch, dim)
        n_tokens = self.embed.n_patches + (pool == "cls")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        self.pos = nn.Parameter(torch.randn(1, n_tokens, dim) * 0.02)
        self.pos_drop = nn.Dropout(dropout)
        rates = [drop_path * m for m in depth_profile(depth)]
        self.blocks = nn.Sequential(
            *(ViTBlock(dim, heads, mlp_ratio, dropout, rate) for rate in rates)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.embed(x)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = self.norm(self.blocks(self.pos_drop(tokens + self.pos)))
        pooled = tokens[:, 0] if self.cls_token is not None else tokens.mean(dim=1)
        return self.head(pooled)


class MixerBlock(nn.Module):
    """Token-mixing MLP across patches, then channel-mixing MLP, each on a drop-path residual."""

    def __init__(
        self,
        n_tokens: int,
        dim: int,
        token_hidden: int,
        channel_hidden: int,
        drop: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mlp = FeedForward(n_tokens, token_hidden, drop)
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mlp = FeedForward(dim, channel_hidden, drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        mixed = self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        x = x + self.drop_path(mixed)
        return x + self.drop_path(self.channel_mlp(self.norm2(x)))


class Mixer1D(nn.Module):
    """A small MLP-Mixer over 1-D patches, mean-pooled into a linear head.

    ``token_ratio`` and ``channel_ratio`` set the hidden widths of the token-mixing
    (``n_patches * token_ratio``) and channel-mixing (``dim * channel_ratio``) MLPs.
    """

    def __init__(
        self,
        signal_length: int = 40,
        n_classes: int = 10,
        patch: int = 4,
        dim: int = 64,
        depth: int = 4,
        token_ratio: float = 2.0,
        channel_ratio: float = 2.0,
        dropout: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        _check_sizes(
            signal_length=signal_length, n_classes=n_classes, patch=patch, dim=dim, depth=depth
        )
        self.embed = PatchEmbed1D(signal_length, patch, dim)
        n_tokens = self.embed.n_patches
        rates = [drop_path * m for m in depth_profile(depth)]
        self.blocks = nn.Sequential(
            *(
                MixerBlock(
                    n_tokens,
                    dim,
                    max(1, int(n_tokens * token_ratio)),
                    max(1, int(dim * channel_ratio)),
                    dropout,
                    rate,
                )
                for rate in rates
            )
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.norm(self.blocks(self.embed(x))).mean(dim=1))


class MLP(nn.Module):
    """``depth`` hidden layers of ``width`` units: Linear, GELU, Dropout; then a linear head.

    Inputs of any shape ``(B, ...)`` are flattened.
    """

    def __init__(
        self,
        in_features: int = 40,
        n_classes: int = 10,
        width: int = 256,
        depth: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_sizes(in_features=in_features, n_classes=n_classes, width=width, depth=depth)
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(in_features if i == 0 else width, width), nn.GELU()]
            layers.append(nn.Dropout(dropout))
        self.hidden = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.hidden(x.flatten(1)))


class ResidualFeedForward(nn.Module):
    """``x + drop_path(mlp(norm(x)))``: a transformer block without attention."""

    def __init__(self, dim: int, hidden: int, drop: float, drop_path: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, hidden, drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop_path(self.mlp(self.norm(x)))


class ResMLP(nn.Module):
    """A residual MLP: linear stem, ``depth`` pre-norm residual MLP blocks, norm, linear head.

    The cheapest model here with both kinds of site (dropout inside each block's MLP, drop path
    on each residual branch, linear in depth): a Mixer with a single token, or a ViT without
    attention. Inputs of any shape ``(B, ...)`` are flattened.
    """

    def __init__(
        self,
        in_features: int = 40,
        n_classes: int = 10,
        width: int = 64,
        depth: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        _check_sizes(in_features=in_features, n_classes=n_classes, width=width, depth=depth)
        self.stem = nn.Linear(in_features, width)
        rates = [drop_path * m for m in depth_profile(depth)]
        hidden = max(1, int(width * mlp_ratio))
        self.blocks = nn.Sequential(
            *(ResidualFeedForward(width, hidden, dropout, rate) for rate in rates)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.norm(self.blocks(self.stem(x.flatten(1)))))


_MODELS: dict[str, type[nn.Module]] = {
    "vit": ViT1D,
    "mixer": Mixer1D,
    "mlp": MLP,
    "resmlp": ResMLP,
}


def build_model(kind: str, **kwargs: object) -> nn.Module:
    """``build_model("vit" | "mixer" | "mlp" | "resmlp", **constructor_kwargs)``, for configs."""
    if kind not in _MODELS:
        raise ValueError(f"model {kind!r} is not one of {sorted(_MODELS)}")
    cls = _MODELS[kind]
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise TypeError(f"bad arguments for model {kind!r} ({cls.__name__}): {err}") from err


def model_factory(
    spec: Mapping[str, Any], n_features: int, n_classes: int
) -> Callable[[], nn.Module]:
    """A zero-argument builder for a config's ``model:`` block, sized to the data.

    ``spec`` is ``{"kind": ..., **constructor_kwargs}``; the input size (``in_features`` for the
    MLPs, ``signal_length`` for the patch models) and ``n_classes`` default to the data's.
    """
    kwargs = {key: value for key, value in spec.items() if key != "kind"}
    kind = spec["kind"]
    kwargs.setdefault("in_features" if kind in ("mlp", "resmlp") else "signal_length", n_features)
    kwargs.setdefault("n_classes", n_classes)
    build_model(kind, **kwargs)  # fail here, with the model named, not inside a worker
    return lambda: build_model(kind, **kwargs)
