"""Request and response bodies of the server: typed, so ``/openapi.json`` describes them exactly.

Error bodies (``ErrorResponse``, ``error_responses``) come from :mod:`dlforge.serve.security`.

Example:
    >>> PredictRequest(inputs=[[5.1, 3.5, 1.4, 0.2]], alias="candidate").alias
    'candidate'
    >>> PredictRequest.model_json_schema()["properties"]["inputs"]["minItems"]
    1
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    WithJsonSchema,
)

from dlforge.serve.errors import ErrorBody, error_responses
from dlforge.serve.routing import TrafficConfig

__all__ = [
    "DriftReport", "DriftResponse", "DriftStat", "ErrorResponse", "ExperimentResponse", "FeedbackRequest",
    "FeedbackResponse", "HealthResponse", "InputWarning", "LatencyStats", "ModelDetail", "ModelSummary", "PredictRequest",
    "PredictResponse", "ReadyResponse", "SegmentationMask", "SegmentationOutput", "SignificanceTest", "VariantStats",
    "VersionInfo", "error_responses",
]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"  # dlforge.registry.names; '..' is refused too

# One item of "inputs", kept as the client sent it: which forms are allowed depends on the
# model (see dlforge.serve.inputs), and the route names the bad field itself.
InputItem = Annotated[Any, WithJsonSchema({
    "anyOf": [
        {"type": "number", "description": "a one-number sample (model input shape [1])"},
        {"type": "string", "description": "a text, for text models (encoded with the stored tokenizer)"},
        {"type": "array", "items": {}, "description": "a raw sample as nested numbers: image pixels in the "
                                                      "source's units ([H, W], [H, W, C] or [C, H, W]; segmentation "
                                                      "models: [H, W], [C, H, W] or [C, D, H, W] of any size), a "
                                                      "table row's raw encoded numbers, a series window, or token ids"},
        {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
         "description": 'a raw table row {column: value}, for tabular models; {"b64": "<base64 PNG or '
                        'JPEG>"} for image models ("<base64 PNG or TIFF>" for segmentation models)'},
    ],
})]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PredictRequest(_Strict):
    """Samples to predict and, optionally, which version answers."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"inputs": [[5.1, 3.5, 1.4, 0.2]]},
        {"inputs": [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}],
         "alias": "candidate"},
        {"inputs": ["a fine film"], "version": 2},
    ]})

    inputs: list[InputItem] = Field(
        ..., min_length=1,
        description="one raw item per sample, in the source's own units (GET /v1/models/{name} describes "
                    "the forms a model takes, with an example body): nested numbers (image pixels, series "
                    "windows, token ids), strings for text models, objects {column: value} for tabular "
                    "models, {\"b64\": ...} images. JSON true/false are not numbers, and text must be valid "
                    "Unicode (no lone surrogates). At most the server's max_inputs items (1024 by default) and, "
                    "for text models, max_tokens tokens in all after truncation (32,768 by default; 413 above).")
    version: int | None = Field(None, ge=1, description="ask this version (it must be loaded); wins over alias")
    alias: str | None = Field(None, pattern=NAME_PATTERN, description="ask the version this alias points at")
    mask_format: Literal["png", "rle"] | None = Field(
        None, description='segmentation models only: "png" (the default; a multi-page TIFF for 3D) or "rle" '
                          "(COCO-style uncompressed run lengths per class)")


class SegmentationMask(BaseModel):
    """One predicted label map, as an image or as run lengths per class."""

    format: Literal["png", "tiff", "rle"]
    b64: str | None = Field(None, description="png/tiff: the base64 image of class indices (a binary mask as "
                                              "0/255); 3D masks are multi-page TIFFs, one page per slice")
    classes: dict[str, dict[str, list[int]]] | None = Field(
        None, description='rle: {class: {"size": [H, W], "counts": [...]}}, uncompressed COCO RLE (column-major, '
                          "first run of 0s); 3D: size [D, H, W], the first axis fastest "
                          "(dlforge.registry.segment.rle_decode reads it back)")


class SegmentationOutput(BaseModel):
    """The answer for one image of a segmentation model."""

    shape: list[int] = Field(description="the mask's shape: the image's [H, W] or [D, H, W]")
    mask: SegmentationMask
    areas: dict[str, int] = Field(description="pixels (voxels) per class; they add up to the image's size")


class InputWarning(BaseModel):
    """An input answered normally but far outside what the model saw in training."""

    input: int = Field(description="index of the input in the request")
    feature: str = Field(description="the table column (one-hot: column=category), image channel c0.. or series "
                                     "feature x0..")
    value: float = Field(description="the input's value, standardised as the model sees it")
    training_range: list[float] = Field(description="[min, max] of the training inputs, standardised the same way")
    message: str


class PredictResponse(_Strict):
    """Predictions for every sample, in request order, and who answered."""

    request_id: str = Field(description="quote it in POST /v1/models/{name}/feedback")
    model: str
    version: int
    variant: str = Field(description='the alias that answered, "version:N", or "latest"')
    outputs: list[str | float | list[float] | SegmentationOutput] = Field(
        description="class names (classification), values (regression: a number per sample, or a list "
                    "when the model has several outputs) or, for segmentation, a mask and class areas per image")
    probabilities: list[list[float]] | None = Field(None, description="class probabilities per sample")
    class_names: list[str] | None = None
    latency_ms: float
    warnings: list[InputWarning] | None = Field(
        None, description="inputs far outside the training range (more than 3 range widths beyond it): answered, "
                          "but check their units; counted in dlforge_out_of_range_inputs_total")


def text_problem(text: str) -> str | None:
    """Why ``text`` is not valid Unicode text (a lone surrogate, which JSON's ``\\ud800`` escape
    can carry but UTF-8 cannot), or None. The text itself is never echoed.

    Example:
        >>> text_problem("a fine film") is None, text_problem("bad \\ud800")[:40]
        (True, 'not valid Unicode: a lone surrogate U+D8')
    """
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return (f"not valid Unicode: a lone surrogate U+{ord(text[err.start]):04X} at character {err.start} "
                "(a \\ud800-\\udfff escape must be half of a pair); send UTF-8 text")
    return None


def _valid_text(text: str) -> str:
    problem = text_problem(text)
    if problem:
        raise ValueError(problem)
    return text


Text = Annotated[StrictStr, AfterValidator(_valid_text)]  # no lone surrogates (JSON's "\\ud800")
Label = Text | StrictInt | Annotated[StrictFloat, Field(allow_inf_nan=False)]


class FeedbackRequest(_Strict):
    """The true label of an earlier request, to measure each variant's accuracy."""

    request_id: str = Field(min_length=1, max_length=64)
    label: Label | list[Label] = Field(
        description="the true class (name or index); a list with one label per input for a multi-input request")


class FeedbackResponse(_Strict):
    request_id: str
    recorded: bool


class LatencyStats(BaseModel):
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None


class VariantStats(BaseModel):
    """One variant (alias, "version:N", "latest" or "shadow:alias") of an experiment."""

    requests: int
    versions: list[int] = Field(default_factory=list, description="the versions that answered")
    latency_ms: LatencyStats
    feedback: int
    correct: int
    accuracy: float | None = None


class SignificanceTest(BaseModel):
    """Two-proportion z-test of accuracy, control vs treatment."""

    control: str
    treatment: str
    z: float | None = None
    p_value: float | None = None
    alpha: float | None = None
    significant: bool
    min_sample_size: int | None = None
    samples_still_needed: int | None = None


class ExperimentResponse(BaseModel):
    model: str
    variants: dict[str, VariantStats]
    test: SignificanceTest | None = Field(None, description="the first of tests; None until two variants have feedback")
    tests: list[SignificanceTest] = Field(default_factory=list, description="each treatment against the control")


class DriftStat(BaseModel):
    psi: float | None = None
    ks: float | None = None
    drifted: bool = False


class DriftReport(BaseModel):
    """Live inputs of one loaded version against its training reference."""

    version: int
    available: bool
    reason: str | None = None
    n_live: int = 0
    window: int = 0
    features: dict[str, DriftStat] = Field(default_factory=dict)
    prediction: DriftStat | None = None
    drifted: list[str] = Field(default_factory=list)


class DriftResponse(BaseModel):
    model: str
    versions: list[DriftReport]


class VersionInfo(BaseModel):
    """One registered version (its storage path is never shown)."""

    version: int
    created: str
    sha256: str
    task: str | None = None
    arch: str | None = None
    class_names: list[str] | None = None
    input_signature: dict[str, Any] | None = Field(None, description='{"shape": [null, ...], "dtype": ...}')
    inputs: dict[str, Any] | None = Field(
        None, description="what one item of a predict request's inputs is, the way a client sends it: table "
                          "columns and types, image size, colour mode and raw pixel range, text or series "
                          "forms, and an example request body")
    metrics: dict[str, float]
    aliases: list[str]
    loaded: bool
    run: str | None = Field(None, description="the run directory (its name) whose training wrote this version; "
                                              "null when unknown (saved outside a run, or before runs recorded it)")


class ModelSummary(BaseModel):
    name: str
    latest_version: int
    versions: int = Field(description="how many versions are registered")
    aliases: dict[str, int]
    created: str | None = None
    loaded_versions: list[int]


class ModelDetail(BaseModel):
    name: str
    latest_version: int
    aliases: dict[str, int]
    traffic: TrafficConfig | None = None
    served_version: int | None = Field(
        None, description="the version that answers a request naming no version or alias: alias production, "
                          "else the latest; null while a traffic split picks per request (see traffic)")
    served_run: str | None = Field(None, description="the run that wrote served_version (null when unknown)")
    versions: list[VersionInfo]


class HealthResponse(BaseModel):
    status: str


class ReadyResponse(BaseModel):
    status: str
    models: list[str]


# Every 4xx/5xx body, {"error": {"code", "message", "hint"?, "fields"?, "request_id"}}: one definition,
# in the security layer that writes them.
ErrorResponse = ErrorBody
