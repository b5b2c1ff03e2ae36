"""A topic over several seeds (issue 18): combine() turns one finding per seed into one finding
whose numbers are means and whose varying numbers carry 95% t intervals (scipy's, via measure);
LabPool runs the seeds in worker processes and hands findings back as JSON, unchanged."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from dlforge.lab import LabPool, run_seeds, run_topic, run_topics
from dlforge.lab.finding import Check, Finding, measure
from dlforge.lab.pool import LabWorkerError
from dlforge.lab.seeds import DEFAULT_SEEDS, combine, seeds_for


def _finding(acc: float, curve: list[float], text: str = "a", **extra) -> Finding:
    return Finding(topic=16, title="t", claim="c", method="m",
                   numbers={"acc": acc, "curve": curve, "table": {"x": acc * 2}, "length": 60, "label": text, **extra},
                   checks=[Check("acc", ">", 0.5)], notes="seed note", seconds=1.5, cpu_seconds=1.25)


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
    assert f.seed_cpu_seconds == [1.25] * 3 and f.cpu_seconds == 3.75
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


def _worker_pids() -> list[int]:
    """This process's ``dlforge.lab.worker`` children (Linux: from /proc)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and b"dlforge.lab.worker" in cmdline:
            pids.append(int(stat.parent.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the workers' niceness from /proc (Linux)")
def test_a_pool_at_nice_19_runs_its_workers_at_the_lowest_priority_with_the_same_numbers() -> None:
    before, others = os.getpriority(os.PRIO_PROCESS, 0), set(_worker_pids())  # the session's lab pools' workers
    with LabPool(workers=1, nice=19) as pool:
        finding = pool.submit(4, "quick", 0).result()  # the worker stays alive between jobs
        (pid,) = set(_worker_pids()) - others
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, before + 19)
    assert os.getpriority(os.PRIO_PROCESS, 0) == before  # this process keeps its priority
    assert _strip(finding.numbers) == _strip(run_topic(4, "quick", 0).numbers)
    with pytest.raises(ValueError, match="nice in 0..19"):
        LabPool(nice=20)


def test_run_topics_refuses_an_unknown_budget() -> None:
    from dlforge.errors import ConfigError

    with pytest.raises(ConfigError, match="budget is 'medium'"):
        run_topics([4], "medium")
