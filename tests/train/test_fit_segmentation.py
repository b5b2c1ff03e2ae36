"""fit on segmentation outputs: a U-Net learns a toy square-vs-background task.

Logits are (B, C, H, W) and masks (B, H, W); fit's per-pixel accuracy, the gradient
monitor, the NaN guard and the health checks must all accept them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from dlforge.models import build
from dlforge.train import fit
from dlforge.train.engine import count_correct
from dlforge.train.seg_losses import supervised_loss
from dlforge.train.gradients import GradientMonitor, NanGuard
from dlforge.train.health import dead_relu_fraction, diagnose


def squares(n: int, size: int = 16, seed: int = 0) -> TensorDataset:
    """Noisy images, each with one bright 6x6 square; the mask marks the square (class 1)."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, size, size, dtype=torch.long)  # (B, H, W)
    for i in range(n):
        r, c = torch.randint(0, size - 6, (2,), generator=g).tolist()
        masks[i, r : r + 6, c : c + 6] = 1
    images = masks[:, None].float() + 0.5 * torch.randn(n, 1, size, size, generator=g)  # (B, 1, H, W)
    return TensorDataset(images, masks)


def unet(**options):
    torch.manual_seed(0)
    return build({"arch": "unet", "widths": [8, 16], **options}, input_shape=(1, 16, 16), num_outputs=2)


def test_fit_trains_a_unet_and_loss_decreases():
    train, val = squares(16, seed=0), squares(8, seed=1)
    # The default loss: cross-entropy over every pixel of the (B, C, H, W) logits.
    result = fit(unet(), train, val, epochs=4, batch_size=4, optim={"name": "adam", "lr": 0.01},
                 seed=0, device="cpu", callbacks=[GradientMonitor(), NanGuard()])
    first, last = result.epochs[0], result.epochs[-1]
    assert last["train_loss"] < 0.8 * first["train_loss"]
    assert last["val_loss"] < first["val_loss"] - 0.05
    # Per-pixel accuracy: the background alone is 1 - 36/256 = 86%, so above that is learning.
    assert last["val_accuracy"] > 0.9
    assert result.nan_report is None
    assert any(k.startswith("grad_norm/") for r in result.history if r["type"] == "step" for k in r)
    assert all(d.severity != "error" for d in diagnose(result.history))


def test_count_correct_is_per_pixel_and_skips_ignored_pixels():
    out = torch.zeros(1, 2, 2, 3)  # (B, C, H, W): class 1 wins on the first row only
    out[0, 1, 0] = 1.0
    target = torch.tensor([[[1, 1, -100], [0, 1, 0]]])  # (B, H, W), one ignored pixel
    hits, counted = count_correct(out, target)
    assert (int(hits), int(counted)) == (4, 5)
    # 3D: (B, C, D, H, W) with soft targets of the same shape count their argmax class.
    out3 = torch.randn(2, 3, 2, 4, 4)
    hits, counted = count_correct(out3, out3.softmax(dim=1))
    assert (int(hits), int(counted)) == (64, 64)


def test_dead_relu_fraction_runs_on_a_unet():
    # The U-Net uses LeakyReLU, which has no dead units: nothing to report, and no crash.
    assert dead_relu_fraction(unet(), torch.randn(2, 1, 16, 16)) == {}


def test_supervised_loss_weights_each_output_against_the_sliced_mask():
    g = torch.Generator().manual_seed(0)
    out = tuple(torch.randn(2, 3, 8 // s, 8 // s, generator=g) for s in (1, 2, 4))  # (B, C, H/s, W/s)
    mask = torch.randint(0, 3, (2, 8, 8), generator=g)  # (B, H, W)
    by_hand = (4 * F.cross_entropy(out[0], mask) + 2 * F.cross_entropy(out[1], mask[:, ::2, ::2])
               + F.cross_entropy(out[2], mask[:, ::4, ::4])) / 7
    torch.testing.assert_close(supervised_loss(F.cross_entropy, out, mask), by_hand)
    assert torch.equal(supervised_loss(F.cross_entropy, out[0], mask), F.cross_entropy(out[0], mask))


def test_fit_trains_a_deep_supervised_unet():
    train, val = squares(16, seed=0), squares(8, seed=1)
    model = unet(widths=[8, 16, 32], deep_supervision=True)
    result = fit(model, train, val, epochs=4, batch_size=4, optim={"name": "adam", "lr": 0.01},
                 loss=F.cross_entropy, seed=0, device="cpu")
    first, last = result.epochs[0], result.epochs[-1]
    assert last["train_loss"] < 0.8 * first["train_loss"]
    assert last["val_loss"] < first["val_loss"] - 0.05 and last["val_accuracy"] > 0.9
