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
    """‖current - reference‖₂ over the named tensors of ``current`` (float64 accumulation).

    Each tensor of ``current`` is compared with the tensor of the same name in ``reference``
    (moved to the reference's device); names only in ``reference`` are ignored.

    Args:
        current: The parameters now, ``{name: tensor}``, e.g. ``dict(model.named_parameters())``.
        reference: The parameters to measure from (W_0), with the same names and shapes.

    Returns:
        The Euclidean distance over all tensors taken together, as a Python float.

    Raises:
        ValueError: If ``reference`` lacks a name of ``current``, or a tensor's shape differs
            from its reference's.
    """
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

    Build it at initialisation; each call ``distance()`` then returns the distance of the
    model's current parameters from the snapshot, as
    [`parameter_distance`][dropkit.diagnostics.parameter_distance] does. The snapshot holds
    every named parameter (frozen ones too) and costs one copy of the model's parameters.

    Args:
        model: The model to follow; its ``named_parameters()`` are read at every call.
        device: Where the snapshot lives: ``"cpu"`` keeps it off the accelerator (each call then
            copies the current parameters to the CPU); ``None`` (default) keeps each tensor on
            its parameter's device.
        reference: W_0 as ``{name: tensor}`` (e.g. saved at initialisation, for a resumed run),
            copied instead of snapshotting the model now.

    Attributes:
        model: The model followed.
        reference: The snapshot W_0, ``{name: tensor}``.

    Raises:
        ValueError: When called, if the model has a parameter the snapshot lacks or of another
            shape (its architecture changed).

    Examples:
        ```python
        from dropkit import diagnostics as dd

        distance = dd.DistanceFromInit(model, device="cpu")
        ...  # train
        print(distance())  # ‖W_t - W_0‖₂
        ```
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
