"""Look-alikes of timm / torchvision / Hugging Face classes, for machines where those can't install.

They reproduce only what dropkit relies on: class name and rate attribute.
"""

import torch
from torch import nn

from dropkit import drop_path


class DropPath(nn.Module):  # timm.layers.DropPath
    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)


class StochasticDepth(nn.Module):  # torchvision.ops.StochasticDepth
    def __init__(self, p: float, mode: str = "row") -> None:
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)


class ViTDropPath(DropPath):  # transformers' *DropPath classes
    pass


class TimmBlock(nn.Module):
    """timm ViT block: nn.Identity where the block's drop-path rate is 0 at build time."""

    def __init__(self, dim: int, drop_path_rate: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(0.0))
        make = (lambda: DropPath(drop_path_rate)) if drop_path_rate > 0 else nn.Identity
        self.drop_path1, self.drop_path2 = make(), make()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class TimmViT(nn.Module):
    """timm-style ViT trunk: drop-path rates linspace(0, drop_path_rate, depth) over the blocks."""

    def __init__(self, dim: int = 8, depth: int = 4, drop_path_rate: float = 0.1) -> None:
        super().__init__()
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.pos_drop = nn.Dropout(0.0)
        self.blocks = nn.Sequential(*(TimmBlock(dim, r) for r in rates))
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.pos_drop(x)).mean(1))
