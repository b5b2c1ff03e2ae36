"""The fast request path's checks give the answers of the full checks they stand in for.

``check_encoded`` (one min and max of the encoded request) against ``_check_finite`` plus
``range_warnings`` (the full checks), and the cached standardiser of ``dlforge.data.preprocess``
against ``Standardizer.from_dict(stats).transform``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.exceptions import RequestValidationError
from torch.testing import assert_close

from dlforge.data.preprocess import Standardizer, encode_array, encode_pixels
from dlforge.models import build
from dlforge.registry.artifact import Artifact, load_artifact, save_artifact
from dlforge.registry.reference import build_reference
from dlforge.serve.inputs import InputSpec, check_encoded, encode_inputs, range_warnings

# raw pixels 0..16 of a 1x2x2 grayscale image; a tiny std so that huge pixels overflow float32
PREP = {"encoding": {"kind": "image", "size": [2, 2], "mode": "L", "scale": 1 / 16},
        "standardize": {"mean": [0.5], "std": [1e-30], "axis": "channel"}}
INSIDE = [[[[8, 8], [8, 8]]]]  # standardised: 0
FAR = [[[[8, 8], [8, 9]]]]  # standardised: 6e28, far outside the reference's [-1, 1]
OVERFLOW = [[[[8, 8], [3e38, 8]]]]  # standardised: inf


@pytest.fixture(scope="module")
def art(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    torch.manual_seed(0)
    model = build({"arch": "mlp", "hidden": [4]}, input_shape=(1, 2, 2), num_outputs=2)
    x = torch.linspace(-1.0, 1.0, 64 * 4).reshape(64, 1, 2, 2)[torch.randperm(64)]  # the reference inputs
    meta = {"task": "classification", "class_names": ["a", "b"], "preprocessing": PREP,
            "input_signature": {"shape": [None, 1, 2, 2]}}
    reference = build_reference(x, Artifact(model=model.eval(), meta=meta, path=Path(".")).predict(x),
                                "classification", PREP)
    folder = tmp_path_factory.mktemp("art") / "m"
    return load_artifact(save_artifact(model, folder, task="classification", class_names=["a", "b"],
                                       preprocessing=PREP, training={"reference": reference}))


def _full_checks(art: Artifact, inputs: list) -> list[dict]:
    """What the request path did before: encode with the finite check, then the range warnings."""
    x = encode_inputs(InputSpec.of(art), art, inputs)
    return range_warnings(art, x)


def _errors(fn, *args) -> list[tuple[tuple, str]]:
    with pytest.raises(RequestValidationError) as info:
        fn(*args)
    return [(tuple(e["loc"]), e["msg"]) for e in info.value.errors()]


@pytest.mark.parametrize("inputs", [INSIDE, FAR, INSIDE + FAR + INSIDE])
def test_check_encoded_warns_as_the_full_checks(art: Artifact, inputs: list) -> None:
    x = encode_inputs(InputSpec.of(art), art, inputs, check=False)
    assert check_encoded(art, x, inputs) == _full_checks(art, inputs)
    assert bool(check_encoded(art, x, inputs)) == (FAR[0] in inputs)  # the far sample, and only it, is warned of


def test_check_encoded_refuses_overflow_as_the_full_checks(art: Artifact) -> None:
    inputs = INSIDE + OVERFLOW
    x = encode_inputs(InputSpec.of(art), art, inputs, check=False)
    assert not torch.isfinite(x).all()  # check=False lets the overflow through to check_encoded
    expected = _errors(encode_inputs, InputSpec.of(art), art, inputs)
    assert _errors(check_encoded, art, x, inputs) == expected == [(("body", "inputs", 1, 0, 1, 0), expected[0][1])]


def test_check_encoded_names_the_cell_of_decoded_tensor_data(art: Artifact) -> None:
    """v2 tensors come as one numpy array: the 422 names the same cell as for JSON lists."""
    arr = np.asarray(INSIDE + OVERFLOW, dtype=np.float32)
    x = encode_inputs(InputSpec.of(art), art, arr, check=False)
    assert _errors(check_encoded, art, x, arr) == _errors(encode_inputs, InputSpec.of(art), art, INSIDE + OVERFLOW)


def test_nan_is_never_taken_for_inside_the_ranges(art: Artifact) -> None:
    x = torch.tensor([[[[0.0, float("nan")], [0.0, 0.0]]]])
    assert _errors(check_encoded, art, x, [[[[0, 0], [0, 0]]]])[0][0] == ("body", "inputs", 0, 0, 0, 1)


def test_cached_standardiser_equals_a_fresh_one() -> None:
    rng = np.random.default_rng(0)
    stats = {"mean": [0.2, 0.4, 0.6], "std": [0.5, 0.25, 2.0], "axis": "channel"}
    prep = {"encoding": {"kind": "image", "size": [4, 5], "mode": "RGB", "scale": 1 / 255}, "standardize": stats}
    raw = rng.integers(0, 256, (3, 3, 4, 5)).astype(np.float32)
    expected = torch.from_numpy(Standardizer.from_dict(stats).transform(raw / np.float32(255)))
    for _ in range(2):  # built, then from the cache
        assert_close(encode_pixels(raw, prep), expected, rtol=0, atol=0)
    other = {**prep, "standardize": {**stats, "mean": [0.0, 0.0, 0.0]}}  # another dict: its own statistics
    assert_close(encode_pixels(raw, other), torch.from_numpy(raw / np.float32(255) / np.asarray(
        stats["std"], dtype=np.float32).reshape(1, 3, 1, 1)), rtol=0, atol=0)


def test_cached_standardiser_keeps_the_shape_refusal() -> None:
    prep = {"encoding": {"kind": "sequence", "length": 2, "features": 1},
            "standardize": {"mean": [1.0, 2.0], "std": [1.0, 1.0], "axis": "feature"}}
    with pytest.raises(Exception, match="cannot transform an array of shape"):
        encode_array(np.zeros((3, 2, 1)), prep)  # 3-D windows with a per-feature (2-D) standardiser


@pytest.mark.parametrize("outputs", [
    {"labels": ["b", "a"], "indices": torch.tensor([1, 0]), "probabilities": torch.tensor([[0.25, 0.75], [0.5, 0.5]])},
    {"values": torch.tensor([[1.5], [-2.0]])},  # one output: a number per sample
    {"values": torch.tensor([[1.5, 3.0], [-2.0, 0.0]])},  # several: a list per sample
])
def test_response_built_without_validation_writes_the_validated_json(art: Artifact, outputs: dict) -> None:
    from dlforge.serve.pool import LoadedModel
    from dlforge.serve.routers.predict import _to_json
    from dlforge.serve.schemas import InputWarning, PredictResponse
    from dlforge.serve.service import _response

    model = LoadedModel(name="m", version=3, sha256="", created="", artifact=art, batcher=None, drift=None,
                        inputs=InputSpec.of(art))
    built = _response(model, outputs, request_id="r1", variant="production", started=0.0)
    validated = PredictResponse.model_validate(built.model_dump())
    assert _to_json(built) == _to_json(validated)
    built.warnings = validated.warnings = [InputWarning(input=0, feature="x0", value=9.0, training_range=[0.0, 1.0],
                                                        message="far")]
    assert _to_json(built) == _to_json(validated)
