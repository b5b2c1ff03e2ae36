"""Settings of one ``dlforge serve`` process.

Every field has a safe default: the server binds 127.0.0.1, requires API keys and caps
request bodies, queues and batch sizes. ``dlforge serve`` fills them from its options;
tests build them directly.

Example:
    >>> s = ServeSettings(registry="sqlite:///reg.db", max_batch_size=8)
    >>> s.host, s.require_keys, s.max_batch_size
    ('127.0.0.1', True, 8)
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class ServeSettings(BaseModel):
    """What the app, its model pool and its security layer read (``app.state.settings``)."""

    model_config = ConfigDict(extra="forbid")

    registry: str | None = None  # SQLAlchemy URL or a file path; None: Registry() defaults (env DLFORGE_REGISTRY)
    artifacts: str | None = None  # artifact folder; None: env DLFORGE_ARTIFACTS or registry/artifacts
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    grpc_port: int | None = Field(None, ge=0, le=65535)  # the V2 protocol over gRPC on host:grpc_port; None: off
    require_keys: bool = True  # False only with `dlforge serve --no-auth`
    max_body_bytes: int = Field(1_048_576, ge=1)  # JSON bodies; 413 above
    max_upload_bytes: int = Field(512 * 2**20, ge=1)  # the tar.gz upload (compressed and extracted totals)
    max_batch_size: int = Field(32, ge=1)
    max_wait_ms: float = Field(2.0, ge=0)
    max_queue: int = Field(256, ge=1)
    poll_interval: float = Field(2.0, gt=0)  # seconds between registry.revision() checks
    drift_window: int = Field(1000, ge=1)
    models: list[str] | None = None  # model names to serve; None: every model in the registry
    max_inputs: int = Field(1024, ge=1)  # samples per predict request
    max_tokens: int = Field(32_768, ge=1)  # text tokens per predict request (after truncation); 413 above
    max_image_pixels: int = Field(4096 * 4096, ge=1)  # per segmentation image (voxels for 3D); 413 above
    # Connections (see serve/server.py): slow or idle sockets must not starve normal clients.
    header_timeout_s: float = Field(10.0, gt=0)  # a request's line and headers must arrive within this
    body_timeout_s: float = Field(30.0, gt=0)  # the whole body must arrive within this (408)
    keep_alive_s: float = Field(5.0, gt=0)  # an idle keep-alive connection is closed after this
    max_connections: int | None = Field(None, ge=1)  # None: derived from the open-files limit at start-up
    quantize: Literal["none", "int8"] = "none"  # int8: dynamic int8 Linear layers, applied at load (CPU)
    runtime: Literal["torch", "onnxruntime"] = "torch"  # onnxruntime: each artifact's model.onnx (dlforge export)
    # Keys made valid at start-up (dlforge serve reads $DLFORGE_ADMIN_KEYS / $DLFORGE_PREDICT_KEYS,
    # comma-separated: a Kubernetes Secret); never logged or shown.
    admin_keys: list[SecretStr] = Field(default_factory=list)
    predict_keys: list[SecretStr] = Field(default_factory=list)
