"""Do unlabelled images help a U-Net trained on few labels? Scratch vs SSL pretraining vs self-training.

One command: ``python benchmarks/seg_limited.py [--seeds 3] [--epochs 16] [--device cpu] [--threads 1] [--quick]``.

Three arms, the same U-Net (widths 16/32/64), the same labelled patches and the same
schedule (``SegSchedule``: 48 fixed 64x64 patches a third on foreground, random 90-degree turns,
Adam 2e-3, batch 8, 16 epochs; every arm takes the same number of optimizer steps):

* ``scratch``: trained on the labelled patches only;
* ``ssl``: the U-Net first learns to inpaint the unlabelled images (blocks of 8x8, half
  of them blanked and refilled with noise, MSE, 8 epochs of 96 fresh patches), then every
  tensor but the 1x1 head is copied in and it is fine-tuned like ``scratch``;
* ``self_train``: the ``scratch`` model of the same seed is the teacher; its pixels at
  >= 0.9 softmax confidence on the unlabelled images become labels and a fresh student
  trains on labelled + pseudo-labelled patches (cross-entropy skips the other pixels).

Data:
(a) ``nuclei`` (real, ``load_builtin("nuclei")``; skipped when not installed), normalised by
    its 1st/99.8th percentile: labelled = the top-left 256x256 quadrant, unlabelled = the
    top-right and bottom-left quadrants (their masks unused), test = the bottom-right one.
(b) ``synthetic_nuclei``: 1 labelled and 16 unlabelled 128x128 images (seed 0), 8 test
    images (seed 1).

Foreground Dice on the test images (``segmentation_scores``), mean and spread (sample std)
over the seeds. The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from dlforge.data import load_builtin
from dlforge.data.segmentation_synthetic import synthetic_nuclei
from dlforge.errors import DataError
from dlforge.pipeline.seg_limited import (
    SegSchedule,
    dice_on,
    pretrain_unet,
    self_train,
    train_segmenter,
)

SPEC = {"widths": [16, 32, 64]}
# Sized for ~3-5 min on one CPU thread (each arm under 20 s).
PATCH = (64, 64)
N_PATCHES, EPOCHS, BATCH, LR = 48, 16, 8, 2e-3
PRETRAIN_EPOCHS, PRETRAIN_LENGTH = 8, 96
THRESHOLD = 0.9
ARMS = ("scratch", "ssl", "self_train")


def nuclei_split() -> dict[str, torch.Tensor] | None:
    """Quadrants of the real nuclei image, percentile-normalised; None when not installed."""
    try:
        bundle = load_builtin("nuclei")
    except DataError as err:
        print(f"nuclei skipped: {err}")
        return None
    x, y = np.asarray(bundle.x[0, 0], dtype=np.float32), np.asarray(bundle.y[0])  # (512, 512) each
    lo, hi = np.percentile(x, [1, 99.8])
    x = torch.from_numpy((x - lo) / (hi - lo)).float()
    y = torch.from_numpy(y).long()

    def quad(a: torch.Tensor, r: int, c: int) -> torch.Tensor:
        return a[r * 256:(r + 1) * 256, c * 256:(c + 1) * 256]

    return {
        "x_l": quad(x, 0, 0)[None, None], "y_l": quad(y, 0, 0)[None],  # (1, 1, 256, 256), (1, 256, 256)
        "x_u": torch.stack([quad(x, 0, 1), quad(x, 1, 0)])[:, None],  # (2, 1, 256, 256)
        "x_t": quad(x, 1, 1)[None, None], "y_t": quad(y, 1, 1)[None],
    }


def synthetic_split() -> dict[str, torch.Tensor]:
    train, test = synthetic_nuclei(17, seed=0), synthetic_nuclei(8, seed=1)
    x, y = torch.as_tensor(train.x), torch.as_tensor(train.y)
    return {"x_l": x[:1], "y_l": y[:1], "x_u": x[1:], "x_t": torch.as_tensor(test.x), "y_t": torch.as_tensor(test.y)}


def run_seed(d: dict[str, torch.Tensor], schedule: SegSchedule, seed: int) -> dict[str, float]:
    """Dice of each arm for one seed, and the seconds each took."""
    dice, times = {}, {}
    t = time.perf_counter()
    scratch = train_segmenter(SPEC, d["x_l"], d["y_l"], schedule, seed=seed)
    times["scratch"] = time.perf_counter() - t
    dice["scratch"] = dice_on(scratch, d["x_t"], d["y_t"], PATCH)

    t = time.perf_counter()
    state = pretrain_unet(SPEC, d["x_u"], method="inpaint", epochs=PRETRAIN_EPOCHS, patch=PATCH, batch_size=16,
                          lr=LR, seed=seed, device=schedule.device, length=PRETRAIN_LENGTH)
    ssl = train_segmenter(SPEC, d["x_l"], d["y_l"], schedule, seed=seed, init=state)
    times["ssl"] = time.perf_counter() - t
    dice["ssl"] = dice_on(ssl, d["x_t"], d["y_t"], PATCH)

    t = time.perf_counter()
    result = self_train(SPEC, d["x_l"], d["y_l"], d["x_u"], schedule, threshold=THRESHOLD, seed=seed, teacher=scratch)
    times["self_train"] = time.perf_counter() - t  # the student only: the teacher is the scratch model
    dice["self_train"] = dice_on(result.student, d["x_t"], d["y_t"], PATCH)
    print(f"  seed {seed}: " + "  ".join(f"{a} {dice[a]:.4f} ({times[a]:.0f} s)" for a in ARMS)
          + f"  pseudo-labelled share {result.labelled_share:.3f}", flush=True)
    return {**dice, "pseudo_share": result.labelled_share}


def summarise(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    out = {}
    for arm in (*ARMS, "pseudo_share"):
        values = [r[arm] for r in rows]
        out[arm] = {"mean": round(statistics.fmean(values), 4),
                    "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
                    "values": [round(v, 4) for v in values]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; keep 1 on a shared machine (oversubscribed threads spin: 5x slower)")
    parser.add_argument("--quick", action="store_true", help="2 epochs, 1 seed: a smoke run")
    args = parser.parse_args()
    seeds, epochs = (1, 2) if args.quick else (args.seeds, args.epochs)
    torch.set_num_threads(args.threads)
    schedule = SegSchedule(patch=PATCH, n_patches=N_PATCHES, epochs=epochs, batch_size=BATCH, lr=LR, device=args.device)
    figures: dict[str, object] = {"schedule": {"patch": list(PATCH), "n_patches": N_PATCHES, "epochs": epochs,
                                               "batch_size": BATCH, "lr": LR, "seeds": seeds,
                                               "pretrain_epochs": PRETRAIN_EPOCHS, "pretrain_length": PRETRAIN_LENGTH}}
    start = time.perf_counter()
    for name, split in (("nuclei", nuclei_split()), ("synthetic", synthetic_split())):
        if split is None:
            figures[name] = "skipped: not installed"
            continue
        print(f"{name}: labelled {tuple(split['x_l'].shape)}, unlabelled {tuple(split['x_u'].shape)}, "
              f"test {tuple(split['x_t'].shape)}", flush=True)
        figures[name] = summarise([run_seed(split, schedule, seed) for seed in range(seeds)])
        for arm in ARMS:
            s = figures[name][arm]
            print(f"  {arm:<11} Dice {s['mean']:.4f} +- {s['std']:.4f}")
    figures["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
