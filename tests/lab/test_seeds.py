"""A topic over several seeds (issue 18): combine() turns one finding per seed into one finding
whose numbers are means and whose varying numbers carry 95% t intervals (scipy's, via measure);
LabPool runs the seeds in worker processes and hands findings back as JSON, unchanged."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dlforge.lab import LabPool, run_seeds, run_topic, run_topics
from dlforge.lab.finding import Check, Finding, measure
from dlforge.lab.pool import LabWorkerError
from dlforge.lab.seeds import DEFAULT_SEEDS, combine, seeds_for


def _finding(acc: float, curve: list[float], text: str = "a", **extra) -> Finding:
    return Finding(topic=16, title="t", claim="c", method="m",
                   numbers={"acc": acc, "curve": curve, "table": {"x": acc * 2}, "length": 60, "label": text, **extra},
                   checks=[Check("acc", ">", 0.5)], notes="seed note", seconds=1.5)


def test_combine_keeps_constants_and_turns_varying_numbers_into_intervals() -> None:
    f = combine([_finding(0.9, [1.0, 2.0]), _finding(0.7, [3.0, 2.0], "b"), _finding(0.8, [2.0, 2.0])], [4, 5, 6])
    m = measure([0.9, 0.7, 0.8])
    assert f.numbers["acc"] == pytest.approx(0.8) and f.intervals["acc"].n == 3
    assert (f.intervals["acc"].low, f.intervals["acc"].high) == (pytest.approx(m.low, rel=1e-4),
                                                                 pytest.approx(m.high, rel=1e-4))
    assert f.per_seed["acc"] == [0.9, 0.7, 0.8]
    assert f.numbers["curve"] == [2.0, 2.0] and f.numbers["table"] == {"x": pytest.approx(1.6)}
    assert f.numbers["length"] == 60 and "length" not in f.intervals  # equal on every seed: as it was
    assert f.numbers["label"] == "a"  # text: the first seed's
    assert f.seeds == [4, 5, 6] and f.seed_seconds == [1.5, 1.5, 1.5] and f.seconds == 4.5
    assert f.notes == "seed note"
    # the check reads the interval: 0.8 +- 0.25 straddles 0.6, clears 0.5
    assert f.verdict == "supported"
    assert combine([_finding(0.9, [1.0]), _finding(0.3, [1.0])], [0, 1]).verdict == "inconclusive"
    assert combine([_finding(0.4, [1.0]), _finding(0.41, [1.0])], [0, 1]).verdict == "not supported"


def test_combine_refuses_a_seed_count_that_does_not_match() -> None:
    with pytest.raises(ValueError, match="one finding per seed"):
        combine([_finding(0.9, [1.0])], [0, 1])


def test_seeds_default_to_the_issue_floor_and_a_topic_may_ask_for_more() -> None:
    assert DEFAULT_SEEDS == {"quick": 3, "full": 5}
    assert seeds_for(SimpleNamespace(), "quick") == [0, 1, 2]
    assert seeds_for(SimpleNamespace(SEEDS={"quick": 8}), "quick", first=100) == list(range(100, 108))
    assert seeds_for(SimpleNamespace(SEEDS={"quick": 8}), "full") == [0, 1, 2, 3, 4]


def test_a_finding_survives_its_json_round_trip() -> None:
    f = combine([_finding(0.9, [1.0]), _finding(0.7, [3.0])], [0, 1])
    back = Finding.from_dict(f.to_dict(with_figures=True))
    assert back.to_dict() == f.to_dict()


def _strip(numbers: dict) -> dict:
    return {k: v for k, v in numbers.items() if not k.endswith("_seconds")}


def test_the_pool_gives_what_this_process_gives() -> None:
    """Topic 4's two seeds in two worker processes: numbers, checks and verdict as run here."""
    here = run_seeds(4, "quick", seeds=[0, 1])
    with LabPool(workers=2) as pool:
        there = run_seeds(4, "quick", seeds=[0, 1], pool=pool)
    assert _strip(there.numbers) == _strip(here.numbers)
    assert there.check_results() == here.check_results() and there.verdict == here.verdict
    assert there.seeds == [0, 1] and len(there.figures) == len(here.figures)
    assert _strip(here.numbers) == _strip(combine([run_topic(4, "quick", s) for s in (0, 1)], [0, 1]).numbers)


def test_a_failing_job_names_its_topic_and_seed_and_the_pool_goes_on() -> None:
    with LabPool(workers=1) as pool:
        bad, good = pool.submit(99, "quick", 7), pool.submit(4, "quick", 0)
        with pytest.raises(LabWorkerError, match=r"(?s)topic 99 seed 7 \(quick\) failed:.*no experiment for topic 99"):
            bad.result()
        assert good.result().topic == 4


def test_run_topics_refuses_an_unknown_budget() -> None:
    from dlforge.errors import ConfigError

    with pytest.raises(ConfigError, match="budget is 'medium'"):
        run_topics([4], "medium")
