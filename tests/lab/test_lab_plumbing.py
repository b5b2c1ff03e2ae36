"""The lab's shared plumbing: run_topic looks the budget up, plot draws and renders a
figure, and the experiment modules keep only their experiment."""

from __future__ import annotations

import base64
import doctest
import inspect
import re
from pathlib import Path
from types import SimpleNamespace

import matplotlib
import pytest

import dlforge.lab as lab
from dlforge.lab import _http, available_topics, experiment, finding, run_topic
from dlforge.lab.finding import Check, Finding, plot


def _open_figures() -> list[int]:
    import matplotlib.pyplot as plt

    return plt.get_fignums()


def test_plot_yields_figure_and_axes_and_renders_a_png():
    before = _open_figures()
    with plot("Two panels", 1, 2, figsize=(4, 2)) as drawn:
        left, right = drawn.axes
        left.plot([0, 1], [0, 1])
        right.bar([0, 1], [1, 2])
        assert drawn.fig.axes == [left, right]
        assert drawn.figure is None  # rendered when the block ends
    assert matplotlib.get_backend().lower() == "agg"
    assert drawn.figure.title == "Two panels"
    assert base64.b64decode(drawn.figure.png_base64).startswith(b"\x89PNG")
    assert _open_figures() == before  # closed


def test_plot_closes_the_figure_when_drawing_fails():
    before = _open_figures()
    with pytest.raises(ZeroDivisionError), plot("Broken") as drawn:
        drawn.axes.plot([0, 1], [0, 1 / 0])
    assert drawn.figure is None
    assert _open_figures() == before


def test_run_topic_hands_run_the_budgets_dict_and_the_seed(monkeypatch):
    calls = []

    def run(cfg: dict, seed: int) -> Finding:
        calls.append((cfg, seed))
        return Finding(topic=99, title="t", claim="c", method="m", numbers={"x": 1.0},
                       checks=[Check("x", ">=", 1.0)])

    budgets = {"quick": {"n": 1}, "full": {"n": 100}}
    monkeypatch.setattr(lab, "experiment", lambda topic: SimpleNamespace(BUDGETS=budgets, run=run))
    result = run_topic(99, budget="full", seed=7)
    assert calls == [({"n": 100}, 7)]
    assert result.budget == "full" and result.seconds >= 0


def test_run_topic_caps_the_threads_at_a_modules_max_threads(monkeypatch):
    import torch

    seen = []

    def run(cfg: dict, seed: int) -> Finding:
        seen.append(torch.get_num_threads())
        return Finding(topic=99, title="t", claim="c", method="m", numbers={"x": 1.0}, checks=[Check("x", ">=", 1.0)])

    for module in (SimpleNamespace(BUDGETS={"quick": {}}, run=run, MAX_THREADS=1), SimpleNamespace(BUDGETS={"quick": {}}, run=run)):
        monkeypatch.setattr(lab, "experiment", lambda topic, module=module: module)
        run_topic(99, threads=2)
    assert seen == [1, 2]


# Topics whose models gain nothing from a second thread: each module's MAX_THREADS comment says why, in numbers.
ONE_THREAD = (2, 10, 12, 19, 26, 28)


@pytest.mark.parametrize("topic", ONE_THREAD)
def test_the_small_model_topics_run_on_one_thread_whatever_the_runner_asks(topic, monkeypatch):
    import torch

    module, seen = experiment(topic), []
    monkeypatch.setattr(module, "run", lambda cfg, seed: seen.append(torch.get_num_threads()) or Finding(
        topic=topic, title="t", claim="c", method="m", numbers={"x": 1.0}, checks=[Check("x", ">=", 1.0)]))
    run_topic(topic, "quick", 0, threads=2)
    assert module.MAX_THREADS == 1 and seen == [1]
    assert {t for t in available_topics() if hasattr(experiment(t), "MAX_THREADS")} == set(ONE_THREAD)


@pytest.mark.parametrize("topic", available_topics())
def test_experiment_modules_hold_only_their_experiment(topic):
    module = experiment(topic)
    assert list(inspect.signature(module.run).parameters) == ["cfg", "seed"]
    source = inspect.getsource(module)
    for boilerplate in ("BUDGETS[budget]", "def _run(", "matplotlib.use(", "import matplotlib.pyplot",
                        "figure_from_matplotlib", "single_thread"):
        assert boilerplate not in source, f"topic {topic}: {boilerplate!r} belongs to run_topic or plot"


@pytest.mark.parametrize("module", [finding, _http])
def test_doctests(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


_TIMED_CHECK = re.compile(r'Check\(\s*"[^"]*(?:second|speedup|faster|latency|_ms\b|p50|p99)')


@pytest.mark.parametrize("topic", available_topics())
def test_a_topic_declares_wall_clock_exactly_when_a_check_reads_a_timing(topic):
    """A timing taken by a process the scheduler keeps preempting measures the preemption: a topic
    with a timed check says ``WALL_CLOCK = True``, and the test suite keeps it out of its
    low-priority background (tests/lab/cache.py); no other topic says it."""
    module = experiment(topic)
    helpers = Path(module.__file__).parent.glob(f"_q{topic:02d}_*.py")  # its private helper modules
    timed = any(_TIMED_CHECK.search(text) for text in [inspect.getsource(module), *(p.read_text() for p in helpers)])
    assert getattr(module, "WALL_CLOCK", False) is timed, f"topic {topic}: a timed check is {timed}"
