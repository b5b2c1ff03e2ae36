"""``--filter`` and ``--sort`` for ``dlforge runs list``: a small expression language over runs.

    val_accuracy>0.9 and model.arch=cnn
    (optim.lr<0.01 or optim.name='adamw') and not status=diverged

A comparison is ``KEY OP VALUE`` with ``OP`` one of ``= != < <= > >=``; ``KEY`` is a metric
(``val_accuracy``; ``best.val_loss``, ``final.train_loss``), a dotted config key
(``model.arch``, ``optim.lr``) or a record field (``status``, ``name``, ``started``, ``study``);
``VALUE`` is a number, ``true``/``false``/``none``, a bare word or a quoted string.
Comparisons combine with ``and``, ``or``, ``not`` and parentheses (``not`` binds tightest,
then ``and``, then ``or``). Numbers compare as numbers, anything else as text (ISO times
order correctly). A run without the key does not match the comparison.

The parser is a hand-written tokenizer and recursive descent: nothing is ``eval``-ed. A bad
expression raises :class:`~dlforge.errors.ConfigError` with the position and what was
expected; a key no run has names the nearest keys that exist.

Example:
    >>> rows = [{"val_accuracy": 0.95, "model.arch": "cnn"}, {"val_accuracy": 0.8, "model.arch": "mlp"}]
    >>> f = parse_filter("val_accuracy>0.9 and model.arch=cnn")
    >>> [f.matches(r.get) for r in rows]
    [True, False]
"""

from __future__ import annotations

import difflib
import math
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Union

from dlforge.errors import ConfigError

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq, "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
    ">": operator.gt, ">=": operator.ge,
}
_KEYWORDS = ("and", "or", "not")
_SPECIAL = "()<>=!'\" \t\n"
_LITERALS = {"true": True, "false": False, "none": None, "null": None}
_MISSING = object()


@dataclass(frozen=True)
class Token:
    kind: str  # "word", "string", "op", "(", ")", "and", "or", "not", "end"
    text: str
    pos: int  # 0-based offset in the expression


def tokenize(text: str) -> list[Token]:
    """The tokens of ``text``, ending with an ``end`` token.

    Example:
        >>> [t.text for t in tokenize("a.b>=1 and not c='x y'")]
        ['a.b', '>=', '1', 'and', 'not', 'c', '=', 'x y', '']
    """
    tokens, i = [], 0
    while i < len(text):
        c = text[i]
        if c.isspace():
            i += 1
        elif c in "()":
            tokens.append(Token(c, c, i))
            i += 1
        elif c in "<>=!":
            op = text[i:i + 2] if text[i:i + 2] in _OPS else c
            if op not in _OPS:
                raise _error(text, i, "a comparison (= != < <= > >=)", f"'{c}'")
            tokens.append(Token("op", op, i))
            i += len(op)
        elif c in "'\"":
            end = text.find(c, i + 1)
            if end < 0:
                raise _error(text, i, f"a closing {c}", "the end of the expression")
            tokens.append(Token("string", text[i + 1:end], i))
            i = end + 1
        else:
            j = i
            while j < len(text) and text[j] not in _SPECIAL:
                j += 1
            word = text[i:j]
            tokens.append(Token(word.lower() if word.lower() in _KEYWORDS else "word", word, i))
            i = j
    tokens.append(Token("end", "", len(text)))
    return tokens


def _error(text: str, pos: int, expected: str, found: str) -> ConfigError:
    return ConfigError(f"--filter: expected {expected} at position {pos + 1}, found {found}\n  {text}\n  {' ' * pos}^",
                       hint="write comparisons like val_accuracy>0.9 or model.arch=cnn, joined by and/or/not; "
                            "quote values with spaces")


@dataclass(frozen=True)
class Compare:
    key: str
    op: str
    value: Any

    def matches(self, get: Callable[[str], Any]) -> bool:
        have = get(self.key)
        if have is _MISSING:
            return False
        want = self.value
        number = isinstance(have, (int, float)) and not isinstance(have, bool)
        if number and isinstance(want, (int, float)) and not isinstance(want, bool):
            return not math.isnan(have) and _OPS[self.op](float(have), float(want))
        if isinstance(have, bool) or have is None or want is None or isinstance(want, bool):
            return _OPS[self.op](have, want) if self.op in ("=", "==", "!=") else False
        return _OPS[self.op](_text(have), _text(want))


def _text(v: Any) -> str:
    return format(v, "g") if isinstance(v, float) else str(v)


@dataclass(frozen=True)
class Not:
    inner: Node

    def matches(self, get: Callable[[str], Any]) -> bool:
        return not self.inner.matches(get)


@dataclass(frozen=True)
class Join:
    op: str  # "and" | "or"
    parts: tuple[Node, ...]

    def matches(self, get: Callable[[str], Any]) -> bool:
        test = all if self.op == "and" else any
        return test(p.matches(get) for p in self.parts)


Node = Union[Compare, Not, Join]


class _Parser:
    def __init__(self, text: str) -> None:
        self.text, self.tokens, self.i = text, tokenize(text), 0

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self, kind: str, expected: str) -> Token:
        tok = self.peek()
        if tok.kind != kind:
            raise _error(self.text, tok.pos, expected, f"'{tok.text}'" if tok.text else "the end of the expression")
        self.i += 1
        return tok

    def parse(self) -> Node:
        node = self.either()
        self.take("end", "'and', 'or' or the end of the expression")
        return node

    def either(self) -> Node:
        parts = [self.both()]
        while self.peek().kind == "or":
            self.i += 1
            parts.append(self.both())
        return parts[0] if len(parts) == 1 else Join("or", tuple(parts))

    def both(self) -> Node:
        parts = [self.negation()]
        while self.peek().kind == "and":
            self.i += 1
            parts.append(self.negation())
        return parts[0] if len(parts) == 1 else Join("and", tuple(parts))

    def negation(self) -> Node:
        if self.peek().kind == "not":
            self.i += 1
            return Not(self.negation())
        if self.peek().kind == "(":
            self.i += 1
            node = self.either()
            self.take(")", "')'")
            return node
        key = self.take("word", "a key (a metric such as val_accuracy, or a config key such as model.arch), "
                                "'not' or '('")
        op = self.take("op", f"a comparison (= != < <= > >=) after {key.text!r}")
        tok = self.peek()
        if tok.kind not in ("word", "string"):
            raise _error(self.text, tok.pos, f"a value after {key.text}{op.text}",
                         f"'{tok.text}'" if tok.text else "the end of the expression")
        self.i += 1
        return Compare(key.text, op.text, _literal(tok))


def _literal(tok: Token) -> Any:
    if tok.kind == "string":
        return tok.text
    if tok.text.lower() in _LITERALS:
        return _LITERALS[tok.text.lower()]
    try:
        return float(tok.text)
    except ValueError:
        return tok.text


def _keys(node: Node) -> list[str]:
    if isinstance(node, Compare):
        return [node.key]
    if isinstance(node, Not):
        return _keys(node.inner)
    return [k for p in node.parts for k in _keys(p)]


class Filter:
    """A parsed ``--filter`` expression; :meth:`matches` takes a ``get(key)`` function."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.node = _Parser(text).parse()
        self.keys = sorted(set(_keys(self.node)))

    def matches(self, get: Callable[[str], Any]) -> bool:
        return self.node.matches(lambda key: _lookup(get, key))


def _lookup(get: Callable[[str], Any], key: str) -> Any:
    try:
        value = get(key)
    except KeyError:
        return _MISSING
    return value


def parse_filter(text: str) -> Filter:
    """Parse ``text`` (a ConfigError with the position when it is not an expression)."""
    return Filter(text)


def check_keys(keys: Iterable[str], known: Iterable[str], what: str = "--filter") -> None:
    """Refuse a key no run has, naming the nearest keys that exist."""
    known = sorted(set(known))
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
            raise ConfigError(f"{what}: no run has the key {key!r}",
                              hint=f"did you mean {', '.join(close)}?" if close else
                              "keys are metrics (val_loss, ...), config keys (model.arch, optim.lr, ...) and "
                              "status, name, started; `dlforge runs show RUN` lists one run's")


def select(records: list[Any], text: str | None) -> list[Any]:
    """The records (:class:`~dlforge.runs.index.RunRecord`) that match the filter ``text``."""
    if not text:
        return list(records)
    f = parse_filter(text)
    check_keys(f.keys, {k for r in records for k in r.keys()})
    return [r for r in records if f.matches(r.value)]


def sort_records(records: list[Any], key: str | None) -> list[Any]:
    """Sort by ``key`` (``-key``: descending); runs without it go last.

    Example:
        >>> from dlforge.runs.index import RunRecord
        >>> rs = [RunRecord("a", "/a", metrics={"val_loss": 0.5}), RunRecord("b", "/b", metrics={"val_loss": 0.2})]
        >>> [r.name for r in sort_records(rs, "val_loss")]
        ['b', 'a']
    """
    if not key:
        return list(records)
    descending, name = key.startswith("-"), key.lstrip("-")
    check_keys([name], {k for r in records for k in r.keys()}, "--sort")

    def value(r: Any) -> Any:
        try:
            return r.value(name)
        except KeyError:
            return None

    present = [r for r in records if value(r) is not None]
    absent = [r for r in records if value(r) is None]
    numeric = all(isinstance(value(r), (int, float)) for r in present)
    present.sort(key=lambda r: float(value(r)) if numeric else _text(value(r)), reverse=descending)
    return present + absent
