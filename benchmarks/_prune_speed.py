"""Inference speed after pruning 50%: structured (smaller layers) vs unstructured (zeros).

Batch 32, one CPU thread, eval mode, median ratio of 9 alternating runs of 20 calls
(compress.prune.speedup).
Structured pruning shrinks the layers, so it is faster; unstructured pruning only writes
zeros into dense tensors, so the ratio stays ~1.0 (pytorch#36214).

    .venv/bin/python benchmarks/_prune_speed.py
"""

from __future__ import annotations

import copy

import torch

from dlforge.compress import magnitude_prune, prune_structured, speedup
from dlforge.models import build

MODELS = {  # name: (spec, input shape, outputs)
    "digits cnn": ({"arch": "cnn", "channels": [32, 64], "dropout": 0.2, "batch_norm": True},
                   (1, 8, 8), 10),
    "wide mlp": ({"arch": "mlp", "hidden": [1024, 1024]}, (784,), 10),
}


def main() -> None:
    torch.manual_seed(0)
    for name, (spec, shape, outputs) in MODELS.items():
        model = build(spec, input_shape=shape, num_outputs=outputs).eval()
        smaller, report = prune_structured(model, 0.5)
        sparse = copy.deepcopy(model)
        magnitude_prune(sparse, 0.5, scope="layer")
        print(f"{name}: {report.parameters_before} -> {report.parameters_after} parameters; "
              f"time ratio structured {speedup(model, smaller, shape):.2f}x, "
              f"unstructured {speedup(model, sparse, shape):.2f}x")


if __name__ == "__main__":
    main()
