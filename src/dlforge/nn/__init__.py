"""Building blocks shared by several model families: activations and initialisation."""

from __future__ import annotations

from dlforge.nn.activations import ACTIVATIONS
from dlforge.nn.init import INIT_SCHEMES, init_weights

__all__ = ["ACTIVATIONS", "INIT_SCHEMES", "init_weights"]
