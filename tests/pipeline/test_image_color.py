"""Colour mode taken from the images unless data.color says otherwise."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dlforge.config import validate_config
from dlforge.errors import ConfigError
from dlforge.pipeline import load_data, train_run
from dlforge.registry import load_artifact


def write_folder(root, pixels_of, suffix=".png", per_class: int = 6):
    """``root/<class>/<i><suffix>`` from ``pixels_of(class_index, rng)`` -> uint8 (H, W, 3)."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(["cats", "dogs"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(pixels_of(c, rng)).save(root / name / f"{i}{suffix}")
    return root


def colour(c, rng):
    return (rng.random((8, 8, 3)) * 100 + 120 * c).astype(np.uint8)


def gray_as_rgb(c, rng):
    level = (rng.random((8, 8)) * 100 + 120 * c).astype(np.uint8)
    return np.repeat(level[:, :, None], 3, axis=2)  # R = G = B, stored as an RGB file


def config(source, **data):
    return validate_config({"seed": 0, "data": {"source": str(source), "split": {"val": 0.0, "test": 0.25}, **data},
                            "model": {"arch": "cnn", "channels": [4]},
                            "train": {"epochs": 1, "batch_size": 8, "gradient_monitor": False}})


def test_a_colour_folder_trains_rgb_by_default_and_says_so(tmp_path):
    root = write_folder(tmp_path / "pets", colour)
    progress = io.StringIO()
    outcome = train_run(config(root), runs_dir=tmp_path / "runs", progress=progress)
    assert outcome.prepared.input_shape == (3, 8, 8)
    assert load_artifact(outcome.run_dir).preprocessing["encoding"]["mode"] == "RGB"
    notes = [line for line in progress.getvalue().splitlines() if line.startswith("note: data.color")]
    assert len(notes) == 1 and "rgb" in notes[0] and "data.color: grayscale" in notes[0]


def test_an_explicit_grayscale_still_wins(tmp_path):
    prepared = load_data(config(write_folder(tmp_path / "pets", colour), color="grayscale"))
    assert prepared.input_shape == (1, 8, 8) and prepared.preprocessing["encoding"]["mode"] == "L"
    assert not any("data.color" in note for note in prepared.notes)


def test_gray_pictures_saved_as_rgb_jpeg_load_grayscale_with_a_note(tmp_path):
    # JPEG rounding leaves a gray picture's channels a step or two apart: still gray
    prepared = load_data(config(write_folder(tmp_path / "scans", gray_as_rgb, suffix=".jpg")))
    assert prepared.input_shape == (1, 8, 8)
    (note,) = [n for n in prepared.notes if n.startswith("data.color")]
    assert "grayscale" in note and "data.color: rgb" in note
    # the same pixels as an explicit grayscale load: auto-detection changes nothing else
    explicit = load_data(config(tmp_path / "scans", color="grayscale"))
    assert np.array_equal(prepared.train.tensors[0].numpy(), explicit.train.tensors[0].numpy())


def test_one_colour_image_among_gray_ones_makes_the_folder_rgb(tmp_path):
    root = write_folder(tmp_path / "mixed", gray_as_rgb)
    Image.fromarray(colour(1, np.random.default_rng(1))).save(root / "dogs" / "9.png")
    prepared = load_data(config(root))
    assert prepared.input_shape == (3, 8, 8)
    assert any("9.png" in note for note in prepared.notes)  # names the image that decided it


def test_run_configs_written_before_auto_colour_still_load():
    """Older config.yaml files write color: grayscale for every source (it was the default)."""
    old = validate_config({"data": {"source": "sunspots", "color": "grayscale"}, "model": {"arch": "rnn"}})
    assert load_data(old).kind == "sequence"
    with pytest.raises(ConfigError, match="data.color"):
        load_data(validate_config({"data": {"source": "sunspots", "color": "rgb"}, "model": {"arch": "rnn"}}))
