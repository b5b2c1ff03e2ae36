"""An 8192x8192 image is segmented by sliding windows within a stated peak memory.

The bound, from the parts ``sliding_window_segment`` holds (two classes, window 512,
overlap 0.25, batch of 8 windows):

    input (1, 8192, 8192) float32                               256 MiB
    label map (8192, 8192) uint8                                 64 MiB
    sum band (2, 512, 8192) and weight band (512, 8192) float32,
      each with its spare                                        96 MiB
    finishing 384 rows: blended scores, labels, masks            63 MiB
    8 windows through the net: crops, activations, outputs     ~104 MiB
                                                      total    ~583 MiB

and the test allows 1.5 times that, 870 MiB (485 MiB observed). Holding the whole
blended map instead, as ``sliding_window_predict`` does, needs 256 + 512 (scores) +
256 (weights) + 512 (an int64 argmax) = 1536 MiB, so the bound tells the two apart.
Peak memory is the growth of the peak resident set (VmHWM of /proc/self/status) in a fresh
process from before the image exists. Not ru_maxrss: a child starts with its parent's value
(Linux keeps it across exec), so under a large pytest parent its growth reads as zero.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

BOUND_MIB = 870

SCRIPT = textwrap.dedent(
    """
    import time, torch
    from torch import nn
    from dlforge.models.sliding_window import sliding_window_segment
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    def hwm_kib():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    sliding_window_segment(model, torch.rand(1, 1100, 1100), (512, 512), overlap=0.25, batch_size=8)  # warm up
    before = hwm_kib()
    start = time.perf_counter()
    image = torch.rand(1, 8192, 8192)  # (C, H, W): 256 MiB
    labels = sliding_window_segment(model, image, (512, 512), overlap=0.25, batch_size=8)
    seconds = time.perf_counter() - start
    peak = (hwm_kib() - before) / 1024
    print(tuple(labels.shape), labels.dtype, int(labels.max()), round(seconds, 1), round(peak, 1))
    """
)


@pytest.mark.slow  # about 30 s on two busy cores
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc/self/status (Linux)")
def test_8192_image_is_segmented_within_the_stated_peak_memory():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    shape, dtype, top_label, seconds, peak_mib = result.stdout.strip().rsplit(" ", 4)
    assert (shape, dtype) == ("(8192, 8192)", "torch.uint8")
    assert top_label in ("0", "1")
    assert 256 < float(peak_mib) < BOUND_MIB, f"peak {peak_mib} MiB in {seconds} s"  # the input alone is 256
