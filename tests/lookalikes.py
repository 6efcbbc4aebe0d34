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


class ConvNeXtBlock(nn.Module):
    """timm ConvNeXt block: one DropPath (or Identity at rate 0) on the residual branch."""

    def __init__(self, dim: int, drop_path_rate: float) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU())
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.mlp(x))


class TimmConvNeXt(nn.Module):
    """timm-style ConvNeXt: stages of blocks; rates linspace(0, rate, all blocks) across stages."""

    def __init__(
        self, dim: int = 8, depths: tuple[int, ...] = (2, 2, 4), rate: float = 0.2
    ) -> None:
        super().__init__()
        rates = torch.linspace(0, rate, sum(depths)).split(list(depths))
        self.stages = nn.Sequential(
            *(nn.Sequential(*(ConvNeXtBlock(dim, r) for r in stage.tolist())) for stage in rates)
        )
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(x).mean(1))


class SwinBlock(nn.Module):
    """torchvision Swin block: StochasticDepth always built, attention keeping float rates."""

    def __init__(self, dim: int, sd_prob: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, 2, dropout=0.0, batch_first=True)
        self.stochastic_depth = StochasticDepth(sd_prob, "row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.stochastic_depth(self.attn(x, x, x, need_weights=False)[0])


class TorchvisionSwin(nn.Module):
    """torchvision-style Swin: ``features.<stage>.<block>``, sd_prob = p * i / (blocks - 1)."""

    def __init__(self, dim: int = 8, depths: tuple[int, ...] = (2, 2, 2), p: float = 0.2) -> None:
        super().__init__()
        total, stages, i = sum(depths), [], 0
        for depth in depths:
            blocks = []
            for _ in range(depth):
                blocks.append(SwinBlock(dim, p * i / (total - 1)))
                i += 1
            stages.append(nn.Sequential(*blocks))
        self.features = nn.Sequential(*stages)
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(1))
