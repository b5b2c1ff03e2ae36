"""Prove an artifact folder can be served before the registry or the server accepts it.

:func:`check_artifact` is the one gate: registering, uploading and pointing an alias all call
it, and it raises :class:`dlforge.errors.ArtifactError` saying what is wrong and how to fix
it. In order, it refuses:

1. declared sizes over budget, and a safetensors header that does not match model.json's
   architecture, before anything is allocated (inside :func:`load_artifact`);
2. non-finite weights or buffers;
3. preprocessing statistics that are not finite, or a std or scale that is not positive
   (every prediction would be NaN or infinite);
4. ``class_names`` whose count differs from the classifier head's outputs;
5. a smoke prediction on a few inputs (drawn from the training reference in model.json,
   else synthetic) whose outputs have the wrong shape or are not finite.

Example:
    >>> import tempfile, torch
    >>> from dlforge.models import build
    >>> from dlforge.registry.artifact import save_artifact
    >>> model = build({"arch": "mlp", "hidden": [8]}, input_shape=(4,), num_outputs=3)
    >>> folder = save_artifact(model, tempfile.mkdtemp() + "/model", task="classification",
    ...                        class_names=["a", "b"])
    >>> check_artifact(folder)
    Traceback (most recent call last):
    ...
    dlforge.errors.ArtifactError: model.json lists 2 class_names ['a', 'b'], but the classifier head has 3 outputs (...)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dlforge.errors import ArtifactError
from dlforge.registry.artifact import MAX_PARAMETERS, Artifact, load_artifact

SMOKE_SAMPLES = 8  # inputs of the smoke prediction (fewer when one sample is large)
SMOKE_VALUES = 2**20  # at most this many input values in the smoke batch
STATISTICS = ("standardize", "target_standardize", "target_scale")  # preprocessing keys holding mean and std
RETRAIN_HINT = "the training diverged or the file was damaged: retrain, e.g. with a lower lr, and save again"
STATS_HINT = "refit the statistics on the training data and save again; a constant feature gets std 1, as in dlforge"


def check_artifact(folder: str | Path, *, max_parameters: int = MAX_PARAMETERS) -> None:
    """Raise ArtifactError unless the artifact in ``folder`` (or a run directory's ``model/``)
    loads within budget and predicts finite outputs of the right shape; see the module doc.

    Example:
        >>> check_artifact("runs/iris-20240101/model")  # doctest: +SKIP
        >>> check_artifact("runs/iris-20240101/model", max_parameters=10)  # doctest: +SKIP
        Traceback (most recent call last):
        ...
        dlforge.errors.ArtifactError: the model in .../model.json has 67 weights, more than the budget of 10 (...)
    """
    art = load_artifact(folder, max_parameters=max_parameters)
    _check_finite_tensors(art)
    _check_statistics(art.preprocessing)
    _check_class_names(art)
    _check_smoke_prediction(art)


def _check_finite_tensors(art: Artifact) -> None:
    tensors = [*art.model.named_parameters(), *art.model.named_buffers()]
    for name, t in tensors:
        if torch.is_floating_point(t) and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ArtifactError(f"the weights hold non-finite values (NaN or inf): {name} has {bad} of "
                                f"{t.numel()}", hint=RETRAIN_HINT)


def _statistics(preprocessing: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(where, value) of every stored mean, std and pixel scale; a value is a number or a list."""
    found = []
    for key in STATISTICS:
        stats = preprocessing.get(key)
        if isinstance(stats, Mapping):
            found += [(f"preprocessing.{key}.{stat}", stats[stat]) for stat in ("mean", "std") if stat in stats]
    encoding = preprocessing.get("encoding")
    if isinstance(encoding, Mapping) and "scale" in encoding:
        found.append(("preprocessing.encoding.scale", encoding["scale"]))
    return found


def _check_statistics(preprocessing: Mapping[str, Any]) -> None:
    """Standardisation statistics and scales must be finite, every std and scale positive."""
    for where, value in _statistics(preprocessing):
        listed = isinstance(value, (list, tuple))
        for i, v in enumerate(value if listed else [value]):
            at = f"{where}[{i}]" if listed else where
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ArtifactError(f"model.json's {at} is {v!r}, not a finite number", hint=STATS_HINT)
            if not where.endswith(".mean") and v <= 0:
                raise ArtifactError(f"model.json's {at} is {v!r}: inputs or outputs would be scaled by "
                                    "zero or a negative number, so predictions would be NaN or inf", hint=STATS_HINT)


def _check_class_names(art: Artifact) -> None:
    names, outputs = art.class_names, art.meta["spec"]["num_outputs"]
    hint = "save the model with one class name per output, in label order"
    if art.task != "classification" or names is None:
        return
    if not isinstance(names, list):
        raise ArtifactError(f"model.json's class_names is {_short(names)}, not a list", hint=hint)
    if len(names) != outputs:
        raise ArtifactError(f"model.json lists {len(names)} class_names {_short(names)}, but the classifier head "
                            f"has {outputs} outputs", hint=hint)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _smoke_inputs(art: Artifact, n: int) -> torch.Tensor:
    """At most ``n`` model-ready inputs like the training data: rebuilt from the training
    reference in model.json where it describes them (``dlforge.registry.reference``), otherwise
    zeros and standard-normal draws; token ids are random ids, then padding. Seeded."""
    shape, gen = art.input_shape, torch.Generator().manual_seed(0)
    reference = (art.meta.get("training") or {}).get("reference")
    samples = _reference_samples(reference, n)
    if art.meta["input_signature"].get("dtype") == "int64":
        return _token_ids(art, n, samples, gen)
    x = torch.randn(n, *shape, generator=gen)
    x[0] = 0.0
    if samples is None:
        return x
    if len(shape) == 1 and samples.shape[1] == shape[0]:  # tabular: the columns themselves
        return samples.to(torch.float32)
    if len(shape) == 3 and samples.shape[1] == 2 * shape[0]:  # image: per-channel mean and std
        mean, std = samples[:, 0::2, None, None], samples[:, 1::2, None, None]  # (n', C, 1, 1)
        return (mean + std * x[: len(samples)]).to(torch.float32)  # (n', C, H, W)
    if len(shape) == 2 and samples.shape[1] == shape[1]:  # sequence: per-feature means
        return samples[:, None, :].expand(len(samples), *shape).to(torch.float32).contiguous()
    return x


def _reference_samples(reference: Any, n: int) -> torch.Tensor | None:
    """Up to ``n`` rows of the reference's per-sample features, (n', F) float64, or None."""
    if not isinstance(reference, Mapping) or not isinstance(reference.get("samples"), list):
        return None
    try:
        columns = torch.tensor(reference["samples"], dtype=torch.float64)  # (F, M)
    except (TypeError, ValueError, RuntimeError):
        return None
    if columns.ndim != 2 or columns.shape[1] == 0 or not bool(torch.isfinite(columns).all()):
        return None
    return columns.T[:n]


def _token_ids(art: Artifact, n: int, samples: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
    """Random token ids that are not padding, then padding to the reference's lengths."""
    (length,) = art.input_shape
    encoding, spec = art.preprocessing.get("encoding") or {}, art.meta["spec"]
    pad = int(encoding.get("pad_id", spec.get("pad_token_id", 0)))
    vocab = int(encoding.get("vocab_size") or spec.get("vocab_size") or pad + 2)
    ids = torch.randint(0, vocab, (n, length), generator=gen)
    ids[ids == pad] = (pad + 1) % vocab  # only padding would leave attention nothing to attend to
    if samples is not None and samples.shape[1] == 1:  # the reference keeps each sample's length
        lengths = samples[:, 0].round().clamp(1, length).long()
        for i, keep in enumerate(lengths.tolist()):
            ids[i, keep:] = pad
    return ids


def _check_smoke_prediction(art: Artifact) -> None:
    per_sample = math.prod(art.input_shape)
    x = _smoke_inputs(art, max(1, min(SMOKE_SAMPLES, SMOKE_VALUES // per_sample)))
    spec = art.meta["spec"]
    expected = [len(x), spec["num_outputs"]]
    if spec.get("task_head") in ("token", "mlm"):  # one prediction per input step
        expected.insert(1, art.input_shape[0])
    if art.task == "segmentation":  # one logit map per class, the input's size
        expected += list(art.input_shape[1:])
    try:
        with torch.no_grad():
            out = art.model.eval()(x)
        predicted = art.predict(x)
    except Exception as err:  # noqa: BLE001 (whatever breaks here, the server would answer 500)
        raise ArtifactError(f"a smoke prediction on {len(x)} inputs of shape {list(art.input_shape)} failed: "
                            f"{type(err).__name__}: {_short(str(err), 200)}",
                            hint="check that the model predicts with Artifact.predict before saving it") from None
    if list(out.shape) != expected:
        raise ArtifactError(f"a smoke prediction gave outputs of shape {list(out.shape)}, expected {expected}",
                            hint="save the model with save_artifact from the model it describes")
    for key in ("probabilities", "values"):
        value = predicted.get(key)
        if isinstance(value, torch.Tensor) and not bool(torch.isfinite(value).all()):
            raise ArtifactError(f"a smoke prediction on {len(x)} sample inputs gave non-finite {key} (NaN or inf)",
                                hint=RETRAIN_HINT)
