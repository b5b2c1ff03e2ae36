"""The BentoML service benchmarks/serving.py compares with: one dlforge artifact, adaptive batching.

Run by the benchmark with a Python that has bentoml (``--bentoml-python``), from this
folder: ``bentoml serve _bento_service:DlforgeModel --port P``. The artifact folder comes
from ``DLFORGE_BENCH_ARTIFACT`` and the largest batch from ``DLFORGE_BENCH_MAX_BATCH``.
BentoML's dispatcher joins concurrent requests (each ``{"inputs": [sample]}``) along dim
0 up to that size, adapting its wait to the measured batch times (``max_latency_ms`` is
its latency budget, not a wait); the method answers each sample's class probabilities.
"""

from __future__ import annotations

import os

import bentoml
import numpy as np
import torch

from dlforge.registry.artifact import load_artifact

MAX_BATCH = int(os.environ.get("DLFORGE_BENCH_MAX_BATCH", "32"))


# One worker and no access log, as the benchmark runs dlforge serve; metrics stay on (as dlforge's).
@bentoml.service(workers=1, traffic={"timeout": 60}, logging={"access": {"enabled": False}})
class DlforgeModel:
    def __init__(self) -> None:
        self.artifact = load_artifact(os.environ["DLFORGE_BENCH_ARTIFACT"])

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=10_000)
    def predict(self, inputs: np.ndarray) -> np.ndarray:
        x = self.artifact.encode(inputs)  # the stored standardisation, as dlforge serve applies
        with torch.inference_mode():
            return self.artifact.predict(x)["probabilities"].numpy()
