"""Model compression: smaller or faster copies of a trained model.

Quantization and pruning are here; distillation trains, so it lives in
:mod:`dlforge.compress.distillation` and is imported from there (the server imports
:mod:`dlforge.compress.quantize`, and serving never loads the trainer).

Example:
    >>> from dlforge.compress import magnitude_prune, prune_structured, quantize_dynamic_int8, weight_bytes
    >>> from dlforge.compress.distillation import distill, teacher_targets
"""

from dlforge.compress.prune import (
    PruneReport,
    StructuredReport,
    magnitude_prune,
    prune_structured,
    speedup,
)
from dlforge.compress.quantize import quantize_dynamic_int8, weight_bytes

__all__ = ["PruneReport", "StructuredReport", "magnitude_prune", "prune_structured", "quantize_dynamic_int8",
           "speedup", "weight_bytes"]
