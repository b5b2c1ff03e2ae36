"""Where training runs: :func:`select_device` turns ``train.device`` into a torch device
that this machine has, or a ConfigError naming the devices it does have.

Example:
    >>> select_device("cpu")
    device(type='cpu')
"""

from __future__ import annotations

import torch

from dlforge.errors import ConfigError


def select_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then Apple MPS, then the CPU; a named device must exist here.

    A device this machine does not have (``cuda`` on a CPU-only PyTorch, ``cuda:3`` with
    one GPU, ``mps`` off a Mac, a typo such as ``gpu``) is a ConfigError naming
    ``train.device`` and the devices there are, before any training starts.

    Example:
        >>> select_device("cpu")
        device(type='cpu')
    """
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    fix = f"set train.device to one of the devices here: {', '.join(available_devices())}; auto picks the fastest"
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"train.device is {str(device)!r}, which is not a device name", hint=fix) from None
    problem = _unavailable(chosen)
    if problem:
        raise ConfigError(f"train.device is {str(device)!r}, but {problem}", hint=fix)
    return chosen


def available_devices() -> list[str]:
    """The device names :func:`select_device` accepts on this machine, ``auto`` first.

    Example:
        >>> available_devices()[:2]
        ['auto', 'cpu']
    """
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    if _mps_available():
        names.append("mps")
    return names


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def _unavailable(device: torch.device) -> str | None:
    """Why ``device`` cannot train here (None: it can)."""
    if device.type == "cpu":
        return None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "this PyTorch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            return f"{build} (torch {torch.__version__})"
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            return f"this machine has {count} CUDA device(s), numbered from 0"
        return None
    if device.type == "mps":
        return None if _mps_available() else "Apple MPS is not available on this machine"
    return f"dlforge trains on cpu, cuda or mps, not {device.type}"
