"""The MLServer runtime benchmarks/serving.py compares with: one dlforge artifact on the V2 protocol.

Run by the benchmark with a Python that has mlserver (``--mlserver-python``): ``mlserver start
FOLDER`` where FOLDER holds the ``settings.json`` and ``model-settings.json`` that
:func:`_servers.mlserver_settings` writes (``implementation: _mlserver_model.DlforgeRuntime``,
``parameters.uri``: the artifact folder; this folder on ``PYTHONPATH``). MLServer's own
adaptive batching joins concurrent requests along dim 0 (``max_batch_size``,
``max_batch_time`` in seconds: the same 32 and 3 ms as dlforge serve's batcher) and splits
the outputs back per request.

The model work is dlforge serve's: ``load_artifact`` (the same spec and safetensors weights),
``Artifact.encode`` (the stored standardisation of raw pixels) and ``Artifact.predict``; the
answer has dlforge's V2 outputs: ``probabilities`` (FP32), ``label`` (BYTES), ``label_index``
(INT64).
"""

from __future__ import annotations

import numpy as np
import torch
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.types import InferenceRequest, InferenceResponse

from dlforge.registry.artifact import load_artifact


class DlforgeRuntime(MLModel):
    async def load(self) -> bool:
        self.artifact = load_artifact(self.settings.parameters.uri)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        raw = NumpyCodec.decode_input(payload.inputs[0])  # (N, *sample): N requests joined by the batcher
        with torch.inference_mode():
            out = self.artifact.predict(self.artifact.encode(raw))
        return InferenceResponse(model_name=self.name, outputs=[
            NumpyCodec.encode_output("probabilities", out["probabilities"].numpy()),
            StringCodec.encode_output("label", out["labels"]),
            NumpyCodec.encode_output("label_index", out["indices"].numpy().astype(np.int64)),
        ])
