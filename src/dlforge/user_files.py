"""Reading the files a user hands dlforge: bounded, UTF-8, and refused with a clear message.

One home for turning a path into text (:func:`read_text_file`) and text into YAML
(:func:`parse_yaml`, :func:`read_yaml`). Every way a file can be wrong (missing, a folder,
unreadable, too large, not UTF-8, not YAML, not a mapping) is a :class:`~dlforge.errors.DlforgeError`,
so the CLI prints one message and a hint and exits 2, never a traceback.

YAML is parsed safely (no Python objects) and with a budget, because a small file can
describe a huge document: nine anchors of nine aliases each ("billion laughs") expand to
9^9 values and once took a run past 60 s and 3.9 GB. Anchors and aliases stay allowed for
DRY configs, but they may add at most :data:`MAX_ALIAS_NODES` values in all; a document
may nest at most :data:`MAX_DEPTH` levels; a config file may hold at most
:data:`MAX_CONFIG_BYTES`.

Example:
    >>> parse_yaml("optim: &o {name: adam}\\nsame: *o", "example")
    {'optim': {'name': 'adam'}, 'same': {'name': 'adam'}}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

from dlforge.errors import ConfigError, DlforgeError

MAX_CONFIG_BYTES = 1 << 20  # 1 MiB: a run config is a few KiB; this still leaves room for long tune spaces
MAX_ALIAS_NODES = 10_000  # values aliases may add in all: plenty for shared sections, far from a blow-up
MAX_DEPTH = 50  # nesting levels: configs use under 10; Python's own recursion limit is near 1,000

try:  # libyaml parses about five times faster; the composer below stays in Python to count
    from yaml.cyaml import CParser as _Parser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Parser(Reader, Scanner, Parser):  # type: ignore[no-redef]
        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)


class _Refused(yaml.YAMLError):
    """A document over the budget; ``hint`` says what to change."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


class _BoundedLoader(Composer, _Parser, SafeConstructor, Resolver):
    """yaml.SafeLoader with a budget: counts the values aliases add and the nesting depth
    while composing, before anything is expanded."""

    def __init__(self, stream: str) -> None:
        _Parser.__init__(self, stream)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self._depth = 0
        self._alias_nodes = 0
        self._open_anchors: set[str] = set()  # anchors whose node is still being composed
        self._measured: dict[int, tuple[int, int]] = {}  # id(node) -> (values, levels), aliases expanded

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open_anchors:
                raise _Refused(f"the alias *{event.anchor} on line {line} is inside its own anchor",
                               "an anchor cannot contain its own alias; write the value out")
            if event.anchor in self.anchors:  # else the composer reports the undefined alias
                values, levels = self._measure(self.anchors[event.anchor])
                self._alias_nodes += values
                if self._alias_nodes > MAX_ALIAS_NODES:
                    raise _Refused(f"its aliases expand to more than {MAX_ALIAS_NODES:,} values "
                                   f"(at *{event.anchor}, line {line})",
                                   "anchors (&name) and aliases (*name) are for sharing small sections; "
                                   "write large values out")
                self._check_depth(self._depth + levels, line)
            return super().compose_node(parent, index)
        self._depth += 1
        anchor = event.anchor
        try:
            self._check_depth(self._depth, line)
            if anchor is not None:
                self._open_anchors.add(anchor)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open_anchors.discard(anchor)

    @staticmethod
    def _check_depth(levels: int, line: int) -> None:
        if levels > MAX_DEPTH:
            raise _Refused(f"it nests deeper than {MAX_DEPTH} levels (line {line})",
                           "a run config nests a few sections deep; is this the right file?")

    def _measure(self, node: yaml.Node) -> tuple[int, int]:
        """(values, nesting levels) of a composed node, aliases inside it expanded; memoised,
        so a node shared by many aliases is walked once."""
        key = id(node)
        if key not in self._measured:
            if isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            else:
                children = node.value if isinstance(node, yaml.SequenceNode) else []
            sizes = [self._measure(child) for child in children]
            self._measured[key] = (1 + sum(v for v, _ in sizes), 1 + max((d for _, d in sizes), default=0))
        return self._measured[key]


def _describe(err: yaml.YAMLError) -> str:
    """A YAML error in one line, with line and column numbers (1-based)."""
    if isinstance(err, yaml.reader.ReaderError):
        return f"character U+{err.character:04X} at offset {err.position} is not allowed ({err.reason})"
    if isinstance(err, yaml.MarkedYAMLError):
        parts = []
        for text, mark in ((err.context, err.context_mark), (err.problem, err.problem_mark)):
            if text:
                parts.append(f"{text} (line {mark.line + 1}, column {mark.column + 1})" if mark else text)
        return ": ".join(parts) or str(err)
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def parse_yaml(text: str, where: str, *, error: type[DlforgeError] = ConfigError) -> Any:
    """Parse YAML text safely within the budget; ``where`` names it in error messages.

    Example:
        >>> parse_yaml("epochs: 5", "--set")
        {'epochs': 5}
        >>> parse_yaml("a: [1", "--set")
        Traceback (most recent call last):
        ...
        dlforge.errors.ConfigError: --set is not valid YAML: ...
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # a byte Python could not decode (from argv) is a lone surrogate
        code = ord(text[err.start])
        what = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"character U+{code:04X}"
        raise error(f"{where} is not UTF-8 text ({what} at offset {err.start})",
                    hint="write it in UTF-8 (check the terminal's or the file's encoding)") from None
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except _Refused as err:
        raise error(f"{where} is refused: {err}", hint=err.hint) from None
    except yaml.reader.ReaderError as err:
        raise error(f"{where} is not YAML text: {_describe(err)}",
                    hint="is this the right file? YAML is plain text without control characters") from None
    except yaml.YAMLError as err:
        raise error(f"{where} is not valid YAML: {_describe(err)}",
                    hint="check the indentation and quoting near that line") from None
    except (ValueError, OverflowError) as err:  # e.g. a date that does not exist: 2024-13-45
        raise error(f"{where} is not valid YAML: {err}", hint="quote the value to keep it as text") from None
    finally:
        loader.dispose()


def read_text_file(path: str | Path, what: str, *, max_bytes: int | None = None,
                   error: type[DlforgeError] = ConfigError) -> str:
    """The text of a UTF-8 file (a leading byte-order mark dropped), or ``error`` saying why not.

    ``what`` names the file in messages ("config file", "CSV file"); ``max_bytes`` caps the
    bytes read (None: no cap).

    Example:
        >>> read_text_file("/nowhere.yaml", "config file")
        Traceback (most recent call last):
        ...
        dlforge.errors.ConfigError: config file /nowhere.yaml does not exist (check the path)
    """
    path = Path(path)
    if path.is_dir():
        raise error(f"{what} {path} is a folder, not a file", hint="pass the path of the file itself")
    if not path.exists():
        raise error(f"{what} {path} does not exist", hint="check the path")
    try:
        with path.open("rb") as f:
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    except OSError as err:
        raise error(f"cannot read {what} {path}: {err.strerror or err}",
                    hint="check the file's permissions (ls -l) and that it is a regular file") from None
    if max_bytes is not None and len(data) > max_bytes:
        raise error(f"{what} {path} is larger than {max_bytes:,} bytes",
                    hint="a run config is a few KiB of YAML; is this the right file?")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise error(f"{what} {path} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}, "
                    f"line {line})", hint="save it as UTF-8 (in most editors: Save As, encoding UTF-8)") from None


def read_yaml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A YAML file that must hold a mapping (a run config, a run's ``config.yaml``).

    Example:
        >>> read_yaml("examples/iris_mlp.yaml")["data"]["source"]  # doctest: +SKIP
        'iris'
    """
    where = f"{what} {path}"
    raw = parse_yaml(read_text_file(path, what, max_bytes=MAX_CONFIG_BYTES), where)
    if raw is None:
        raise ConfigError(f"{where} is empty", hint="a run config needs at least data: and model: sections; "
                          "see the examples/ folder")
    if not isinstance(raw, dict):
        kind = "list" if isinstance(raw, list) else f"single value ({type(raw).__name__})"
        raise ConfigError(f"{where} holds a YAML {kind}, not a mapping of sections",
                          hint="write sections as 'key: value' lines: name, seed, data, model, optim, train")
    return raw
