"""Model and alias names: safe as URL path segments, folder names and log fields.

Names arrive from URLs, so a name is URL-decoded until it stops changing before it is
checked: ``a%252F..`` decodes to ``a/..`` and is refused, rather than slipping through one
decoding layer and being decoded again by whatever reads it next.

Example:
    >>> validate_name("iris-mlp.v2")
    'iris-mlp.v2'
    >>> validate_name("iris%2Dmlp")
    'iris-mlp'
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from dlforge.errors import RegistryError

MAX_LEN = 128
_ALLOWED = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_DECODE_ROUNDS = 5
_RULE = "use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit, with no '..'"


def _reason(name: str) -> str | None:
    """Why ``name`` (already decoded) is not allowed, or None when it is."""
    if not name:
        return "it is empty"
    if "/" in name or "\\" in name:
        return "it contains a slash"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return "it contains a control character"
    if ".." in name:
        return "it contains '..'"
    if len(name) > MAX_LEN:
        return f"it is {len(name)} characters long (at most {MAX_LEN})"
    if not name[0].isascii() or not name[0].isalnum():
        return "it must start with a letter or digit"
    if _ALLOWED.fullmatch(name) is None:  # fullmatch: "$" would let a trailing newline through
        bad = sorted({ch for ch in name if not (ch.isascii() and (ch.isalnum() or ch in "._-"))})
        return f"it contains {', '.join(repr(ch) for ch in bad)}"
    return None


def validate_name(raw: str, kind: str = "model name") -> str:
    """The URL-decoded ``raw`` if it is a valid name; RegistryError naming ``kind`` otherwise.

    Example:
        >>> try:
        ...     validate_name("../etc", kind="alias")
        ... except RegistryError as err:
        ...     print(err.message)
        alias '../etc' is not allowed: it contains a slash
    """
    if not isinstance(raw, str):
        raise RegistryError(f"{kind} must be a string, got {type(raw).__name__}", hint=_RULE)
    name = raw
    for _ in range(_DECODE_ROUNDS):  # a name still encoded after 5 rounds keeps a '%' and fails below
        decoded = unquote(name)
        if decoded == name:
            break
        name = decoded
    reason = "it is still URL-encoded after 5 decodings" if unquote(name) != name else _reason(name)
    if reason is not None:
        shown = raw if len(raw) <= 80 else raw[:77] + "..."
        raise RegistryError(f"{kind} {shown!r} is not allowed: {reason}", hint=_RULE)
    return name
