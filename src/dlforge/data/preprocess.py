"""From a bundle to model-ready tensors, and from raw inputs to the same tensors later.

:func:`prepare` splits a bundle, fits a :class:`Standardizer` on the train split only
(so validation and test numbers stay honest) and builds ``TensorDataset`` s. Its
``preprocessing`` dict is saved with a model; :func:`encode_rows`,
:func:`encode_images` and :func:`encode_array` replay it on new inputs and give
exactly the tensors training saw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from tokenizers import Tokenizer
from torch.utils.data import TensorDataset

from dlforge.data.bundle import DataBundle
from dlforge.data.image_folder import decode_image, read_image, to_unit_range
from dlforge.data.splits import split_indices
from dlforge.data.tabular import as_table, encode_table, feature_names
from dlforge.errors import DataError

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)
MIN_STD = 1e-8  # below this a column is constant: divide by 1 instead of blowing it up


@dataclass
class Standardizer:
    """Per-feature (tables) or per-channel (images) ``(x - mean) / std``.

    Statistics use the population std (ddof=0), as scikit-learn's StandardScaler.

    Example:
        >>> s = Standardizer.fit(np.array([[0.0, 5.0], [2.0, 5.0]]))
        >>> s.mean, s.std, s.axis
        ([1.0, 5.0], [1.0, 1.0], 'feature')
    """

    mean: list[float]
    std: list[float]
    axis: str  # "feature": x is (N, F); "channel": x is (N, C, H, W)

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardizer:
        """Statistics of ``x``: per column of a 2-D array, per channel of a 4-D one."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim not in (2, 4) or len(x) == 0:
            raise DataError(f"cannot standardise an array of shape {x.shape}",
                            hint="expected (N, F) features or (N, C, H, W) images with N > 0")
        dims = (0,) if x.ndim == 2 else (0, 2, 3)
        std = x.std(axis=dims)
        std[std < MIN_STD] = 1.0
        axis = "feature" if x.ndim == 2 else "channel"
        return cls(mean=x.mean(axis=dims).tolist(), std=std.tolist(), axis=axis)

    def transform(self, x: ArrayOrTensor) -> ArrayOrTensor:
        """``(x - mean) / std`` in float32; a tensor stays a tensor on its device.

        Example:
            >>> Standardizer([1.0], [2.0], "feature").transform(np.array([[3.0]]))
            array([[1.]], dtype=float32)
        """
        expected_ndim = 2 if self.axis == "feature" else 4
        if x.ndim != expected_ndim or x.shape[1] != len(self.mean):
            raise DataError(
                f"standardiser fitted on {len(self.mean)} {self.axis}s cannot transform an "
                f"array of shape {tuple(x.shape)}",
                hint=f"give {expected_ndim}-D input with {len(self.mean)} {self.axis}s in dim 1",
            )
        shape = (1, -1) if self.axis == "feature" else (1, -1, 1, 1)  # broadcast over N (, H, W)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(shape)
        std = np.asarray(self.std, dtype=np.float32).reshape(shape)
        if isinstance(x, torch.Tensor):
            x = x.to(torch.float32)
            return (x - torch.from_numpy(mean).to(x.device)) / torch.from_numpy(std).to(x.device)
        return (np.asarray(x, dtype=np.float32) - mean) / std

    def to_dict(self) -> dict:
        """A JSON-able dict; :meth:`from_dict` reads it back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> Standardizer:
        """Rebuild a standardiser saved with :meth:`to_dict`.

        Example:
            >>> Standardizer.from_dict({"mean": [0.0], "std": [1.0], "axis": "feature"}).std
            [1.0]
        """
        try:
            mean, std, axis = list(d["mean"]), list(d["std"]), d["axis"]
        except (KeyError, TypeError) as err:
            raise DataError(f"standardisation stats {d!r} lack mean, std or axis",
                            hint="the saved preprocessing is damaged; retrain") from err
        if len(mean) != len(std) or axis not in ("feature", "channel"):
            raise DataError(f"inconsistent standardisation stats {d!r}",
                            hint="the saved preprocessing is damaged; retrain")
        return cls(mean=[float(m) for m in mean], std=[float(s) for s in std], axis=axis)


@dataclass
class Prepared:
    """Model-ready data: tensor datasets per split plus what a model must be built for."""

    name: str
    task: str
    kind: str
    train: TensorDataset
    val: TensorDataset | None
    test: TensorDataset | None
    class_names: list[str] | None
    feature_names: list[str] | None
    input_shape: tuple[int, ...]
    num_outputs: int
    preprocessing: dict  # {"encoding": ..., "standardize": Standardizer.to_dict() or None}
    notes: list[str] = field(default_factory=list)  # decisions a user should hear about (printed by train)
    # 0-based row indices of the source (in its own order) per split: {"train": [...], "val": [...], "test": [...]}
    split_indices: dict[str, list[int]] | None = None


def prepare(
    bundle: DataBundle, *, val: float = 0.15, test: float = 0.15, stratify: bool = True,
    seed: int = 0, standardize: bool = True, standardize_target: bool = True,
) -> Prepared:
    """Split ``bundle``, standardise with train-split statistics and build tensor datasets.

    With ``standardize_target`` a regression target is trained on as ``(y - mean) / std``
    per output column, with the train split's mean and population std (a constant column
    divides by 1), saved as ``preprocessing["target_standardize"]``; :func:`to_target_units`
    maps model outputs back. ``split_indices`` records which source rows went where.

    Example:
        >>> from dlforge.data import load_builtin
        >>> prepared = prepare(load_builtin("iris"), val=0.2, test=0.2)
        >>> len(prepared.train), prepared.input_shape, prepared.num_outputs
        (90, (4,), 3)
        >>> len(prepared.split_indices["test"])
        30
    """
    indices = dict(zip(("train", "val", "test"),
                       split_indices(bundle, val=val, test=test, stratify=stratify, seed=seed)))
    parts = {name: None if idx is None else bundle.subset(idx) for name, idx in indices.items()}
    # Token ids are indices, not measurements: text is never standardised.
    scaler = Standardizer.fit(parts["train"].x) if standardize and bundle.kind != "text" else None
    # An unscaled target in the thousands makes the MSE loss (and its gradients) huge, and the
    # output layer starts near 0: training on standard units lets the default lr work.
    target = (Standardizer.fit(parts["train"].y.reshape(len(parts["train"]), -1))
              if standardize_target and bundle.task == "regression" else None)

    def tensors(part: DataBundle | None) -> TensorDataset | None:
        if part is None:
            return None
        if scaler is not None:
            part = replace(part, x=scaler.transform(part.x))  # the bundle itself stays unscaled
        if target is not None:
            part = replace(part, y=target.transform(part.y.reshape(len(part), -1)))
        return part.to_tensor_dataset()

    preprocessing = {"encoding": bundle.encoding, "standardize": None if scaler is None else scaler.to_dict()}
    if target is not None:
        preprocessing["target_standardize"] = {"mean": target.mean, "std": target.std}
    return Prepared(
        name=bundle.name,
        task=bundle.task,
        kind=bundle.kind,
        train=tensors(parts["train"]),
        val=tensors(parts["val"]),
        test=tensors(parts["test"]),
        class_names=bundle.class_names,
        feature_names=bundle.feature_names,
        input_shape=bundle.input_shape,
        num_outputs=bundle.num_outputs,
        preprocessing=preprocessing,
        notes=list(bundle.notes),
        split_indices={name: idx.tolist() for name, idx in indices.items() if idx is not None},
    )


def to_target_units(values: torch.Tensor, stats: Mapping | None) -> torch.Tensor:
    """Model outputs ``(N, D)`` on the standardised target scale back in the target's units:
    ``mean + std * values`` with ``preprocessing["target_standardize"]`` (None: unchanged).

    Example:
        >>> to_target_units(torch.tensor([[0.0], [1.0]]), {"mean": [100.0], "std": [10.0]})
        tensor([[100.],
                [110.]])
    """
    if stats is None:
        return values
    mean = torch.as_tensor(stats["mean"], dtype=values.dtype, device=values.device)
    std = torch.as_tensor(stats["std"], dtype=values.dtype, device=values.device)
    return values.reshape(len(values), -1) * std + mean


def in_target_units(data: TensorDataset, prepared: Prepared) -> TensorDataset:
    """A split of ``prepared`` with its targets back in the target's own units (float64),
    as :func:`dlforge.evaluate.evaluate` scores it; inputs stay model-ready. Unchanged
    when the target was not standardised.

    Example:
        >>> from dlforge.data import load_builtin
        >>> prepared = prepare(load_builtin("diabetes"), val=0.2, test=0.2)
        >>> round(float(prepared.test.tensors[1].mean()), 2), round(float(in_target_units(prepared.test, prepared).tensors[1].mean()), 1)
        (0.06, 155.3)
    """
    stats = prepared.preprocessing.get("target_standardize")
    if stats is None or not isinstance(data, TensorDataset):
        return data
    x, y = data.tensors
    return TensorDataset(x, to_target_units(y.double(), stats))


# id(stats) -> (stats, its Standardizer, mean and std as float32 arrays shaped to broadcast): a server
# encodes every request with the same stored dict, and rebuilding the standardiser from it was half
# of what encoding one small request cost.
_STANDARDIZERS: dict[int, tuple[Mapping, Standardizer, np.ndarray, np.ndarray]] = {}


def _standardizer(stats: Mapping) -> tuple[Standardizer, np.ndarray, np.ndarray]:
    """``Standardizer.from_dict(stats)`` and its broadcastable float32 mean and std, built once per
    stats dict (the dict is kept, so its id is not reused while cached)."""
    cached = _STANDARDIZERS.get(id(stats))
    if cached is None or cached[0] is not stats:
        if len(_STANDARDIZERS) > 256:  # bounded: one entry per loaded model
            _STANDARDIZERS.clear()
        scaler = Standardizer.from_dict(stats)
        shape = (1, -1) if scaler.axis == "feature" else (1, -1, 1, 1)
        cached = _STANDARDIZERS[id(stats)] = (stats, scaler, np.asarray(scaler.mean, dtype=np.float32).reshape(shape),
                                              np.asarray(scaler.std, dtype=np.float32).reshape(shape))
    return cached[1:]


def _finish(x: np.ndarray, preprocessing: Mapping) -> torch.Tensor:
    """Standardise encoded x as training did and return a float32 tensor."""
    stats = preprocessing.get("standardize")
    if stats is not None:
        scaler, mean, std = _standardizer(stats)
        if isinstance(x, np.ndarray) and x.ndim == mean.ndim and x.shape[1] == mean.shape[1]:
            x = (np.asarray(x, dtype=np.float32) - mean) / std  # Standardizer.transform, without rebuilding mean, std
        else:
            x = scaler.transform(x)  # (its refusal names the expected shape)
    scale = preprocessing.get("target_scale")
    if scale is not None:  # a forecaster reads its series in train-span units
        x = (np.asarray(x, dtype=np.float64) - scale["mean"]) / scale["std"]
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _encoding(preprocessing: Mapping, kind: str) -> Mapping:
    encoding = preprocessing.get("encoding") if isinstance(preprocessing, Mapping) else None
    if not isinstance(encoding, Mapping) or "kind" not in encoding:
        raise DataError("the preprocessing dict has no 'encoding' recipe",
                        hint="pass Prepared.preprocessing, as saved with the model")
    if kind != "any" and encoding["kind"] != kind:
        raise DataError(f"this model takes {encoding['kind']} input, not {kind} input",
                        hint=f"give {encoding['kind']} input to this model")
    return encoding


def sample_shape(encoding: Mapping) -> tuple[int, ...]:
    """Per-sample shape of x made by ``encoding``: ``(F,)``, ``(C, H, W)``, ``(T, F)`` or ``(T,)``.

    Example:
        >>> sample_shape({"kind": "image", "size": [8, 8], "mode": "L", "scale": 1 / 16})
        (1, 8, 8)
    """
    if encoding["kind"] == "image":
        return (1 if encoding["mode"] == "L" else 3, *encoding["size"])
    if encoding["kind"] == "sequence":
        return (encoding["length"], encoding["features"])
    if encoding["kind"] == "text":
        return (encoding["max_len"],)
    # One-hot blocks, plain numbers, then the <column>_missing indicators.
    return (len(feature_names(encoding["columns"], encoding["categories"], encoding.get("indicators", []))),)


def encode_rows(
    rows: Sequence[Mapping[str, object]] | Mapping[str, object] | str | Path | Any,
    preprocessing: Mapping,
) -> torch.Tensor:
    """Encode raw table rows (dicts, a CSV file or a pandas DataFrame) as the model's
    standardised input.

    Columns not used in training, such as the target, are ignored; one dict is one row.
    Gaps are filled and unseen categories handled as the stored encoding says
    (:func:`dlforge.data.tabular.encode_table`), exactly as in training.

    Example:
        >>> encode_rows([{"age": "31", "color": "red"}], prepared.preprocessing)  # doctest: +SKIP
        tensor([[ 0.1320, -0.9806,  0.9806]])
    """
    encoding = _encoding(preprocessing, "tabular")
    x = encode_table(as_table(rows), encoding)  # (N, F)
    return _finish(x, preprocessing)


def encode_images(images: Sequence[str | Path | bytes], preprocessing: Mapping) -> torch.Tensor:
    """Load image files (paths) or encoded image bytes (PNG, JPEG, BMP: decoded in memory) as the
    model's standardised input ``(N, C, H, W)``.

    Each image is converted to the stored colour mode and resized to the stored size.
    Files hold 0..255 pixels, so they are always scaled by 1/255; the stored
    ``scale`` describes the training array (digits used 1/16 on sklearn's 0..16
    pixels) and both put pixels on the same [0, 1] range.

    Example:
        >>> encode_images(["seven.png"], prepared.preprocessing).shape  # doctest: +SKIP
        torch.Size([1, 1, 8, 8])
    """
    encoding = _encoding(preprocessing, "image")
    if isinstance(images, (str, Path, bytes)):
        images = [images]
    if not images:
        raise DataError("no images were given", hint="pass e.g. ['a.png', 'b.png'] or PNG/JPEG bytes")
    size, mode = tuple(encoding["size"]), encoding["mode"]
    pixels = np.stack([decode_image(bytes(im), mode, size) if isinstance(im, (bytes, bytearray, memoryview))
                       else read_image(im, mode, size) for im in images])  # (N, C, H, W)
    return _finish(to_unit_range(pixels), preprocessing)


def encode_pixels(x: np.ndarray | torch.Tensor | Sequence, preprocessing: Mapping) -> torch.Tensor:
    """Raw pixel arrays in the source's own units as the model's standardised input ``(N, C, H, W)``.

    Raw units are the pixels the source holds: 0..16 for the built-in digits, 0..255 for
    image folders and IDX files; the stored ``scale`` (1/16, 1/255) maps them to the
    [0, 1] range training used, then the training standardisation applies. Layouts, at
    the stored size: ``(N, C, H, W)``, ``(N, H, W, C)`` or, for grayscale, ``(N, H, W)``;
    one sample without the batch dimension is accepted too. Arrays already in [0, 1]
    (a bundle's ``x``) go to :func:`encode_array` instead.

    Example:
        >>> enc = {"encoding": {"kind": "image", "size": [2, 2], "mode": "L", "scale": 1 / 16}}
        >>> encode_pixels([[0, 16], [8, 4]], enc)
        tensor([[[[0.0000, 1.0000],
                  [0.5000, 0.2500]]]])
    """
    encoding = _encoding(preprocessing, "image")
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = _to_nchw(np.asarray(x, dtype=np.float32), encoding)
    scale = float(encoding.get("scale", 1 / 255))
    levels = round(1 / scale)
    # Dividing by the whole number of levels gives bit-for-bit what training computed
    # (to_unit_range divides by 255, the digits loader by 16); multiplying would not.
    x = x / np.float32(levels) if abs(levels * scale - 1) < 1e-9 else x * np.float32(scale)
    return _finish(x, preprocessing)


def pixel_layouts(encoding: Mapping) -> dict[tuple[int, ...], str]:
    """Per-sample shapes a raw pixel array may have, and their layout: ``(C, H, W)``, ``(H, W, C)``
    and, for grayscale, ``(H, W)``; channels-first wins when two layouts share a shape.

    Example:
        >>> pixel_layouts({"kind": "image", "size": [8, 8], "mode": "L"})
        {(1, 8, 8): 'CHW', (8, 8, 1): 'HWC', (8, 8): 'HW'}
    """
    c, h, w = sample_shape(encoding)
    layouts = {(c, h, w): "CHW"}
    layouts.setdefault((h, w, c), "HWC")
    if c == 1:
        layouts.setdefault((h, w), "HW")
    return layouts


def _to_nchw(x: np.ndarray, encoding: Mapping) -> np.ndarray:
    """A batch (or one sample) of pixels in any accepted layout as ``(N, C, H, W)``."""
    layouts = pixel_layouts(encoding)
    if x.shape in layouts:  # one sample
        x = x[None]
    layout = layouts.get(x.shape[1:])
    if layout is None:
        shapes = " or ".join(f"(N, {', '.join(map(str, s))})" for s in layouts)
        raise DataError(f"pixels of shape {x.shape} do not fit the model's {encoding['mode']} images of "
                        f"{encoding['size'][0]}x{encoding['size'][1]} (HxW)",
                        hint=f"give raw pixels of shape {shapes}, resized to the model's size")
    if layout == "HW":
        return x[:, None]
    return x.transpose(0, 3, 1, 2) if layout == "HWC" else x


def encode_array(x: np.ndarray | torch.Tensor, preprocessing: Mapping) -> torch.Tensor:
    """Standardise already-encoded samples (e.g. a bundle's ``x``) as training did.

    One sample without a batch dimension is accepted too. Text token ids come back
    as int64 ids, checked against the vocabulary, and are never standardised.

    Example:
        >>> encode_array(bundle.x[:5], prepared.preprocessing).shape  # doctest: +SKIP
        torch.Size([5, 1, 8, 8])
    """
    encoding = _encoding(preprocessing, "any")
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if encoding["kind"] == "text":
        return _token_ids(np.asarray(x), encoding)
    x = np.asarray(x, dtype=np.float32)
    expected = sample_shape(encoding)
    if x.shape == expected:
        x = x[None]  # one sample -> a batch of one
    if x.shape[1:] != expected:
        raise DataError(
            f"input of shape {x.shape} does not match the model's sample shape {expected}",
            hint=f"give an array of shape (N, {', '.join(map(str, expected))})",
        )
    return _finish(x, preprocessing)


def _token_ids(x: np.ndarray, encoding: Mapping) -> torch.Tensor:
    """Check already-encoded token ids against a text encoding; int64 ``(N, max_len)``."""
    (max_len,) = sample_shape(encoding)
    if x.shape == (max_len,):
        x = x[None]  # one sample -> a batch of one
    if x.ndim != 2 or x.shape[1] != max_len:
        raise DataError(f"token ids of shape {x.shape} do not match the model's length {max_len}",
                        hint=f"give ids of shape (N, {max_len}), e.g. from encode_text_inputs")
    if x.dtype.kind not in "iu" and not (x.dtype.kind == "f" and np.all(np.mod(x, 1) == 0)):
        raise DataError(f"token ids must be integers, got {x.dtype} values",
                        hint="pass ids from encode_text_inputs, or raw strings to it")
    vocab_size = encoding.get("vocab_size")
    if vocab_size is None:  # an encoding written without it: ask the stored tokenizer
        vocab_size = Tokenizer.from_str(encoding["tokenizer"]).get_vocab_size()
    if x.size and (x.min() < 0 or x.max() >= vocab_size):
        raise DataError(f"token ids span [{x.min()}, {x.max()}], outside the vocabulary of "
                        f"{vocab_size}", hint="encode the texts with this model's tokenizer")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64))
