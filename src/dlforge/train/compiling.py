"""``fit(..., compile=True)``: the training forward through ``torch.compile``.

:func:`compiled_forward` wraps a model in a :class:`CompiledForward`, the callable the
loop uses instead of ``model(xb)``. Only the call is compiled: ``model`` itself stays the
plain module, so its ``state_dict`` keys (checkpoints, resume, artifacts) never carry the
``_orig_mod.`` prefix of a compiled wrapper, and evaluation runs it eagerly.

When the backend cannot run here (Dynamo unsupported on this Python or platform, no C++
compiler for inductor, a backend that fails to build its kernels), the forward falls back
to eager execution once, with a :class:`CompileFallbackWarning` that says why; training
then goes on exactly as without ``compile``. Errors of the model itself still surface.

Numbers: inductor may fuse and reorder float operations, so a compiled run agrees with
an eager one to about 1e-6 relative, not bit for bit; dropout under inductor draws from
its own random stream. ``aot_eager`` (no code generation) is the quick backend to try.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(3, 2)
    >>> forward = compiled_forward(model, "aot_eager")
    >>> forward(torch.randn(4, 3)).shape
    torch.Size([4, 2])
    >>> compiled_forward(model, False) is model
    True
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch
from torch import nn

from dlforge.errors import ConfigError

DEFAULT_BACKEND = "inductor"


class CompileFallbackWarning(RuntimeWarning):
    """``compile`` was asked for but the backend cannot run here; training runs eagerly."""


def _backend_errors() -> tuple[type[BaseException], ...]:
    # What a backend that cannot build raises (BackendCompilerFailed wraps most of them).
    from torch._dynamo.exc import BackendCompilerFailed

    errors: list[type[BaseException]] = [BackendCompilerFailed]
    try:
        from torch._inductor.exc import CppCompileError, InductorError

        errors += [CppCompileError, InductorError]
    except ImportError:  # older torch: BackendCompilerFailed covers inductor
        pass
    return tuple(errors)


def backend_name(compile: bool | str) -> str | None:
    """The torch.compile backend ``compile`` asks for: None (off), ``inductor`` for True,
    or the name given.

    Example:
        >>> backend_name(True), backend_name(False), backend_name("aot_eager")
        ('inductor', None, 'aot_eager')
    """
    if compile is False or compile is None:
        return None
    if compile is True:
        return DEFAULT_BACKEND
    if not isinstance(compile, str):
        raise ConfigError(f"train.compile is {compile!r}", hint="use true, false or a backend name such as inductor")
    from torch._dynamo import list_backends

    known = list_backends(exclude_tags=())
    if compile not in known:
        raise ConfigError(f"train.compile names the backend {compile!r}, which torch does not know",
                          hint=f"use true (inductor) or one of: {', '.join(sorted(known))}")
    return compile


class CompiledForward:
    """``model``'s forward through ``torch.compile(model, backend=backend)``, falling back
    to ``model`` itself (eager) when the backend is unavailable.

    ``fallback`` holds the reason once it fell back (None while compiled).

    Example:
        >>> import torch
        >>> fwd = CompiledForward(torch.nn.Linear(2, 1), "aot_eager")
        >>> fwd(torch.ones(3, 2)).shape, fwd.fallback
        (torch.Size([3, 1]), None)
    """

    def __init__(self, model: nn.Module, backend: str = DEFAULT_BACKEND) -> None:
        self.model, self.backend = model, backend
        self.fallback: str | None = None
        self.compiled: Callable[..., Any] | None = None
        if not torch._dynamo.is_dynamo_supported():
            self._fall_back("torch.compile is not supported on this Python or platform")
            return
        try:
            self.compiled = torch.compile(model, backend=backend)
        except RuntimeError as err:  # e.g. a Python version this torch cannot compile for
            self._fall_back(str(err))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except _backend_errors() as err:
                self._fall_back(f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}")
        return self.model(*args, **kwargs)

    def _fall_back(self, reason: str) -> None:
        self.compiled, self.fallback = None, reason
        hint = ("inductor needs a C++ compiler on the CPU (e.g. apt install g++) and Triton on GPUs; "
                "or set train.compile: aot_eager, or false")
        warnings.warn(f"train.compile: the {self.backend!r} backend is unavailable here ({reason}); "
                      f"training runs eagerly. Hint: {hint}", CompileFallbackWarning, stacklevel=3)


def compiled_forward(model: nn.Module, compile: bool | str) -> Callable[..., Any]:
    """What the loop calls for the forward pass: ``model`` when ``compile`` is false, else
    a :class:`CompiledForward` (True: inductor; a string: that backend).

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(3, 2)
        >>> type(compiled_forward(model, True)).__name__
        'CompiledForward'
    """
    backend = backend_name(compile)
    return model if backend is None else CompiledForward(model, backend)
