"""Image folders: one sub-folder per class, grayscale or RGB, optional resizing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dlforge.data import load_image_folder
from dlforge.errors import DataError


def test_grayscale_folder_keeps_exact_pixels(write_images, random_pixels):
    cats, dogs = random_pixels((6, 5), 2, seed=1), random_pixels((6, 5), 3, seed=2)
    bundle = load_image_folder(write_images({"dog": dogs, "cat": cats}))
    assert bundle.class_names == ["cat", "dog"]  # sorted folder names
    assert bundle.x.shape == (5, 1, 6, 5) and bundle.x.dtype == np.float32
    expected = np.stack(cats + dogs)[:, None].astype(np.float32) / 255
    np.testing.assert_array_equal(bundle.x, expected)
    np.testing.assert_array_equal(bundle.y, [0, 0, 1, 1, 1])
    assert bundle.task == "classification" and bundle.kind == "image"
    assert bundle.encoding == {"kind": "image", "size": [6, 5], "mode": "L", "scale": 1 / 255}
    assert bundle.name == "images" and bundle.feature_names is None


def test_rgb_folder_is_channels_first(write_images, random_pixels):
    red = random_pixels((4, 7, 3), 2, seed=3)
    bundle = load_image_folder(write_images({"a": red, "b": red}), color="rgb")
    assert bundle.x.shape == (4, 3, 4, 7) and bundle.encoding["mode"] == "RGB"
    np.testing.assert_array_equal(bundle.x[0], red[0].transpose(2, 0, 1) / np.float32(255))
    assert 0.0 <= bundle.x.min() and bundle.x.max() <= 1.0


def test_rgb_images_turn_grayscale_with_pillow_luma_when_asked(write_images, random_pixels):
    rgb = random_pixels((4, 4, 3), 2, seed=4)
    bundle = load_image_folder(write_images({"a": rgb[:1], "b": rgb[1:]}), color="grayscale")
    luma = np.asarray(Image.fromarray(rgb[0]).convert("L"), dtype=np.float32) / 255
    np.testing.assert_array_equal(bundle.x[0, 0], luma)


def test_resize_is_pillow_bilinear_to_h_w(write_images, random_pixels):
    images = random_pixels((10, 20), 2, seed=5)
    bundle = load_image_folder(write_images({"a": images[:1], "b": images[1:]}),
                               image_size=(6, 4))
    assert bundle.x.shape == (2, 1, 6, 4) and bundle.encoding["size"] == [6, 4]
    resized = Image.fromarray(images[0]).resize((4, 6), Image.BILINEAR)  # Pillow takes (W, H)
    np.testing.assert_array_equal(bundle.x[0, 0], np.asarray(resized, np.float32) / 255)


def test_mixed_sizes_name_both_files_and_the_config_key(write_images, random_pixels):
    root = write_images({"a": random_pixels((8, 8), 1), "b": random_pixels((9, 8), 1)})
    with pytest.raises(DataError) as err:
        load_image_folder(root)
    assert "a/000.png" in err.value.message and "b/000.png" in err.value.message
    assert "8x8" in err.value.message and "9x8" in err.value.message
    assert "data.image_size: [H, W]" in err.value.hint
    assert load_image_folder(root, image_size=(8, 8)).x.shape == (2, 1, 8, 8)


def test_suffixes_are_case_insensitive_and_other_files_skipped(write_images, random_pixels):
    root = write_images({"a": random_pixels((5, 5), 2), "b": random_pixels((5, 5), 1)},
                        suffix=".PNG")
    Image.fromarray(random_pixels((5, 5, 3), 1)[0]).save(root / "b" / "x.JPG")
    (root / "b" / "notes.txt").write_text("not an image")
    (root / "a" / ".hidden.png").write_bytes(b"")
    bundle = load_image_folder(root)
    assert len(bundle) == 4 and np.bincount(bundle.y).tolist() == [2, 2]


def test_empty_class_folder_is_named(write_images, random_pixels):
    root = write_images({"a": random_pixels((5, 5), 1), "b": random_pixels((5, 5), 1)})
    (root / "c").mkdir()
    (root / "c" / "readme.txt").write_text("")
    with pytest.raises(DataError, match="class folder .*c holds no images"):
        load_image_folder(root)


def test_folder_without_class_folders_explains_the_layout(tmp_path, random_pixels):
    Image.fromarray(random_pixels((5, 5), 1)[0]).save(tmp_path / "loose.png")
    with pytest.raises(DataError) as err:
        load_image_folder(tmp_path)
    assert "no class sub-folders" in err.value.message and "1 images" in err.value.message
    assert "<class>" in err.value.hint


def test_single_class_folder_is_refused(write_images, random_pixels):
    with pytest.raises(DataError, match="single class folder 'a'"):
        load_image_folder(write_images({"a": random_pixels((5, 5), 2)}))


def test_unreadable_image_is_named(write_images, random_pixels):
    root = write_images({"a": random_pixels((5, 5), 1), "b": random_pixels((5, 5), 1)})
    (root / "b" / "broken.png").write_bytes(b"definitely not a png")
    with pytest.raises(DataError, match="broken.png"):
        load_image_folder(root)


@pytest.mark.parametrize("kwargs, key", [({"color": "cmyk"}, "data.color"),
                                         ({"image_size": (0, 8)}, "data.image_size"),
                                         ({"image_size": 8}, "data.image_size")])
def test_bad_options_name_their_key(write_images, random_pixels, kwargs, key):
    root = write_images({"a": random_pixels((5, 5), 1), "b": random_pixels((5, 5), 1)})
    with pytest.raises(DataError, match=key):
        load_image_folder(root, **kwargs)
