"""Sparse zeroth-order engine: device-independent Gaussian stream, the k trainable coordinates of a
model with an fp32 master copy, the two-point ZO step and its server-side replay.

See METHOD.md sections 2-4 and each module's docstring.
"""

from meerkat_core.zo.coordinates import SparseCoordinates, TensorSpan
from meerkat_core.zo.rng import derive_key, normal, normal_chunks
from meerkat_core.zo.step import StepLoss, StepResult, projected_grad, replay, two_losses, zo_step
from meerkat_core.zo.update import apply_update, update_coef

__all__ = [
    "SparseCoordinates",
    "StepLoss",
    "StepResult",
    "TensorSpan",
    "apply_update",
    "derive_key",
    "normal",
    "normal_chunks",
    "projected_grad",
    "replay",
    "two_losses",
    "update_coef",
    "zo_step",
]
