"""The prediction service: what happens to one predict request, with no HTTP in sight.

:meth:`PredictionService.predict` turns a model name and raw inputs into a
:class:`~dlforge.serve.schemas.PredictResponse`:

1. resolve the answering version (explicit version, alias, traffic split, ``production``,
   latest) and lease it before any ``await``, so a hot swap cannot stop it mid-request;
2. encode the inputs with that version's rules (:mod:`dlforge.serve.inputs`; segmentation
   images of any size: :mod:`dlforge.serve.segmentation`, one batcher request per image), cap
   the text tokens (413) and note inputs far outside the training range;
3. with a shadow alias in the traffic split, send the same inputs to the shadow version in a
   background task: its answer is recorded (variant ``shadow:<alias>``, request id
   ``<id>-shadow``) but never returned, and its failure is counted and logged, never raised;
4. wait for the batcher, once more on the version chosen again if a hot swap stopped it;
5. refuse non-finite outputs (422) and record the request in the model's A/B experiment;
6. count the request once, with its status, through :meth:`Metrics.request`.

Feedback, experiment statistics and drift reports of a served model live here too.

Example:
    >>> service = PredictionService(pool)  # doctest: +SKIP
    >>> answer = await service.predict("iris", [[5.1, 3.5, 1.4, 0.2]], request_id="9c1e")  # doctest: +SKIP
    >>> answer.variant, answer.outputs  # doctest: +SKIP
    ('production', ['setosa'])
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from fastapi.exceptions import RequestValidationError

from dlforge.errors import DlforgeError, NotFoundError
from dlforge.registry.names import validate_name
from dlforge.serve.batching import BatcherStoppedError
from dlforge.serve.errors import error_status
from dlforge.serve.inputs import MAX_WARNINGS, check_encoded, encode_inputs
from dlforge.serve.tensor_checks import check_outputs, check_tokens, invalid
from dlforge.serve.monitor import RequestCount
from dlforge.serve.pool import LoadedModel, ModelPool
from dlforge.serve.schemas import InputWarning, PredictResponse
from dlforge.serve.segmentation import check_mask_format, encode_images, segment_on

log = logging.getLogger("dlforge.serve")
UNKNOWN = "_unknown"  # the model label of requests for names this server does not serve
THREAD_ENCODE_ITEMS = 32  # larger requests (and all text) are encoded off the event loop
ATTEMPTS = 2  # a second try only if a hot swap stopped the version under the request
_background: set[asyncio.Task] = set()  # shadow tasks: a reference keeps them from being garbage-collected


def shadow_id(request_id: str) -> str:
    """The experiment key of a request's shadow answer.

    Example:
        >>> shadow_id("9c1e")
        '9c1e-shadow'
    """
    return f"{request_id}-shadow"


class PredictionService:
    """Predictions, feedback, experiment statistics and drift of the models in ``pool``.

    Counts requests in the pool's metrics and reads its settings (``max_inputs``, ``max_tokens``).

    Example:
        >>> service = PredictionService(pool)  # doctest: +SKIP
        >>> r = await service.predict("iris", [[5.1, 3.5, 1.4, 0.2]], alias="candidate", request_id="r1")  # doctest: +SKIP
        >>> r.version, r.variant  # doctest: +SKIP
        (2, 'candidate')
    """

    def __init__(self, pool: ModelPool) -> None:
        self.pool, self.metrics, self.settings = pool, pool.metrics, pool.settings

    async def predict(self, name: str, inputs: list[Any], *, request_id: str, version: int | None = None,
                      alias: str | None = None, headers: Mapping[str, str] | None = None,
                      correlation_id: str | None = None, mask_format: str | None = None) -> PredictResponse:
        """Answer ``inputs`` with the version ``version``, ``alias``, the traffic split or the aliases choose.

        ``request_id`` is the server's id of the request (the experiment's key); ``headers``
        (case-insensitive, as an HTTP request's) give the traffic split's sticky header;
        ``correlation_id`` (the client's own id) is stored beside the record; ``mask_format``
        ("png" or "rle") is how a segmentation model's masks come back. Raises what the
        client is answered: NotFoundError, UnavailableError, ArtifactError, ApiError (413),
        RequestValidationError (422), QueueFullError (429).
        """
        started = time.perf_counter()
        if len(inputs) > self.settings.max_inputs:
            raise invalid([((), f"at most {self.settings.max_inputs} inputs per request, got {len(inputs)}")])
        alias = None if alias is None else validate_name(alias, "alias")
        # Unknown names are counted under one label: a scanner must not grow the metrics without bound.
        with self.metrics.request(name if self.pool.loaded(name) else UNKNOWN, in_flight=True) as count:
            model, variant, outputs, warnings = await self._answer(name, inputs, version, alias, headers,
                                                                   request_id, count, mask_format)
            check_outputs(outputs)  # a 422 naming the inputs, never a 200 with null numbers
            response = _response(model, outputs, request_id=request_id, variant=variant, started=started)
            if warnings:  # answered, but the client should check the units of these inputs
                response.warnings = [InputWarning(**w) for w in warnings[:MAX_WARNINGS]]
                self.metrics.out_of_range.labels(count.model).inc(len({w["input"] for w in warnings}))
            self.pool.experiment(name).record(request_id, variant, model.version, _recorded(outputs, response),
                                              time.perf_counter() - started, indices=_indices(outputs),
                                              correlation_id=correlation_id)
            return response

    async def _answer(self, name: str, inputs: list[Any], version: int | None, alias: str | None,
                      headers: Mapping[str, str] | None, request_id: str, count: RequestCount,
                      mask_format: str | None = None) -> tuple[LoadedModel, str, dict[str, Any], list[dict[str, Any]]]:
        """(model, variant, outputs, range warnings): resolve, lease, encode, mirror to the shadow, run."""
        for attempt in range(1, ATTEMPTS + 1):
            model, variant, shadow = self.pool.resolve(name, version=version, alias=alias,
                                                       sticky_id=self._sticky_id(name, headers))
            count.version, count.variant = str(model.version), variant
            shadow_variant = f"shadow:{self.pool.traffic(name).shadow}" if shadow is not None else ""  # before any await
            try:
                with model.lease(), contextlib.ExitStack() as stack:  # leased before any await
                    if shadow is not None:
                        stack.enter_context(shadow.lease())
                    check_mask_format(model.artifact, mask_format)  # 422 for a model that answers no masks
                    x = await _encode(model, inputs, self.settings.max_image_pixels)  # masked-LM: ArtifactError
                    warnings: list[dict[str, Any]] = []
                    if isinstance(x, torch.Tensor):  # a list: segmentation images, one tensor each
                        check_tokens(model.artifact, x, self.settings.max_tokens)  # 413 above the cap
                        warnings = check_encoded(model.artifact, x, inputs)  # overflow: 422; far out: warnings
                    if shadow is not None:
                        shadow.acquire()  # released by the shadow task
                        _spawn(self._shadow(shadow, inputs, request_id, variant=shadow_variant))
                    return model, variant, await _submit(model, x, mask_format), warnings
            except BatcherStoppedError:
                if attempt == ATTEMPTS:
                    raise
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _shadow(self, model: LoadedModel, inputs: list[Any], request_id: str, *, variant: str) -> None:
        """Mirror one request to the shadow version (already acquired; released here)."""
        started = time.perf_counter()
        try:
            with self.metrics.request(model.name, version=model.version, variant=variant):
                x = await _encode(model, inputs, self.settings.max_image_pixels)
                if isinstance(x, torch.Tensor):
                    check_encoded(model.artifact, x, inputs)  # overflow: 422, counted, not recorded
                outputs = await _submit(model, x, "rle")  # a shadow's masks are never sent: RLE is cheaper
                check_outputs(outputs)  # a shadow's non-finite answer is counted (422), not recorded
                answer = _response(model, outputs, request_id=request_id, variant=variant, started=started)
                self.pool.experiment(model.name).record(shadow_id(request_id), variant, model.version,
                                                        _recorded(outputs, answer), time.perf_counter() - started,
                                                        indices=_indices(outputs))
        except Exception as err:  # the client already has its answer: counted above, logged here
            if error_status(err) >= 500:
                log.exception("shadow request to %s v%d failed", model.name, model.version)
        finally:
            model.release()

    def _sticky_id(self, name: str, headers: Mapping[str, str] | None) -> str | None:
        """The header value that keeps a user on one variant (the traffic config names the header)."""
        config = self.pool.traffic(name)
        header = "X-User-Id" if config is None else config.sticky_header
        return headers.get(header) if header and headers is not None else None

    # ------------------------------------------------------------------ after the answer
    def feedback(self, name: str, request_id: str, label: Any) -> None:
        """Record the true label of an earlier request (and of its shadow answer, when one came back).

        Raises NotFoundError for a model not served here or a request id not (or no longer) kept.
        """
        self._served(name)
        experiment = self.pool.experiment(name)
        if not experiment.feedback(request_id, label):
            raise NotFoundError(f"no recent request {request_id!r} for model {name!r}",
                                hint="quote the request_id of a predict response; the server keeps the last 10,000")
        with contextlib.suppress(DlforgeError):  # the shadow's answer is judged too, when it came back
            experiment.feedback(shadow_id(request_id), label, wait=False)  # no shadow: no waiting for one

    def experiment(self, name: str) -> dict[str, Any]:
        """Requests, latency and accuracy per variant and the A/B tests (:meth:`Experiment.stats`)."""
        self._served(name)
        return self.pool.experiment(name).stats()

    def drift(self, name: str) -> dict[int, dict[str, Any]]:
        """version -> :meth:`DriftMonitor.report` of each loaded version of ``name``, in version order."""
        return {v: m.drift.report() for v, m in sorted(self._served(name).items())}

    def _served(self, name: str) -> dict[int, LoadedModel]:
        loaded = self.pool.loaded(name)
        if not loaded:
            raise NotFoundError(f"model {name!r} is not served here", hint="GET /v1/models lists the served models")
        return loaded


# ---------------------------------------------------------------------------- helpers
async def _encode(model: LoadedModel, inputs: list[Any], max_pixels: int) -> torch.Tensor | list[torch.Tensor]:
    """The model-ready tensor (segmentation: one per image); the caller refuses overflow (check_encoded)."""
    if isinstance(inputs, np.ndarray):  # already-decoded tensors (the V2 protocol): one numpy batch, no lists
        if model.artifact.task != "segmentation":
            try:
                if len(inputs) > THREAD_ENCODE_ITEMS:
                    return await asyncio.to_thread(encode_inputs, model.inputs, model.artifact, inputs, check=False)
                return encode_inputs(model.inputs, model.artifact, inputs, check=False)
            except RequestValidationError:
                pass  # refused: the item-by-item checks below read lists, and name the bad field
        inputs = inputs.tolist()
    if model.artifact.task == "segmentation":  # images of any size: one (C, *S) tensor each, decoded in a thread
        return await asyncio.to_thread(encode_images, model.artifact, inputs, max_pixels)
    if model.inputs.kind == "text" or len(inputs) > THREAD_ENCODE_ITEMS:
        return await asyncio.to_thread(encode_inputs, model.inputs, model.artifact, inputs, check=False)
    return encode_inputs(model.inputs, model.artifact, inputs, check=False)


async def _submit(model: LoadedModel, x: torch.Tensor | list[torch.Tensor], mask_format: str | None) -> dict[str, Any]:
    if isinstance(x, list):  # segmentation: one batcher request per image (only equal sizes share a batch)
        return await segment_on(model.batcher, x, model.artifact.class_names, mask_format)
    return await model.batcher.submit(x)


def _spawn(coro) -> None:
    task = asyncio.create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


def _response(model: LoadedModel, outputs: dict[str, Any], *, request_id: str, variant: str,
              started: float) -> PredictResponse:
    if "segments" in outputs:  # one {"shape", "mask", "areas"} per image
        return PredictResponse(request_id=request_id, model=model.name, version=model.version, variant=variant,
                               outputs=outputs["segments"], class_names=model.artifact.class_names,
                               latency_ms=(time.perf_counter() - started) * 1000)
    # Labels and numbers come from the server's own tensors (str and float lists): built without
    # validating them again; tests/serve/test_request_path_checks.py holds both forms to the same JSON.
    if "labels" in outputs:
        probabilities = outputs["probabilities"]
        return PredictResponse.model_construct(
            request_id=request_id, model=model.name, version=model.version, variant=variant,
            outputs=list(outputs["labels"]), probabilities=_as_list(probabilities),
            class_names=model.artifact.class_names or [str(i) for i in range(probabilities.shape[1])],
            latency_ms=(time.perf_counter() - started) * 1000)
    values = _as_list(outputs["values"])
    values = [v[0] if isinstance(v, list) and len(v) == 1 else v for v in values]  # one output: a number
    return PredictResponse.model_construct(request_id=request_id, model=model.name, version=model.version,
                                           variant=variant, outputs=values,
                                           latency_ms=(time.perf_counter() - started) * 1000)


def _as_list(value: Any) -> list:
    if isinstance(value, torch.Tensor):
        return value.tolist()  # (any device; the batch ran under inference_mode: nothing to detach)
    return value.tolist() if hasattr(value, "tolist") else list(value)


def _recorded(outputs: dict[str, Any], response: PredictResponse) -> list:
    """What the experiment keeps per sample: the answer, or a segmentation's class areas (not its masks)."""
    return outputs["areas"] if "segments" in outputs else response.outputs


def _indices(outputs: dict[str, Any]) -> list[int] | None:
    return _as_list(outputs["indices"]) if "indices" in outputs else None
