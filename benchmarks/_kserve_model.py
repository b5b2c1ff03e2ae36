"""The KServe Python model server benchmarks/serving.py compares with: one dlforge artifact on V2.

Run by the benchmark with a Python that has kserve (``--kserve-python``)::

    python benchmarks/_kserve_model.py --artifact DIR --model_name cnn --http_port P \\
        --workers 1 --enable_grpc false --enable_latency_logging false

KServe's ``ModelServer`` (FastAPI + uvicorn, orjson) answers ``POST /v2/models/{name}/infer``
with JSON tensors and with the binary tensor extension (``Inference-Header-Content-Length``,
``binary_data_output``). Its Python server has no request batching of its own (KServe's
batcher is the Go agent sidecar of an ``InferenceService``, V1 protocol only), so each
request is one model call, as in the ``plain`` FastAPI baseline. (KServe 0.21 turns a binary
input into a Python list on arrival, ``InferRequest.from_bytes``: 36 ms for one 3x224x224 FP32
tensor here, so its binary rows are slower than its JSON ones on large inputs.)

The model work is dlforge serve's: ``load_artifact`` (the same spec and safetensors weights),
``Artifact.encode`` (the stored standardisation of raw pixels) and ``Artifact.predict``; the
answer has dlforge's V2 outputs: ``probabilities`` (FP32), ``label`` (BYTES), ``label_index``
(INT64).
"""

from __future__ import annotations

import argparse
import uuid

import numpy as np
import torch
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server

from dlforge.registry.artifact import load_artifact


class DlforgeModel(Model):
    def __init__(self, name: str, artifact: str) -> None:
        super().__init__(name)
        self.artifact = load_artifact(artifact)
        self.ready = True

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        raw = payload.inputs[0].as_numpy()  # (1, *sample): one request, one model call
        with torch.inference_mode():
            out = self.artifact.predict(self.artifact.encode(raw))
        binary = payload.use_binary_outputs
        outputs = []
        for name, datatype, value in (("probabilities", "FP32", out["probabilities"].numpy()),
                                      ("label", "BYTES", np.array(out["labels"], dtype=np.object_)),
                                      ("label_index", "INT64", out["indices"].numpy().astype(np.int64))):
            tensor = InferOutput(name=name, shape=list(value.shape), datatype=datatype)
            tensor.set_data_from_numpy(value, binary_data=binary)
            outputs.append(tensor)
        return InferResponse(response_id=payload.id or str(uuid.uuid4()), model_name=self.name, infer_outputs=outputs,
                             use_binary_outputs=binary, requested_outputs=payload.request_outputs)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--artifact", required=True, help="a dlforge artifact folder")
    args, _ = parser.parse_known_args()
    ModelServer().start([DlforgeModel(args.model_name, args.artifact)])
