"""Checks judged on intervals (issue 18): a check holds when the whole interval lies on the right
side of its bound, fails when it lies on the wrong side, and is inconclusive when it straddles it;
the verdict rule gains ``inconclusive``. The t interval is compared with scipy's own."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from dlforge.lab.finding import Check, Finding, Interval, measure, verdict_of


def test_the_t_interval_equals_scipys() -> None:
    values = [0.61, 0.58, 0.70, 0.66, 0.52]
    m = measure(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert (m.mean, m.low, m.high, m.n, m.method) == (pytest.approx(np.mean(values)), pytest.approx(low),
                                                      pytest.approx(high), 5, "t95")
    assert measure([0.5, 0.5, 0.5]).low == measure([0.5, 0.5, 0.5]).high == 0.5  # no spread: a point
    one = measure([0.7])
    assert (one.low, one.high) == (-np.inf, np.inf)  # one seed says nothing about the spread
    with pytest.raises(ValueError, match="at least one value"):
        measure([])


@pytest.mark.parametrize("low, high, op, bound, outcome", [
    (0.2, 0.4, ">", 0.1, "holds"), (0.2, 0.4, ">", 0.5, "fails"), (0.2, 0.4, ">", 0.3, "inconclusive"),
    (0.2, 0.4, "<=", 0.4, "holds"), (0.2, 0.4, "<", 0.2, "fails"), (0.2, 0.4, "<", 0.3, "inconclusive"),
    (0.2, 0.4, ">=", 0.2, "holds"), (0.2, 0.4, ">", 0.4, "fails"),
])
def test_a_check_reads_the_whole_interval(low, high, op, bound, outcome) -> None:
    numbers = {"x": Interval(mean=(low + high) / 2, low=low, high=high, n=5, method="t95")}
    check = Check("x", op, bound)
    assert check.outcome(numbers) == outcome
    assert check.holds(numbers) is (outcome == "holds")


def test_a_bound_naming_another_interval_compares_the_two() -> None:
    numbers = {"a": Interval(0.8, 0.75, 0.85, 5, "t95"), "b": Interval(0.6, 0.5, 0.7, 5, "t95"),
               "c": Interval(0.78, 0.7, 0.9, 5, "t95")}
    assert Check("a", ">", "b").outcome(numbers) == "holds"
    assert Check("b", ">", "a").outcome(numbers) == "fails"
    assert Check("a", ">", "c").outcome(numbers) == "inconclusive"


def test_plain_numbers_keep_their_old_meaning() -> None:
    numbers = {"x": 0.7, "y": 0.5}
    assert [Check("x", ">", "y").outcome(numbers), Check("x", "<", 0.6).outcome(numbers)] == ["holds", "fails"]
    assert measure([0.7, 0.7]).mean == 0.7


def test_the_verdict_rule_has_inconclusive() -> None:
    numbers = {"hi": Interval(0.9, 0.85, 0.95, 5, "t95"), "mid": Interval(0.5, 0.3, 0.7, 5, "t95")}
    holds, fails, straddles = Check("hi", ">", 0.8), Check("hi", "<", 0.8), Check("mid", ">", 0.5)
    assert verdict_of([holds, holds], numbers) == "supported"
    assert verdict_of([fails], numbers) == "not supported"
    assert verdict_of([holds, straddles], numbers) == "inconclusive"   # nothing contradicts it, yet
    assert verdict_of([straddles], numbers) == "inconclusive"
    assert verdict_of([holds, fails, straddles], numbers) == "partly supported"
    assert verdict_of([fails, straddles], numbers) == "partly supported"


def test_a_finding_shows_each_interval_beside_its_bound() -> None:
    f = Finding(topic=16, title="LSTMs", claim="an LSTM remembers further than an RNN", method="5 seeds",
                numbers={"lstm_minus_rnn": measure([0.4, 0.5, 0.45, 0.55, 0.5])},
                checks=[Check("lstm_minus_rnn", ">", 0.1)])
    (row,) = f.check_results()
    assert row["outcome"] == "holds" and row["holds"] and row["low"] > 0.1 and row["high"] < 0.6
    assert f.verdict == "supported" and "interval" in f.rule
    d = f.to_dict()
    assert d["numbers"]["lstm_minus_rnn"]["n"] == 5 and d["checks"][0]["outcome"] == "holds"


def test_the_report_shows_intervals_and_the_inconclusive_verdict() -> None:
    from dlforge.lab.report import render_lab_report

    f = Finding(topic=8, title="RNNs", claim="an RNN beats a bag of words on order", method="3 seeds",
                numbers={"gain": Interval(0.05, -0.02, 0.12, 3, "t95")}, checks=[Check("gain", ">", 0.0)])
    html = render_lab_report([f])
    assert f.verdict == "inconclusive" and "verdict-inconclusive" in html
    assert "[-0.02, 0.12]" in html and "0.05 [-0.02, 0.12] (n=3, t95)" in html and ">inconclusive<" in html
    assert "1 inconclusive" in html  # the summary counts it
