"""Option checks shared by the loaders; each failure names the YAML key to fix."""

from __future__ import annotations

from dlforge.errors import DataError


def check_choice(value: object, allowed: tuple[str, ...], key: str) -> None:
    """Raise a DataError listing ``allowed`` when ``value`` is not one of them.

    Example:
        >>> check_choice("onehot", ("onehot", "reject"), "data.categorical")
    """
    if value not in allowed:
        raise DataError(f"{key} must be one of: {', '.join(allowed)}; got {value!r}",
                        hint=f"set {key}: {allowed[0]}")
