"""Quantization-aware training: fine-tune with fake int8, then convert to a real int8 model.

During training every weight and activation is rounded to its int8 grid in the forward
pass (gradients pass straight through), so the weights learn to live with the rounding;
BatchNorm keeps training and is folded into the conv at conversion. Start from a trained
fp32 model and a small learning rate (a tenth of the original rate, a few epochs).

This lives apart from :mod:`dlforge.compress.quantize` because it trains: the server
imports that module and must never load the trainer.

Example:
    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> from dlforge.models import build
    >>> mlp = build({"arch": "mlp", "hidden": [16]}, input_shape=(4,), num_outputs=2)
    >>> data = TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))
    >>> q = quantize_aware_train(mlp, data, epochs=1, lr=1e-3, batch_size=32)
    >>> q.recipe["kind"]
    'qat_int8'
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.utils.data import Dataset

from dlforge.compress.quantize import Quantized, _cpu, _cpu_state
from dlforge.errors import ConfigError
from dlforge.models import quantized
from dlforge.train import fit


def quantize_aware_train(model: nn.Module, train: Dataset, val: Dataset | None = None, *, epochs: int = 3,
                         lr: float | None = None, batch_size: int = 64, device: str = "cpu",
                         qconfig: str = "default", engine: str = "x86", **fit_kwargs: Any) -> Quantized:
    """Train a fake-quantized copy of MLP or CNN ``model`` with :func:`dlforge.train.fit`
    (``model`` is unchanged), then convert it to int8 (CPU).

    ``lr`` sets Adam's rate; or pass ``optim=`` (anything ``fit`` takes) among
    ``fit_kwargs``, not both. Training may run on ``device`` (e.g. "cuda"); the int8 model
    runs on the CPU.

    Example:
        >>> q = quantize_aware_train(cnn, train, val, epochs=2, lr=3e-4)  # doctest: +SKIP
        >>> q.model(x).argmax(1)  # doctest: +SKIP
    """
    if lr is not None:
        if "optim" in fit_kwargs:
            raise ConfigError("quantize_aware_train got both lr and optim", hint="pass one of them")
        fit_kwargs["optim"] = {"name": "adam", "lr": lr}
    recipe = quantized.static_recipe(model, engine=engine, qconfig=qconfig, kind="qat_int8")
    observed = quantized.prepare(_cpu(model), recipe)
    fit(observed, train, val, epochs=epochs, batch_size=batch_size, device=device, **fit_kwargs)
    observed = observed.cpu()
    return Quantized(quantized.convert(observed, model, recipe), recipe, _cpu_state(observed))
