"""Sliding-window inference against MONAI, against whole-image inference, and its memory."""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from dlforge.errors import ConfigError, DataError
from dlforge.models import sliding_window, sliding_window_predict
from dlforge.models.sliding_window import sliding_window_segment


def _conv_net(dims: int, c_in: int = 2, c_out: int = 3, layers: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    chans = [c_in] + [4] * (layers - 1) + [c_out]
    blocks: list[nn.Module] = []
    for a, b in itertools.pairwise(chans):
        blocks += [conv(a, b, 3, padding=1), nn.Tanh()]
    return nn.Sequential(*blocks[:-1]).eval()


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize(
    "shape, window, overlap, batch_size, sigma_scale",
    [
        ((2, 2, 67, 45), (16, 20), 0.5, 4, 0.125),
        ((1, 2, 40, 33), (12, 12), 0.25, 3, 0.3),
        ((2, 2, 9, 21, 14), (6, 8, 8), 0.5, 5, 0.125),
        ((1, 2, 5, 12, 30), (8, 8, 7), 0.6, 2, 0.2),  # depth smaller than the window
    ],
)
def test_equals_monai(shape, window, overlap, batch_size, sigma_scale, blend):
    torch.manual_seed(1)
    image = torch.randn(shape)
    model = _conv_net(len(window))
    ours = sliding_window_predict(model, image, window, overlap=overlap, batch_size=batch_size,
                                  blend=blend, sigma_scale=sigma_scale)
    with torch.no_grad():
        ref = sliding_window_inference(image, window, batch_size, model, overlap=overlap, mode=blend,
                                       sigma_scale=sigma_scale, padding_mode="constant")
    assert ours.shape == ref.shape == (shape[0], 3, *shape[2:])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_tiled_equals_untiled_away_from_window_seams():
    # Three 3x3 convs see 3 pixels around; windows of 32 every 16 pixels have edges on
    # multiples of 16, so pixels at least 3 from those edges see the same context tiled.
    model, radius = _conv_net(2, c_in=1, layers=3), 3
    image = torch.randn(1, 1, 128, 128)
    with torch.no_grad():
        whole = model(image)[0]  # (3, 128, 128)
    tiled = sliding_window_predict(model, image[0], (32, 32), overlap=0.5)  # (3, 128, 128)
    offset = torch.arange(128) % 16
    away = (offset >= radius) & (offset < 16 - radius)  # (128,)
    mask = away[:, None] & away[None, :]  # (128, 128)
    torch.testing.assert_close(tiled[:, mask], whole[:, mask], atol=1e-5, rtol=0)
    # On seams the Gaussian gives a window's edge little weight: close, not exact. Crop a
    # margin of 8: near the image border a window edge is the only view of a pixel, and the
    # clamped weights (1e-3) there no longer favour the window centre.
    constant = sliding_window_predict(model, image[0], (32, 32), overlap=0.5, blend="constant")
    gauss_err = (tiled - whole)[:, 8:-8, 8:-8].abs().max()  # 0.003 observed
    constant_err = (constant - whole)[:, 8:-8, 8:-8].abs().max()  # 0.26 observed
    assert gauss_err < 0.01 and constant_err > 10 * gauss_err, (gauss_err, constant_err)


def test_image_smaller_than_window_is_padded_and_cropped_back():
    model = _conv_net(2, c_in=1)
    image = torch.randn(1, 10, 7)  # (C, H, W) smaller than the window on both axes
    out = sliding_window_predict(model, image, (16, 16))
    with torch.no_grad():
        padded = model(nn.functional.pad(image, (4, 5, 3, 3))[None])[0]  # (3, 16, 16), centred
    assert out.shape == (3, 10, 7)
    torch.testing.assert_close(out, padded[:, 3:13, 4:11], atol=1e-6, rtol=0)


def test_out_memmap_receives_the_result(tmp_path):
    model = _conv_net(3, c_in=1)
    image = torch.randn(1, 12, 20, 20)
    expected = sliding_window_predict(model, image, (8, 8, 8))
    out = np.memmap(tmp_path / "prob.f32", dtype=np.float32, mode="w+", shape=(3, 12, 20, 20))
    result = sliding_window_predict(model, image, (8, 8, 8), out=out)
    out.flush()
    written = np.memmap(tmp_path / "prob.f32", dtype=np.float32, mode="r", shape=(3, 12, 20, 20))
    np.testing.assert_allclose(written, expected.numpy(), atol=1e-6)
    assert result.data_ptr() == torch.from_numpy(out).data_ptr()  # no copy in memory


def test_out_dtype_and_clear_errors():
    model = _conv_net(2, c_in=1)
    image = torch.randn(1, 20, 20)
    assert sliding_window_predict(model, image, (8, 8), out_dtype=torch.float16).dtype == torch.float16
    with pytest.raises(DataError, match="spatial dims"):
        sliding_window_predict(model, torch.randn(20, 20), (8, 8))
    with pytest.raises(ConfigError, match="overlap"):
        sliding_window_predict(model, image, (8, 8), overlap=1.0)
    with pytest.raises(ConfigError, match="blend"):
        sliding_window_predict(model, image, (8, 8), blend="max")
    with pytest.raises(ConfigError, match="out has shape"):
        sliding_window_predict(model, image, (8, 8), out=np.zeros((3, 20, 21), np.float32))
    with pytest.raises(ConfigError, match="outputs of size"):
        sliding_window_predict(nn.Conv2d(1, 2, 3), image, (8, 8))


MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource, torch
    from torch import nn
    from dlforge.models import sliding_window_predict
    torch.set_num_threads(2)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1)).eval()
    image = torch.rand(1, 4096, 4096)
    sliding_window_predict(model, image[:, :300, :300], (256, 256))  # warm up kernels
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = sliding_window_predict(model, image, (256, 256), overlap=0.25, batch_size=4)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(tuple(out.shape), (after - before) / 1024)
    """
)


def test_large_image_predicts_within_stated_peak_memory():
    command = [sys.executable, "-c", MEMORY_SCRIPT]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    shape, extra_mib = result.stdout.strip().rsplit(" ", 1)
    assert shape == "(2, 4096, 4096)"
    # Output (2, 4096, 4096) float32 = 128 MiB, weight map 64 MiB; allow 64 MiB for windows.
    assert float(extra_mib) < 128 + 64 + 64, extra_mib


# ----------------------------------------------------------------------------- sliding_window_segment


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize(
    "shape, window, blend",
    [
        ((2, 67, 45), (16, 20), "gaussian"),  # odd sizes, many bands
        ((2, 10, 7), (16, 16), "gaussian"),  # image smaller than the window
        ((2, 9, 21, 13), (6, 8, 8), "gaussian"),  # 3D, odd sizes
        ((2, 5, 12, 31), (8, 8, 7), "constant"),  # 3D, depth smaller than the window
    ],
)
def test_segment_equals_the_argmax_of_predict(shape, window, blend, overlap):
    torch.manual_seed(2)
    image = torch.randn(shape)
    model = _conv_net(len(window))
    kwargs = {"overlap": overlap, "batch_size": 3, "blend": blend}
    labels = sliding_window_segment(model, image, window, **kwargs)
    expected = sliding_window_predict(model, image, window, **kwargs).argmax(0)  # (*spatial)
    assert labels.shape == shape[1:] and labels.dtype == torch.uint8
    assert torch.equal(labels.long(), expected)
    assert len(expected.unique()) == 3  # every class appears: the comparison is not trivial


def test_segment_holds_one_band_of_rows(monkeypatch):
    seen = []

    class Recording(sliding_window._Band):
        def _finalize(self, end):
            seen.append((tuple(self.acc.shape), tuple(self.weight.shape), end))
            super()._finalize(end)

    monkeypatch.setattr(sliding_window, "_Band", Recording)
    sliding_window_segment(_conv_net(2, c_in=1), torch.randn(1, 400, 64), (16, 16), overlap=0.5)
    assert {s[:2] for s in seen} == {((3, 16, 64), (1, 16, 64))}  # never more than a window's rows
    assert [s[2] for s in seen] == list(range(8, 392, 8)) + [400]  # rows finish as the sweep passes them


def test_segment_probabilities_and_one_channel_models():
    image = torch.randn(1, 50, 37)
    two = _conv_net(2, c_in=1, c_out=2)
    labels, foreground = sliding_window_segment(two, image, (16, 16), probabilities=True)
    scores = sliding_window_predict(two, image, (16, 16))  # (2, 50, 37)
    assert foreground.dtype == torch.float16 and foreground.shape == (50, 37)
    torch.testing.assert_close(foreground.float(), scores.softmax(0)[1], atol=1e-3, rtol=0)
    assert torch.equal(labels.long(), scores.argmax(0))
    one = _conv_net(2, c_in=1, c_out=1)
    labels, foreground = sliding_window_segment(one, image, (16, 16), overlap=0.25, probabilities=True)
    logit = sliding_window_predict(one, image, (16, 16), overlap=0.25)[0]  # (50, 37)
    assert torch.equal(labels, (logit > 0).to(torch.uint8)) and 0 < labels.float().mean() < 1
    torch.testing.assert_close(foreground.float(), logit.sigmoid(), atol=1e-3, rtol=0)


def test_segment_tiled_equals_untiled_away_from_window_seams():
    model, radius = _conv_net(2, c_in=1, layers=3), 3  # three 3x3 convs: a receptive radius of 3
    image = torch.randn(1, 1, 96, 96)
    with torch.no_grad():
        whole = model(image)[0].argmax(0)  # (96, 96)
    tiled = sliding_window_segment(model, image[0], (32, 32), overlap=0.5, blend="constant")
    offset = torch.arange(96) % 16  # window edges fall on multiples of 16
    away = (offset >= radius) & (offset < 16 - radius)  # (96,)
    mask = away[:, None] & away[None, :]  # (96, 96)
    assert torch.equal(tiled.long()[mask], whole[mask])
    assert not torch.equal(tiled.long(), whole)  # on the seams the windows' zero padding shows


def test_segment_clear_errors():
    model = _conv_net(2, c_in=1)
    with pytest.raises(DataError, match="one image"):
        sliding_window_segment(model, torch.randn(2, 1, 20, 20), (8, 8))
    with pytest.raises(ConfigError, match="1 or 2 output channels"):
        sliding_window_segment(model, torch.randn(1, 20, 20), (8, 8), probabilities=True)
    with pytest.raises(ConfigError, match="outputs of size"):
        sliding_window_segment(nn.Conv2d(1, 2, 3), torch.randn(1, 20, 20), (8, 8))
    with pytest.raises(ConfigError, match="overlap"):
        sliding_window_segment(model, torch.randn(1, 20, 20), (8, 8), overlap=1.0)


def test_fit_window_cuts_sides_longer_than_the_image_to_the_models_multiple():
    from dlforge.models.sliding_window import fit_window
    from dlforge.models.unet import build_unet

    unet = build_unet((1, 64, 64), 2, widths=(4, 8, 16))  # sides must divide by 4
    assert fit_window(unet, (64, 64), (50, 300)) == (48, 64)
    assert fit_window(unet, (64, 64), (3, 300)) == (64, 64)  # thinner than one multiple: padded as before
    assert fit_window(torch.nn.Conv2d(1, 2, 3, padding=1), (64, 64), (50, 30)) == (50, 30)


def test_docstring_examples_run():
    import doctest

    from dlforge.models import sliding_window

    result = doctest.testmod(sliding_window, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
