"""dlforge's U-Net against MONAI's DynUNet and Otsu on the nuclei image, and its sliding windows against MONAI's.

One command: ``python benchmarks/segmentation.py [--epochs 10] [--patches 128] [--batch-size 8]
[--device cpu] [--threads 2] [--quick]``. The last line printed is one JSON object.

1. **Cross-validation.** :func:`dlforge.pipeline.seg_cv.cross_validate_segmentation` on the
   built-in ``nuclei`` image (512x512, DSB 2018), 4-fold spatial CV (the quadrants, a 16-pixel
   gap), twice with the same config (the recipe's patch, ``dice_ce``, Adam, the same seed, epochs
   and patches per epoch): once with dlforge's default U-Net, once with ``model_fn`` building
   MONAI's ``DynUNet`` of the same widths. DynUNet, not MONAI's ``UNet``, because it is the
   same network: nnU-Net's two conv-InstanceNorm-LeakyReLU blocks per level, a stride-2 conv
   to go down, a 2x2 transposed conv to go up, a 1x1 head; with ``trans_bias=True`` it has
   exactly dlforge's 482,466 parameters. MONAI's ``UNet`` has one conv per level (or residual
   units) and PReLU, a different network. So the only difference between the arms is the
   network's code and its initial weights. The Otsu threshold is scored on the same regions
   (``otsu_dice``, ``otsu_ap50`` of the CV result). Seconds per epoch are the training time
   (first to last training forward of each fold) over the epochs.
2. **Sliding windows.** Seconds and peak memory (growth of the peak resident set, VmHWM of
   /proc/self/status, in a fresh interpreter, after a warm-up; not ``ru_maxrss``, which a
   child process starts at its parent's peak: Linux carries it over at exec) of one inference of a fresh dlforge U-Net, window 128,
   overlap 0.5, Gaussian, batch 8: dlforge's ``dlforge predict`` path
   (:func:`dlforge.registry.segment.predict_label_maps`: label map, post-processing) against
   ``monai.inferers.sliding_window_inference`` (its blended float32 map, no argmax: MONAI's
   cheapest call, the key ``swi_time_ratio_vs_monai``; and with the argmax that makes it a
   mask like dlforge's, ``swi_time_ratio_vs_monai_mask``). Images: the nuclei 512x512, and a 4096x4096 made by tiling it 8x8. On the
   4096 image the U-Net has widths (4, 8, 16, 32): 3969 windows of the default U-Net take
   about 4 minutes per arm on two idle CPU cores; the accumulators, which are what the memory
   comparison is about, do not depend on the widths.

The CV budget defaults (10 epochs of 128 patches, batch 8) fit the whole run into about 7
minutes on two idle CPU cores; the recipe's own 30 epochs of 16 batches need a GPU
(``--device cuda --epochs 30 --patches 512 --batch-size 32``). Times on a shared machine
swing by 5-20x when other jobs compete for the cores (``--threads 1`` suffers less); on busy
cores ``--epochs 3 --patches 32 --batch-size 4`` takes about 12 minutes (Dice 0.876).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dlforge.config import RunConfig, validate_config
from dlforge.pipeline.fit_options import configured_model
from dlforge.pipeline.seg_cv import cross_validate_segmentation
from dlforge.pipeline.seg_data import SegPrepared

EPOCHS, PATCHES, BATCH, K = 10, 128, 8, 4
WIDTHS = (16, 32, 64, 128)  # dlforge's default U-Net (models/unet.py)
SWI_WINDOW, SWI_OVERLAP, SWI_BATCH = 128, 0.5, 8
SWI_WIDTHS_LARGE = (4, 8, 16, 32)  # the 4096x4096 image: see the module doc
SWI_KINDS = ("dlforge", "monai", "monai_mask")  # monai: its blended map; monai_mask: + argmax, a mask as dlforge's


def recipe(args: argparse.Namespace) -> dict[str, Any]:
    """The run config both arms train with: the default recipe, with the benchmark's budget."""
    train = {"epochs": args.epochs, "batch_size": args.batch_size, "device": args.device}
    if args.quick:  # a smoke run: a few small synthetic images, a narrow U-Net (DynUNet needs 3 levels)
        return {"data": {"source": "synthetic_nuclei", "n_samples": 4, "patches_per_epoch": args.patches},
                "model": {"arch": "unet", "widths": [4, 8, 16]}, "train": train, "seed": 0}
    return {"data": {"source": "nuclei", "patches_per_epoch": args.patches}, "model": {"arch": "unet"},
            "train": train, "seed": 0}


class EpochClock:
    """Training seconds of the models it watches: first to last training-mode forward of each."""

    def __init__(self) -> None:
        self.spans: list[list[float]] = []

    def watch(self, model: nn.Module) -> nn.Module:
        span: list[float] = []
        self.spans.append(span)

        def pre(module: nn.Module, _args: Any) -> None:
            if module.training and not span:
                span.append(time.perf_counter())

        def post(module: nn.Module, _args: Any, _out: Any) -> None:
            if module.training:
                span[1:] = [time.perf_counter()]

        model.register_forward_pre_hook(pre)
        model.register_forward_hook(post)
        return model

    def seconds(self) -> float:
        return sum(s[-1] - s[0] for s in self.spans if s)


def dynunet(prepared: SegPrepared, widths: tuple[int, ...]) -> nn.Module:
    """MONAI's DynUNet built as dlforge's U-Net: same levels, widths, norm, activation, up/down."""
    from monai.networks.nets import DynUNet

    levels = len(widths)
    return DynUNet(spatial_dims=len(prepared.patch), in_channels=prepared.input_shape[0],
                   out_channels=prepared.num_outputs, kernel_size=[3] * levels, strides=[1] + [2] * (levels - 1),
                   upsample_kernel_size=[2] * (levels - 1), filters=list(widths), res_block=False,
                   norm_name=("INSTANCE", {"affine": True}), act_name=("leakyrelu", {"negative_slope": 0.01}),
                   deep_supervision=False, trans_bias=True)


def cv_arm(cfg: RunConfig, k: int, build: Callable[[SegPrepared], nn.Module]) -> dict[str, Any]:
    """Cross-validate ``cfg`` with models from ``build``; mean scores and seconds per epoch."""
    clock = EpochClock()
    result = cross_validate_segmentation(cfg, k=k, model_fn=lambda prepared: clock.watch(build(prepared)))
    row = {key: result.mean[key] for key in ("dice", "dice_raw", "hd95", "ap50", "dsb", "otsu_dice", "otsu_ap50")}
    row["fold_dice"] = [f["dice"] for f in result.folds]
    row["sec_per_epoch"] = clock.seconds() / (k * cfg.train.epochs)
    return row


_SWI_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np, torch
    from dlforge.config import validate_config
    from dlforge.models.unet import UNet, UNetConfig
    from dlforge.pipeline.seg_data import load_seg_bundle
    def peak_kib():  # this process's peak resident memory; ru_maxrss would start at the parent's peak
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    args = json.loads(sys.argv[1])
    torch.set_num_threads(args["threads"])
    torch.manual_seed(0)
    window, overlap, batch = args["window"], args["overlap"], args["batch_size"]
    model = UNet(UNetConfig(input_shape=(1, window, window), num_outputs=2, widths=tuple(args["widths"]))).eval()
    if args["kind"].startswith("monai"):
        from monai.inferers import sliding_window_inference
        def run(image):  # (1, H, W) -> (1, 2, H, W) float32 blended logits, or their argmax (a mask)
            with torch.no_grad():
                out = sliding_window_inference(image[None], (window, window), batch, model, overlap=overlap,
                                               mode="gaussian", padding_mode="constant")
                return out.argmax(1) if args["kind"] == "monai_mask" else out
    else:
        from dlforge.registry.segment import predict_label_maps
        def run(image):  # what `dlforge predict` runs: (1, H, W) -> (H, W) labels, post-processed
            return predict_label_maps(model, [image], {"encoding": {"window": [window, window]}},
                                      overlap=overlap, batch_size=batch)[0]
    if args["source"] == "synthetic_nuclei":
        from dlforge.data.segmentation_synthetic import synthetic_nuclei
        tile = synthetic_nuclei(1, (128, 128), seed=0).x[0, 0]
    else:
        tile = load_seg_bundle(validate_config({"data": {"source": args["source"]}, "model": {"arch": "unet"}})).x[0, 0]
    tile, size = torch.from_numpy(np.asarray(tile, dtype=np.float32)), args["size"]
    image = torch.empty(1, size, size)  # (1, size, size), filled in place: no temporary copy raises the peak
    for r in range(0, size, tile.shape[0]):
        for c in range(0, size, tile.shape[1]):
            part = image[0, r : r + tile.shape[0], c : c + tile.shape[1]]
            part.copy_(tile[: part.shape[0], : part.shape[1]])
    run(image[:, : 2 * window, : 2 * window].clone())  # warm up kernels and the allocator
    before = peak_kib()
    start = time.perf_counter()
    out = run(image)
    seconds = time.perf_counter() - start
    peak = (peak_kib() - before) / 1024
    print(json.dumps({"seconds": seconds, "peak_mib": peak, "shape": list(out.shape)}))
    """
)


def swi_measure(kind: str, size: int, widths: tuple[int, ...], *, source: str = "nuclei",
                threads: int = 2) -> dict[str, float]:
    """Seconds and peak MiB (VmHWM growth) of one sliding-window inference, in a fresh process.

    Example:
        >>> swi_measure("dlforge", 512, WIDTHS)  # doctest: +SKIP
        {'seconds': 11.2, 'peak_mib': 14.1}
    """
    args = {"kind": kind, "size": size, "widths": list(widths), "window": SWI_WINDOW, "overlap": SWI_OVERLAP,
            "batch_size": SWI_BATCH, "threads": threads, "source": source}
    done = subprocess.run([sys.executable, "-c", _SWI_SCRIPT, json.dumps(args)], capture_output=True, text=True,
                          timeout=1800, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} sliding-window inference of {size}x{size} failed:\n{done.stderr[-2000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    return {"seconds": round(row["seconds"], 3), "peak_mib": round(row["peak_mib"], 1)}


def ratio(a: float, b: float) -> float | None:
    """a / b, or None when b is too small to divide by (a peak of under 1 MiB is noise)."""
    return round(a / b, 3) if b >= 1.0 else None


def finite(value: Any) -> Any:
    """JSON has no NaN or infinity: those become null."""
    if isinstance(value, float):
        return round(value, 4) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--patches", type=int, default=PATCHES, help="data.patches_per_epoch")
    parser.add_argument("--batch-size", type=int, default=BATCH)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (training only; inference runs on CPU)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 folds of 4 synthetic images, 1 epoch")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.patches, args.batch_size = 1, 4, 2
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    cfg = validate_config(recipe(args))
    k = 2 if args.quick else K
    widths = tuple(cfg.model.get("widths") or WIDTHS)

    def default_unet(prepared: SegPrepared) -> nn.Module:
        return configured_model(cfg, prepared)[0]  # what the arm without model_fn builds

    arms = {"dlforge": cv_arm(cfg, k, default_unet),
            "monai": cv_arm(cfg, k, lambda prepared: dynunet(prepared, widths))}
    otsu = {"dice": arms["dlforge"]["otsu_dice"], "ap50": arms["dlforge"]["otsu_ap50"]}
    print(f"{k}-fold spatial CV on {cfg.data.source}: {args.epochs} epochs x {args.patches} patches, "
          f"batch {args.batch_size}, loss dice_ce, seed {cfg.seed}")
    print(f"{'arm':<9} {'Dice':>7} {'raw':>7} {'HD95':>7} {'AP@0.5':>7} {'s/epoch':>8}  fold Dice")
    for name, a in arms.items():
        folds = " ".join(f"{d:.3f}" for d in a["fold_dice"])
        print(f"{name:<9} {a['dice']:7.4f} {a['dice_raw']:7.4f} {a['hd95']:7.2f} {a['ap50']:7.4f} "
              f"{a['sec_per_epoch']:8.2f}  {folds}")
    print(f"{'otsu':<9} {otsu['dice']:7.4f} {'':>7} {'':>7} {otsu['ap50']:7.4f}")

    # --quick: one small image (each measurement starts an interpreter)
    sizes = {"large": (256, widths)} if args.quick else {"small": (512, WIDTHS), "large": (4096, SWI_WIDTHS_LARGE)}
    source = "synthetic_nuclei" if args.quick else "nuclei"
    swi: dict[str, dict[str, Any]] = {}
    print(f"sliding windows: window {SWI_WINDOW}, overlap {SWI_OVERLAP}, gaussian, batch {SWI_BATCH}")
    for label, (size, w) in sizes.items():
        swi[label] = {"size": size, "widths": list(w)}
        for kind in SWI_KINDS:
            swi[label][kind] = m = swi_measure(kind, size, w, source=source, threads=args.threads)
            print(f"  {size}x{size} widths {w}: {kind:<16} {m['seconds']:8.2f} s {m['peak_mib']:8.1f} MiB")
    time_ratios = [swi[s]["dlforge"]["seconds"] / max(swi[s]["monai"]["seconds"], 1e-6) for s in swi]
    d, m = arms["dlforge"], arms["monai"]
    figures = {
        "cv_dice": d["dice"],
        "cv_dice_minus_monai": d["dice"] - m["dice"],
        "cv_dice_minus_otsu": d["dice"] - otsu["dice"],
        "ap50_minus_otsu": d["ap50"] - otsu["ap50"],
        "swi_time_ratio_vs_monai": max(time_ratios),  # the worse of the two sizes, against MONAI's map alone
        "swi_time_ratio_vs_monai_mask": max(swi[s]["dlforge"]["seconds"] / max(swi[s]["monai_mask"]["seconds"], 1e-6)
                                            for s in swi),  # both ending in a label map
        "swi_peak_memory_ratio_vs_monai_4096": ratio(swi["large"]["dlforge"]["peak_mib"],
                                                     swi["large"]["monai"]["peak_mib"]),
        "arms": arms, "otsu": otsu, "swi": swi,
        "recipe": {"source": cfg.data.source, "k": k, "epochs": args.epochs, "patches_per_epoch": args.patches,
                   "batch_size": args.batch_size, "device": args.device, "quick": args.quick},
        "seconds": time.perf_counter() - start,
    }
    print(json.dumps(finite(figures)))


if __name__ == "__main__":
    main()
