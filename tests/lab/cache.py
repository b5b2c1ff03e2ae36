"""One quick run per topic per test session, shared by every lab test."""

from __future__ import annotations

import functools

from dlforge.lab import run_topic
from dlforge.lab.finding import Finding


@functools.lru_cache(maxsize=None)
def finding_for(topic: int) -> Finding:
    return run_topic(topic, budget="quick")
