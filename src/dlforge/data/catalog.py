"""Built-in data sets: small real sets bundled with scikit-learn and seeded toy tasks.

Nothing here downloads: the real sets ship inside scikit-learn, except ``nuclei``, which
``make setup`` installs once (see :mod:`dlforge.data.assets`); the toy sets (``xor``,
``circles``, ``spirals``, ``synthetic_nuclei``) are generated from a seed.

Example:
    >>> [d["name"] for d in list_builtin()][:3]
    ['digits', 'breast_cancer', 'wine']
"""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlforge.data.bundle import DataBundle
from dlforge.data.segmentation import SegmentationBundle, read_image, read_mask
from dlforge.data.segmentation_synthetic import synthetic_nuclei
from dlforge.errors import DataError

DEFAULT_GENERATED_SAMPLES = 1000


@dataclass(frozen=True)
class _Builtin:
    task: str
    kind: str
    shape: tuple[int, ...]  # one sample
    n_samples: int  # the real size, or the default for generated sets
    n_classes: int | None
    description: str
    default_noise: float | None  # None: a fixed real data set, not generated


def _sklearn_tabular(name: str, loader: str, task: str) -> DataBundle:
    from sklearn import datasets  # on demand: scikit-learn takes about a second to import

    raw = getattr(datasets, loader)()
    features = [str(f) for f in raw.feature_names]
    if task == "classification":
        y, class_names = raw.target.astype(np.int64), [str(c) for c in raw.target_names]
    else:
        y, class_names = raw.target.astype(np.float32).reshape(-1, 1), None  # (N, 1)
    return DataBundle(
        name=name,
        x=raw.data.astype(np.float32),
        y=y,
        task=task,
        kind="tabular",
        class_names=class_names,
        feature_names=features,
        encoding={"kind": "tabular", "columns": features, "categories": {}},
    )


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as ``load_digits`` gives them: images (N, 8, 8) of 0..16
    pixels as float64, and int targets (N,).

    Read straight from the file inside the scikit-learn package, so training on digits does
    not pay scikit-learn's one-second import; :func:`sklearn.datasets.load_digits` is the
    fallback (and the reference a test compares with).

    Example:
        >>> images, target = digits_arrays()
        >>> images.shape, float(images.max()), target[:3].tolist()
        ((1797, 8, 8), 16.0, [0, 1, 2])
    """
    spec = importlib.util.find_spec("sklearn")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    path = next((Path(f) / "datasets" / "data" / "digits.csv.gz" for f in folders), None)
    if path is None or not path.is_file():
        from sklearn import datasets

        raw = datasets.load_digits()
        return raw.images, raw.target
    data = np.loadtxt(path, delimiter=",")  # (N, 65): 64 pixels, then the digit
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


def _digits() -> DataBundle:
    images, target = digits_arrays()
    return DataBundle(
        name="digits",
        x=(images[:, None] / 16.0).astype(np.float32),  # (N, 1, 8, 8); pixels are 0..16
        y=target.astype(np.int64),
        task="classification",
        kind="image",
        class_names=[str(d) for d in range(10)],
        feature_names=None,
        # scale 1/16 is how this x was made from sklearn's 0..16 pixels; image files are
        # always read with 1/255 (see preprocess.encode_images), so an 8x8 grayscale PNG
        # saved from 0..255 pixels encodes onto the same [0, 1] range.
        encoding={"kind": "image", "size": [8, 8], "mode": "L", "scale": 1 / 16},
    )


def _nuclei() -> SegmentationBundle:
    # Imported here: when dlforge.data imports it, `python -m dlforge.data.assets` warns that
    # the module it runs was imported first.
    from dlforge.data.assets import nuclei_dir

    folder = nuclei_dir()  # a DataError saying how to install the set when it is absent
    image, depth = read_image(folder / "img2d.tif", "L")  # (1, 512, 512) 16-bit counts
    ids = read_mask(folder / "mask2d.tif")  # (512, 512): 0 background, one id per nucleus
    assert depth == 16, depth  # the installed file is hash-checked
    return SegmentationBundle(
        name="nuclei",
        # The scale a 16-bit TIFF gets in load_segmentation_folder, so the same file in a
        # folder gives the same x (the counts only reach ~235: normalise, do not assume [0, 1]).
        x=image[None].astype(np.float32) / np.float32(65535),  # (1, 1, 512, 512)
        y=(ids[None] > 0).astype(np.int64),  # (1, 512, 512)
        class_names=["background", "nucleus"],
        encoding={"kind": "segmentation", "mode": "L", "scale": 1 / 65535, "size": list(ids.shape)},
        notes=[("real: 2018 Data Science Bowl (BBBC038, CC0) fluorescence nuclei with human per-nucleus "
                "annotation, as shipped in the stardist 0.9.2 wheel (BSD-3); Caicedo et al., Nature "
                f"Methods 16, 2019; installed in {folder}")],
        ids=["img2d"],
        instances=ids[None].astype(np.int32),  # (1, 512, 512)
    )


def _xor(n: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    points = rng.uniform(-1.0, 1.0, size=(n, 2))  # (N, 2)
    y = (points[:, 0] > 0) != (points[:, 1] > 0)
    # Noise moves points after labelling, so points near the axes can cross over.
    return points + noise * rng.standard_normal((n, 2)), y


def _circles(n: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets

    return datasets.make_circles(n_samples=n, noise=noise, factor=0.5, random_state=seed)


def _spirals(n: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = np.arange(n) % 2  # alternate so the classes differ in size by at most one
    # sqrt spreads points evenly along the arm instead of crowding the centre.
    t = np.sqrt(rng.uniform(0.0, 1.0, size=n)) * 3 * np.pi  # angle: 1.5 turns
    radius = t / (3 * np.pi)  # grows from 0 to 1
    angle = t + np.pi * y  # the second arm is the first rotated by 180 degrees
    points = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)  # (N, 2)
    return points + noise * rng.standard_normal((n, 2)), y


def _generated(name: str, n: int, noise: float, seed: int) -> DataBundle:
    rng = np.random.default_rng(seed)
    if name == "xor":
        x, y = _xor(n, noise, rng)
        class_names = ["same_sign", "different_sign"]
    elif name == "circles":
        x, y = _circles(n, noise, seed)
        class_names = ["outer", "inner"]  # make_circles labels the inner circle 1
    else:
        x, y = _spirals(n, noise, rng)
        class_names = ["arm_0", "arm_1"]
    features = ["x0", "x1"]
    return DataBundle(
        name=name,
        x=x.astype(np.float32),
        y=y.astype(np.int64),
        task="classification",
        kind="tabular",
        class_names=class_names,
        feature_names=features,
        encoding={"kind": "tabular", "columns": features, "categories": {}},
    )


_N = DEFAULT_GENERATED_SAMPLES
_CATALOG: dict[str, _Builtin] = {
    "digits": _Builtin("classification", "image", (1, 8, 8), 1797, 10,
                       "8x8 grayscale handwritten digits (scikit-learn)", None),
    "breast_cancer": _Builtin("classification", "tabular", (30,), 569, 2,
                              "Wisconsin breast cancer, malignant vs benign", None),
    "wine": _Builtin("classification", "tabular", (13,), 178, 3,
                     "chemical analysis of wines from three cultivars", None),
    "iris": _Builtin("classification", "tabular", (4,), 150, 3,
                     "iris flower measurements, three species", None),
    "diabetes": _Builtin("regression", "tabular", (10,), 442, None,
                         "diabetes disease progression after one year", None),
    "xor": _Builtin("classification", "tabular", (2,), _N, 2,
                    "2-D points labelled by whether the coordinate signs differ", 0.1),
    "circles": _Builtin("classification", "tabular", (2,), _N, 2,
                        "two concentric circles (inner radius 0.5)", 0.05),
    "spirals": _Builtin("classification", "tabular", (2,), _N, 2,
                        "two interleaved spirals", 0.05),
    "nuclei": _Builtin("segmentation", "segmentation", (1, 512, 512), 1, 2,
                       "fluorescence nuclei, human per-nucleus masks (2018 Data Science Bowl, BBBC038, CC0; "
                       "from the stardist 0.9.2 wheel, BSD-3; installed by make setup)", None),
    "synthetic_nuclei": _Builtin("segmentation", "segmentation", (1, 128, 128), 16, 2,
                                 "synthetic fluorescence-like nuclei with exact masks (not real microscopy)",
                                 0.05),
}

_REAL_LOADERS: dict[str, Callable[[], DataBundle | SegmentationBundle]] = {
    "digits": _digits,
    "breast_cancer": lambda: _sklearn_tabular("breast_cancer", "load_breast_cancer", "classification"),
    "wine": lambda: _sklearn_tabular("wine", "load_wine", "classification"),
    "iris": lambda: _sklearn_tabular("iris", "load_iris", "classification"),
    "diabetes": lambda: _sklearn_tabular("diabetes", "load_diabetes", "regression"),
    "nuclei": _nuclei,
}


def builtin_names() -> list[str]:
    """Names of the built-in data sets, in catalog order."""
    return list(_CATALOG)


def suggest_builtin(name: str) -> str | None:
    """The built-in name ``name`` is most likely a typo of, or None."""
    close = difflib.get_close_matches(name.lower(), _CATALOG, n=1, cutoff=0.6)
    return close[0] if close else None


def list_builtin() -> list[dict]:
    """Describe every built-in set: name, task, kind, shape, n_samples, n_classes, description.

    ``shape`` is one sample's shape; for generated sets ``n_samples`` is the default.

    Example:
        >>> next(d for d in list_builtin() if d["name"] == "digits")["shape"]
        [1, 8, 8]
    """
    return [
        {
            "name": name,
            "task": b.task,
            "kind": b.kind,
            "shape": list(b.shape),
            "n_samples": b.n_samples,
            "n_classes": b.n_classes,
            "description": b.description,
        }
        for name, b in _CATALOG.items()
    ]


def load_builtin(
    name: str, *, n_samples: int | None = None, noise: float | None = None, seed: int = 0
) -> DataBundle | SegmentationBundle:
    """Load a built-in set; ``n_samples``, ``noise`` and ``seed`` shape the generated ones.

    The same seed gives identical arrays. The real sets are fixed, so giving them
    ``n_samples`` or ``noise`` is an error rather than silently ignored. The
    segmentation sets (``nuclei``, ``synthetic_nuclei``) load as :class:`SegmentationBundle` objects.

    Example:
        >>> load_builtin("spirals", n_samples=200, noise=0.1, seed=1).x.shape
        (200, 2)
    """
    spec = _CATALOG.get(name)
    if spec is None:
        guess = suggest_builtin(name)
        did_you_mean = f"did you mean '{guess}'? " if guess else ""
        raise DataError(
            f"unknown built-in data set '{name}'",
            hint=f"{did_you_mean}data.source can be one of: {', '.join(_CATALOG)}",
        )
    if spec.default_noise is None:
        for key, value in (("n_samples", n_samples), ("noise", noise)):
            if value is not None:
                raise DataError(
                    f"'{name}' is a fixed data set, so {key} cannot be set",
                    hint=f"remove data.{key}; it only applies to the generated sets "
                    f"{', '.join(n for n, b in _CATALOG.items() if b.default_noise is not None)}",
                )
        return _REAL_LOADERS[name]()
    n = spec.n_samples if n_samples is None else n_samples
    noise = spec.default_noise if noise is None else noise
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise DataError(f"n_samples must be an integer of at least 2, got {n!r}",
                        hint=f"set data.n_samples, e.g. {spec.n_samples}")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
        raise DataError(f"noise must be a number of at least 0, got {noise!r}",
                        hint=f"set data.noise, e.g. {spec.default_noise}")
    if name == "synthetic_nuclei":
        return synthetic_nuclei(int(n), size=spec.shape[1:], noise=float(noise), seed=seed)
    return _generated(name, int(n), float(noise), seed)
