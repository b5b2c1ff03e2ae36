"""Model compression: smaller or faster copies of a trained model.

Quantization and pruning are here; distillation, iterative pruning and quantization-aware
training train, so they live in :mod:`dlforge.compress.distillation` (and
:mod:`~dlforge.compress.distill_bert`), :mod:`dlforge.compress.prune_schedule` and
:mod:`dlforge.compress.qat` and are imported from there (the server imports :mod:`dlforge.compress.quantize`, and serving
never loads the trainer). Export is :mod:`dlforge.compress.onnx_export` (ONNX, with a parity
check) and :mod:`dlforge.compress.ort_quantize` (ONNX Runtime int8); the runtime that runs an
exported artifact is :mod:`dlforge.registry.runtimes`. :mod:`dlforge.compress.measure` and
:mod:`dlforge.compress.report` time the variants and write the compression report; the
commands (``dlforge compress``, ``export``, ``variants``) are :mod:`dlforge.pipeline.compression`.

Example:
    >>> from dlforge.compress import magnitude_prune, prune_structured, quantize_dynamic_int8, weight_bytes
    >>> from dlforge.compress import prune_ffn, prune_heads
    >>> from dlforge.compress.distillation import distill, teacher_targets
    >>> from dlforge.compress.distill_bert import distill_bert
    >>> from dlforge.compress.prune_schedule import iterative_prune
    >>> from dlforge.compress.qat import quantize_aware_train
"""

from dlforge.compress.prune import (
    PruneReport,
    StructuredReport,
    magnitude_prune,
    prune_structured,
    speedup,
)
from dlforge.compress.prune_bert import prune_ffn, prune_heads
from dlforge.compress.quantize import (
    Quantized,
    dynamic_int8,
    quantize_dynamic_int8,
    quantize_static_int8,
    weight_bytes,
)

__all__ = ["PruneReport", "Quantized", "StructuredReport", "dynamic_int8", "magnitude_prune", "prune_ffn",
           "prune_heads", "prune_structured", "quantize_dynamic_int8", "quantize_static_int8", "speedup", "weight_bytes"]
