"""Same answer everywhere (issue 18): every topic's quick budget gives the same verdict over a
second seed set on two threads as over its first seed set on one thread, and the topics whose
full budget is affordable here give the same verdict at both budgets (the others are compared
in the full-budget run recorded in docs/lab_report.html). Where an outcome differs, the
message shows both intervals against the bound."""

from __future__ import annotations

import pytest

from dlforge.lab import available_topics, run_seeds

from .cache import SET_B_FIRST_SEED, finding_for, second_finding_for


# Topics whose full budget, all its seeds together, takes seconds on one thread (see the closing
# note of issue 18 for every topic's full-budget time).
FULL_IN_CI = (4, 17, 21)


def _explain(a, b) -> str:
    rows = []
    for ra, rb in zip(a.check_results(), b.check_results()):
        rows.append(f"  {ra['check']}: A {ra['outcome']} [{ra['low']:.4g}, {ra['high']:.4g}] | "
                    f"B {rb['outcome']} [{rb['low']:.4g}, {rb['high']:.4g}] (bound {ra['bound']:.4g} / {rb['bound']:.4g})")
    return f"topic {a.topic}: {a.verdict} on seeds {a.seeds} ({a.budget}), {b.verdict} on {b.seeds} ({b.budget})\n" + \
        "\n".join(rows)


@pytest.mark.parametrize("topic", FULL_IN_CI)
def test_the_full_budget_gives_the_quick_verdict(topic):
    quick, full = finding_for(topic), run_seeds(topic, "full")
    assert len(full.seeds) >= 5 and full.budget == "full"
    assert quick.verdict == full.verdict, _explain(quick, full)


# Topics whose verdict still depends on the seed set, with why in numbers (measured this session,
# issue 18's closing note has the intervals). For them the test requires only that the seed sets
# never contradict each other; the entry goes when the topic is settled.
UNSETTLED = {
}


def _outcomes(finding) -> dict[str, str]:
    return {r["check"]: r["outcome"] for r in finding.check_results()}


@pytest.mark.parametrize("topic", available_topics())
def test_a_second_seed_set_on_two_threads_gives_the_same_verdict(topic):
    a, b = finding_for(topic), second_finding_for(topic)
    assert not set(a.seeds) & set(b.seeds) and b.seeds[0] == SET_B_FIRST_SEED
    oa, ob = _outcomes(a), _outcomes(b)
    contradictions = [c for c in oa if {oa[c], ob[c]} == {"holds", "fails"}]
    assert not contradictions, _explain(a, b)  # one set's interval wholly on each side of a bound
    if topic not in UNSETTLED:
        assert a.verdict == b.verdict, _explain(a, b)
