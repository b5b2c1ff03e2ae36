"""Class imbalance: measure it, resample the train split, or sample it class-balanced.

``data.imbalance`` in a config is an :class:`ImbalanceConfig`::

    data:
      imbalance: {method: smote, ratio: 0.5, k_neighbors: 5}   # or {sampler: balanced}

:func:`resample` rebalances training inputs with imbalanced-learn (random over- and
under-sampling, SMOTE, borderline SMOTE) on samples flattened to vectors, and reports
the class counts before and after. :func:`balanced_order` is the other route: keep the
data, and let each epoch draw samples with probability inversely proportional to their
class's size. Only ever resample the train split; validation and test must keep the
real class mix, or their numbers lie.

The loss-side remedies (class-weighted cross-entropy, focal loss) live in
:mod:`dlforge.train.losses`, balanced bagging in :mod:`dlforge.train.bagging`.

Example:
    >>> import numpy as np
    >>> y = np.array([0] * 90 + [1] * 10)
    >>> counts = class_counts(y, 2)
    >>> counts, imbalance_ratio(counts)
    ([90, 10], 9.0)
    >>> x2, y2, report = resample(np.random.default_rng(0).normal(size=(100, 3)), y,
    ...                           ImbalanceConfig(method="oversample", ratio=0.5), seed=0)
    >>> report.counts_after
    [90, 45]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import TensorDataset

from dlforge.data.bundle import DataBundle
from dlforge.data.tabular import examples
from dlforge.errors import ConfigError, DataError

METHODS = ("none", "oversample", "undersample", "smote", "borderline_smote")
NOTE_RATIO = 3.0  # largest/smallest class size from which training without a remedy gets a note


class ImbalanceConfig(BaseModel):
    """The ``data.imbalance`` section.

    ``method`` resamples the train split once before training. ``ratio`` is the
    minority/majority size ratio after resampling (imbalanced-learn's float
    ``sampling_strategy`` for two classes). With more classes, over-sampling grows every
    class smaller than ``ratio`` x the largest class to that size, and under-sampling
    shrinks every class larger than the smallest class / ``ratio`` to that size; ``None``
    means full balance (imbalanced-learn's ``"not majority"`` for over-sampling and
    ``"not minority"`` for under-sampling). ``k_neighbors`` is SMOTE's neighbourhood.
    ``sampler: balanced`` keeps the data and draws each epoch class-balanced instead.
    ``bagging: k`` trains k members, each on a random under-sample balanced to the
    smallest class, and saves their averaging ensemble (balanced bagging).

    Example:
        >>> ImbalanceConfig(method="smote", ratio=0.5).k_neighbors
        5
    """

    model_config = ConfigDict(extra="forbid")

    method: Literal["none", "oversample", "undersample", "smote", "borderline_smote"] = "none"
    ratio: float | None = Field(None, gt=0, le=1)
    k_neighbors: int = Field(5, ge=1)
    sampler: Literal["none", "balanced"] = "none"
    bagging: int | None = Field(None, ge=2, description="train this many members on balanced under-samples; "
                                                         "the run's model is their ensemble")

    @property
    def active(self) -> bool:
        """Whether any remedy is switched on."""
        return self.method != "none" or self.sampler != "none" or self.bagging is not None


@dataclass
class ResampleReport:
    """What :func:`resample` did: the method and the class counts before and after.

    Example:
        >>> print(ResampleReport("smote", [90, 10], [90, 45]).format(["neg", "pos"]))
        resampling (smote): 100 -> 135 samples
          neg: 90 -> 90
          pos: 10 -> 45
    """

    method: str
    counts_before: list[int]
    counts_after: list[int]

    def to_dict(self) -> dict:
        """A JSON-able dict for the run's report."""
        return asdict(self)

    def format(self, class_names: Sequence[str] | None = None) -> str:
        """A small text table, one line per class."""
        names = list(class_names) if class_names is not None else [str(i) for i in range(len(self.counts_before))]
        lines = [f"resampling ({self.method}): {sum(self.counts_before)} -> {sum(self.counts_after)} samples"]
        lines += [f"  {name}: {b} -> {a}" for name, b, a in zip(names, self.counts_before, self.counts_after)]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- measuring

def class_counts(y: np.ndarray | torch.Tensor | Sequence[int], n_classes: int) -> list[int]:
    """Samples per class, for classes ``0 .. n_classes - 1``.

    Example:
        >>> class_counts([0, 2, 2], 4)
        [1, 0, 2, 0]
    """
    y = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y).reshape(-1)
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= n_classes):
        raise DataError(f"class labels must be integers in 0..{n_classes - 1}",
                        hint="imbalance tools apply to classification targets only")
    return np.bincount(y.astype(np.int64), minlength=n_classes).tolist()


def imbalance_ratio(counts: Sequence[int]) -> float:
    """Largest class size over smallest (inf when a class has no samples).

    Example:
        >>> imbalance_ratio([200, 10, 50])
        20.0
    """
    if not counts or max(counts) == 0:
        return 1.0
    return math.inf if min(counts) == 0 else max(counts) / min(counts)


def imbalance_note(counts: Sequence[int], class_names: Sequence[str] | None = None) -> str | None:
    """A note for a train split whose classes differ in size by ``NOTE_RATIO`` (3) or more.

    The caller prints it when no remedy is configured; None when the classes are balanced
    enough.

    Example:
        >>> imbalance_note([50, 40]) is None
        True
        >>> print(imbalance_note([200, 10], ["benign", "malignant"]))  # doctest: +ELLIPSIS
        note: the training classes are imbalanced (largest/smallest = 20.0: benign 200, malignant 10)...
    """
    ratio = imbalance_ratio(counts)
    if ratio < NOTE_RATIO:
        return None
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(counts))]
    shown = ", ".join(f"{n} {c}" for n, c in zip(names, counts))
    return (
        f"note: the training classes are imbalanced (largest/smallest = {ratio:.1f}: {shown}); "
        "accuracy alone will flatter a model that ignores the rare classes. Remedies: "
        "data.imbalance (method: oversample | undersample | smote | borderline_smote, or "
        "sampler: balanced), train.loss (name: focal, or class_weights: inverse | effective); "
        "judge with balanced_accuracy and per-class F1 (dlforge evaluate / the report)."
    )


# ----------------------------------------------------------------------------- resampling

def _sampling_strategy(counts: list[int], method: str, ratio: float | None) -> dict[int, int]:
    """Target size per class; binary cases equal imbalanced-learn's float strategy."""
    present = [n for n in counts if n > 0]  # a class absent from train stays absent
    n_max, n_min = max(present), min(present)
    if method == "undersample":
        target = n_min if ratio is None else int(n_min / ratio)
        return {c: min(n, target) for c, n in enumerate(counts) if n > 0}
    target = n_max if ratio is None else int(n_max * ratio)
    return {c: max(n, target) for c, n in enumerate(counts) if n > 0}


def _sampler(cfg: ImbalanceConfig, strategy: dict[int, int], seed: int):
    # Imported here: imbalanced-learn takes seconds to import and most runs never need it.
    from imblearn.over_sampling import SMOTE, BorderlineSMOTE, RandomOverSampler
    from imblearn.under_sampling import RandomUnderSampler

    if cfg.method == "oversample":
        return RandomOverSampler(sampling_strategy=strategy, random_state=seed)
    if cfg.method == "undersample":
        return RandomUnderSampler(sampling_strategy=strategy, random_state=seed)
    if cfg.method == "smote":
        return SMOTE(sampling_strategy=strategy, k_neighbors=cfg.k_neighbors, random_state=seed)
    return BorderlineSMOTE(sampling_strategy=strategy, k_neighbors=cfg.k_neighbors, random_state=seed)


def resample(
    x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, cfg: ImbalanceConfig, seed: int = 0,
    *, n_classes: int | None = None,
) -> tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor, ResampleReport]:
    """Rebalance training inputs ``x`` (N, ...) and class labels ``y`` (N,).

    Samples are flattened to (N, D) for imbalanced-learn and reshaped back, so images
    work too (SMOTE then interpolates pixels). Tensors come back as tensors on their
    device, arrays as arrays. The original samples come first, in order; new ones follow.
    Pass the train split only. ``n_classes`` (default: largest label + 1) sets how many
    classes the report counts.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(60, 1, 2, 2)).astype(np.float32)
        >>> y = np.array([0] * 50 + [1] * 10)
        >>> x2, y2, report = resample(x, y, ImbalanceConfig(method="smote"), seed=0)
        >>> x2.shape, report.counts_after
        ((100, 1, 2, 2), [50, 50])
    """
    as_tensor = isinstance(x, torch.Tensor)
    device = x.device if as_tensor else None
    x_np = x.detach().cpu().numpy() if as_tensor else np.asarray(x)
    y_np = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if x_np.ndim < 2 or len(x_np) != len(y_np) or y_np.ndim != 1:
        raise DataError(f"resample needs x of shape (N, ...) and class labels y of shape (N,); "
                        f"got {x_np.shape} and {y_np.shape}")
    if n_classes is None:
        n_classes = int(y_np.max()) + 1 if len(y_np) else 0
    before = class_counts(y_np, n_classes)
    if cfg.method == "none":
        return x, y, ResampleReport("none", before, before)
    present = [n for n in before if n > 0]
    if len(present) < 2:
        raise DataError("resampling needs at least two classes in the train split")
    smote = cfg.method in ("smote", "borderline_smote")
    if smote and not np.issubdtype(x_np.dtype, np.floating):
        raise DataError(f"{cfg.method} interpolates between samples, which {x_np.dtype} inputs (token ids?) "
                        "cannot be", hint="use data.imbalance.method: oversample, or train.loss class weights")
    if smote and min(present) <= cfg.k_neighbors:
        raise DataError(f"{cfg.method} with k_neighbors={cfg.k_neighbors} needs more than "
                        f"{cfg.k_neighbors} samples in every class; the smallest has {min(present)}",
                        hint=f"set data.imbalance.k_neighbors below {min(present)}, or use oversample")
    strategy = _sampling_strategy(before, cfg.method, cfg.ratio)
    flat = x_np.reshape(len(x_np), -1)  # (N, D): imbalanced-learn wants vectors
    x_new, y_new = _sampler(cfg, strategy, seed % 2**32).fit_resample(flat, y_np)
    x_new = x_new.astype(x_np.dtype, copy=False).reshape(-1, *x_np.shape[1:])  # (N', ...)
    y_new = y_new.astype(y_np.dtype, copy=False)
    report = ResampleReport(cfg.method, before, class_counts(y_new, n_classes))
    missed = [c for c, n in strategy.items() if report.counts_after[c] != n]
    if missed:  # borderline SMOTE skips, silently, a class with no sample near the border
        raise DataError(f"{cfg.method} made no samples for classes {missed}: none of their samples lies on the "
                        "class border (half or more, but not all, of its 10 nearest neighbours from other classes)",
                        hint="use data.imbalance.method: smote, which interpolates from every minority sample")
    if as_tensor:
        return torch.from_numpy(x_new).to(device), torch.from_numpy(y_new).to(device), report
    return x_new, y_new, report


def resample_dataset(
    train: TensorDataset, cfg: ImbalanceConfig, seed: int = 0, *, n_classes: int | None = None
) -> tuple[TensorDataset, ResampleReport]:
    """:func:`resample` on a training ``TensorDataset(x, y)``.

    Example:
        >>> import torch
        >>> data = TensorDataset(torch.randn(40, 3), torch.tensor([0] * 30 + [1] * 10))
        >>> resampled, report = resample_dataset(data, ImbalanceConfig(method="undersample"))
        >>> len(resampled), report.counts_after
        (20, [10, 10])
    """
    x, y = train.tensors[:2]
    x_new, y_new, report = resample(x, y, cfg, seed, n_classes=n_classes)
    return TensorDataset(x_new, y_new), report


# ----------------------------------------------------------------------------- sampling

def balanced_order(y: np.ndarray | torch.Tensor) -> Callable[[int, int, int], torch.Tensor]:
    """An ``order`` for :func:`dlforge.train.fit` that samples classes evenly.

    Each epoch draws ``n`` indices with replacement, each with probability proportional to
    1 / (size of its class), so every class fills about 1/K of the epoch. The draw is
    seeded from (seed, epoch), so a resumed run sees the same samples.

    Example:
        >>> y = torch.tensor([0] * 90 + [1] * 10)
        >>> order = balanced_order(y)
        >>> idx = order(100, 0, 0)
        >>> len(idx), 35 < int((y[idx] == 1).sum()) < 65
        (100, True)
    """
    y_t = torch.as_tensor(np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y)).reshape(-1).long()
    counts = torch.bincount(y_t).double()  # (K,)
    weights = 1.0 / counts[y_t]  # (N,): every class gets the same total weight

    def order(n: int, seed: int, epoch: int) -> torch.Tensor:
        if n != len(y_t):
            raise DataError(f"balanced_order was made for {len(y_t)} labels but the training set has {n} samples",
                            hint="build it from the training split's labels")
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)  # as epoch_permutation
        return torch.multinomial(weights, n, replacement=True, generator=g)

    return order


# ----------------------------------------------------------------------------- test problems

def make_imbalanced(
    bundle: DataBundle, minority_class: int | str, ratio: float = 1 / 20, *, seed: int = 0
) -> DataBundle:
    """A seeded imbalanced version of a classification bundle: minority:majority = ``ratio``.

    A two-class bundle keeps its labels and loses minority samples until the minority
    has ``ratio`` x the majority's size. A bundle with more classes becomes binary
    one-vs-rest first: class 0 is ``rest`` (all other classes), class 1 is
    ``minority_class``. ``minority_class`` is an index or a class name.

    Example:
        >>> from dlforge.data import load_builtin
        >>> small = make_imbalanced(load_builtin("digits"), 3, ratio=1 / 20, seed=0)
        >>> small.class_names, class_counts(small.y, 2)
        (['rest', '3'], [1614, 81])
    """
    if bundle.task != "classification" or bundle.class_names is None:
        raise DataError(f"make_imbalanced needs a classification set; {bundle.name!r} is {bundle.task}")
    names = list(bundle.class_names)
    if isinstance(minority_class, str):
        if minority_class not in names:
            raise DataError(f"class {minority_class!r} is not in {bundle.name}", hint=f"use one of: {examples(names, 10, quote=False)}")
        minority_class = names.index(minority_class)
    if not 0 <= minority_class < len(names):
        raise DataError(f"minority_class {minority_class} is out of range for {len(names)} classes")
    if not 0 < ratio <= 1:
        raise ConfigError(f"ratio is {ratio}", hint="give minority/majority in (0, 1], e.g. 1/20")
    y = np.asarray(bundle.y)
    if len(names) > 2:  # one-vs-rest: the chosen class becomes class 1
        bundle = replace(bundle, y=(y == minority_class).astype(np.int64),
                         class_names=["rest", names[minority_class]])
        minority_class, y = 1, bundle.y
    majority = int((y != minority_class).sum())
    minority_idx = np.flatnonzero(y == minority_class)
    keep = min(len(minority_idx), max(2, round(ratio * majority)))
    rng = np.random.default_rng(seed)
    kept = rng.choice(minority_idx, size=keep, replace=False)
    idx = np.sort(np.concatenate([np.flatnonzero(y != minority_class), kept]))
    return replace(bundle.subset(idx), name=f"{bundle.name}-imbalanced")


__all__ = [
    "ImbalanceConfig", "ResampleReport", "balanced_order", "class_counts", "imbalance_note",
    "imbalance_ratio", "make_imbalanced", "resample", "resample_dataset",
]
