"""The YAML run configuration, validated by pydantic.

Every section forbids unknown keys; an error names the key path (``train.epochs``), what
is wrong, and the allowed keys or values. The ``model`` section is checked by the model
family's own config (:func:`dlforge.models.config_from_spec`) once the data is known.

Example:
    >>> cfg = load_config("examples/digits_cnn.yaml", overrides=["train.epochs=5"])  # doctest: +SKIP
    >>> cfg.train.epochs  # doctest: +SKIP
    5
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from dlforge.data.augment import AugmentConfig
from dlforge.data.catalog import builtin_names
from dlforge.data.imbalance import ImbalanceConfig
from dlforge.data.text import text_builtin_names
from dlforge.data.timeseries import SERIES
from dlforge.errors import ConfigError
from dlforge.train.losses import LossConfig
from dlforge.train.optim import OptimConfig
from dlforge.user_files import parse_yaml, read_yaml


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SplitConfig(_Strict):
    val: float = Field(0.15, ge=0, lt=1)
    test: float = Field(0.15, ge=0, lt=1)
    stratify: bool = True


class DataConfig(_Strict):
    source: str
    seed: int | None = None  # generated sets and the split; default: the run's seed, so runs that vary only
                             # `seed` also split differently: set data.seed to share one split (an ensemble)
    target: str | None = None
    task: Literal["auto", "classification", "regression", "mlm", "segmentation"] = "auto"  # mlm: masked-LM pretraining
    categorical: Literal["onehot", "reject"] = "onehot"
    image_size: tuple[int, int] | None = None
    color: Literal["grayscale", "rgb"] | None = None  # image folders; None: rgb when any image holds colour
    n_samples: int | None = Field(None, ge=4)
    noise: float | None = Field(None, ge=0)
    split: SplitConfig = Field(default_factory=SplitConfig)
    standardize: bool = True
    # regression: fit on (y - mean) / std of the train split; predictions, metrics and served
    # outputs are turned back into the target's own units (stored with the model)
    standardize_target: bool = True
    # tables (CSV files, DataFrames)
    drop: list[str] = Field(default_factory=list)  # columns kept out of the features
    id_column: str | None = None  # kept out of the features, carried to prediction outputs
    keep: list[str] = Field(default_factory=list)  # features to keep although they look like identifiers
    missing: Literal["impute", "error"] = "impute"  # impute: train-split median / "missing" category + indicator
    unknown_category: Literal["error", "ignore"] = "error"  # at prediction time: refuse, or encode as all zeros
    augment: AugmentConfig = Field(default_factory=AugmentConfig)  # training batches only; see dlforge.data.augment
    imbalance: ImbalanceConfig = Field(default_factory=ImbalanceConfig)  # resampling, balanced sampler, bagging
    # text (a .jsonl file, a .csv with text_column, or a built-in text set)
    text_column: str | None = None  # default "text"
    max_len: int | None = Field(None, ge=4, description="tokens per text, [CLS] and [SEP] included; default 128")
    tokenizer: str | None = None  # tokenizer.json or a Hugging Face folder; default: the pretrained model's, else trained
    vocab_size: int | None = Field(None, ge=50, description="size of a WordPiece vocabulary trained on the train split")
    mask_prob: float | None = Field(None, gt=0, lt=1, description="mlm: share of tokens masked (0.15)")
    # segmentation (a folder with images/ and masks/, nuclei, synthetic_nuclei); see dlforge.pipeline.seg_data
    masks: Literal["classes", "instances"] = "classes"  # mask files hold class indices, or per-object ids
    patch: list[int] | None = None  # training window per spatial axis; default: about 4 median objects across
    patches_per_epoch: int | None = Field(None, ge=1, description="random patches drawn per epoch (default 8 batches)")
    foreground: float = Field(0.33, ge=0, le=1)  # share of patches centred on a foreground pixel (nnU-Net's third)
    gap: int = Field(16, ge=0)  # pixels between held-out regions and any training patch
    unlabelled: str | None = None  # a folder of images without masks, for train.ssl (self-supervised pretraining)
    # time series (a built-in series such as sunspots or co2)
    window: int | None = Field(None, ge=1, description="past steps the model reads per forecast")
    horizon: int | None = Field(None, ge=1, description="steps ahead to forecast (1)")


class EarlyStoppingConfig(_Strict):
    monitor: str = "val_loss"
    mode: Literal["auto", "min", "max"] = "auto"
    patience: int = Field(5, ge=1)
    min_delta: float = Field(0.0, ge=0)
    restore_best_weights: bool = True


class CheckpointConfig(_Strict):
    every_n_epochs: int | None = Field(1, ge=1)
    every_n_steps: int | None = Field(None, ge=1)
    keep_last: int = Field(1, ge=1)
    monitor: str | None = "val_loss"


class SSLConfig(_Strict):
    """Self-supervised pretraining of a segmentation U-Net before it sees a mask: it learns to
    restore ``inpaint``-ed (blanked blocks) or ``denoise``-d patches of the training region
    and of ``data.unlabelled``; every tensor but the output head then starts the real training."""

    method: Literal["inpaint", "denoise"] = "inpaint"
    epochs: int = Field(10, ge=1)
    mask_ratio: float = Field(0.5, gt=0, le=1)  # inpaint: share of the patch's blocks blanked


class TrainConfig(_Strict):
    # 30 epochs with early stopping (below) on a validation split: on nine real tables
    # (benchmarks/tabular.py) 10 epochs under-fit and 30-50 without stopping over-fit.
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(32, ge=1)
    # a loss name, or a LossConfig mapping {name, class_weights, gamma, include_background, ...}
    loss: Literal["cross_entropy", "focal", "mse", "l1", "dice", "dice_ce", "dice_focal",
                  "tversky"] | LossConfig | None = None
    clip_grad_norm: float | None = Field(None, gt=0)
    clip_grad_value: float | None = Field(None, gt=0)
    accumulate: int = Field(1, ge=1)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    device: str = "auto"
    log_every_n_steps: int = Field(10, ge=1)
    compile: bool | str = False  # torch.compile the forward: true (inductor) or a backend name, e.g. aot_eager
    # null (default): on (val_loss, patience 5, best weights restored) when the run has a
    # validation split, else off; false: off; true: on with those settings; or a mapping.
    early_stopping: EarlyStoppingConfig | bool | None = None
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    gradient_monitor: bool = True
    nan_guard: bool = True
    tbptt: int | tuple[int, int] | None = None  # truncated BPTT: k, or [k1, k2] (see dlforge.train.tbptt)
    freeze: list[str] = Field(default_factory=list)  # parameter-name patterns to freeze, e.g. "bert.embeddings.*"
    unfreeze_stages: list[list[str]] = Field(default_factory=list)  # gradual unfreezing, top layers first
    unfreeze_every: int = Field(1, ge=1)  # epochs between unfreezing stages
    ssl: SSLConfig | None = None  # segmentation: self-supervised pretraining first (dlforge.pipeline.seg_limited)
    # Trackers the history is also sent to, off the training thread (dlforge.train.trackers): a run
    # directory's tensorboard/ folder, and/or one MLflow run named after the run directory. Off by
    # default; needs the extra (pip install dlforge[tensorboard] / dlforge[mlflow]).
    log_to: list[Literal["tensorboard", "mlflow"]] = Field(default_factory=list)
    # The MLflow tracking URI (http://host:5000, sqlite:///mlflow.db); null: MLflow's own
    # MLFLOW_TRACKING_URI, else ./mlflow.db. The experiment is MLFLOW_EXPERIMENT_NAME, else the run's name.
    mlflow_uri: str | None = None

    def stopping(self, has_val: bool) -> EarlyStoppingConfig | None:
        """The early stopping a run does: ``early_stopping`` resolved (None: none).

        Example:
            >>> TrainConfig().stopping(has_val=True).patience, TrainConfig().stopping(has_val=False)
            (5, None)
        """
        es = self.early_stopping
        if es is None:
            return EarlyStoppingConfig() if has_val else None
        if isinstance(es, bool):
            return EarlyStoppingConfig() if es else None
        return es


class RunConfig(_Strict):
    """A whole run: what ``dlforge train CONFIG.yaml`` reads."""

    @property
    def data_seed(self) -> int:
        """The seed of the data (generated sets, splits): ``data.seed``, else ``seed``."""
        return self.data.seed if self.data.seed is not None else self.seed

    @property
    def source_notes(self) -> list[str]:
        """What :func:`load_config` decided about a relative ``data.source`` (printed by train)."""
        return list(self._source_notes)

    _source_notes: list[str] = PrivateAttr(default_factory=list)

    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = 0
    data: DataConfig
    model: dict[str, Any]
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tune: dict[str, Any] | None = None  # read by `dlforge tune` (see dlforge.tune); ignored by `dlforge train`

    @field_validator("model")
    @classmethod
    def _has_arch(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "arch" not in value:
            from dlforge.models import ARCHS

            raise ValueError(f"needs an 'arch' key ({', '.join(ARCHS)})")
        return value


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at ``loc`` (for listing its keys)."""
    model: Any = RunConfig
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return None
        ann = fields[part].annotation
        args = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        model = args[0] if args else ann
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _explain(err: ValidationError) -> ConfigError:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        path = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            owner = _model_at(loc[:-1])
            allowed = ", ".join(owner.model_fields) if owner else "see the README"
            lines.append(f"unknown key {path!r}; allowed keys here: {allowed}")
        elif e["type"] == "missing":
            lines.append(f"{path} is required")
        else:
            got = e.get("input")
            got_text = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"{path}: {e['msg']}{got_text}")
    body = lines[0] if len(lines) == 1 else "".join(f"\n  - {line}" for line in lines)
    return ConfigError(f"invalid config: {body}", hint="fix the keys named above in the YAML or with --set")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=0.01"`` -> (["optim", "lr"], 0.01); values are parsed as YAML.

    Example:
        >>> parse_override("optim.betas=[0.9, 0.99]")
        (['optim', 'betas'], [0.9, 0.99])
    """
    if "=" not in text:
        raise ConfigError(f"--set {text!r} has no '='", hint="write --set key.path=value, e.g. --set train.epochs=5")
    key, _, raw = text.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {text!r} names no key")
    return parts, parse_yaml(raw, f"the value of --set {text!r}") if raw.strip() else None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys in a raw config dict (creating sections as needed)."""
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: {'.'.join(parts[: i + 1])} is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def validate_config(raw: Any) -> RunConfig:
    """Validate a raw dict into a :class:`RunConfig`, or raise a readable ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError("the config must be a YAML mapping of sections (name, seed, data, model, optim, train)")
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise _explain(err) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read, override and validate a YAML run config.

    A relative ``data.source`` is read from the config file's folder (see
    :func:`resolve_source`), so a config and its data can move together.
    """
    raw = read_yaml(path)  # bounded, UTF-8, a mapping: see dlforge.user_files
    cfg = validate_config(apply_overrides(raw, overrides or []))
    source, note = resolve_source(Path(path).parent, cfg.data.source)
    cfg.data.source = source
    if note:
        cfg._source_notes.append(note)
    return cfg


def resolve_source(cfg_dir: str | Path, source: str) -> tuple[str, str | None]:
    """Where a config in ``cfg_dir`` finds ``data.source``, and a note when that needs saying.

    Built-in names win; absolute paths stay. A relative path is taken from the config's
    folder when it exists there, else from the current folder (the older rule), with a
    note when only the current folder has it.

    Example:
        >>> resolve_source("examples", "iris")
        ('iris', None)
        >>> resolve_source("/nowhere", "/data/houses.csv")
        ('/data/houses.csv', None)
    """
    path = Path(source).expanduser()
    builtin = source in builtin_names() or source in text_builtin_names() or source in SERIES
    if builtin or path.is_absolute() or Path(cfg_dir).resolve() == Path.cwd().resolve():
        return source, None
    beside = Path(cfg_dir) / path
    if beside.exists():
        resolved = os.path.normpath(beside)
        # "./iris" is the folder, "iris" the built-in set: keep the folder a path.
        return (resolved if os.sep in resolved else f".{os.sep}{resolved}"), None
    if path.exists():
        return source, (f"data.source {source!r} is not in the config's folder ({beside} does not exist); "
                        f"using {source!r} from the current folder")
    return source, None


def to_yaml(cfg: RunConfig) -> str:
    """The resolved config, every default written out."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def flat_config(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (an empty mapping is a value of its own).

    Example:
        >>> flat_config({"model": {"arch": "mlp", "hidden": [8]}, "seed": 0})
        {'model.arch': 'mlp', 'model.hidden': [8], 'seed': 0}
    """
    if isinstance(d, dict) and d:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat_config(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}
