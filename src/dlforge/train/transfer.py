"""Transfer learning: freeze and unfreeze parts of a model, give them their own learning
rates, unfreeze them gradually while training, and load pretrained weights.

Parts of a model are named by ``fnmatch`` patterns over parameter names, the names
``model.named_parameters()`` gives (``"blocks.0.*"``, ``"head.*"``,
``"bert.embeddings.*"``, ``"*"``). A typical fine-tuning run::

    report = load_pretrained_weights(model, "runs/pretrain-.../model")   # head skipped
    freeze(model, "blocks.*")                                            # train the head
    groups = layerwise_lr_groups(model, lr=1e-3, decay=0.5, layers=["blocks.0.*", "blocks.1.*"])
    fit(model, train, val, param_groups=groups,
        callbacks=[GradualUnfreezing([["blocks.1.*"], ["blocks.0.*"]])])

Frozen means ``requires_grad=False``: the parameter gets no gradient, so the optimizer
skips it entirely (no update, no weight decay, no moment state). A frozen layer that keeps
running statistics (BatchNorm) would still drift in training mode, since its statistics
are buffers updated by the forward pass, not by the optimizer; :func:`freeze` therefore
keeps such layers in eval mode while all their parameters are frozen (``bn_eval=True``).

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> freeze(model, "0.*")
    ['0.weight', '0.bias']
    >>> trainable_summary(model)["trainable"]
    18
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from dlforge.errors import ArtifactError, ConfigError
from dlforge.train.callbacks import Callback

if TYPE_CHECKING:
    from dlforge.train.state import TrainState

Patterns = str | Sequence[str]

# The artifact layout (dlforge.registry.artifact); train may not import the registry.
_ARTIFACT_FORMAT, _META_FILE, _WEIGHTS_FILE = "dlforge-artifact", "model.json", "model.safetensors"
# Set on a norm layer that freeze() asked to keep in eval mode.
_HOLD_STATS = "_dlforge_hold_stats"
_HOOK_HANDLE = "_dlforge_hold_stats_hook"


# ----------------------------------------------------------------------------- freezing

def _as_patterns(patterns: Patterns) -> list[str]:
    return [patterns] if isinstance(patterns, str) else list(patterns)


def _no_match_error(model: nn.Module, pattern: str, key: str) -> ConfigError:
    names = [n for n, _ in model.named_parameters()]
    tops = list(dict.fromkeys(n.split(".")[0] for n in names))
    examples = names[:3] + names[-2:] if len(names) > 5 else names
    return ConfigError(
        f"{key} pattern {pattern!r} matches no parameter of the {type(model).__name__}",
        hint=f"patterns are fnmatch patterns over parameter names, e.g. '{tops[0] if tops else 'layer'}.*'; "
        f"top-level modules: {', '.join(tops) or 'none'}; parameter names look like: {', '.join(examples)}",
    )


def _matching(model: nn.Module, patterns: Patterns, key: str) -> list[tuple[str, nn.Parameter]]:
    """Parameters whose names match any pattern; a pattern matching none is an error."""
    patterns = _as_patterns(patterns)
    if not patterns:
        raise ConfigError(f"{key} got no patterns", hint="give one or more fnmatch patterns, e.g. 'blocks.0.*'")
    named = list(model.named_parameters())
    for pattern in patterns:
        if not isinstance(pattern, str) or not any(fnmatchcase(n, pattern) for n, _ in named):
            raise _no_match_error(model, str(pattern), key)
    return [(n, p) for n, p in named if any(fnmatchcase(n, pat) for pat in patterns)]


def _norms_covered(model: nn.Module, patterns: list[str]) -> list[nn.Module]:
    """Norm layers with running statistics that one of ``patterns`` names (by a parameter
    or, for layers without affine parameters, by a buffer such as ``running_mean``)."""
    covered = []
    for prefix, module in model.named_modules():
        if not isinstance(module, nn.modules.batchnorm._NormBase) or not module.track_running_stats:
            continue
        names = [n for n, _ in module.named_parameters(recurse=False)] or [n for n, _ in module.named_buffers(recurse=False)]
        full = [f"{prefix}.{n}" if prefix else n for n in names]
        if any(fnmatchcase(n, pat) for n in full for pat in patterns):
            covered.append(module)
    return covered


def _hold_stats_hook(module: nn.Module, args: tuple) -> None:
    # fit() calls model.train() every epoch, so the eval mode has to be re-imposed at each
    # forward pass. Checking requires_grad here (not only the flag) lets a later unfreeze,
    # or a user setting requires_grad by hand, release the layer without another call.
    if module.training and getattr(module, _HOLD_STATS, False):
        if not any(p.requires_grad for p in module.parameters(recurse=False)):
            module.eval()


def freeze(model: nn.Module, patterns: Patterns, *, bn_eval: bool = True) -> list[str]:
    """Set ``requires_grad=False`` on the parameters matching ``patterns``; return the
    names that changed.

    With ``bn_eval`` (the default), BatchNorm-style layers whose parameters are all frozen
    stay in eval mode during training: they normalise with their stored statistics and
    do not update them, as a frozen pretrained block should. A forward pre-hook re-imposes
    this after every ``model.train()``; :func:`unfreeze` releases it.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
        >>> freeze(model, ["0.*", "1.*"])
        ['0.weight', '0.bias', '1.weight', '1.bias']
        >>> _ = model.train(); _ = model(torch.randn(3, 4)); model[1].training
        False
    """
    changed = []
    for name, p in _matching(model, patterns, "train.freeze"):
        if p.requires_grad:
            p.requires_grad_(False)
            changed.append(name)
    for module in _norms_covered(model, _as_patterns(patterns)):
        setattr(module, _HOLD_STATS, bn_eval)
        if bn_eval and getattr(module, _HOOK_HANDLE, None) is None:
            setattr(module, _HOOK_HANDLE, module.register_forward_pre_hook(_hold_stats_hook))
    return changed


def unfreeze(model: nn.Module, patterns: Patterns) -> list[str]:
    """Set ``requires_grad=True`` on the parameters matching ``patterns`` (BatchNorm layers
    among them go back to following ``model.train()``); return the names that changed.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
        >>> _ = freeze(model, "*")
        >>> unfreeze(model, "1.*")
        ['1.weight', '1.bias']
    """
    changed = []
    for name, p in _matching(model, patterns, "train.unfreeze"):
        if not p.requires_grad:
            p.requires_grad_(True)
            changed.append(name)
    for module in _norms_covered(model, _as_patterns(patterns)):
        setattr(module, _HOLD_STATS, False)
    return changed


def trainable_summary(model: nn.Module) -> dict[str, Any]:
    """Trainable and frozen parameter counts (elements), in total and per top-level module.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
        >>> _ = freeze(model, "0.*")
        >>> trainable_summary(model)["modules"]["0"]
        {'trainable': 0, 'frozen': 40}
    """
    modules: dict[str, dict[str, int]] = {}
    for name, p in model.named_parameters():
        counts = modules.setdefault(name.split(".")[0], {"trainable": 0, "frozen": 0})
        counts["trainable" if p.requires_grad else "frozen"] += p.numel()
    trainable = sum(c["trainable"] for c in modules.values())
    frozen = sum(c["frozen"] for c in modules.values())
    return {"trainable": trainable, "frozen": frozen, "total": trainable + frozen, "modules": modules}


# ----------------------------------------------------------------------------- learning rates

def _check_rule(i: int, rule: Any, lr: float) -> tuple[str, float]:
    key = f"optim.param_groups[{i}]"
    if not isinstance(rule, Mapping) or not isinstance(rule.get("pattern"), str):
        raise ConfigError(f"{key} is {rule!r}", hint='write each rule as {"pattern": "blocks.0.*", "lr": 1e-4} or with "lr_mult"')
    unknown = set(rule) - {"pattern", "lr", "lr_mult"}
    if unknown:
        raise ConfigError(f"{key} has unknown keys {sorted(unknown)}", hint="allowed keys: pattern, lr, lr_mult")
    given = [k for k in ("lr", "lr_mult") if k in rule]
    if len(given) != 1:
        raise ConfigError(
            f"{key} (pattern {rule['pattern']!r}) gives {' and '.join(given) if given else 'neither lr nor lr_mult'}",
            hint="give exactly one: lr (an absolute rate) or lr_mult (a multiple of the base lr)",
        )
    value = rule[given[0]]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{key}.{given[0]} is {value!r}", hint="use a positive number")
    return rule["pattern"], float(value) if given[0] == "lr" else lr * value


def param_groups(model: nn.Module, lr: float, rules: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """Torch-style parameter groups for ``fit(..., param_groups=...)``: discriminative
    learning rates by parameter-name pattern.

    Each rule is ``{"pattern": str, "lr": float}`` or ``{"pattern": str, "lr_mult": float}``
    (a multiple of ``lr``). The first rule whose pattern matches a parameter's name decides
    its group; parameters no rule matches form the ``"default"`` group at ``lr``, which
    comes first so that the ``lr`` fit logs is the base rate. Frozen parameters are
    included, so unfreezing them later trains them at their group's rate. Groups no
    parameter ended up in are dropped; each group carries its ``"name"`` (the pattern).

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
        >>> groups = param_groups(model, 1e-3, [{"pattern": "0.*", "lr_mult": 0.1}])
        >>> [(g["name"], g["lr"], len(g["params"])) for g in groups]
        [('default', 0.001, 2), ('0.*', 0.0001, 2)]
    """
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ConfigError(f"optim.lr is {lr!r}", hint="use a positive number")
    checked = [_check_rule(i, rule, lr) for i, rule in enumerate(rules)]
    named = list(model.named_parameters())
    for i, (pattern, _) in enumerate(checked):
        if not any(fnmatchcase(n, pattern) for n, _ in named):
            raise ConfigError(
                f"optim.param_groups[{i}] pattern {pattern!r} matches no parameter",
                hint=_no_match_error(model, pattern, "optim.param_groups").hint,
            )
    members: list[list[nn.Parameter]] = [[] for _ in checked]
    default: list[nn.Parameter] = []
    for name, p in named:
        rule_index = next((i for i, (pattern, _) in enumerate(checked) if fnmatchcase(name, pattern)), None)
        (default if rule_index is None else members[rule_index]).append(p)
    groups = [{"name": "default", "params": default, "lr": float(lr)}]
    groups += [{"name": pattern, "params": ps, "lr": group_lr} for (pattern, group_lr), ps in zip(checked, members)]
    return [g for g in groups if g["params"]]


def layerwise_lr_groups(model: nn.Module, lr: float, decay: float, layers: Sequence[str]) -> list[dict[str, Any]]:
    """Layer-wise learning-rate decay (ULMFiT, BERT fine-tuning): ``layers`` lists one
    pattern per layer, bottom to top; the top layer trains at ``lr`` and each layer below
    at ``decay`` times the rate of the one above, so ``layers[i]`` gets
    ``lr * decay ** (len(layers) - 1 - i)``. Parameters no pattern matches (the head)
    train at ``lr``.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
        >>> groups = layerwise_lr_groups(model, 1e-3, 0.5, ["0.*", "1.*"])
        >>> {g["name"]: g["lr"] for g in groups}
        {'default': 0.001, '0.*': 0.0005, '1.*': 0.001}
    """
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay <= 1:
        raise ConfigError(f"optim.layerwise_decay is {decay!r}",
                          hint="use a factor in (0, 1], e.g. 0.8: lower layers learn more slowly")
    if isinstance(layers, str) or not layers:
        raise ConfigError(f"optim.layerwise layers is {layers!r}",
                          hint="give a list of patterns, bottom layer first, e.g. ['blocks.0.*', 'blocks.1.*']")
    depth = len(layers) - 1
    rules = [{"pattern": pattern, "lr": lr * decay ** (depth - i)} for i, pattern in enumerate(layers)]
    return param_groups(model, lr, rules)


# ----------------------------------------------------------------------------- gradual unfreezing

class GradualUnfreezing(Callback):
    """Unfreeze the model stage by stage during :func:`~dlforge.train.fit` (ULMFiT).

    The model starts as the user froze it. At the start of epoch ``k * every_n_epochs``
    (``k = 1, 2, ...``, epochs counted from 0) the patterns of ``stages[k - 1]`` are
    unfrozen, so list the stages top layer first. Each unfreeze is logged to the history
    as ``{"type": "unfreeze", "epoch", "step", "stage", "patterns", "tensors",
    "parameters"}``.

    ``fit`` builds its optimizer from every parameter, frozen ones included (see
    :func:`param_groups`), so an unfrozen parameter starts training at its group's rate.
    ``requires_grad`` is not part of a model's state dict: on resume, the unfreezes done
    before the checkpoint are re-applied in ``on_fit_start``.

    Example:
        >>> GradualUnfreezing([["blocks.1.*"], ["blocks.0.*"]], every_n_epochs=2).stages
        [['blocks.1.*'], ['blocks.0.*']]
    """

    def __init__(self, stages: Sequence[Patterns], every_n_epochs: int = 1) -> None:
        if isinstance(stages, str) or not stages:
            raise ConfigError(f"train.gradual_unfreezing.stages is {stages!r}",
                              hint="give a list of stages, each a list of patterns, top layers first")
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ConfigError(f"train.gradual_unfreezing.every_n_epochs is {every_n_epochs!r}",
                              hint="use a positive integer")
        self.stages = [_as_patterns(stage) for stage in stages]
        self.every_n_epochs = every_n_epochs
        self.done = 0                         # stages unfrozen so far
        self._restored: int | None = None     # set by load_state_dict, consumed by on_fit_start

    def on_fit_start(self, state: TrainState) -> None:
        # Check every stage now, not epochs into the run. A parameter the optimizer does not
        # hold would be unfrozen and then silently never trained.
        in_optimizer = {id(p) for group in state.optimizer.param_groups for p in group["params"]}
        for stage in self.stages:
            missing = [n for n, p in _matching(state.model, stage, "train.gradual_unfreezing") if id(p) not in in_optimizer]
            if missing:
                raise ConfigError(
                    f"train.gradual_unfreezing would unfreeze {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}, "
                    "which the optimizer does not hold",
                    hint="build param_groups from every parameter, frozen ones included (dlforge.train.param_groups does)",
                )
        done, self._restored, self.done = self._restored or 0, None, 0
        for k in range(done):
            unfreeze(state.model, self.stages[k])
        self.done = done

    def on_epoch_start(self, state: TrainState) -> None:
        due = min(len(self.stages), state.epoch // self.every_n_epochs)
        while self.done < due:
            stage = self.stages[self.done]
            names = unfreeze(state.model, stage)
            params = dict(state.model.named_parameters())
            state.log({
                "type": "unfreeze", "epoch": state.epoch, "step": state.step, "stage": self.done,
                "patterns": list(stage), "tensors": len(names), "parameters": sum(params[n].numel() for n in names),
            })
            self.done += 1

    def state_dict(self) -> dict[str, Any]:
        return {"done": self.done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._restored = int(state["done"])


# ----------------------------------------------------------------------------- pretrained weights

@dataclass
class TransferReport:
    """What :func:`load_pretrained_weights` copied (``loaded``) and what it left alone
    (``skipped``: name -> reason)."""

    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """One line, e.g. ``loaded 7 tensors; skipped 2: head.weight (shape ...), ...``.

        Example:
            >>> TransferReport(["a.weight"], {"head.bias": "not in the artifact"}).summary()
            'loaded 1 tensor; skipped 1: head.bias (not in the artifact)'
        """
        line = f"loaded {len(self.loaded)} tensor{'s' if len(self.loaded) != 1 else ''}"
        if not self.skipped:
            return line + "; skipped none"
        shown = [f"{name} ({why})" for name, why in list(self.skipped.items())[:4]]
        more = f", and {len(self.skipped) - 4} more" if len(self.skipped) > 4 else ""
        return f"{line}; skipped {len(self.skipped)}: {', '.join(shown)}{more}"


def _artifact_folder(source: str | Path) -> Path:
    path = Path(source)
    if (path / "model").is_dir() and not (path / _META_FILE).exists():
        path = path / "model"  # a run directory: its artifact lives in model/
    for required in (path / _META_FILE, path / _WEIGHTS_FILE):
        if not required.is_file():
            raise ArtifactError(f"{required} is missing",
                                hint="point at an artifact folder (save_artifact) or a run directory with a model/ folder")
    return path


def copy_matching(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *,
                  source: str = "the state dict") -> TransferReport:
    """Copy the tensors of ``state_dict`` into ``model`` wherever name and shape agree.

    The in-memory core of :func:`load_pretrained_weights`: tensors whose shapes differ or
    whose names exist on one side only are skipped and listed in the report (``source``
    names the other side in the reasons). Nothing is required to match.

    Example:
        >>> a = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
        >>> b = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
        >>> report = copy_matching(b, a.state_dict())
        >>> report.loaded, report.skipped["1.bias"]
        (['0.weight', '0.bias'], 'shape [2] in the state dict, [3] in the model')
    """
    report = TransferReport()
    own = model.state_dict()  # tensors share storage with the parameters and buffers
    with torch.no_grad():
        for name, target in own.items():
            if name not in state_dict:
                report.skipped[name] = f"not in {source}"
            elif state_dict[name].shape != target.shape:
                report.skipped[name] = f"shape {list(state_dict[name].shape)} in {source}, {list(target.shape)} in the model"
            else:
                target.copy_(state_dict[name])
                report.loaded.append(name)
    for name in sorted(state_dict.keys() - own.keys()):
        report.skipped[name] = "not in the model"
    return report


def load_pretrained_weights(model: nn.Module, source: str | Path) -> TransferReport:
    """Copy the weights of the artifact at ``source`` (an artifact folder or a run
    directory) into ``model`` wherever name and shape agree.

    The artifact must hold the same architecture family (``type(model).ARCH``). Tensors
    whose shapes differ (a head for another number of classes) or whose names exist on one
    side only are skipped and listed in the report; loading no parameter at all is an error.
    Weights are read with safetensors, never unpickled.

    Example:
        >>> report = load_pretrained_weights(model, "runs/pretrain-20240101-120000")  # doctest: +SKIP
        >>> report.summary()  # doctest: +SKIP
        'loaded 9 tensors; skipped 2: head.weight (shape [10, 64] in the artifact, [5, 64] in the model), ...'
    """
    folder = _artifact_folder(source)
    meta_path = folder / _META_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{meta_path} is not valid JSON: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != _ARTIFACT_FORMAT:
        raise ArtifactError(f"{meta_path} is not a dlforge artifact",
                            hint="point at a folder written by save_artifact or dlforge train")
    arch = getattr(type(model), "ARCH", None)
    if arch is None:
        raise ArtifactError(f"{type(model).__name__} is not a dlforge model, so it cannot be matched to {folder}",
                            hint="build the model with dlforge.models.build")
    if meta.get("arch") != arch:
        raise ArtifactError(f"{folder} holds a {meta.get('arch')!r} model, but the model is a {arch!r}",
                            hint=f"build the model with arch: {meta.get('arch')}, or pick a {arch} artifact")
    try:
        weights = load_file(str(folder / _WEIGHTS_FILE))
    except (SafetensorError, OSError) as err:
        raise ArtifactError(f"{folder / _WEIGHTS_FILE} is not a readable safetensors file: {err}") from None

    report = copy_matching(model, weights, source="the artifact")
    # Scalars such as BatchNorm's num_batches_tracked match any model; only parameters count.
    param_names = {n for n, _ in model.named_parameters()}
    if not param_names.intersection(report.loaded):
        raise ArtifactError(f"no tensor in {folder} matches the model by name and shape ({report.summary()})",
                            hint="the artifact was trained with a different configuration; check its model.json spec")
    return report
