"""Model compression: smaller or faster copies of a trained model.

Example:
    >>> from dlforge.compress import quantize_dynamic_int8, weight_bytes
"""

from dlforge.compress.quantize import quantize_dynamic_int8, weight_bytes

__all__ = ["quantize_dynamic_int8", "weight_bytes"]
