"""An English text corpus every Python install carries: the pydoc help topics.

``pydoc_data.topics.topics`` holds the text that ``help("assert")`` and friends
print: the Python language reference in plain text. :func:`pydoc_corpus` cuts it
into paragraphs and keeps the prose, for training a tokenizer or pretraining a
small masked language model without downloading anything.
"""

from __future__ import annotations

import re

from pydoc_data.topics import topics

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_UNDERLINE = re.compile(r"\s*([=*\-~^#+])\1+\s*")  # reST heading underline: "****", "===="
_WORD = re.compile(r"[A-Za-z][a-z]*[,.;:]?")  # a plain word, maybe with closing punctuation
# Prose is mostly plain words; grammar rules, doctests and code are mostly not.
# 0.6 keeps sentences that quote a little code ("returns "None" if ...").
MIN_WORD_SHARE = 0.6


def _is_prose(text: str) -> bool:
    tokens = text.split()
    if ">>>" in text or "::=" in text:  # an interactive session or a grammar rule
        return False
    return sum(bool(_WORD.fullmatch(t)) for t in tokens) >= MIN_WORD_SHARE * len(tokens)


def pydoc_corpus(min_words: int = 8) -> list[str]:
    """English paragraphs of the pydoc help topics, one whitespace-normalised string each.

    Topics are read in sorted key order and paragraphs in text order; heading
    underlines are dropped, as are code, grammar and doctest blocks, paragraphs of
    fewer than ``min_words`` words and repeats. On CPython 3.11 this gives about
    1,280 passages and 44,000 words (the topics change a little between versions).

    Example:
        >>> passages = pydoc_corpus()
        >>> len(passages) > 500, all(len(p.split()) >= 8 for p in passages)
        (True, True)
    """
    passages: list[str] = []
    seen: set[str] = set()
    for key in sorted(topics):
        for paragraph in _PARAGRAPH_BREAK.split(topics[key]):
            lines = [line for line in paragraph.split("\n")
                     if line.strip() and not _UNDERLINE.fullmatch(line)]
            text = " ".join(" ".join(lines).split())
            if not text or len(text.split()) < min_words or text in seen or not _is_prose(text):
                continue
            seen.add(text)
            passages.append(text)
    return passages
