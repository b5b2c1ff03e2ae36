"""Segmentation end to end: config -> patches -> U-Net -> scored regions -> artifact -> report,
cross-validation over spatial folds, and the CLI's train / cv / predict on masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dlforge.cli import app
from dlforge.config import validate_config
from dlforge.data import load_source
from dlforge.errors import ConfigError
from dlforge.evaluate.segmentation import segmentation_scores
from dlforge.pipeline.crossval import cross_validate
from dlforge.pipeline.data import load_data
from dlforge.pipeline.run import train_run
from dlforge.registry import load_artifact

TINY = {"model": {"arch": "unet", "widths": [4, 8]},
        "train": {"epochs": 1, "batch_size": 4, "device": "cpu"}}


def tiny(data: dict, **train) -> dict:
    return {"name": "seg", "data": {"patch": [32, 32], "patches_per_epoch": 8, **data},
            "model": TINY["model"], "train": {**TINY["train"], **train}}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cfg = validate_config(tiny({"source": "synthetic_nuclei", "n_samples": 6}))
    return train_run(cfg, runs_dir=tmp_path_factory.mktemp("runs"))


def test_a_run_scores_its_held_out_images_against_otsu(run):
    d = run.run_dir
    split = json.loads((d / "split.json").read_text())
    assert split["by"] == "images" and len(split["test"]) == 1 and split["patch"] == [32, 32]
    ev = json.loads((d / "evaluation.json").read_text())
    for key in ("dice", "iou", "hd95", "ap50", "dsb"):
        assert key in ev["metrics"] and f"test_{key}" in run.metrics
    assert 0 <= ev["metrics"]["dice"] <= 1 and "dice" in ev["baselines"]["otsu"]
    assert ev["postprocessing"]["chosen"] and ev["overlays"][0]["png_base64"]
    meta = json.loads((d / "model" / "model.json").read_text())
    assert meta["task"] == "segmentation" and meta["preprocessing"]["encoding"]["window"] == [32, 32]
    html = (d / "report.html").read_text()
    assert 'id="segmentation"' in html and "Otsu threshold" in html and "data:image/png;base64" in html


def test_the_artifact_answers_what_the_run_scored(run):
    """Raw test image in, through Artifact.segment (encode, sliding windows, post-processing):
    the same Dice as the run's evaluation of that region."""
    d = run.run_dir
    ev = json.loads((d / "evaluation.json").read_text())
    raw = load_source("synthetic_nuclei", n_samples=6, seed=0)
    i = ev["per_region"][0]["region"]["image"]
    (mask,) = load_artifact(d / "model").segment([raw.x[i, 0]])
    again = segmentation_scores(mask[None], raw.y[i][None], 2, true_instances=raw.instances[i][None])
    assert again["dice"] == pytest.approx(ev["per_region"][0]["dice"], abs=1e-12)


def test_one_image_is_split_by_region(tmp_path):
    folder = _folder(tmp_path, n=1, size=96)
    prepared = load_data(validate_config(tiny({"source": str(folder)})))
    assert prepared.regions.by == "regions" and prepared.task == "segmentation"
    assert prepared.test.tensors[0].shape[2:] == (14, 96)  # the last 15% of the rows: a 14 x 96 band


@pytest.mark.parametrize("change, message", [
    ({"model": {"arch": "mlp"}}, "segmentation needs model.arch: unet"),
    ({"data": {"patch": [31, 32]}}, "multiple of 2"),
    ({"data": {"target": "y"}}, "data.target does not apply to segmentation"),
    ({"data": {"imbalance": {"method": "oversample"}}}, "segmentation balances pixels"),
])
def test_config_errors_name_the_key(change, message):
    raw = tiny({"source": "synthetic_nuclei", "n_samples": 6})
    for section, values in change.items():
        raw[section] = {**raw[section], **values} if section == "data" else values
    with pytest.raises(ConfigError, match=message):
        cfg = validate_config(raw)
        prepared = load_data(cfg)
        from dlforge.pipeline.fit_options import class_remedies

        class_remedies(cfg, prepared)


def test_segmentation_keys_are_refused_for_tables():
    with pytest.raises(ConfigError, match="data.patch does not apply to table"):
        load_data(validate_config({"data": {"source": "iris", "patch": [8, 8]}, "model": {"arch": "mlp"}}))


def test_cross_validation_uses_spatial_folds_with_an_interval():
    result = cross_validate(validate_config(tiny({"source": "synthetic_nuclei", "n_samples": 4})), k=2)
    seg = result.segmentation
    assert len(result.folds) == 2 and seg["interval"]["method"] == "Student t over folds"
    assert {"dice", "dice_raw", "otsu_dice", "hd95", "ap50", "dsb"} <= set(result.mean)
    assert [f["fold"] for f in seg["folds"]] == [1, 2] and len(seg["overlays"]) == 2


def _folder(root: Path, n: int, size: int, missing_mask: bool = False) -> Path:
    b = load_source("synthetic_nuclei", n_samples=max(n, 2), seed=1)
    (root / "cells" / "images").mkdir(parents=True)
    (root / "cells" / "masks").mkdir()
    for i in range(n):
        img = (b.x[i, 0, :size, :size] * 255).astype(np.uint8)
        Image.fromarray(img).save(root / "cells" / "images" / f"c{i}.png")
        if not (missing_mask and i == n - 1):
            Image.fromarray((b.y[i, :size, :size] * 255).astype(np.uint8)).save(root / "cells" / "masks" / f"c{i}.png")
    return root / "cells"


def _write(path: Path, raw: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(raw))
    return path


def test_cli_train_predict_and_cv_on_a_folder(tmp_path):
    folder = _folder(tmp_path, n=4, size=64)
    cfg = _write(tmp_path / "seg.yaml", tiny({"source": str(folder)}))
    runner = CliRunner()
    done = runner.invoke(app, ["train", str(cfg), "--runs-dir", str(tmp_path / "runs")])
    assert done.exit_code == 0, done.output
    assert "test_dice" in done.output and "test_otsu_dice" in done.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    image = folder / "images" / "c0.png"
    done = runner.invoke(app, ["predict", str(run_dir), str(image), "-o", str(tmp_path / "mask.png")])
    assert done.exit_code == 0, done.output
    written = np.array(Image.open(tmp_path / "mask.png"))
    (expected,) = load_artifact(run_dir / "model").segment([str(image)])
    assert np.array_equal(written, expected * 255) and "area_foreground" in done.output
    report = tmp_path / "cv.html"
    done = runner.invoke(app, ["cv", str(cfg), "-k", "2", "--report", str(report)])
    assert done.exit_code == 0, done.output
    assert "dice" in done.output and "fold 1" in report.read_text()


def test_a_bad_folder_exits_2_and_leaves_no_run(tmp_path):
    folder = _folder(tmp_path, n=2, size=32, missing_mask=True)
    cfg = _write(tmp_path / "seg.yaml", tiny({"source": str(folder)}))
    done = CliRunner().invoke(app, ["train", str(cfg), "--runs-dir", str(tmp_path / "runs")])
    assert done.exit_code == 2
    assert "has no mask" in done.output and "c1.png" in done.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_self_supervised_pretraining_starts_the_run_and_never_sees_held_out_pixels(tmp_path, monkeypatch):
    from dlforge.pipeline import seg_limited

    seen = {}
    real = seg_limited.pretrain_unet

    def spy(spec, images, **kw):
        seen.update(images=images, train=kw["train"])
        return real(spec, images, **kw)

    monkeypatch.setattr(seg_limited, "pretrain_unet", spy)
    folder = _folder(tmp_path, n=3, size=64)
    unlabelled = tmp_path / "more"
    unlabelled.mkdir()
    Image.fromarray(np.full((40, 48), 7, np.uint8)).save(unlabelled / "x.png")
    raw = tiny({"source": str(folder), "unlabelled": str(unlabelled)})
    raw["train"]["ssl"] = {"method": "inpaint", "epochs": 1}
    outcome = train_run(validate_config(raw), runs_dir=tmp_path / "runs")
    meta = json.loads((outcome.artifact_dir / "model.json").read_text())
    assert meta["training"]["pretrained"]["source"] == "self-supervised (inpaint)"
    assert sorted(meta["training"]["pretrained"]["skipped"]) == ["head.bias", "head.weight"]
    split = json.loads((outcome.run_dir / "split.json").read_text())
    held = {b["image"] for b in split["test"] + split["val"]}
    assert len(seen["images"]) == 4 and seen["images"][3].shape == (1, 40, 48)  # 3 labelled + 1 unlabelled
    assert all(not seen["train"][i].any() for i in held) and seen["train"][3].all()


def test_ssl_is_refused_outside_segmentation():
    from dlforge.pipeline.fit_options import configured_model

    cfg = validate_config({"data": {"source": "iris"}, "model": {"arch": "mlp"}, "train": {"ssl": {}}})
    with pytest.raises(ConfigError, match="train.ssl pretrains segmentation"):
        configured_model(cfg, load_data(cfg))


def test_evaluate_rescores_the_run_and_scores_a_new_folder(run, tmp_path):
    from dlforge.pipeline import evaluate_path

    again, report = evaluate_path(run.run_dir)
    assert again.metrics["dice"] == pytest.approx(run.metrics["test_dice"], abs=1e-12)
    assert report.name == "report.html" and again.metrics["n"] == 1
    folder = _folder(tmp_path, n=3, size=64)
    scored, written = evaluate_path(run.run_dir, data=str(folder))
    assert scored.metrics["n"] == 3 and written.parent.parent.name == "evaluations"
    record = json.loads((written.parent / "evaluation.json").read_text())
    art = load_artifact(run.run_dir / "model")
    (mask,) = art.segment([folder / "images" / "c0.png"])
    truth = np.array(Image.open(folder / "masks" / "c0.png")) // 255
    assert record["per_image"][0]["dice"] == pytest.approx(segmentation_scores(mask[None], truth[None], 2)["dice"])


def _tiff(path: Path, volume: np.ndarray) -> None:
    pages = [Image.fromarray(page) for page in volume]  # (D, H, W): one page per slice
    pages[0].save(path, save_all=True, append_images=pages[1:])


def test_3d_stacks_train_score_and_predict(tmp_path):
    from dlforge.data.segmentation_synthetic import synthetic_nuclei

    b = synthetic_nuclei(4, size=(8, 32, 32), radius=(3, 5), seed=0)
    (tmp_path / "vol" / "images").mkdir(parents=True)
    (tmp_path / "vol" / "masks").mkdir()
    for i in range(4):
        _tiff(tmp_path / "vol" / "images" / f"v{i}.tif", (b.x[i, 0] * 255).astype(np.uint8))
        _tiff(tmp_path / "vol" / "masks" / f"v{i}.tif", b.y[i].astype(np.uint8))
    raw = tiny({"source": str(tmp_path / "vol"), "patch": [8, 16, 16], "gap": 2})
    outcome = train_run(validate_config(raw), runs_dir=tmp_path / "runs")
    assert outcome.prepared.input_shape == (1, 8, 16, 16) and "test_dice" in outcome.metrics
    (mask,) = load_artifact(outcome.artifact_dir).segment([tmp_path / "vol" / "images" / "v0.tif"])
    assert mask.shape == (8, 32, 32)


def test_the_chosen_patch_fits_a_thin_training_band():
    """One 3D volume of 31x61x57 (stardist's): the band split leaves 27 training rows, so the
    patch chosen from the objects (48 rows) is cut to 24 instead of failing."""
    import doctest

    from dlforge.pipeline import seg_data

    assert doctest.testmod(seg_data).failed == 0
    train = np.zeros((1, 31, 61, 57), bool)
    train[0, :, :27] = True
    assert seg_data.fit_to_region((24, 48, 40), train, 8) == (24, 24, 40)
