"""MNIST-style IDX files: round trips, folders of several sets, damaged files."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from dlforge.data import load_idx, write_idx
from dlforge.errors import DataError


def _images(n: int, seed: int = 0, size: tuple[int, int] = (4, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *size), dtype=np.uint8)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_round_trip_plain_and_gzip(tmp_path, suffix):
    images, labels = _images(6), np.array([7, 3, 7, 9, 3, 3], dtype=np.uint8)
    images_path = tmp_path / f"train-images-idx3-ubyte{suffix}"
    write_idx(images, labels, images_path, tmp_path / f"train-labels-idx1-ubyte{suffix}")
    if suffix:
        assert gzip.open(images_path).read(4) == b"\x00\x00\x08\x03"
    for source in (images_path, tmp_path):  # the images file, or the folder holding it
        bundle = load_idx(source)
        assert bundle.x.shape == (6, 1, 4, 3) and bundle.x.dtype == np.float32
        np.testing.assert_array_equal(bundle.x[:, 0], images.astype(np.float32) / 255)
        assert bundle.class_names == ["3", "7", "9"]  # labels map to 0..K-1 in sorted order
        np.testing.assert_array_equal(bundle.y, [1, 0, 1, 2, 0, 0])
        assert bundle.encoding == {"kind": "image", "size": [4, 3], "mode": "L",
                                   "scale": 1 / 255}
    assert load_idx(images_path).name == "train"


def test_header_is_big_endian_idx(tmp_path):
    write_idx(_images(2), np.array([0, 1]), tmp_path / "a-images-idx3-ubyte",
              tmp_path / "a-labels-idx1-ubyte")
    raw = (tmp_path / "a-images-idx3-ubyte").read_bytes()
    assert struct.unpack(">IIII", raw[:16]) == (0x803, 2, 4, 3) and len(raw) == 16 + 2 * 12
    labels = (tmp_path / "a-labels-idx1-ubyte").read_bytes()
    assert struct.unpack(">II", labels[:8]) == (0x801, 2) and labels[8:] == b"\x00\x01"


def test_folder_with_two_sets_concatenates_them_in_name_order(tmp_path):
    first, second = _images(3, seed=1), _images(2, seed=2)
    write_idx(first, np.array([0, 1, 0]), tmp_path / "t10k-images-idx3-ubyte.gz",
              tmp_path / "t10k-labels-idx1-ubyte.gz")
    write_idx(second, np.array([1, 1]), tmp_path / "train-images-idx3-ubyte",
              tmp_path / "train-labels-idx1-ubyte")
    bundle = load_idx(tmp_path)
    np.testing.assert_array_equal(bundle.x[:, 0] * 255, np.concatenate([first, second]))
    np.testing.assert_array_equal(bundle.y, [0, 1, 0, 1, 1])


def test_swapped_files_fail_on_the_magic_number(tmp_path):
    images_path = tmp_path / "x-images-idx3-ubyte"
    write_idx(_images(2), np.array([0, 1]), images_path, tmp_path / "x-labels-idx1-ubyte")
    raw = images_path.read_bytes()
    images_path.write_bytes(b"\x00\x00\x08\x01" + raw[4:])
    with pytest.raises(DataError) as err:
        load_idx(images_path)
    assert "0x00000801" in err.value.message and "0x00000803" in err.value.message
    assert "x-images-idx3-ubyte" in err.value.message


def test_count_mismatch_names_both_counts(tmp_path):
    write_idx(_images(3), np.array([0, 1, 1]), tmp_path / "x-images-idx3-ubyte",
              tmp_path / "x-labels-idx1-ubyte")
    write_idx(_images(2), np.array([0, 1]), tmp_path / "y-images-idx3-ubyte",
              tmp_path / "x-labels-idx1-ubyte")  # overwrite the labels with only two
    with pytest.raises(DataError, match="3 images but .* 2 labels"):
        load_idx(tmp_path / "x-images-idx3-ubyte")


def test_truncated_file_is_refused(tmp_path):
    images_path = tmp_path / "x-images-idx3-ubyte"
    write_idx(_images(2), np.array([0, 1]), images_path, tmp_path / "x-labels-idx1-ubyte")
    images_path.write_bytes(images_path.read_bytes()[:-5])
    with pytest.raises(DataError, match="19 data bytes but its header promises 2x4x3 = 24"):
        load_idx(images_path)


def test_missing_labels_file_is_named(tmp_path):
    write_idx(_images(2), np.array([0, 1]), tmp_path / "x-images-idx3-ubyte.gz",
              tmp_path / "elsewhere.gz")
    with pytest.raises(DataError) as err:
        load_idx(tmp_path / "x-images-idx3-ubyte.gz")
    assert "x-labels-idx1-ubyte.gz" in err.value.hint


def test_corrupt_gzip_is_a_data_error(tmp_path):
    (tmp_path / "x-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    (tmp_path / "x-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read"):
        load_idx(tmp_path)


def test_write_idx_refuses_values_outside_bytes(tmp_path):
    with pytest.raises(DataError, match="0..255"):
        write_idx(np.full((1, 2, 2), 300), np.array([0]), tmp_path / "a", tmp_path / "b")
    with pytest.raises(DataError, match="whole numbers"):
        write_idx(np.full((1, 2, 2), 0.5), np.array([0]), tmp_path / "a", tmp_path / "b")
