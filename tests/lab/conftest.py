"""Tell tests/lab/cache.py which topics this session's lab tests will ask for, so their seeds
are queued in the worker processes at the first request (and no others are).

When the session runs other tests too, the lab's tests go last and their seeds start at once,
in the background at the lowest CPU priority (see cache.py): the lab is mostly computed in the
time the other tests leave the CPUs idle."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from . import cache

_TOPIC_MODULE = re.compile(r"test_q(\d\d)_")


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected: plan only the tests that run
def pytest_collection_modifyitems(config, items) -> None:
    here = Path(__file__).parent
    lab = [item for item in items if item.path.parent == here]
    others = [item for item in items if item.path.parent != here]
    for item in lab:
        topic = getattr(getattr(item, "callspec", None), "params", {}).get("topic")
        named = _TOPIC_MODULE.match(item.path.name)
        topic = topic if isinstance(topic, int) else int(named.group(1)) if named else None
        if topic is None:
            continue
        source = vars(item.module)
        if "finding_for" in source and "finding_for" in getattr(item.function, "__code__").co_names:
            cache.PLANNED["A"].add(topic)
        if "second_finding_for" in getattr(item.function, "__code__").co_names:
            cache.PLANNED["A"].add(topic)
            cache.PLANNED["B"].add(topic)
    if lab and others and not config.option.collectonly:
        items[:] = others + lab  # the lab last: its background workers get the whole session
        cache.start_background()


def pytest_sessionfinish(session) -> None:
    """With ``$DLFORGE_LAB_SUMMARY`` set, write every finding this session computed (both seed
    sets) to that JSON file: the per-topic table of a closing note, from the same runs the tests read."""
    import json
    import os

    path = os.environ.get("DLFORGE_LAB_SUMMARY")
    if not path:
        return
    summary = {name: {t: f.to_dict() for t, f in ((t, fn(t)) for t in sorted(cache.PLANNED[key]))}
               for name, key, fn in (("A", "A", cache.finding_for), ("B", "B", cache.second_finding_for))}
    with open(path, "w", encoding="utf-8") as out:
        json.dump(summary, out)
