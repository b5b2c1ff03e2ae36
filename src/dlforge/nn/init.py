"""Weight initialisation schemes by the names configs use (``model.init``).

Example:
    >>> from torch import nn
    >>> from dlforge.nn import init_weights
    >>> layer = nn.Linear(256, 128)
    >>> init_weights(layer, "he", nonlinearity="relu")
    >>> bool((layer.bias == 0).all())
    True
"""

from __future__ import annotations

from torch import nn

from dlforge.errors import ConfigError

INIT_SCHEMES = ("default", "xavier", "he")

# The gain He init needs for each activation. GELU and leaky ReLU (slope 0.01) pass about
# half of a zero-mean input's variance, like ReLU, so they share ReLU's gain sqrt(2);
# identity maps to PyTorch's "linear" (gain 1).
_HE_NONLINEARITY = {
    "relu": "relu",
    "leaky_relu": "relu",
    "gelu": "relu",
    "tanh": "tanh",
    "sigmoid": "sigmoid",
    "identity": "linear",
}

_WEIGHTED = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def init_weights(module: nn.Module, scheme: str, nonlinearity: str = "relu") -> None:
    """Re-initialise every Linear, Conv and BatchNorm inside ``module`` in place.

    ``"default"`` keeps PyTorch's own initialisation. ``"xavier"`` draws Linear and Conv
    weights from Glorot's uniform distribution; ``"he"`` draws them from Kaiming's normal
    distribution (fan_in) with the gain of ``nonlinearity``, the activation that follows
    the layer. Both zero the biases and set BatchNorm to weight 1, bias 0.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
        >>> init_weights(net, "xavier")
        >>> bool((net[0].bias == 0).all())
        True
    """
    if scheme not in INIT_SCHEMES:
        raise ConfigError(
            f"model.init is {scheme!r}, which is not an initialisation scheme",
            hint=f"allowed values: {', '.join(INIT_SCHEMES)}",
        )
    if nonlinearity not in _HE_NONLINEARITY:
        raise ConfigError(
            f"model.activation is {nonlinearity!r}, which has no known initialisation gain",
            hint=f"allowed values: {', '.join(_HE_NONLINEARITY)}",
        )
    if scheme == "default":
        return
    for m in module.modules():
        if isinstance(m, _WEIGHTED):
            if scheme == "xavier":
                nn.init.xavier_uniform_(m.weight)
            else:
                nn.init.kaiming_normal_(
                    m.weight, mode="fan_in", nonlinearity=_HE_NONLINEARITY[nonlinearity]
                )
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, _BATCH_NORMS) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
