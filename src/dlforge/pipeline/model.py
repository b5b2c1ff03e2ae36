"""The ``model`` section of a run config, built from scratch or from pretrained weights.

``model.pretrained`` names where the starting weights come from:

* a dlforge artifact folder or run directory (a CNN pretrained on other classes, a BERT
  pretrained with ``data.task: mlm``): the architecture is taken from the artifact's
  spec, the keys written in ``model`` override it, and every tensor whose name and shape
  match is copied (the new head, sized for the new classes, starts fresh);
* a Hugging Face BERT folder (``config.json`` + ``model.safetensors``), or ``minilm``
  for the packaged all-MiniLM-L6-v2: read by :func:`dlforge.models.bert.from_pretrained`.

``train.freeze`` then freezes parameters by name pattern (see :mod:`dlforge.train.transfer`).

Example:
    >>> from dlforge.config import validate_config
    >>> cfg = validate_config({"data": {"source": "iris"}, "model": {"arch": "mlp", "hidden": [8]}})
    >>> from dlforge.pipeline.data import load_data
    >>> model, pretrained = build_model(cfg, load_data(cfg))
    >>> type(model).__name__, pretrained
    ('MLP', None)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from dlforge.config import RunConfig
from dlforge.data import Prepared
from dlforge.errors import ConfigError
from dlforge.models import build
from dlforge.models.bert import from_pretrained
from dlforge.train import seed_everything
from dlforge.train.transfer import TransferReport, load_pretrained_weights

# Keys of a BERT spec that a Hugging Face folder does not fix: they describe the new head.
HF_BERT_KEYS = ("arch", "task_head", "pool", "dropout")
HEAD_KEYS = ("input_shape", "num_outputs", "task_head")  # never copied from a pretrained spec


def _artifact_meta(path: Path) -> dict[str, Any] | None:
    folder = path / "model" if (path / "model" / "model.json").is_file() else path
    meta_path = folder / "model.json"
    return json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else None


def _with_data_sizes(spec: dict[str, Any], prepared: Prepared) -> dict[str, Any]:
    """Token models read their vocabulary size from the data's tokenizer."""
    encoding = prepared.preprocessing.get("encoding", {})
    if encoding.get("kind") == "text" and spec["arch"] in ("bert", "transformer"):
        spec.setdefault("vocab_size", encoding["vocab_size"])
        if spec["arch"] == "bert" and prepared.task == "mlm":
            spec.setdefault("task_head", "mlm")
    return spec


def build_model(cfg: RunConfig, prepared: Prepared) -> tuple[nn.Module, TransferReport | None]:
    """The configured model, sized by the data, and what was loaded into it (if pretrained)."""
    seed_everything(cfg.seed)  # the same seed gives the same initial weights (and head)
    spec = dict(cfg.model)
    pretrained = spec.pop("pretrained", None)
    sizes = {"input_shape": prepared.input_shape, "num_outputs": prepared.num_outputs}
    if pretrained is None:
        return build(_with_data_sizes(spec, prepared), **sizes), None

    path = Path(str(pretrained)).expanduser()
    meta = None if pretrained == "minilm" else _artifact_meta(path)
    if meta is None and (pretrained == "minilm" or (path / "config.json").is_file()):
        if spec["arch"] != "bert":
            raise ConfigError(f"model.pretrained {pretrained} is a Hugging Face BERT folder, but model.arch is "
                              f"{spec['arch']!r}", hint="set model.arch: bert")
        extra = sorted(set(spec) - set(HF_BERT_KEYS))
        if extra:
            raise ConfigError(f"model.{extra[0]} is fixed by the pretrained folder {pretrained}",
                              hint=f"remove it; with model.pretrained only {', '.join(HF_BERT_KEYS[1:])} may be set")
        task_head = spec.get("task_head", "mlm" if prepared.task == "mlm" else "sequence")
        model = from_pretrained(str(pretrained), num_outputs=prepared.num_outputs, task_head=task_head,
                                max_len=prepared.input_shape[0], pool=spec.get("pool", "cls"),
                                dropout=spec.get("dropout"))
        return model, None
    if meta is None:
        raise ConfigError(f"model.pretrained {pretrained} is neither a dlforge artifact nor a Hugging Face folder",
                          hint="point it at a run directory, its model/ folder, a folder with config.json, or 'minilm'")
    if meta.get("arch") != spec["arch"]:
        raise ConfigError(f"model.pretrained {pretrained} holds a {meta.get('arch')!r} model, but model.arch is "
                          f"{spec['arch']!r}", hint=f"set model.arch: {meta.get('arch')}")
    base = {k: v for k, v in meta["spec"].items() if k not in HEAD_KEYS}
    model = build(_with_data_sizes({**base, **spec}, prepared), **sizes)
    return model, load_pretrained_weights(model, path)
