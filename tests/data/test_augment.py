"""Augmentation: every transform keeps shapes and label meaning; mixup/cutmix match their maths."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch.testing import assert_close
from torch.utils.data import TensorDataset

import dlforge.data.augment
import dlforge.data.mix
from dlforge.data import load_builtin, prepare
from dlforge.data.augment import (
    PRESETS, AugmentConfig, BatchAugment, as_augment_config, build_augment, resolve_augment,
)
from dlforge.data.augment_preview import PREVIEW_GAP, PREVIEW_TILE, preview_grid
from dlforge.data.catalog import list_builtin
from dlforge.data.mix import cutmix, mixup
from dlforge.errors import ConfigError
from dlforge.models import build
from dlforge.train import cross_entropy, evaluate_loss, fit

RGB_STATS = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "axis": "channel"}
GRAY_STATS = {"mean": [0.3], "std": [0.4], "axis": "channel"}

# One config per transform, strong enough that it always changes the batch.
TRANSFORMS = {
    "rotation": {"rotation": 30},
    "translate": {"translate": 0.25},
    "scale": {"scale": [0.7, 0.8]},
    "shear": {"shear": 20},
    "resized_crop": {"resized_crop": {"scale": [0.4, 0.6]}},
    "hflip": {"hflip": 1.0},
    "vflip": {"vflip": 1.0},
    "color_jitter": {"color_jitter": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1}},
    "noise": {"noise": 0.1},
    "blur": {"blur": {"sigma": [1.0, 2.0], "p": 1.0}},
    "erasing": {"erasing": {"p": 1.0, "scale": [0.1, 0.3]}},
    "mixup": {"mixup": 0.4},
    "cutmix": {"cutmix": 1.0},
}


def _images(n: int = 16, shape: tuple[int, ...] = (3, 12, 12), stats: dict = RGB_STATS,
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standardised images built from random [0, 1] pixels, as the model sees them."""
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(n, *shape, generator=g, dtype=dtype)  # (N, C, H, W)
    mean = torch.tensor(stats["mean"], dtype=dtype).view(1, -1, 1, 1)
    return (pixels - mean) / torch.tensor(stats["std"], dtype=dtype).view(1, -1, 1, 1)


@pytest.mark.parametrize("name", list(TRANSFORMS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_each_transform_keeps_shape_dtype_device_and_labels(name, dtype):
    torch.manual_seed(0)
    augment = build_augment(TRANSFORMS[name], (3, 12, 12), num_classes=5, stats=RGB_STATS)
    x, y = _images(dtype=dtype), torch.arange(16) % 5
    out_x, out_y = augment(x, y)
    assert out_x.shape == x.shape and out_x.dtype == dtype and out_x.device == x.device
    assert torch.isfinite(out_x).all() and not torch.equal(out_x, x)  # it did something
    if name in ("mixup", "cutmix"):  # soft labels over the 5 classes, each row a distribution
        assert out_y.shape == (16, 5) and out_y.dtype == torch.float32
        assert_close(out_y.sum(dim=1), torch.ones(16))
        assert ((out_y > 0).sum(dim=1) <= 2).all()  # a blend of at most two classes
    else:  # label-preserving: the same class ids come back
        assert out_y is y


@pytest.mark.parametrize("cfg", [
    {"hflip": 0.0}, {"vflip": 0.0}, {"rotation": 0}, {"translate": 0.0}, {"scale": [1, 1]}, {"shear": 0},
    {"blur": {"p": 0.0}}, {"erasing": {"p": 0.0}}, {"color_jitter": {}}, {"noise": 0.0},
    {"mixup": 0.0}, {"cutmix": 1.0, "mix_prob": 0.0}, {"preset": "none"}, {},
])
def test_switched_off_is_the_identity(cfg):
    assert build_augment(cfg, (3, 12, 12), 5, stats=RGB_STATS) is None  # nothing to do: no module at all
    augment = BatchAugment(resolve_augment(cfg, None, kind="image"), (3, 12, 12), 5, RGB_STATS)
    x, y = _images(), torch.arange(16) % 5
    out_x, out_y = augment(x, y)
    assert torch.equal(out_x, x) and out_y is y


def test_eval_mode_is_the_identity():
    everything = {k: v for cfg in TRANSFORMS.values() for k, v in cfg.items()}
    augment = build_augment(everything, (3, 12, 12), 5, stats=RGB_STATS)
    x, y = _images(), torch.arange(16) % 5
    assert not torch.equal(augment(x, y)[0], x)
    out_x, out_y = augment.eval()(x, y)
    assert out_x is x and out_y is y


@pytest.mark.parametrize("shape, stats", [((1, 8, 8), GRAY_STATS), ((3, 9, 9), RGB_STATS)])
def test_rotation_by_90_degrees_matches_rot90(shape, stats):
    augment = build_augment({"rotation": [90, 90]}, shape, 10, stats=stats)
    x = _images(4, shape, stats)
    # kornia's +90 degrees moves the top row to the right column: torch.rot90 with k=-1.
    assert_close(augment(x, torch.zeros(4, dtype=torch.long))[0], torch.rot90(x, -1, dims=(-2, -1)),
                 atol=1e-5, rtol=1e-5)


def test_flips_with_probability_one_match_tensor_flip():
    x, y = _images(), torch.zeros(16, dtype=torch.long)
    assert_close(build_augment({"hflip": 1.0}, (3, 12, 12), 5, stats=RGB_STATS)(x, y)[0], x.flip(-1))
    assert_close(build_augment({"vflip": 1.0}, (3, 12, 12), 5, stats=RGB_STATS)(x, y)[0], x.flip(-2))


def test_erasing_blacks_out_one_rectangle_of_the_requested_area():
    torch.manual_seed(0)
    low, high, size = 0.1, 0.3, 32
    augment = build_augment({"erasing": {"p": 1.0, "scale": [low, high]}}, (1, size, size), 2, stats=GRAY_STATS)
    pixels = torch.ones(64, 1, size, size)
    x = (pixels - 0.3) / 0.4  # standardised white images
    out = augment(x, torch.zeros(64, dtype=torch.long))[0]
    black = torch.isclose(out, torch.full_like(out, (0.0 - 0.3) / 0.4))[:, 0]  # erased pixels are black, not 0
    assert torch.isclose(out[~black[:, None]], x[~black[:, None]]).all()  # everything else untouched
    # kornia rounds the box's sides to whole pixels: allow half a pixel on each side.
    slack = (0.5 * 2 * size + 0.25) / size**2
    for mask in black:
        rows, cols = mask.any(dim=1).sum(), mask.any(dim=0).sum()
        assert mask.sum() == rows * cols  # one solid rectangle
        assert low - slack <= mask.float().mean() <= high + slack


def test_color_jitter_saturation_needs_rgb():
    with pytest.raises(ConfigError, match="RGB"):
        build_augment({"color_jitter": {"saturation": 0.3}}, (1, 8, 8), 10)
    gray = build_augment({"color_jitter": {"brightness": 0.3}}, (1, 8, 8), 10, stats=GRAY_STATS)
    x = _images(8, (1, 8, 8), GRAY_STATS)
    pixels = gray(x, torch.zeros(8, dtype=torch.long))[0] * 0.4 + 0.3
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6  # jittered in [0, 1] pixel space


def test_every_builtin_set_has_a_label_preserving_preset():
    # Segmentation sets augment image and mask together (data.seg_patches), not through PRESETS.
    assert {d["name"] for d in list_builtin() if d["task"] != "segmentation"} <= set(PRESETS)
    digits = resolve_augment({"preset": "auto"}, "digits")
    assert digits.hflip == 0 and digits.vflip == 0  # a mirrored 2 is not a 2
    assert 0 < digits.rotation <= 15  # a 6 turned far enough reads as a 9
    for d in list_builtin():
        if d["kind"] == "tabular":
            assert set(PRESETS[d["name"]]) == {"noise"}
            cfg = resolve_augment({"preset": d["name"]}, d["name"])
            on = {k for k, v in cfg if k not in ("preset", "mix_prob") and v not in (None, 0, 0.0)}
            assert on == {"noise"} and 0 < cfg.noise <= 0.1


def test_tabular_preset_adds_small_noise_and_keeps_targets():
    torch.manual_seed(0)
    augment = build_augment({"preset": "iris"}, (4,), 3)
    x, y = torch.zeros(4000, 4), torch.arange(4000) % 3
    out_x, out_y = augment(x, y)
    assert out_y is y
    assert abs(out_x.std().item() - PRESETS["iris"]["noise"]) < 0.005
    assert abs(out_x.mean().item()) < 0.005


def test_resolve_merges_preset_then_explicit_keys_and_is_stable():
    cfg = resolve_augment({"preset": "digits", "rotation": 0, "erasing": {"p": 0.3}}, "digits")
    assert cfg.rotation == 0 and cfg.translate == 0.1 and cfg.scale == (0.9, 1.1)  # explicit 0 wins
    assert cfg.erasing.p == 0.3
    assert resolve_augment(cfg, "digits") == cfg  # resolving twice changes nothing
    # A config written back with every key (config.yaml) resolves to the same transforms.
    written = AugmentConfig(preset="digits").model_dump(mode="json")
    assert resolve_augment(written, "digits") == resolve_augment({"preset": "digits"}, "digits")


@pytest.mark.parametrize("cfg, name, kind, match", [
    ({"hflip": 0.5}, "iris", None, "needs image data"),
    ({"cutmix": 1.0}, "wine", None, "needs image data"),
    ({"preset": "digits"}, "iris", None, "needs image data"),
    ({"mixup": 0.2}, "imdb", "text", "cannot augment text"),
    ({"preset": "auto"}, "my_photos", "image", "has no preset"),
    ({"noise": 0.1}, "my.csv", None, "cannot tell what kind"),
])
def test_transforms_that_do_not_fit_the_data_are_errors(cfg, name, kind, match):
    with pytest.raises(ConfigError, match=match):
        resolve_augment(cfg, name, kind=kind)


def test_bad_keys_name_their_path():
    with pytest.raises(ConfigError, match=r"data\.augment\.blur\.sigma"):
        as_augment_config({"blur": {"sigma": [2.0, 1.0]}})
    with pytest.raises(ConfigError, match=r"data\.augment\.flip.*allowed keys: preset, rotation"):
        as_augment_config({"flip": 0.5})
    with pytest.raises(ConfigError, match="did you mean 'digits'"):
        as_augment_config({"preset": "digit"})
    with pytest.raises(ConfigError, match="regression"):
        build_augment({"cutmix": 1.0}, (1, 8, 8), None)


def test_mixup_blends_inputs_and_one_hot_labels_by_lambda():
    x, labels = torch.randn(6, 3, 4, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    onehot, perm = torch.eye(4)[labels], torch.tensor([5, 4, 3, 2, 1, 0])
    x_mix, y_mix, lam = mixup(x, onehot, alpha=0.4, lam=0.7, perm=perm)
    assert lam == 0.7
    assert_close(x_mix, 0.7 * x + 0.3 * x[perm])
    assert_close(y_mix, 0.7 * onehot + 0.3 * onehot[perm])
    assert_close(y_mix.sum(dim=1), torch.ones(6))


def test_batch_mixup_draws_from_the_global_generator():
    augment = build_augment({"mixup": 0.4}, (3, 4, 4), 4)
    x, labels = torch.randn(8, 3, 4, 4), torch.arange(8) % 4
    torch.manual_seed(3)
    out_x, out_y = augment(x, labels)
    torch.manual_seed(3)  # the same draws, made by hand: permutation, then lambda
    expected_x, expected_y, lam = mixup(x, torch.eye(4)[labels], 0.4)
    assert 0 <= lam <= 1
    assert_close(out_x, expected_x)
    assert_close(out_y, expected_y)


@pytest.mark.parametrize("lam", [0.1, 0.5, 0.8, 0.97])
def test_cutmix_lambda_is_the_kept_area_fraction(lam):
    torch.manual_seed(int(lam * 100))
    x = torch.arange(1.0, 7.0).view(6, 1, 1, 1).expand(6, 2, 10, 10).clone()  # image i is all i+1
    onehot, perm = torch.eye(6), torch.tensor([1, 2, 3, 4, 5, 0])
    x_mix, y_mix, kept = cutmix(x, onehot, alpha=1.0, lam=lam, perm=perm)
    own = (x_mix == x).float().mean(dim=(1, 2, 3))  # (6,) share of each image left as it was
    pasted = (x_mix == x[perm]).float().mean(dim=(1, 2, 3))
    assert_close(own, torch.full((6,), kept))
    assert_close(own + pasted, torch.ones(6))  # every pixel is from one of the two images
    assert_close(y_mix, kept * onehot + (1 - kept) * onehot[perm])
    side = round(10 * math.sqrt(1 - lam))  # the unclipped box; clipping at a border only keeps more
    assert kept >= 1 - side**2 / 100 - 1e-9


def test_soft_label_cross_entropy_is_the_lambda_weighted_hard_cross_entropy():
    torch.manual_seed(0)
    out, a, b, lam = torch.randn(8, 5), torch.randint(0, 5, (8,)), torch.randint(0, 5, (8,)), 0.3
    soft = lam * torch.eye(5)[a] + (1 - lam) * torch.eye(5)[b]
    reference = lam * torch.nn.functional.cross_entropy(out, a) + (1 - lam) * torch.nn.functional.cross_entropy(out, b)
    assert_close(cross_entropy(out, soft), reference)


def test_mix_prob_and_choice_between_mixup_and_cutmix():
    x = torch.arange(1.0, 9.0).view(8, 1, 1, 1).expand(8, 1, 8, 8).clone()  # integer-valued images
    y = torch.arange(8) % 4
    torch.manual_seed(0)
    half = build_augment({"mixup": 0.4, "mix_prob": 0.5}, (1, 8, 8), 4)
    mixed = sum(torch.is_floating_point(half(x, y)[1]) for _ in range(200))
    assert 70 <= mixed <= 130  # Binomial(200, 0.5): about 100
    both = build_augment({"mixup": 0.4, "cutmix": 1.0}, (1, 8, 8), 4)
    # cutmix pastes whole pixels, so its images stay integer-valued; mixup blends them.
    kinds = [bool((out == out.round()).all()) for out, _ in (both(x, y) for _ in range(40))]
    assert 5 <= sum(kinds) <= 35


def test_regression_targets_mix_linearly():
    torch.manual_seed(1)
    augment = build_augment({"mixup": 0.4}, (10,), None)
    x = torch.randn(32, 10)
    y = x.sum(dim=1, keepdim=True)  # (B, 1) a linear target stays exact under mixup
    out_x, out_y = augment(x, y)
    assert out_y.shape == (32, 1) and out_y.dtype == torch.float32
    assert_close(out_y, out_x.sum(dim=1, keepdim=True))


class _Spy:
    """Counts calls to an augmentation and whether its model was training at the time."""

    def __init__(self, augment, model):
        self.augment, self.model, self.calls, self.soft = augment, model, 0, 0

    def __call__(self, x, y):
        assert self.model.training  # only training batches are augmented
        self.calls += 1
        x, y = self.augment(x, y)
        self.soft += torch.is_floating_point(y)
        return x, y


def test_fit_on_digits_augments_training_batches_only():
    prepared = prepare(load_builtin("digits"), val=0.2, test=0.0)
    train = TensorDataset(*(t[:256] for t in prepared.train.tensors))  # a slice keeps the test quick
    cfg = resolve_augment({"preset": "auto", "mixup": 0.2, "mix_prob": 0.5}, prepared.name, kind=prepared.kind)
    augment = build_augment(cfg, prepared.input_shape, prepared.num_outputs,
                            stats=prepared.preprocessing["standardize"])

    def train_once():
        torch.manual_seed(0)  # the same initial weights
        model = build({"arch": "mlp", "hidden": [32]}, input_shape=prepared.input_shape,
                      num_outputs=prepared.num_outputs)
        spy = _Spy(augment, model)
        result = fit(model, train, prepared.val, epochs=1, batch_size=16, device="cpu", seed=3, augment=spy)
        return model, spy, result

    model, spy, result = train_once()
    assert spy.calls == len(train) // 16  # every training batch, no validation batch
    assert 0 < spy.soft < spy.calls  # mix_prob 0.5: some batches mixed, some not
    epoch = result.history[-1]
    assert math.isfinite(epoch["train_loss"]) and "val_accuracy" in epoch
    # Validation saw the data unaugmented: evaluating again reproduces its loss exactly.
    assert evaluate_loss(model, prepared.val, cross_entropy)["loss"] == pytest.approx(epoch["val_loss"], rel=1e-6)
    again, _, _ = train_once()  # the engine's seed makes augmented training reproducible
    for p, q in zip(model.parameters(), again.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("shape, stats, mode", [((1, 8, 8), GRAY_STATS, "L"), ((3, 16, 16), RGB_STATS, "RGB")])
def test_preview_grid_writes_a_png_of_originals_and_augmented_rows(tmp_path, shape, stats, mode):
    x = _images(10, shape, stats)
    augment = build_augment({"rotation": 20, "hflip": 0.5}, shape, 10, stats=stats)
    augment.eval()  # the preview switches it to training and back
    path = preview_grid(x, augment, tmp_path / "grid.png", n=8, rows=3)
    assert not augment.training
    image = Image.open(path)
    scale = math.ceil(PREVIEW_TILE / shape[-1])
    tile = shape[-1] * scale
    assert image.mode == mode
    assert image.size == (8 * (tile + PREVIEW_GAP) + PREVIEW_GAP, 4 * (tile + PREVIEW_GAP) + PREVIEW_GAP)
    # The first tile is the first original image, un-standardised and upscaled.
    mean, std = torch.tensor(stats["mean"]).view(-1, 1, 1), torch.tensor(stats["std"]).view(-1, 1, 1)
    pixels = ((x[0] * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    first = np.asarray(image)[PREVIEW_GAP:PREVIEW_GAP + tile, PREVIEW_GAP:PREVIEW_GAP + tile]
    expected = pixels.repeat(scale, axis=0).repeat(scale, axis=1)
    assert np.array_equal(first.reshape(expected.shape), expected)


@pytest.mark.parametrize("module", [dlforge.data.augment, dlforge.data.mix])
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
