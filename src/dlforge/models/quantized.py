"""int8 models for CPU inference: the quantization recipes and how to rebuild them.

A recipe is a small JSON dict stored in an artifact's model.json; the artifact stores the
state beside it, so loading rebuilds the fp32 model from its spec and then:

- ``{"kind": "dynamic_int8"}``: loads the fp32 weights, then quantizes Linear, LSTM and
  GRU weights to int8 (activations are quantized on the fly, batch by batch).
- ``{"kind": "static_int8", "engine": "x86", "qconfig": "default", "example_shape": [1, 8, 8]}``:
  int8 weights *and* activations (torch.ao FX graph mode). The state is the calibrated
  *prepared* model's: weights plus the observers' statistics, all plain tensors, so
  ``prepare`` with the same recipe, ``load_state_dict`` and ``convert_fx`` give back the
  same int8 model, bit for bit.
- ``{"kind": "qat_int8", ...}``: the same for a model trained with fake quantization.

``qconfig`` is ``"default"`` (per-channel weights, torch's mapping for the engine) or
``"per_tensor"`` (one scale per weight tensor). MLPs and CNNs are FX-traceable
(:func:`is_tracing` turns their Python input checks off while tracing), so they take the
static and QAT recipes; other archs take dynamic int8 or ONNX Runtime.

Example:
    >>> import torch
    >>> from dlforge.models import build
    >>> model = build({"arch": "mlp", "hidden": [16]}, input_shape=(4,), num_outputs=3)
    >>> recipe = static_recipe(model)
    >>> observed = prepare(model, recipe)
    >>> _ = observed(torch.randn(32, 4))                # calibration
    >>> int8 = load_quantized(model, recipe, observed.state_dict())
    >>> int8(torch.randn(2, 4)).shape
    torch.Size([2, 3])
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.ao import quantization as tq
from torch.ao.quantization import quantize_fx

from dlforge.errors import ArtifactError, ConfigError, DataError

KINDS = ("dynamic_int8", "static_int8", "qat_int8")
QCONFIGS = ("default", "per_tensor")
GRAPH_ARCHS = ("mlp", "cnn")  # FX-traceable: the static and QAT recipes
DYNAMIC_MODULES = {nn.Linear, nn.LSTM, nn.GRU}
# Observer statistics whose length calibration sets (per-channel: one per output channel).
_SIZED_BY_CALIBRATION = ("min_val", "max_val", "scale", "zero_point")


def is_tracing() -> bool:
    """True while torch.fx traces a model (int8 quantization) or torch.compile compiles one:
    model code skips its Python input checks then, since a traced graph keeps no branches.

    Example:
        >>> is_tracing()
        False
    """
    return torch.fx._symbolic_trace.is_fx_symbolic_tracing() or torch.compiler.is_compiling()


def static_recipe(model: nn.Module, *, engine: str = "x86", qconfig: str = "default",
                  kind: str = "static_int8") -> dict[str, Any]:
    """The recipe for static (or, with ``kind="qat_int8"``, quantization-aware) int8 of ``model``.

    Example:
        >>> from dlforge.models import build
        >>> static_recipe(build({"arch": "cnn"}, input_shape=(1, 8, 8), num_outputs=10))
        {'kind': 'static_int8', 'engine': 'x86', 'qconfig': 'default', 'example_shape': [1, 8, 8]}
    """
    shape = getattr(getattr(model, "config", None), "input_shape", None)
    recipe = {"kind": kind, "engine": engine, "qconfig": qconfig, "example_shape": list(shape or [])}
    check_recipe(recipe, model, error=ConfigError)
    return recipe


def check_recipe(recipe: Any, model: nn.Module | None = None, *, error: type = ArtifactError) -> None:
    """Refuse a recipe that is not one of :data:`KINDS` or does not fit ``model`` (``error``
    is raised: ArtifactError for a stored recipe, ConfigError for one being made)."""
    kind = recipe.get("kind") if isinstance(recipe, dict) else None
    if kind not in KINDS:
        raise error(f"unknown quantization recipe {recipe!r}",
                    hint=f"kind must be one of: {', '.join(KINDS)}; a newer dlforge may know it")
    if kind == "dynamic_int8":
        return
    if recipe.get("qconfig") not in QCONFIGS:
        raise error(f"quantization qconfig {recipe.get('qconfig')!r} is unknown", hint=f"use one of: {', '.join(QCONFIGS)}")
    if recipe.get("engine") not in torch.backends.quantized.supported_engines:
        raise error(f"quantization engine {recipe.get('engine')!r} is not available in this PyTorch",
                    hint=f"use one of: {', '.join(torch.backends.quantized.supported_engines)}")
    if model is None:
        return
    arch = getattr(type(model), "ARCH", type(model).__name__)
    if arch not in GRAPH_ARCHS:
        raise error(f"{kind} quantizes {' and '.join(GRAPH_ARCHS)} models, not {arch}",
                    hint="use dynamic int8 (dlforge compress --method quantize-dynamic) or ONNX Runtime int8 "
                    "(dlforge export --format onnx --quantize dynamic)")
    if recipe.get("example_shape") != list(model.config.input_shape):
        raise error(f"the recipe's example_shape {recipe.get('example_shape')} is not the model's input shape "
                    f"{list(model.config.input_shape)}", hint="make the recipe with static_recipe(model)")


def _qconfig_mapping(recipe: dict[str, Any]) -> tq.QConfigMapping:
    qat = recipe["kind"] == "qat_int8"
    engine = recipe["engine"]
    mapping = tq.get_default_qat_qconfig_mapping(engine) if qat else tq.get_default_qconfig_mapping(engine)
    if recipe["qconfig"] == "per_tensor":  # one scale per weight tensor instead of per channel
        base = mapping.global_qconfig
        weight = tq.default_weight_fake_quant if qat else tq.default_weight_observer
        mapping.set_global(tq.QConfig(activation=base.activation, weight=weight))
    return mapping


@contextmanager
def _engine(name: str) -> Iterator[None]:
    """Pack (and run) int8 kernels for ``name``; the process-wide setting is put back after."""
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's deprecation notices, one per call
            yield
    finally:
        torch.backends.quantized.engine = before


def prepare(model: nn.Module, recipe: dict[str, Any]) -> nn.Module:
    """An observed copy of fp32 ``model`` (``model`` is unchanged): run calibration batches
    through it (static), or train it (QAT: fake quantization), then hand its ``state_dict()``
    to :func:`load_quantized`. BatchNorm is folded into the conv (static) or kept, with fake
    quantized weights, for training (QAT).

    Example:
        >>> observed = prepare(model, static_recipe(model))  # doctest: +SKIP
    """
    check_recipe(recipe, model)
    qat = recipe["kind"] == "qat_int8"
    device = next(iter(model.state_dict().values())).device
    example = (torch.zeros(2, *recipe["example_shape"], device=device),)  # two samples: BN in train mode
    source = copy.deepcopy(model).train(qat)
    with _engine(recipe["engine"]):
        if qat:
            return quantize_fx.prepare_qat_fx(source, _qconfig_mapping(recipe), example)
        return quantize_fx.prepare_fx(source, _qconfig_mapping(recipe), example)


class QuantizedModel(nn.Module):
    """An int8 model for CPU inference, with the fp32 model's ``config`` and input check.

    The int8 graph itself has no Python checks (it was traced), so this wrapper refuses
    inputs of the wrong per-sample shape, and refuses moving to a GPU: these int8 kernels
    run on the CPU only.
    """

    def __init__(self, module: nn.Module, config: Any, recipe: dict[str, Any]) -> None:
        super().__init__()
        self.module, self.config, self.recipe = module, config, dict(recipe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _refuse_device(x.device)
        # A traced int8 graph lost the model's own checks; a dynamic one is the eager model
        # (its checks intact, and a BERT reads any sequence length up to max_position).
        expected = None if self.recipe.get("kind") == "dynamic_int8" else getattr(self.config, "input_shape", None)
        if expected is not None and tuple(x.shape[1:]) != tuple(expected):
            raise DataError(f"the int8 model got input of shape {tuple(x.shape)}, expected (B, "
                            f"{', '.join(str(d) for d in expected)})",
                            hint="the per-sample shape must equal model.input_shape; add a batch dimension "
                            "with x.unsqueeze(0) for a single sample")
        return self.module(x)  # (B, num_outputs); the packed weights know their engine

    def to(self, *args: Any, **kwargs: Any) -> QuantizedModel:
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        if device is not None:
            _refuse_device(torch.device(device))
        return super().to(*args, **kwargs)

    def cuda(self, device: Any = None) -> QuantizedModel:
        _refuse_device(torch.device("cuda"))
        return self


def _refuse_device(device: torch.device) -> None:
    if device.type != "cpu":
        raise ConfigError(f"int8 models run on the CPU only, not on {device}",
                          hint="load the artifact with device='cpu' (dlforge predict/serve --device cpu); "
                          "on a GPU serve the fp32 parent or export to ONNX")


def convert(observed: nn.Module, fp32: nn.Module, recipe: dict[str, Any]) -> QuantizedModel:
    """The int8 model from an observed (calibrated or QAT-trained) model on the CPU."""
    with _engine(recipe["engine"]):
        int8 = quantize_fx.convert_fx(copy.deepcopy(observed).cpu().eval())
    return QuantizedModel(int8, fp32.config, recipe).eval()


def dynamic(model: nn.Module) -> QuantizedModel:
    """``model`` (fp32, unchanged) with int8 Linear, LSTM and GRU weights, on the CPU."""
    source = copy.deepcopy(model).cpu().eval()
    recipe = {"kind": "dynamic_int8"}
    with _engine(torch.backends.quantized.engine):
        int8 = tq.quantize_dynamic(source, DYNAMIC_MODULES, dtype=torch.qint8)
    return QuantizedModel(int8, getattr(model, "config", None), recipe).eval()


def load_quantized(model: nn.Module, recipe: Any, state: dict[str, torch.Tensor]) -> QuantizedModel:
    """The int8 model that ``recipe`` and ``state`` describe, from fp32 ``model`` (its
    architecture; its weights are replaced). Raises ArtifactError for an unknown recipe or a
    state that does not fit.

    Example:
        >>> int8 = load_quantized(build(meta["spec"]), meta["quantization"], weights)  # doctest: +SKIP
    """
    check_recipe(recipe, model)
    target = model if recipe["kind"] == "dynamic_int8" else prepare(model, recipe)
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = "; ".join(line.strip() for line in str(err).splitlines()[1:4])
        raise ArtifactError(f"the stored int8 state does not fit a {recipe['kind']} {type(model).__name__}: {detail}",
                            hint="save the quantized model with save_artifact(..., quantization=q.recipe, "
                            "state=q.state)") from None
    if recipe["kind"] == "dynamic_int8":
        return dynamic(model)
    return convert(target, model, recipe)


def state_problems(model: nn.Module, recipe: Any, found: dict[str, list[int]]) -> list[str]:
    """How the tensor shapes ``found`` in a weights header differ from what ``recipe`` stores
    for ``model`` (built on the meta device: nothing is allocated); [] when they agree.

    Observer statistics that calibration sizes (per-channel scales, min/max) may hold one
    value per channel: any 1-D length up to the model's widest dimension.

    Example:
        >>> state_problems(meta_model, {"kind": "dynamic_int8"}, {})[:1]  # doctest: +SKIP
        ['missing layers.0.0.weight']
    """
    check_recipe(recipe, model)
    observed = model if recipe["kind"] == "dynamic_int8" else prepare(model, recipe)
    expected = {name: list(t.shape) for name, t in observed.state_dict().items()}
    widest = max((max(s) for s in expected.values() if s), default=1)

    def fits(name: str, shape: list[int]) -> bool:
        if shape == expected[name]:
            return True
        sized = name.rsplit(".", 1)[-1] in _SIZED_BY_CALIBRATION and expected[name] in ([0], [1])
        return sized and len(shape) == 1 and 1 <= shape[0] <= widest

    problems = [f"missing {k}" for k in expected if k not in found]
    problems += [f"unexpected {k}" for k in found if k not in expected]
    problems += [f"{k} has shape {found[k]}, the model expects {s}" for k, s in expected.items()
                 if k in found and not fits(k, found[k])]
    return problems
