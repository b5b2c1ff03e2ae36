"""The lab report: every finding on one self-contained HTML page.

The page holds everything inline (CSS, figures as base64 PNG data URIs, a short script)
and fetches nothing; a Content-Security-Policy meta tag makes the browser refuse any
fetch it might still attempt. Top to bottom: a summary table per level of the guide
(basic 1-10, intermediate 11-20, advanced 21-30) with topic, title, verdict, the checks'
outcomes, seeds and seconds; a section "where the guide is wrong or imprecise" listing every
finding whose verdict is not ``supported`` with the checks that did not hold; then one
section per finding with its claim, method, measured numbers (with their intervals), figures,
the verdict rule and each check (value and interval, bound and its interval, outcome), notes
and the verdict.

As in the run report (``dlforge.evaluate.report``), the script records on ``<body>`` at
``load``: ``data-figures`` (number of images), ``data-figures-loaded`` (those the browser
decoded) and ``data-errors`` (any ``window.onerror`` messages), so a headless browser
can check the page.

Example:
    >>> from dlforge.lab import Check, Finding
    >>> f = Finding(topic=3, title="Network structure", claim="one hidden layer fits XOR",
    ...             method="train both", numbers={"mlp": 1.0}, checks=[Check("mlp", ">=", 0.99)])
    >>> "verdict-supported" in render_lab_report([f])
    True
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, StrictUndefined

from dlforge.errors import DataError
from dlforge.lab.finding import LEVELS, VERDICTS, Finding, Interval
from dlforge.train.state_io import atomic_write

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
  :root { --ink: #1f2328; --muted: #59636e; --line: #d8dee4; --card: #fff; --bg: #f4f6f8; --accent: #0b5cad;
          --yes: #1a7f37; --partly: #9a6700; --no: #cf222e; }
  * { box-sizing: border-box; }
  body { margin: 0; background: var(--bg); color: var(--ink); font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
  main { max-width: 1120px; margin: 0 auto; padding: 24px 20px 48px; }
  header, section { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 16px 24px 20px; margin-top: 18px; }
  h1 { margin: 0 0 4px; font-size: 26px; } h2 { margin: 0 0 10px; font-size: 20px; } h3 { margin: 16px 0 6px; font-size: 16px; }
  .subtitle, .note { color: var(--muted); margin: 0 0 10px; }
  table { border-collapse: collapse; font-size: 14px; margin: 6px 0 10px; }
  th, td { border-bottom: 1px solid var(--line); padding: 5px 12px; text-align: left; vertical-align: top; }
  th { background: #f0f3f6; font-weight: 600; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  td.value { font-variant-numeric: tabular-nums; max-width: 720px; overflow-wrap: anywhere; }
  a { color: var(--accent); text-decoration: none; }
  .verdict { display: inline-block; border-radius: 4px; padding: 0 8px; font-size: 13px; font-weight: 700; color: #fff; white-space: nowrap; }
  .verdict-supported { background: var(--yes); } .verdict-partly-supported { background: var(--partly); }
  .verdict-not-supported { background: var(--no); } .verdict-inconclusive { background: var(--muted); }
  .held { color: var(--yes); font-weight: 600; } .failed { color: var(--no); font-weight: 600; }
  .unsure { color: var(--partly); font-weight: 600; }
  .finding h2 .verdict { margin-left: 10px; vertical-align: middle; }
  .claim { font-size: 16px; border-left: 4px solid var(--accent); padding-left: 12px; }
  .figures { display: flex; flex-wrap: wrap; gap: 16px; }
  figure { margin: 0; max-width: 100%; }
  figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
  figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
  .notes { background: #fff8e5; border-radius: 6px; padding: 8px 12px; }
  .rule { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 13px; color: var(--muted); }
  footer { color: var(--muted); font-size: 12px; text-align: center; margin-top: 24px; }
</style>
</head>
<body>
<script>
  // Record what the browser made of the page, for people and for the headless check.
  window.onerror = function (message) { var d = document.body.dataset; d.errors = (d.errors ? d.errors + "\\n" : "") + message; };
  window.addEventListener("load", function () {
    var images = Array.prototype.slice.call(document.images), d = document.body.dataset;
    d.figures = images.length;
    d.figuresLoaded = images.filter(function (img) { return img.complete && img.naturalWidth > 0; }).length;
    d.errors = d.errors || "";
  });
</script>
<main>
<header id="summary">
  <h1>{{ title }}</h1>
  <p class="subtitle">{{ findings|length }} finding{{ "" if findings|length == 1 else "s" }}:
    {% for verdict, n in counts %}{{ n }} {{ verdict }}{{ ", " if not loop.last else "" }}{% endfor %}.
    A verdict is computed from the measured numbers by the rule shown with each finding.</p>
  {% for level in levels %}
  <h2 id="level-{{ level.name }}">{{ level.name|capitalize }} (topics {{ level.first }}-{{ level.last }})</h2>
  <table class="summary level-{{ level.name }}">
    <tr><th>topic</th><th>title</th><th>verdict</th><th>checks: hold / inconclusive / fail</th><th>budget</th>
      <th class="num">seeds</th><th class="num">seconds</th></tr>
    {% for f in level.findings %}
    <tr><td class="num">{{ f.topic }}</td><td><a href="#topic-{{ f.topic }}">{{ f.title }}</a></td>
      <td><span class="verdict {{ f.verdict_class }}">{{ f.verdict }}</span></td>
      <td>{{ f.held }} / {{ f.unsure }} / {{ f.failed }}</td>
      <td>{{ f.budget }}</td><td class="num">{{ f.n_seeds }}</td><td class="num">{{ f.seconds }}</td></tr>
    {% endfor %}
  </table>
  {% endfor %}
</header>
{% if doubted %}
<section id="where-the-guide-is-wrong">
  <h2>Where the guide is wrong or imprecise</h2>
  <p class="note">Every finding whose verdict is not "supported", with the checks that did not hold:
    the measured interval beside its bound. Generated from the findings, like everything on this page.</p>
  {% for f in doubted %}
  <h3><a href="#topic-{{ f.topic }}">{{ f.topic }}. {{ f.title }}</a>
    <span class="verdict {{ f.verdict_class }}">{{ f.verdict }}</span></h3>
  <p class="claim">{{ f.claim }}</p>
  <ul class="doubts">
    {% for c in f.checks if c.outcome != "holds" %}<li><code>{{ c.check }}</code> {{ c.outcome }}: measured
      {{ c.value }}{% if c.interval %} {{ c.interval }}{% endif %} against {{ c.bound }}{% if c.bound_interval %} {{ c.bound_interval }}{% endif %}</li>
    {% endfor %}
  </ul>
  {% if f.notes %}<p class="notes">{{ f.notes }}</p>{% endif %}
  {% endfor %}
</section>
{% endif %}
{% for f in findings %}
<section class="finding" id="topic-{{ f.topic }}">
  <h2>{{ f.topic }}. {{ f.title }}<span class="verdict {{ f.verdict_class }}">{{ f.verdict }}</span></h2>
  <h3>Claim</h3>
  <p class="claim">{{ f.claim }}</p>
  <h3>Method</h3>
  <p class="method">{{ f.method }}</p>
  <h3>Numbers</h3>
  <table class="numbers">
    <tr><th>number</th><th>value</th></tr>
    {% for name, value in f.numbers %}<tr><td>{{ name }}</td><td class="value">{{ value }}</td></tr>
    {% endfor %}
  </table>
  {% if f.figures %}
  <div class="figures">
    {% for fig in f.figures %}<figure><img src="data:image/png;base64,{{ fig.png }}" alt="{{ fig.title }}"><figcaption>{{ fig.title }}</figcaption></figure>
    {% endfor %}
  </div>
  {% endif %}
  <h3>Verdict rule</h3>
  <p class="rule">{{ f.rule }}</p>
  <table class="checks">
    <tr><th>check</th><th class="num">measured</th><th class="num">interval</th><th class="num">bound</th>
      <th class="num">bound's interval</th><th>outcome</th></tr>
    {% for c in f.checks %}<tr><td>{{ c.check }}</td><td class="num">{{ c.value }}</td><td class="num">{{ c.interval }}</td>
      <td class="num">{{ c.bound }}</td><td class="num">{{ c.bound_interval }}</td><td class="{{ c.outcome_class }}">{{ c.outcome }}</td></tr>
    {% endfor %}
  </table>
  {% if f.notes %}
  <h3>Notes</h3>
  <p class="notes">{{ f.notes }}</p>
  {% endif %}
  <p class="verdict-line">Verdict: <span class="verdict {{ f.verdict_class }}">{{ f.verdict }}</span>
    ({{ f.held }} of {{ f.checks|length }} checks hold; {{ f.budget }} budget, {{ f.n_seeds }} seed(s){% if f.seed_list %}
    ({{ f.seed_list }}){% endif %}, {{ f.seconds }} s).</p>
</section>
{% endfor %}
<footer>Generated by dlforge. Self-contained: every figure and style is inside this file.</footer>
</main>
</body>
</html>
"""


def format_lab_value(value: Any, max_items: int = 12) -> str:
    """A measured number as the report prints it: 6 significant digits, lists inline.

    Six digits, not the run report's four, so 0.999988 does not print as 1 next to a
    check that it is below 1.

    Example:
        >>> [format_lab_value(v) for v in (0.9999877, 3, 2.9e-16, [0.5, 1.0], True, None)]
        ['0.999988', '3', '2.9e-16', '[0.5, 1]', 'yes', 'n/a']
    """
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        shown = [format_lab_value(v, max_items) for v in value[:max_items]]
        more = f", ... ({len(value)} in all)" if len(value) > max_items else ""
        return "[" + ", ".join(shown) + more + "]"
    return str(value)


def format_measured(value: Any) -> str:
    """A measured number as the report shows it: an interval as ``mean [low, high] (n=5)``.

    Example:
        >>> format_measured(Interval(0.5, 0.4, 0.6, 5, "t95")), format_measured(0.25)
        ('0.5 [0.4, 0.6] (n=5, t95)', '0.25')
    """
    if isinstance(value, Interval):
        return (f"{format_lab_value(value.mean)} [{format_lab_value(value.low)}, {format_lab_value(value.high)}] "
                f"(n={value.n}, {value.method})")
    return format_lab_value(value)


def format_interval(result: dict[str, Any], prefix: str = "") -> str:
    """A check result's measured (``prefix=""``) or bound (``prefix="bound_"``) interval as
    ``[low, high]``, or "" when it is a single number.

    Example:
        >>> format_interval({"low": 0.2, "high": 0.4}), format_interval({"bound_low": 1, "bound_high": 1}, "bound_")
        ('[0.2, 0.4]', '')
    """
    low, high = result[f"{prefix}low"], result[f"{prefix}high"]
    return "" if low == high else f"[{format_lab_value(low)}, {format_lab_value(high)}]"


def _finding_context(f: Finding) -> dict[str, Any]:
    checks = [{"check": r["check"], "value": format_lab_value(r["value"]), "interval": format_interval(r),
               "bound": format_lab_value(r["bound"]), "bound_interval": format_interval(r, "bound_"),
               "holds": r["holds"], "outcome": r["outcome"],
               "outcome_class": {"holds": "held", "fails": "failed"}.get(r["outcome"], "unsure")}
              for r in f.check_results()]
    return {
        "topic": f.topic, "title": f.title, "claim": f.claim, "method": f.method,
        "numbers": [(k, format_measured(f.intervals.get(k, v))) for k, v in f.numbers.items()],
        "figures": [{"title": fig.title, "png": fig.png_base64} for fig in f.figures],
        "rule": f.rule, "checks": checks, "held": sum(c["outcome"] == "holds" for c in checks),
        "failed": sum(c["outcome"] == "fails" for c in checks),
        "unsure": sum(c["outcome"] == "inconclusive" for c in checks),
        "notes": f.notes, "verdict": f.verdict, "verdict_class": "verdict-" + f.verdict.replace(" ", "-"),
        "budget": f.budget, "seconds": f"{f.seconds:.1f}", "level": f.level,
        "n_seeds": len(f.seeds) or 1, "seed_list": ", ".join(map(str, f.seeds)),
    }


@lru_cache(maxsize=1)
def _template():
    env = Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.from_string(_TEMPLATE)


def render_lab_report(findings: Sequence[Finding], title: str = "dlforge lab report") -> str:
    """The lab report for ``findings`` as one HTML string, findings in topic order.

    Example:
        >>> from dlforge.lab import run_topic
        >>> html = render_lab_report([run_topic(3)])  # doctest: +SKIP
    """
    ordered = [_finding_context(f) for f in sorted(findings, key=lambda f: f.topic)]
    levels = []
    for name, topics in LEVELS.items():
        members = [f for f in ordered if f["level"] == name]
        if members:
            levels.append({"name": name, "first": topics[0], "last": topics[-1], "findings": members})
    verdicts = [f["verdict"] for f in ordered]
    counts = [(v, verdicts.count(v)) for v in VERDICTS if v in verdicts]
    doubted = [f for f in ordered if f["verdict"] != "supported"]
    return _template().render(title=title, findings=ordered, levels=levels, counts=counts, doubted=doubted)


def write_lab_report(findings: Sequence[Finding], path: str | Path,
                     title: str = "dlforge lab report") -> Path:
    """Write the lab report to ``path`` (parent folders created); returns the path.

    Example:
        >>> write_lab_report(findings, "lab/report.html")  # doctest: +SKIP
        PosixPath('lab/report.html')
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, render_lab_report(findings, title).encode("utf-8"))
    return path


def save_findings(findings: Sequence[Finding], path: str | Path) -> Path:
    """Write ``findings``, figures included, as one JSON list (what :func:`load_findings` reads).

    Example:
        >>> save_findings(findings, "full_1_to_10.json")  # doctest: +SKIP
        PosixPath('full_1_to_10.json')
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps([f.to_dict(with_figures=True) for f in findings]).encode("utf-8"))
    return path


def load_findings(paths: Sequence[str | Path], topics: Sequence[int] = ()) -> list[Finding]:
    """The findings saved in ``paths`` (a later file's topic replaces an earlier file's), those
    of ``topics`` only when given, in topic order; each verdict is computed again from its numbers.

    Example:
        >>> load_findings(["full_1_to_10.json", "full_11_to_30.json"])  # doctest: +SKIP
        [Finding(topic=1, ...), ...]
    """
    by_topic: dict[int, Finding] = {}
    for path in map(Path, paths):
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(saved, list):
                raise TypeError(f"a JSON {type(saved).__name__}, not a list")
            found = [Finding.from_dict(d) for d in saved]
        except FileNotFoundError:
            raise DataError(f"no findings file at {path}", hint="write one with dlforge lab run ... --save FILE") from None
        except (ValueError, TypeError, KeyError, AttributeError) as err:  # JSON syntax, or not saved findings
            raise DataError(f"{path} does not hold findings saved by dlforge lab run --save ({type(err).__name__}: "
                            f"{err})", hint="write it again with dlforge lab run ... --save FILE") from None
        by_topic.update((f.topic, f) for f in found)
    missing = sorted(set(topics) - set(by_topic))
    if missing:
        raise DataError(f"the findings files hold no topic {', '.join(map(str, missing))}",
                        hint=f"they hold topics {', '.join(map(str, sorted(by_topic)))}")
    return [by_topic[t] for t in sorted(by_topic) if not topics or t in topics]
