"""The transferable sparse mask (METHOD.md section 1): compute, save/load, inspect."""

from meerkat_core.mask.compute import compute_mask, eligible_parameters
from meerkat_core.mask.io import check_mask_matches, load_mask, mask_to_bytes, save_mask
from meerkat_core.mask.select import excluded, topk_exact, unmatched_patterns
from meerkat_core.mask.stats import MaskComparison, MaskStats, compare_masks, layer_of, mask_stats, module_type
from meerkat_core.mask.types import (
    FORMAT,
    FORMAT_VERSION,
    METHODS,
    Mask,
    MaskMeta,
    TensorMask,
    k_for_density,
    validate_density,
    validate_method,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "METHODS",
    "Mask",
    "MaskComparison",
    "MaskMeta",
    "MaskStats",
    "TensorMask",
    "check_mask_matches",
    "compare_masks",
    "compute_mask",
    "eligible_parameters",
    "excluded",
    "k_for_density",
    "layer_of",
    "load_mask",
    "mask_stats",
    "mask_to_bytes",
    "module_type",
    "save_mask",
    "topk_exact",
    "unmatched_patterns",
    "validate_density",
    "validate_method",
]
