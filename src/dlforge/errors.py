"""Errors a user can fix: each says what is wrong and what to do about it.

The CLI prints these without a traceback and exits with status 2; Python users catch
them as ``ValueError`` subclasses.

Example:
    >>> raise DataError("column 'label' not found", hint="pick one of: a, b, c")
    Traceback (most recent call last):
    ...
    dlforge.errors.DataError: column 'label' not found (pick one of: a, b, c)
"""

from __future__ import annotations


class DlforgeError(ValueError):
    """Base class for input errors; ``hint`` says how to fix the problem."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} ({hint})" if hint else message)


class ConfigError(DlforgeError):
    """A configuration key is unknown, has the wrong type or is out of range."""


class DataError(DlforgeError):
    """A data source is missing, malformed or does not fit the task."""


class ArtifactError(DlforgeError):
    """A saved model folder is missing files, names an unknown arch or does not match."""


class ExportError(DlforgeError):
    """A model cannot be exported (e.g. to ONNX): an op the format cannot express; nothing was written."""


class RegistryError(DlforgeError):
    """A registry request names something invalid or cannot be carried out."""


class NotFoundError(RegistryError):
    """An unknown model, version, alias or API key (the server answers 404)."""


class ConflictError(RegistryError):
    """A change that would break something in use, e.g. deleting an aliased version (409)."""


class StorageError(DlforgeError):
    """The disk is full or not writable; nothing half-written was kept (HTTP 507, exit 2)."""


class UnavailableError(RegistryError):
    """A registered version exists but cannot be served (it fails to load): HTTP 503."""
