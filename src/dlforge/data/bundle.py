"""The in-memory form every data source is loaded into: :class:`DataBundle`.

A bundle holds the whole data set as numpy arrays plus what a model and a later
prediction need to know about it: the task, class names, feature names and the
``encoding`` recipe that turns raw inputs (CSV rows, image files) into ``x``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch.utils.data import TensorDataset

TASKS = ("classification", "regression")
KINDS = ("tabular", "image", "sequence", "text")


@dataclass(repr=False)
class DataBundle:
    """A loaded data set: inputs ``x``, targets ``y`` and how they were made.

    ``x`` is float32, ``(N, F)`` for tables or ``(N, C, H, W)`` for images scaled to
    [0, 1], and is not standardised (see :func:`dlforge.data.prepare`); for text it is
    int64 token ids ``(N, T)`` padded with the pad id. ``y`` holds
    int64 class indices ``(N,)`` for classification or float32 ``(N, 1)`` for
    regression. ``encoding`` is a JSON-able recipe that turns raw inputs into ``x``.

    Example:
        >>> from dlforge.data import load_builtin
        >>> bundle = load_builtin("iris")
        >>> len(bundle), bundle.input_shape, bundle.num_outputs
        (150, (4,), 3)
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    task: str
    kind: str
    class_names: list[str] | None
    feature_names: list[str] | None
    encoding: dict
    notes: list[str] = field(default_factory=list)  # decisions a user should hear about (printed by train)
    ids: list[str] | None = None  # one per sample from data.id_column, to join predictions back

    def __post_init__(self) -> None:
        # Loaders build bundles; these checks catch a loader bug, not a user mistake.
        assert self.task in TASKS, self.task
        assert self.kind in KINDS, self.kind
        assert len(self.x) == len(self.y), (self.x.shape, self.y.shape)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. ``(30,)`` or ``(1, 28, 28)``."""
        return tuple(self.x.shape[1:])

    @property
    def num_outputs(self) -> int:
        """Number of model outputs: classes for classification, targets for regression."""
        if self.class_names is not None:
            return len(self.class_names)
        return int(self.y.shape[1])

    def subset(self, idx: np.ndarray) -> DataBundle:
        """The samples at ``idx``, with every other field shared.

        Example:
            >>> from dlforge.data import load_builtin
            >>> len(load_builtin("iris").subset(np.arange(10)))
            10
        """
        ids = None if self.ids is None else [self.ids[i] for i in np.arange(len(self))[idx]]
        return replace(self, x=self.x[idx], y=self.y[idx], ids=ids)

    def to_tensor_dataset(self) -> TensorDataset:
        """``TensorDataset(x, y)``: float32 x (int64 token ids for text), int64 or float32 y.

        Example:
            >>> from dlforge.data import load_builtin
            >>> x, y = load_builtin("iris").to_tensor_dataset()[0]
            >>> x.dtype, y.dtype
            (torch.float32, torch.int64)
        """
        y_dtype = np.int64 if self.task == "classification" else np.float32
        x_dtype = np.int64 if self.kind == "text" else np.float32  # ids index an embedding
        x = torch.from_numpy(np.ascontiguousarray(self.x, dtype=x_dtype))
        y = torch.from_numpy(np.ascontiguousarray(self.y, dtype=y_dtype))
        return TensorDataset(x, y)

    def __len__(self) -> int:
        return len(self.x)

    def __repr__(self) -> str:
        # The default dataclass repr would print every array element.
        return (
            f"DataBundle(name={self.name!r}, task={self.task!r}, kind={self.kind!r}, "
            f"n={len(self)}, input_shape={self.input_shape}, num_outputs={self.num_outputs})"
        )
