"""The serving benchmark's models and request bodies (torch is imported inside the functions).

Three models, each request carrying ONE sample:

* ``cnn``: the architecture of ``examples/digits_cnn.yaml`` built with its seed, NOT trained
  (throughput does not depend on the weights), with the digits preprocessing; requests send
  one raw 1x8x8 digit (sklearn's 0..16 pixels) that every server standardises;
* ``minilm``: dlforge's BERT from the packaged all-MiniLM-L6-v2 with an (untrained)
  two-class sequence head; requests send 16 token ids of a sentence from CPython's pydoc topics;
* ``image224``: a one-block CNN (one channel: the model costs little beside the request) on 3x224x224 RGB images, for what the request
  encoding costs when the tensor is large; requests send raw 0..255 pixels.

Bodies: v1 ``{"inputs": [sample]}`` JSON (:func:`write_bodies`), and the Open Inference
Protocol's JSON and binary forms (:func:`write_v2_bodies`): one ``input`` tensor of shape
``[1, *sample]``, FP32 in both, the binary body a JSON header of a fixed length followed by the
tensor's little-endian bytes (outputs asked back as binary too).

Example:
    >>> header, body = v2_binary_body([[0.0, 1.0]])
    >>> json.loads(body[:header])["inputs"][0]["parameters"], len(body) - header
    ({'binary_data_size': 8}, 8)
"""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MAX_LEN = 16  # MiniLM request length in tokens
IMAGE224 = (3, 224, 224)


def sentences(n: int) -> list[str]:
    """``n`` sentences of six words or more from CPython's pydoc topics text."""
    from pydoc_data.topics import topics

    text = " ".join(topics[key] for key in sorted(topics))
    found = (" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+", text))
    return [s for s in found if len(s.split()) >= 6][:n]


def build_artifacts(folder: Path, models: list[str], n_bodies: int = 256) -> dict[str, dict[str, Any]]:
    """Save the artifacts of ``models`` (with drift references) and their request samples.

    Returns ``{model: {"dir": Path, "x": request samples (N, ...), "model_x": model-ready ones}}``:
    CNN and image224 requests send raw pixels, which the server standardises; MiniLM's are token ids.
    """
    import torch

    from dlforge.config import load_config
    from dlforge.data.text import encode_text_inputs, text_encoding
    from dlforge.data.tokenizer import load_tokenizer
    from dlforge.models import build
    from dlforge.models.bert import from_pretrained
    from dlforge.pipeline import build_model, load_data
    from dlforge.registry.artifact import Artifact, save_artifact
    from dlforge.registry.reference import build_reference

    def save(name: str, model: torch.nn.Module, class_names: list[str], preprocessing: dict,
             reference_x: torch.Tensor) -> Path:
        # The reference is what `dlforge train` stores: training inputs and the model's predictions.
        meta = {"task": "classification", "class_names": class_names, "preprocessing": preprocessing,
                "input_signature": {"shape": [None, *reference_x.shape[1:]]}}
        outputs = Artifact(model=model.eval(), meta=meta, path=folder).predict(reference_x)
        reference = build_reference(reference_x, outputs, "classification", preprocessing)
        return save_artifact(model, folder / name, task="classification", class_names=class_names,
                             preprocessing=preprocessing, training={"reference": reference})

    built: dict[str, dict[str, Any]] = {}
    if "cnn" in models:
        cfg = load_config(ROOT / "examples" / "digits_cnn.yaml")
        prepared = load_data(cfg)
        cnn, _ = build_model(cfg, prepared)  # the example's architecture and seed, not trained
        # Requests carry raw pixels (sklearn's 0..16); the servers scale and standardise them (Artifact.encode).
        scale = prepared.preprocessing["standardize"]
        x_test = prepared.test.tensors[0][:n_bodies]  # standardised (N, 1, 8, 8)
        raw = x_test * torch.tensor(scale["std"]).view(1, -1, 1, 1) + torch.tensor(scale["mean"]).view(1, -1, 1, 1)
        built["cnn"] = {"dir": save("cnn", cnn, prepared.class_names, prepared.preprocessing,
                                    prepared.train.tensors[0][:512]),
                        "x": (raw * 16).round(), "model_x": x_test}
    if "minilm" in models:
        texts = sentences(n_bodies + 512)
        preprocessing = {"encoding": text_encoding(load_tokenizer("minilm"), MAX_LEN), "standardize": None}
        minilm = from_pretrained("minilm", num_outputs=2, task_head="sequence", max_len=MAX_LEN)
        ids = encode_text_inputs(texts, preprocessing)  # (N, 16) int64
        built["minilm"] = {"dir": save("minilm", minilm, ["negative", "positive"], preprocessing, ids[n_bodies:]),
                           "x": ids[:n_bodies], "model_x": ids[:n_bodies]}
    if "image224" in models:
        torch.manual_seed(0)
        preprocessing = {"encoding": {"kind": "image", "size": list(IMAGE224[1:]), "mode": "RGB", "scale": 1 / 255},
                         "standardize": {"mean": [0.5] * 3, "std": [0.25] * 3, "axis": "channel"}}
        model = build({"arch": "cnn", "channels": [1]}, input_shape=IMAGE224, num_outputs=10)
        raw = torch.randint(0, 256, (min(n_bodies, 16), *IMAGE224)).float()  # 0..255 pixels; few: each is 0.6 MB
        model_x = (raw / 255 - 0.5) / 0.25
        built["image224"] = {"dir": save("image224", model, [str(i) for i in range(10)], preprocessing, model_x),
                             "x": raw, "model_x": model_x}
    return built


def write_bodies(x: Any, path: Path) -> Path:
    """One JSON body per sample: ``{"inputs": [sample]}`` (floats rounded to 5 digits)."""
    import torch

    samples = x.round(decimals=5).tolist() if torch.is_floating_point(x) else x.tolist()
    path.write_text(json.dumps([{"inputs": [s]} for s in samples]), encoding="utf-8")
    return path


def v2_json_body(sample: list) -> dict[str, Any]:
    """The Open Inference Protocol JSON body of one sample (a nested list), FP32, data flattened.

    Example:
        >>> v2_json_body([[1.0, 2.0]])["inputs"][0]["shape"]
        [1, 1, 2]
    """
    arr = np.asarray(sample, dtype=np.float32)
    data = [int(v) if float(v).is_integer() else float(v) for v in arr.ravel().tolist()]
    return {"inputs": [{"name": "input", "shape": [1, *arr.shape], "datatype": "FP32", "data": data}]}


def v2_binary_body(sample: list) -> tuple[int, bytes]:
    """(header length, body) of one sample in the binary tensor extension, outputs asked as binary."""
    arr = np.ascontiguousarray(np.asarray(sample, dtype="<f4"))
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, *arr.shape], "datatype": "FP32",
                                     "parameters": {"binary_data_size": arr.nbytes}}],
                         "parameters": {"binary_data_output": True}}, separators=(",", ":")).encode()
    return len(header), header + arr.tobytes()


def write_v2_bodies(x: Any, json_path: Path, binary_path: Path) -> int:
    """Write the v2 JSON bodies (a JSON list) and binary ones (base64 strings) of samples ``x``;
    returns the binary bodies' header length (the same for every body: one shape)."""
    samples = x.round(decimals=5).tolist()
    json_path.write_text(json.dumps([v2_json_body(s) for s in samples]), encoding="utf-8")
    binary = [v2_binary_body(s) for s in samples]
    binary_path.write_text(json.dumps([base64.b64encode(b).decode() for _, b in binary]), encoding="utf-8")
    return binary[0][0]


def offline_throughput(artifact: Any, x: Any, batch: int, seconds: float = 1.0) -> float:
    """Samples per second of ``artifact.predict`` on batches of ``batch`` samples (median of repeats)."""
    import statistics

    import torch

    xb = x[torch.arange(batch) % len(x)]
    times: list[float] = []
    with torch.inference_mode():
        for _ in range(2):
            artifact.predict(xb)  # warm up
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(times) < 5:
            start = time.perf_counter()
            artifact.predict(xb)
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)
