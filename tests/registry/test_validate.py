"""check_artifact: an artifact is proven before the registry accepts it.

One test per refusal of issue 12 (class names that do not fit the head; NaN weights and a
std of 0; a 2 KiB model.json declaring 10^8 inputs), the size budget, the smoke prediction,
and every kind of artifact dlforge itself saves passing. ``bad_artifact`` is shared with
tests/serve/test_upload_validation.py.
"""

from __future__ import annotations

import doctest
import json
import re
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from dlforge.errors import ArtifactError
from dlforge.models import build
from dlforge.registry import Registry, load_artifact, save_artifact, validate
from dlforge.registry.ensemble import ensemble_artifacts
from dlforge.registry.reference import build_reference
from dlforge.registry.validate import check_artifact

NAMES = ["a", "b", "c"]
TABULAR = {"encoding": {"kind": "tabular", "columns": ["w", "x", "y", "z"], "categories": {}},
           "standardize": {"mean": [0.0] * 4, "std": [1.0] * 4, "axis": "feature"}}
HUGE_DIMS = 10**8


def _save(model: torch.nn.Module, folder: Path, x: torch.Tensor, task: str = "classification",
          class_names: list[str] | None = None, preprocessing: dict | None = None) -> Path:
    """Save ``model`` with a training reference built from inputs ``x``, as `dlforge train` does."""
    save_artifact(model, folder, task=task, class_names=class_names, preprocessing=preprocessing, overwrite=True)
    art = load_artifact(folder)
    reference = build_reference(x, art.predict(x), task, preprocessing or {})
    return save_artifact(model, folder, task=task, class_names=class_names, preprocessing=preprocessing,
                         training={"reference": reference}, overwrite=True)


def tiny_classifier(folder: Path, **meta: Any) -> Path:
    """A 4 -> 8 -> 3 MLP classifier with a reference; ``meta`` overrides save_artifact's keywords."""
    torch.manual_seed(0)
    model = build({"arch": "mlp", "hidden": [8]}, input_shape=(4,), num_outputs=3)
    return _save(model, folder, torch.randn(50, 4), **{"class_names": NAMES, "preprocessing": TABULAR, **meta})


def edit_meta(folder: Path, change: Callable[[dict], None]) -> Path:
    meta = json.loads((folder / "model.json").read_text())
    change(meta)
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


def _nan_weight(folder: Path) -> Path:
    tiny_classifier(folder)
    weights = load_artifact(folder).model.state_dict()
    weights["head.weight"][1, 2] = float("nan")
    save_file(weights, str(folder / "model.safetensors"))
    return folder


def _std(stat: str, index: int, value: float) -> Callable[[dict], None]:
    return lambda meta: meta["preprocessing"]["standardize"][stat].__setitem__(index, value)


def _huge_inputs(folder: Path) -> Path:
    """A 2 KiB artifact whose model.json declares 10^8 inputs (a 3.2 GB first layer)."""
    tiny_classifier(folder)
    edit_meta(folder, lambda m: (m["spec"].__setitem__("input_shape", [HUGE_DIMS]),
                                 m["input_signature"].__setitem__("shape", [None, HUGE_DIMS])))
    return folder


BAD: dict[str, tuple[Callable[[Path], Path], str]] = {
    "class names": (lambda f: edit_meta(tiny_classifier(f), lambda m: m.__setitem__("class_names", ["a", "b"])),
                    "lists 2 class_names ['a', 'b'], but the classifier head has 3 outputs"),
    "nan weight": (_nan_weight, "non-finite values (NaN or inf): head.weight has 1 of 24"),
    "std 0": (lambda f: edit_meta(tiny_classifier(f), _std("std", 1, 0.0)),
              "preprocessing.standardize.std[1] is 0.0: inputs or outputs would be scaled by zero"),
    "huge inputs": (_huge_inputs, f"declares inputs of shape [{HUGE_DIMS}]: {HUGE_DIMS:,} values per sample"),
}


def bad_artifact(case: str, folder: Path) -> tuple[Path, str]:
    """The artifact of refusal ``case`` (a key of BAD) saved in ``folder``, and the refusal's text."""
    make, reason = BAD[case]
    return make(folder), reason


def test_doctests() -> None:
    assert doctest.testmod(validate, optionflags=doctest.ELLIPSIS).failed == 0


# ------------------------------------------------------------------ what dlforge saves passes
def _regression(folder: Path) -> Path:
    model = build({"arch": "mlp", "hidden": [8]}, input_shape=(4,), num_outputs=2)
    pre = {**TABULAR, "target_standardize": {"mean": [100.0, -3.0], "std": [10.0, 0.5]}}
    return _save(model, folder, torch.randn(40, 4), task="regression", preprocessing=pre)


def _image(folder: Path) -> Path:
    model = build({"arch": "cnn", "channels": [4]}, input_shape=(1, 8, 8), num_outputs=3)
    pre = {"encoding": {"kind": "image", "size": [8, 8], "mode": "L", "scale": 1 / 16},
           "standardize": {"mean": [0.3], "std": [0.2], "axis": "channel"}}
    return _save(model, folder, torch.rand(20, 1, 8, 8), class_names=NAMES, preprocessing=pre)


def _text(folder: Path) -> Path:
    model = build({"arch": "transformer", "vocab_size": 30, "dim": 8, "num_heads": 2, "num_layers": 1},
                  input_shape=(12,), num_outputs=3)
    pre = {"encoding": {"kind": "text", "max_len": 12, "pad_id": 0, "vocab_size": 30}}
    ids = torch.randint(1, 30, (20, 12))
    ids[:, 7:] = 0  # padded after 7 tokens
    return _save(model, folder, ids, class_names=NAMES, preprocessing=pre)


def _forecaster(folder: Path) -> Path:
    model = build({"arch": "rnn", "hidden_size": 8}, input_shape=(6, 1), num_outputs=2)
    pre = {"encoding": {"kind": "sequence", "length": 6, "features": 1}, "standardize": None,
           "target_scale": {"mean": 50.0, "std": 4.0}}
    return _save(model, folder, torch.randn(20, 6, 1), task="regression", preprocessing=pre)


def _ensemble(folder: Path) -> Path:
    members = [tiny_classifier(folder.parent / f"member{i}") for i in range(2)]
    return ensemble_artifacts(members, folder)


@pytest.mark.parametrize("make", [tiny_classifier, _regression, _image, _text, _forecaster, _ensemble],
                         ids=["tabular", "regression", "image", "text", "forecaster", "ensemble"])
def test_artifacts_dlforge_saves_pass(tmp_path: Path, make: Callable[[Path], Path]) -> None:
    torch.manual_seed(0)
    folder = make(tmp_path / "model")
    assert check_artifact(folder) is None
    assert check_artifact(folder.parent) is None  # a run directory: its model/ folder


# ------------------------------------------------------------------ one refusal per row of the issue
@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(f"{tmp_path}/registry.db", artifacts=f"{tmp_path}/store")


def _refused(folder: Path, reason: str, reg: Registry) -> None:
    """check_artifact and Registry.register both refuse with ``reason``, and nothing is stored."""
    with pytest.raises(ArtifactError, match=re.escape(reason)) as err:
        check_artifact(folder)
    assert err.value.hint
    with pytest.raises(ArtifactError, match=re.escape(reason)) as err:
        reg.register(folder, "m")
    assert err.value.message.startswith("cannot register") and err.value.hint
    assert reg.models() == [] and not list(reg.artifacts.glob("??/*"))


def test_class_names_that_do_not_match_the_head_are_refused(tmp_path: Path, reg: Registry) -> None:
    folder, reason = bad_artifact("class names", tmp_path / "m")
    _refused(folder, reason, reg)  # before: registered, then every predict answered 500 (IndexError)


@pytest.mark.parametrize("change, reason", [
    (None, "non-finite values (NaN or inf): head.weight has 1 of 24"),
    (_std("std", 1, 0.0), "preprocessing.standardize.std[1] is 0.0"),
    (_std("std", 0, -2.0), "preprocessing.standardize.std[0] is -2.0"),
    (_std("mean", 3, float("nan")), "preprocessing.standardize.mean[3] is nan, not a finite number"),
    (lambda m: m["preprocessing"].__setitem__("target_standardize", {"mean": [1.0], "std": [0.0]}),
     "preprocessing.target_standardize.std[0] is 0.0"),
    (lambda m: m["preprocessing"].__setitem__("target_scale", {"mean": float("inf"), "std": 1.0}),
     "preprocessing.target_scale.mean is inf"),
], ids=["nan weight", "std 0", "std negative", "mean nan", "target std 0", "target mean inf"])
def test_non_finite_weights_and_zero_std_are_refused(tmp_path: Path, reg: Registry, change, reason: str) -> None:
    # before: registered, then 200 answers with null probabilities
    folder = _nan_weight(tmp_path / "m") if change is None else edit_meta(tiny_classifier(tmp_path / "m"), change)
    _refused(folder, reason, reg)


def test_an_infinite_buffer_is_refused(tmp_path: Path) -> None:
    model = build({"arch": "mlp", "hidden": [8], "batch_norm": "after"}, input_shape=(4,), num_outputs=3)
    model.layers[0][2].running_var[5] = float("inf")
    folder = save_artifact(model, tmp_path / "m", task="classification", class_names=NAMES)
    with pytest.raises(ArtifactError, match=r"layers\.0\.2\.running_var has 1 of 8"):
        check_artifact(folder)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


@pytest.mark.parametrize("load", [check_artifact, load_artifact], ids=["check_artifact", "load_artifact"])
def test_huge_declared_inputs_are_refused_fast_without_allocating(tmp_path: Path, reg: Registry, load) -> None:
    folder, reason = bad_artifact("huge inputs", tmp_path / "m")
    assert sum(p.stat().st_size for p in folder.iterdir()) < 8 * 1024  # a few KiB on disk
    peak, start = _peak_rss_bytes(), time.perf_counter()
    with pytest.raises(ArtifactError, match=re.escape(reason)):
        load(folder)  # before: refused after 11.9 s with peak memory up by 3.8 GB
    assert time.perf_counter() - start < 0.5
    assert _peak_rss_bytes() - peak < 100 * 2**20  # building the model would allocate 3.2 GB
    _refused(folder, reason, reg)


# ------------------------------------------------------------------ the budget, checked before allocating
def test_weight_budget_is_checked_on_the_meta_device(tmp_path: Path) -> None:
    folder = tiny_classifier(tmp_path / "m")
    with pytest.raises(ArtifactError, match=r"has 67 weights, more than the budget of 66"):
        check_artifact(folder, max_parameters=66)
    assert check_artifact(folder, max_parameters=67) is None
    wide = [2**15, 2**15]  # 2**30 weights (4 GiB in float32) declared in a tiny model.json
    edit_meta(folder, lambda m: m["spec"].__setitem__("hidden", wide))
    peak, start = _peak_rss_bytes(), time.perf_counter()
    with pytest.raises(ArtifactError, match=r"has 1,074,036,739 weights, more than the budget of 268,435,456"):
        check_artifact(folder)
    assert time.perf_counter() - start < 0.5 and _peak_rss_bytes() - peak < 100 * 2**20


def test_weights_of_another_architecture_are_refused_from_the_header(tmp_path: Path) -> None:
    folder = tiny_classifier(tmp_path / "m")
    edit_meta(folder, lambda m: m["spec"].__setitem__("hidden", [16]))
    with pytest.raises(ArtifactError, match=r"layers\.0\.0\.weight has shape \[8, 4\], the model expects \[16, 4\]"):
        check_artifact(folder)
    folder = edit_meta(tiny_classifier(tmp_path / "m2"), lambda m: m["input_signature"].__setitem__("shape", [None, 5]))
    with pytest.raises(ArtifactError, match=r"input_signature .* but its model takes inputs of shape \[4\]"):
        check_artifact(folder)


# ------------------------------------------------------------------ the smoke prediction
def test_smoke_prediction_uses_the_training_reference(tmp_path: Path) -> None:
    # Finite weights whose outputs overflow to inf only for inputs as large as the training
    # data (1e4); zeros and standard-normal draws would pass.
    model = build({"arch": "mlp", "hidden": []}, input_shape=(1,), num_outputs=2)
    with torch.no_grad():
        model.head.weight.fill_(1e35)
        model.head.bias.zero_()
    pre = {"encoding": {"kind": "tabular", "columns": ["x"], "categories": {}}}
    folder = save_artifact(model, tmp_path / "m", task="classification", class_names=["a", "b"], preprocessing=pre)
    assert check_artifact(folder) is None  # no reference: synthetic inputs stay finite
    _save(model, folder, torch.full((10, 1), 1e4), class_names=["a", "b"], preprocessing=pre)
    with pytest.raises(ArtifactError, match=r"on 8 sample inputs gave non-finite probabilities \(NaN or inf\)"):
        check_artifact(folder)


def test_a_model_that_cannot_predict_is_refused(tmp_path: Path) -> None:
    # token ids declared as float32 inputs: a transformer with a vocabulary cannot read them
    model = build({"arch": "transformer", "vocab_size": 30, "dim": 8, "num_heads": 2, "num_layers": 1},
                  input_shape=(12,), num_outputs=3)
    folder = save_artifact(model, tmp_path / "m", task="classification", class_names=NAMES)
    with pytest.raises(ArtifactError, match=r"a smoke prediction on 8 inputs of shape \[12\] failed: DataError"):
        check_artifact(folder)


def test_cli_register_exits_2_with_the_reason(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dlforge.cli.registry import registry_app

    folder, reason = bad_artifact("nan weight", tmp_path / "m")
    env = {"DLFORGE_REGISTRY": str(tmp_path / "r.db"), "DLFORGE_ARTIFACTS": str(tmp_path / "store"), "COLUMNS": "300"}
    result = CliRunner().invoke(registry_app, ["register", str(folder), "--name", "m"], env=env)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    text = " ".join(result.stderr.split())
    assert "cannot register" in text and reason in text and "hint: the training diverged" in text
    assert "Traceback" not in result.output and not list((tmp_path / "store").glob("??/*"))
