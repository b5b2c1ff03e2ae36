"""The lab's HTML report, from hand-made findings: every section, the summary grouped by
level, verdict classes, checks as Finding computes them, valid inline PNGs, nothing
external; and in headless Chromium, every figure decodes without a script error."""

from __future__ import annotations

import base64
import io
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from dlforge.lab.finding import Check, Finding, figure_from_matplotlib  # noqa: E402
from dlforge.lab.report import format_lab_value, render_lab_report, write_lab_report  # noqa: E402

PNG_PREFIX = "data:image/png;base64,"


class Page(HTMLParser):
    """Collects ids, classes, image sources, table rows (by table class) and body attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.classes: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self.body: dict[str, str] = {}
        self.tables: list[tuple[str, list[list[str]]]] = []
        self.sections: dict[str, str] = {}  # section id -> its text
        self._cell: list[str] | None = None
        self._section: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.append(a["id"])
        self.classes.extend((a.get("class") or "").split())
        if tag == "img":
            self.images.append(a["src"])
        if tag == "a":
            self.links.append(a.get("href", ""))
        if tag == "body":
            self.body = {k: v for k, v in a.items() if k.startswith("data-")}
        if tag == "section":
            self._section = a.get("id")
            self.sections[self._section] = ""
        if tag == "table":
            self.tables.append((a.get("class", ""), []))
        if tag == "tr":
            self.tables[-1][1].append([])
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        if tag == "section":
            self._section = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._section is not None:
            self.sections[self._section] += data

    def table(self, cls: str) -> list[list[str]]:
        found = [rows for c, rows in self.tables if cls in c.split()]
        assert len(found) == 1, f"expected one table.{cls}, found {len(found)}"
        return found[0]


def parse(html: str) -> Page:
    page = Page()
    page.feed(html)
    page.close()
    return page


def _figure(title: str, seed: int):
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1, 2], [seed, seed + 1, seed * 2])
    return figure_from_matplotlib(fig, title)


@pytest.fixture(scope="module")
def findings() -> list[Finding]:
    return [
        Finding(topic=12, title="Dropout", claim="inverted dropout keeps the expectation <unchanged>",
                method="compare means", numbers={"gap": 0.02, "ratio": 1.0003},
                checks=[Check("gap", "<", 0.01), Check("ratio", ">", 1.0)],
                figures=[_figure("train-test gap", 1)], notes="", seconds=4.25),
        Finding(topic=3, title="Network structure", claim="one hidden layer fits XOR",
                method="train both & compare", numbers={"perceptron": 0.5, "mlp": 1.0, "per_seed": [1.0, 1.0]},
                checks=[Check("perceptron", "<=", 0.75), Check("mlp", ">=", 0.99)],
                figures=[_figure("decision regions", 2), _figure("loss curves", 3)],
                notes="the guide says 0.75; cross-entropy gives 0.5", seconds=1.5),
        Finding(topic=21, title="Exploding gradients", claim="clipping fixes it", method="blow it up",
                numbers={"clipped_loss": 0.3, "plain_loss": 0.2, "tanh_max": 0.9999877},
                checks=[Check("clipped_loss", "<", "plain_loss"), Check("tanh_max", "<", 1.0)],
                figures=[_figure("loss", 4)], notes="measured", seconds=12.0),
        Finding(topic=5, title="Activation functions", claim="ReLU trains fastest", method="race",
                numbers={"relu": 9.0, "tanh": 7.0}, checks=[Check("relu", "<", "tanh")],
                figures=[_figure("curves", 5)], seconds=2.0),
    ]


@pytest.fixture(scope="module")
def html(findings) -> str:
    return render_lab_report(findings)


@pytest.fixture(scope="module")
def page(html) -> Page:
    return parse(html)


def test_every_finding_has_a_section_in_topic_order(page, findings):
    sections = [i for i in page.ids if i.startswith("topic-")]
    assert sections == [f"topic-{t}" for t in sorted(f.topic for f in findings)]
    assert "summary" in page.ids
    for f in findings:
        text = page.sections[f"topic-{f.topic}"]
        for part in ("Claim", "Method", "Numbers", "Verdict rule", f.verdict):
            assert part in text
        assert f.claim in text and f.method in text and f.rule in text
        assert (f.notes in text) if f.notes else ("Notes" not in text)


def test_summary_tables_group_findings_by_level(page, findings):
    # basic holds 3 and 5, intermediate 12, advanced 21 (Finding.level)
    assert [i for i in page.ids if i.startswith("level-")] == ["level-basic", "level-intermediate", "level-advanced"]
    for level in ("basic", "intermediate", "advanced"):
        rows = page.table(f"level-{level}")
        assert rows[0] == ["topic", "title", "verdict", "checks: hold / inconclusive / fail", "budget", "seeds",
                           "seconds"]
        expected = sorted((f for f in findings if f.level == level), key=lambda f: f.topic)
        assert [r[0] for r in rows[1:]] == [str(f.topic) for f in expected]
        assert [r[2] for r in rows[1:]] == [f.verdict for f in expected]
        outcomes = [[c["outcome"] for c in f.check_results()] for f in expected]
        assert [r[3] for r in rows[1:]] == [f"{o.count('holds')} / {o.count('inconclusive')} / {o.count('fails')}"
                                            for o in outcomes]
        assert [r[6] for r in rows[1:]] == [f"{f.seconds:.1f}" for f in expected]
    assert {f"#topic-{f.topic}" for f in findings} <= set(page.links)


def test_a_level_without_findings_has_no_table(findings):
    only_basic = parse(render_lab_report([f for f in findings if f.level == "basic"]))
    assert [i for i in only_basic.ids if i.startswith("level-")] == ["level-basic"]


def test_verdicts_get_their_own_classes(page, findings, html):
    verdicts = {f.topic: f.verdict for f in findings}
    assert verdicts == {3: "supported", 5: "not supported", 12: "partly supported", 21: "partly supported"}
    # a verdict appears three times (summary row, heading, verdict line), and a fourth in "where the
    # guide is wrong" when it is not "supported"
    assert page.classes.count("verdict-supported") == 3
    assert page.classes.count("verdict-partly-supported") == 8
    assert page.classes.count("verdict-not-supported") == 4
    assert ".verdict-supported {" in html and ".verdict-not-supported {" in html  # coloured
    assert "4 findings: 1 supported, 2 partly supported, 1 not supported." in " ".join(html.split())


def test_checks_table_shows_what_finding_computed(page, findings):
    check_tables = [rows for c, rows in page.tables if "checks" in c.split()]
    by_topic = sorted(findings, key=lambda f: f.topic)
    assert len(check_tables) == len(by_topic)
    for rows, f in zip(check_tables, by_topic):
        assert rows[0] == ["check", "measured", "interval", "bound", "bound's interval", "outcome"]
        expected = [[r["check"], format_lab_value(r["value"]),
                     "" if r["low"] == r["high"] else f"[{format_lab_value(r['low'])}, {format_lab_value(r['high'])}]",
                     format_lab_value(r["bound"]), "", r["outcome"]] for r in f.check_results()]
        assert rows[1:] == expected
    # a named threshold shows the other number's value as the bound
    topic_21 = check_tables[3]
    assert topic_21[1] == ["clipped_loss < plain_loss", "0.3", "", "0.2", "", "fails"]
    assert topic_21[2] == ["tanh_max < 1.0", "0.999988", "", "1", "", "holds"]


def test_where_the_guide_is_wrong_lists_every_doubted_finding_and_its_failed_checks(page, findings):
    text = " ".join(page.sections["where-the-guide-is-wrong"].split())
    doubted = [f for f in sorted(findings, key=lambda f: f.topic) if f.verdict != "supported"]
    shown = sorted((t for t in (f"{f.topic}. {f.title}" for f in findings) if t in text), key=text.index)
    assert shown == [f"{f.topic}. {f.title}" for f in doubted]  # topics 5, 12, 21 in order; 3 (supported) absent
    assert "clipped_loss < plain_loss fails: measured 0.3 against 0.2" in text
    assert "tanh_max < 1.0" not in text  # it held
    assert "the guide says 0.75" not in text  # topic 3's notes: it is supported
    assert "measured" in text and "#topic-21" in page.links


def test_a_seed_combined_finding_shows_its_seeds_and_both_intervals():
    from dlforge.lab.seeds import combine

    runs = [Finding(topic=16, title="LSTMs", claim="c", method="m", numbers={"lstm": a, "rnn": r, "length": 60},
                    checks=[Check("lstm", ">", "rnn")], seconds=1.0)
            for a, r in ((0.9, 0.5), (0.8, 0.55), (0.95, 0.52))]
    f = combine(runs, seeds=[0, 1, 2])
    page = parse(render_lab_report([f]))
    (row,) = page.table("checks")[1:]
    r = f.check_results()[0]
    assert row == ["lstm > rnn", format_lab_value(r["value"]), f"[{format_lab_value(r['low'])}, {format_lab_value(r['high'])}]",
                   format_lab_value(r["bound"]), f"[{format_lab_value(r['bound_low'])}, {format_lab_value(r['bound_high'])}]",
                   "holds"]
    assert page.table("level-intermediate")[1][5] == "3"
    assert "3 seed(s) (0, 1, 2)" in " ".join(page.sections["topic-16"].split())
    assert ["length", "60"] in page.table("numbers")


def test_numbers_tables_list_every_number(page, findings):
    number_tables = [rows for c, rows in page.tables if "numbers" in c.split()]
    for rows, f in zip(number_tables, sorted(findings, key=lambda f: f.topic)):
        assert rows[1:] == [[k, format_lab_value(v)] for k, v in f.numbers.items()]
    assert ["per_seed", "[1, 1]"] in number_tables[0]


def test_figures_are_inline_pngs_and_nothing_is_external(page, html, findings):
    assert len(page.images) == sum(len(f.figures) for f in findings) == 5
    for src in page.images:
        assert src.startswith(PNG_PREFIX)
        image = Image.open(io.BytesIO(base64.b64decode(src[len(PNG_PREFIX):], validate=True)))
        assert image.format == "PNG"
        image.load()  # a truncated PNG raises here
        assert image.width > 100 and image.height > 100
    assert "http://" not in html and "https://" not in html and "//cdn" not in html
    assert all(link.startswith("#") for link in page.links)
    assert "default-src 'none'" in html  # the CSP forbids fetches


def test_text_is_escaped(html):
    assert "keeps the expectation &lt;unchanged&gt;" in html
    assert "train both &amp; compare" in html
    assert "<unchanged>" not in html


def test_the_page_carries_the_figure_check_script(html, page):
    assert "document.body.dataset" in html and "figuresLoaded" in html and "window.onerror" in html
    assert page.body == {}  # only a browser fills the data-* attributes


def test_format_lab_value_keeps_six_digits():
    assert format_lab_value(0.9999877) == "0.999988"
    assert format_lab_value(2.925e-16) == "2.925e-16"
    assert format_lab_value(list(range(20))).endswith("... (20 in all)]")
    assert format_lab_value(float("nan")) == "n/a"


def test_write_lab_report_creates_the_file(tmp_path, findings, html):
    path = write_lab_report(findings, tmp_path / "lab" / "report.html")
    assert path == tmp_path / "lab" / "report.html"
    assert path.read_text(encoding="utf-8") == html


def test_every_figure_loads_in_a_browser(chromium, tmp_path, findings):
    path = write_lab_report(findings, tmp_path / "report.html")
    profile = tmp_path / "profile"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--dump-dom", Path(path).resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    body = parse(done.stdout).body
    assert body.get("data-figures") == "5"
    assert body.get("data-figures-loaded") == "5"
    assert body.get("data-errors") == ""
