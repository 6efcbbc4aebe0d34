"""Distance from initialisation ‖W_t - W_0‖₂ over all parameters.

Finding tested (early-dropout paper, §3): models trained with dropout move further from their
initialisation.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

__all__ = ["DistanceFromInit", "parameter_distance"]


def parameter_distance(current: Mapping[str, Tensor], reference: Mapping[str, Tensor]) -> float:
    """‖current - reference‖₂ over the named tensors of ``current`` (float64 accumulation)."""
    missing = [name for name in current if name not in reference]
    if missing:
        raise ValueError(
            f"reference lacks {len(missing)} parameter(s), e.g. {missing[0]!r}: take the "
            "reference from the same model (model.named_parameters() at initialisation)"
        )
    total = 0.0
    for name, tensor in current.items():
        ref = reference[name]
        if ref.shape != tensor.shape:
            raise ValueError(
                f"{name!r} has shape {tuple(tensor.shape)} but its reference "
                f"{tuple(ref.shape)}: the model's architecture changed"
            )
        diff = tensor.detach().to(device=ref.device, dtype=torch.float64) - ref.to(torch.float64)
        total += float(diff.square().sum())
    return total**0.5


class DistanceFromInit:
    """Keeps a snapshot of W_0 once; calling it returns ‖W_t - W_0‖₂ for the model now.

    ``device="cpu"`` keeps the snapshot off the accelerator (each call then copies the current
    parameters to the CPU); ``None`` keeps it next to each parameter. ``reference`` supplies W_0
    explicitly (e.g. saved at initialisation, for a resumed run) instead of snapshotting now.
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device | str | None = None,
        reference: Mapping[str, Tensor] | None = None,
    ) -> None:
        self.model = model
        source = reference if reference is not None else dict(model.named_parameters())
        self.reference = {
            name: tensor.detach().to(device=device or tensor.device, copy=True)
            for name, tensor in source.items()
        }

    def __call__(self) -> float:
        return parameter_distance(dict(self.model.named_parameters()), self.reference)
