"""Training-dynamics diagnostics: the early-dropout paper's analyses and R-Drop's inconsistency.

Pure functions over flattened gradients (streamed, O(|θ|) memory), helpers that produce those
gradients from ``(model, loss_fn, batches)`` without disturbing training, and a recorder,
[`DynamicsRecorder`][dropkit.diagnostics.DynamicsRecorder], that runs them on cadences
(``step -> bool``: every n steps, log-spaced, at given steps):

```python
from dropkit import diagnostics as dd

dd.gradient_direction_variance(grads)             # GDV in [0, 1]
dd.gradient_direction_error(grads, full_grad)     # GDE in [0, 1]
dd.measure_gradient_set(model, batches, full)     # all of G's statistics in one pass
```
"""

from dropkit._deprecation import renamed_attribute
from dropkit.diagnostics.bias_variance import (
    BiasVariance,
    BiasVarianceAccumulator,
    gradient_bias_variance,
)
from dropkit.diagnostics.direction import (
    DirectionAccumulator,
    gradient_direction_error,
    gradient_direction_variance,
)
from dropkit.diagnostics.distance import DistanceFromInit, parameter_distance
from dropkit.diagnostics.grad_norm import gradient_norm
from dropkit.diagnostics.gradient_set import (
    GradientSetStats,
    measure_gradient_set,
    sample_batches,
    step_seed,
    whole_data_batches,
)
from dropkit.diagnostics.gradients import (
    LossFn,
    Method,
    VmapFallbackWarning,
    cross_entropy_loss,
    flatten_gradients,
    full_gradient,
    mini_batch_gradients,
)
from dropkit.diagnostics.inconsistency import Inconsistency, train_test_inconsistency
from dropkit.diagnostics.recorder import INSTRUMENTS, BatchSource, DynamicsRecorder
from dropkit.diagnostics.tracking import At, Cadence, Every, at, every, log_spaced

__all__ = [
    "INSTRUMENTS",
    "At",
    "BatchSource",
    "BiasVariance",
    "BiasVarianceAccumulator",
    "Cadence",
    "DirectionAccumulator",
    "DistanceFromInit",
    "DynamicsRecorder",
    "Every",
    "GradientSetStats",
    "Inconsistency",
    "LossFn",
    "Method",
    "VmapFallbackWarning",
    "at",
    "cross_entropy_loss",
    "every",
    "flatten_gradients",
    "full_gradient",
    "gradient_bias_variance",
    "gradient_direction_error",
    "gradient_direction_variance",
    "gradient_norm",
    "log_spaced",
    "measure_gradient_set",
    "mini_batch_gradients",
    "parameter_distance",
    "sample_batches",
    "step_seed",
    "train_test_inconsistency",
    "whole_data_batches",
]


def __getattr__(name: str) -> object:
    return renamed_attribute(__name__, name, {"Schedule": ("Cadence", lambda: Cadence)})
