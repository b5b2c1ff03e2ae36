"""The HTML run report: every section present, numbers equal to their inputs, figures valid.

Inputs are real: a tiny MLP trained by ``train_run`` (so ``fit`` with GradientMonitor,
``log_every_n_steps=1``) on iris, and an evaluation dict computed from the model's test
outputs with scikit-learn (roc_curve, precision_recall_curve, ...), the JSON form the
``evaluate`` package will produce.
"""

from __future__ import annotations

import base64
import doctest
import html as html_lib
import io
import json
import math
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn import metrics as skm  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import StratifiedKFold  # noqa: E402
from sklearn.preprocessing import label_binarize  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

from dlforge.config import validate_config  # noqa: E402
from dlforge.data import load_source, prepare  # noqa: E402
from dlforge.errors import ConfigError  # noqa: E402
from dlforge.evaluate import plots, report  # noqa: E402
from dlforge.evaluate.report import format_number, format_value, render_report, write_report  # noqa: E402
from dlforge.evaluate.run_files import read_history  # noqa: E402
from dlforge.models import build  # noqa: E402
from dlforge.data.imbalance import class_counts  # noqa: E402
from dlforge.pipeline import train_run  # noqa: E402
from dlforge.train import GradientMonitor, fit  # noqa: E402

PNG_PREFIX = "data:image/png;base64,"
CLASSIFICATION_CONFIG = {
    "name": "iris-report", "seed": 0,
    "data": {"source": "iris", "split": {"val": 0.2, "test": 0.3}},
    "model": {"arch": "mlp", "hidden": [16, 16]},
    "optim": {"name": "adam", "lr": 0.03},
    "train": {"epochs": 12, "batch_size": 16, "log_every_n_steps": 1,
              "early_stopping": {"monitor": "val_loss", "patience": 2}},
}


# ----------------------------------------------------------------------------- inputs

def sklearn_classification_eval(model: torch.nn.Module, data: TensorDataset, class_names: list[str]) -> dict[str, Any]:
    """What ``Evaluation.to_dict()`` holds, computed with scikit-learn from the model's outputs."""
    x, y = data.tensors
    model.eval()
    with torch.no_grad():
        proba = torch.softmax(model(x), dim=1).numpy()  # (N, K)
    y = y.numpy()
    pred = proba.argmax(axis=1)
    labels = list(range(len(class_names)))
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    onehot = label_binarize(y, classes=labels)  # (N, K)
    roc, pr = {}, {}
    for i, name in enumerate(class_names):
        fpr, tpr, _ = skm.roc_curve(onehot[:, i], proba[:, i])
        roc[name] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": float(skm.auc(fpr, tpr))}
        prec, rec, _ = skm.precision_recall_curve(onehot[:, i], proba[:, i])
        pr[name] = {"precision": prec.tolist(), "recall": rec.tolist(),
                    "ap": float(skm.average_precision_score(onehot[:, i], proba[:, i]))}
    return {
        "task": "classification",
        "metrics": {
            "accuracy": float(skm.accuracy_score(y, pred)),
            "f1_macro": float(skm.f1_score(y, pred, average="macro")),
            "precision_macro": float(skm.precision_score(y, pred, average="macro", zero_division=0)),
            "roc_auc": float(skm.roc_auc_score(y, proba, multi_class="ovr", labels=labels)),
            "log_loss": float(skm.log_loss(y, proba, labels=labels)),
        },
        "per_class": [{"class": name, "precision": float(precision[i]), "recall": float(recall[i]),
                       "f1": float(f1[i]), "support": int(support[i])} for i, name in enumerate(class_names)],
        "confusion": skm.confusion_matrix(y, pred, labels=labels).tolist(),
        "curves": {"roc": roc, "pr": pr},
        "class_names": list(class_names),
    }


def diagnoses_from(history: list[dict[str, Any]], first_layer: str) -> list[dict[str, Any]]:
    """Two findings in the Diagnosis JSON form, their evidence taken from the real history."""
    epochs = [r for r in history if r["type"] == "epoch"]
    norms = [r[f"grad_norm/{first_layer}"] for r in history if r["type"] == "step"][-5:]
    return [
        {"kind": "overfitting", "severity": "warning",
         "message": "val_loss rose while train_loss fell & <kept> falling",
         "evidence": {"val_loss_first": epochs[0]["val_loss"], "val_loss_last": epochs[-1]["val_loss"],
                      "epochs": len(epochs)},
         "fix": "add dropout or weight_decay, or stop earlier"},
        {"kind": "vanishing_gradients", "severity": "error", "message": f"{first_layer} gradients are tiny",
         "evidence": {"layer": first_layer, "recent_grad_norms": norms, "ratio": float("nan")},
         "fix": "use ReLU with He init, or add batch_norm"},
    ]


def sklearn_cv(k: int = 4) -> dict[str, Any]:
    """A CVResult.to_dict()-shaped summary from scikit-learn's StratifiedKFold on iris."""
    bundle = load_source("iris")
    x, y = bundle.x, bundle.y
    folds, ratios = [], []
    for train_idx, test_idx in StratifiedKFold(k, shuffle=True, random_state=0).split(x, y):
        clf = LogisticRegression(max_iter=500).fit(x[train_idx], y[train_idx])
        pred = clf.predict(x[test_idx])
        folds.append({"accuracy": float(skm.accuracy_score(y[test_idx], pred)),
                      "f1_macro": float(skm.f1_score(y[test_idx], pred, average="macro"))})
        ratios.append((np.bincount(y[test_idx], minlength=3) / len(test_idx)).tolist())
    keys = list(folds[0])
    return {"k": k, "stratified": True, "folds": folds,
            "mean": {m: float(np.mean([f[m] for f in folds])) for m in keys},
            "std": {m: float(np.std([f[m] for f in folds])) for m in keys},
            "class_ratios": ratios, "overall_ratio": (np.bincount(y) / len(y)).tolist()}


def train_classification(runs_dir: Path) -> dict[str, Any]:
    """A real run directory plus everything a report is rendered from."""
    outcome = train_run(validate_config(CLASSIFICATION_CONFIG), runs_dir=runs_dir)
    config = yaml.safe_load((outcome.run_dir / "config.yaml").read_text())
    history = outcome.result.history
    first_layer = next(n for n, _ in outcome.model.named_parameters())
    result = outcome.result
    return {
        "run_dir": outcome.run_dir, "outcome": outcome, "config": config, "history": history,
        "evaluation": sklearn_classification_eval(outcome.model, outcome.prepared.test, outcome.prepared.class_names),
        "diagnoses": diagnoses_from(history, first_layer), "cv": sklearn_cv(),
        "run_info": {"data": outcome.prepared.name, "task": outcome.prepared.task, "arch": "mlp",
                     "epochs_run": result.epochs_run, "stop_reason": result.stop_reason,
                     "best_epoch": result.best_epoch, "metrics": outcome.metrics,
                     # what the run's model.json records about the classes (the class-balance section)
                     "class_counts": {"train": class_counts(outcome.prepared.train.tensors[1],
                                                           len(outcome.prepared.class_names)),
                                      "class_names": outcome.prepared.class_names}},
    }


def full_report(clf: dict[str, Any]) -> str:
    keys = ("config", "history", "evaluation", "diagnoses", "cv", "run_info")
    return render_report(**{k: clf[k] for k in keys})


@pytest.fixture(scope="module")
def clf(tmp_path_factory) -> dict[str, Any]:
    return train_classification(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def html(clf) -> str:
    """The full report, rendered once (figures cost ~0.3 s each on a busy 2-core machine)."""
    return full_report(clf)


@pytest.fixture(scope="module")
def page(html) -> ReportParser:
    return parse(html)


# ----------------------------------------------------------------------------- HTML parsing

class ReportParser(HTMLParser):
    """Collects what the tests read: element texts by tag/class, tables, images, body data."""

    VOID = {"img", "meta", "br", "hr", "input", "link"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, str, str, list[str]]] = []  # (tag, class, id, text parts)
        self.elements: list[tuple[str, str, str, str]] = []  # (tag, class, id, text)
        self.tables: list[tuple[str, list[list[str]]]] = []  # (class, rows of cell texts)
        self.images: list[str] = []
        self.body: dict[str, str] = {}
        self._table: list[list[str]] | None = None
        self._row: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag == "body":
            self.body = a
        if tag == "table":
            self._table = []
            self.tables.append((a.get("class", ""), self._table))
        if tag == "tr":
            self._row = []
        if tag not in self.VOID:
            self.stack.append((tag, a.get("class", ""), a.get("id", ""), []))

    def handle_endtag(self, tag: str) -> None:
        while self.stack:
            open_tag, cls, id_, parts = self.stack.pop()
            text = " ".join("".join(parts).split())
            self.elements.append((open_tag, cls, id_, text))
            if open_tag in ("td", "th") and self._row is not None:
                self._row.append(text)
            if open_tag == "tr" and self._table is not None and self._row is not None:
                self._table.append(self._row)
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for *_, parts in self.stack:
            parts.append(data)

    def texts(self, tag: str | None = None, cls: str | None = None) -> list[str]:
        return [t for g, c, _, t in self.elements if (tag is None or g == tag) and (cls is None or cls in c.split())]

    def table(self, cls: str) -> list[list[str]]:
        found = [rows for c, rows in self.tables if cls in c.split()]
        assert len(found) == 1, f"expected one table.{cls}, found {len(found)}"
        return found[0]

    def section_ids(self) -> list[str]:
        return [i for g, _, i, _ in self.elements if g in ("section", "header") and i]

    def facts(self) -> dict[str, str]:
        return dict(zip(self.texts("dt"), self.texts("dd")))


def parse(html: str) -> ReportParser:
    parser = ReportParser()
    parser.feed(html)
    parser.close()
    return parser


def decode_png(src: str) -> Image.Image:
    assert src.startswith(PNG_PREFIX), src[:40]
    image = Image.open(io.BytesIO(base64.b64decode(src[len(PNG_PREFIX):], validate=True)))
    assert image.format == "PNG"
    image.load()  # decodes every row: a truncated or corrupt PNG raises here
    return image


# ----------------------------------------------------------------------------- classification

def test_full_report_has_every_section_and_valid_figures(html, page):
    assert set(page.section_ids()) == {"summary", "diagnosis", "training", "gradients", "evaluation",
                                       "class-balance", "cross-validation", "config"}
    # training curves, gradient norms, confusion matrix, ROC, PR
    assert len(page.images) == 5 == html.count('<img src="data:image/png;base64,')
    for src in page.images:
        image = decode_png(src)
        assert image.width >= 300 and image.height >= 250
        assert len(np.unique(np.asarray(image.convert("L")))) > 10  # drawn on, not a blank canvas
    assert "http://" not in html and "https://" not in html
    assert len(html.encode()) < 2_000_000
    assert page.body == {}  # the script fills data-* attributes only in a browser


def test_header_shows_the_run_facts(clf, page):
    info = clf["run_info"]
    assert page.texts("h1") == [clf["config"]["name"]]
    facts = page.facts()
    expected_stop = {None: "completed all epochs", "early_stopping": "early stopping"}[info["stop_reason"]]
    assert facts == {
        "data source": "iris", "task": "classification", "model": "mlp",
        "epochs run": str(info["epochs_run"]), "stop reason": expected_stop,
        "best epoch": "n/a" if info["best_epoch"] is None else str(info["best_epoch"] + 1),
    }
    # the run's test_* metrics overlaid by the evaluation's; headline ones only, in their order
    merged = {k[len("test_"):]: v for k, v in info["metrics"].items() if k.startswith("test_")}
    merged.update(clf["evaluation"]["metrics"])
    chips = page.texts("span", "chip")
    assert chips == [f"test {k} {format_number(merged[k])}" for k in report.HEADLINE_METRICS if k in merged]
    assert f"test accuracy {format_number(clf['evaluation']['metrics']['accuracy'])}" in chips
    assert f"test loss {format_number(info['metrics']['test_loss'])}" in chips
    # the loop's own test accuracy and scikit-learn's agree on the same model
    torch.testing.assert_close(info["metrics"]["test_accuracy"], clf["evaluation"]["metrics"]["accuracy"],
                               rtol=0, atol=1e-6)


def test_evaluation_tables_equal_the_inputs(clf, page):
    evaluation = clf["evaluation"]
    assert "Evaluation (classification)" in page.texts("h2")
    metrics = page.table("metrics")
    assert metrics[0] == ["metric", "value"]
    assert metrics[1:] == [[k, format_number(v)] for k, v in evaluation["metrics"].items()]
    per_class = page.table("per-class")
    assert per_class[0] == ["class", "precision", "recall", "f1", "support"]
    assert per_class[1:] == [[row["class"], *(format_number(row[k]) for k in ("precision", "recall", "f1")),
                              str(row["support"])] for row in evaluation["per_class"]]
    assert sum(row["support"] for row in evaluation["per_class"]) == len(clf["outcome"].prepared.test)


def test_diagnosis_findings_sorted_escaped_with_evidence(clf, html, page):
    diagnoses = clf["diagnoses"]
    by_severity = sorted(diagnoses, key=lambda d: ["error", "warning", "info"].index(d["severity"]))
    assert page.texts("span", "badge") == [d["severity"] for d in by_severity]
    assert page.texts("span", "kind") == [d["kind"] for d in by_severity]
    assert page.texts("p", "message") == [d["message"] for d in by_severity]
    assert "&amp; &lt;kept&gt; falling" in html  # user text is escaped, not injected
    assert page.texts("p", "fix") == [f"Fix: {d['fix']}" for d in by_severity]
    evidence = [rows for c, rows in page.tables if c == "evidence"]
    assert evidence == [[["evidence", "value"], *([k, format_value(v)] for k, v in d["evidence"].items())]
                        for d in by_severity]
    vanishing = dict(evidence[0][1:])
    assert vanishing["ratio"] == "n/a"
    assert vanishing["recent_grad_norms"] == ", ".join(format_number(v) for v in diagnoses[1]["evidence"]["recent_grad_norms"])
    assert page.texts("p", "note")[0] == "1 error, 1 warning"
    assert "No problems detected" not in html


def test_cross_validation_table(clf, page):
    cv = clf["cv"]
    rows = page.table("cv")
    metrics = list(cv["folds"][0])
    assert rows[0] == ["fold", *metrics, "class ratio"]
    ratio = lambda r: " / ".join(f"{v:.3f}" for v in r)  # noqa: E731
    assert rows[1:-1] == [[str(i + 1), *(format_number(f[m]) for m in metrics), ratio(cv["class_ratios"][i])]
                          for i, f in enumerate(cv["folds"])]
    assert rows[-1] == ["mean ± std", *(f"{format_number(cv['mean'][m])} ± {format_number(cv['std'][m])}" for m in metrics),
                        ratio(cv["overall_ratio"])]
    assert f"{cv['k']} folds, stratified: yes" in page.texts("p", "note")[-1]


def test_config_is_the_resolved_yaml(clf, html):
    raw = re.search(r'<pre class="config">(.*?)</pre>', html, re.S).group(1)
    assert html_lib.unescape(raw) == yaml.safe_dump(clf["config"], sort_keys=False)
    assert yaml.safe_load(html_lib.unescape(raw)) == clf["config"]


def test_gradient_panel_plots_each_weight_in_model_order(clf):
    weights = [n for n, _ in clf["outcome"].model.named_parameters() if not n.endswith(".bias")]
    assert plots.weight_grad_names(clf["history"]) == weights
    steps = [r for r in clf["history"] if r["type"] == "step"]
    assert len(steps) == clf["outcome"].result.steps  # log_every_n_steps=1: one record per step


def test_figures_never_touch_pyplot_state(clf):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    render_report(config=clf["config"], history=clf["history"])
    assert plt.get_fignums() == before


def test_nan_metrics_show_na(clf):
    evaluation = json.loads(json.dumps(clf["evaluation"]))
    evaluation["metrics"]["roc_auc"] = float("nan")
    evaluation["per_class"][0]["precision"] = float("nan")
    evaluation.update(curves={}, confusion=None)  # tables only: figures are checked elsewhere
    page = parse(render_report(config=clf["config"], history=[], evaluation=evaluation))
    assert dict(page.table("metrics")[1:])["roc_auc"] == "n/a"
    assert page.table("per-class")[1][1] == "n/a"
    assert "test roc_auc n/a" in page.texts("span", "chip")


def test_empty_diagnosis_says_no_problems_and_none_omits_section(clf):
    page = parse(render_report(config=clf["config"], history=[], diagnoses=[]))
    assert "diagnosis" in page.section_ids()
    assert page.texts("p", "ok") == ["No problems detected."]
    assert page.texts("span", "badge") == []
    page = parse(render_report(config=clf["config"], history=clf["history"]))
    assert "diagnosis" not in page.section_ids() and "evaluation" not in page.section_ids()
    assert len(page.images) == 2  # training curves and gradient norms only
    # without run_info the header falls back to the config and the history
    facts = page.facts()
    assert facts["data source"] == "iris" and facts["model"] == "mlp"
    assert facts["epochs run"] == str(sum(r["type"] == "epoch" for r in clf["history"]))
    assert facts["best epoch"] == "n/a" and facts["stop reason"] == "n/a"


# ----------------------------------------------------------------------------- regression

def test_regression_report():
    data = prepare(load_source("diabetes"), val=0.2, test=0.2, seed=0)
    torch.manual_seed(0)
    model = build({"arch": "mlp", "hidden": [16]}, input_shape=data.input_shape, num_outputs=data.num_outputs)
    result = fit(model, data.train, data.val, epochs=4, batch_size=32, optim={"name": "adam", "lr": 0.01},
                 callbacks=[GradientMonitor()], log_every_n_steps=1)
    x, y = data.test.tensors
    model.eval()
    with torch.no_grad():
        y_pred = model(x).reshape(-1).numpy()
    y_true = y.reshape(-1).numpy()
    mse = float(skm.mean_squared_error(y_true, y_pred))
    evaluation = {
        "task": "regression",
        "metrics": {"mse": mse, "rmse": math.sqrt(mse), "mae": float(skm.mean_absolute_error(y_true, y_pred)),
                    "r2": float(skm.r2_score(y_true, y_pred))},
        "per_class": [], "confusion": None, "class_names": None,
        "curves": {"residuals": {"y_true": y_true.tolist(), "y_pred": y_pred.tolist()}},
    }
    config = {"name": "diabetes-mlp", "data": {"source": "diabetes"}, "model": {"arch": "mlp", "hidden": [16]}}
    html = render_report(config=config, history=result.history, evaluation=evaluation, diagnoses=[])
    page = parse(html)
    # training curves, gradient norms, predicted-vs-true, residual histogram
    assert len(page.images) == 4
    for src in page.images:
        decode_png(src)
    assert "Evaluation (regression)" in page.texts("h2")
    assert page.table("metrics")[1:] == [[k, format_number(v)] for k, v in evaluation["metrics"].items()]
    assert not [c for c, _ in page.tables if c == "per-class"]
    assert page.facts()["task"] == "regression" and page.facts()["epochs run"] == "4"
    assert "http://" not in html and "https://" not in html


# ----------------------------------------------------------------------------- write_report

def _copy_run(clf: dict[str, Any], tmp_path: Path) -> Path:
    """The run directory without what train_run wrote beyond config, history and model."""
    run_dir = tmp_path / "run"
    shutil.copytree(clf["run_dir"], run_dir, ignore=shutil.ignore_patterns(
        "checkpoints", "evaluation.json", "diagnosis.json", "cv.json", "baselines.json", "report.html"))
    return run_dir


def test_train_run_writes_a_report_from_its_own_files(clf):
    # train_run calls write_report on the evaluation.json and diagnosis.json it wrote itself
    run_dir = clf["run_dir"]
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    diagnoses = json.loads((run_dir / "diagnosis.json").read_text())
    page = parse((run_dir / "report.html").read_text(encoding="utf-8"))
    assert page.table("metrics")[1:] == [[k, format_value(v)] for k, v in evaluation["metrics"].items()]
    assert len(page.texts("span", "badge")) == len(diagnoses)
    assert ("No problems detected." in page.texts("p", "ok")) == (not diagnoses)
    assert f"Measured on the {evaluation['split']} split." in page.texts("p", "note")
    assert len(page.images) == 5


def test_write_report_reads_the_run_directory(clf, html, tmp_path):
    run_dir = _copy_run(clf, tmp_path)
    (run_dir / "evaluation.json").write_text(json.dumps(clf["evaluation"]))
    (run_dir / "diagnosis.json").write_text(json.dumps(clf["diagnoses"]))
    (run_dir / "cv.json").write_text(json.dumps(clf["cv"]))
    path = write_report(run_dir)
    assert path == run_dir / "report.html"
    assert [p.name for p in run_dir.iterdir() if p.name.startswith(".report")] == []  # no temp file left
    written = path.read_text(encoding="utf-8")
    page = parse(written)
    meta = json.loads((run_dir / "model" / "model.json").read_text())
    training = meta["training"]
    facts = page.facts()
    assert facts["epochs run"] == str(training["epochs_run"])
    assert facts["best epoch"] == ("n/a" if training["best_epoch"] is None else str(training["best_epoch"] + 1))
    assert facts["data source"] == training["data"] and facts["model"] == meta["arch"]
    # the files hold what the run held in memory, so the page is the in-memory one, byte for
    # byte (NaN evidence included)
    assert read_history(run_dir / "history.jsonl") == json.loads(json.dumps(clf["history"]))
    assert written == html


def test_write_report_keywords_win_over_files(clf, tmp_path):
    run_dir = _copy_run(clf, tmp_path)
    (run_dir / "evaluation.json").write_text(json.dumps(clf["evaluation"]))
    (run_dir / "diagnosis.json").write_text(json.dumps(clf["diagnoses"]))
    other = json.loads(json.dumps(clf["evaluation"]))
    other.update(metrics={"accuracy": 0.125}, curves={}, confusion=None)
    page = parse(write_report(run_dir, evaluation=other, diagnoses=[]).read_text())
    assert page.table("metrics")[1:] == [["accuracy", "0.125"]]
    assert page.texts("p", "ok") == ["No problems detected."]


def test_write_report_without_optional_files(clf, tmp_path):
    run_dir = _copy_run(clf, tmp_path)
    page = parse(write_report(run_dir).read_text())
    ids = page.section_ids()
    assert "evaluation" not in ids and "diagnosis" not in ids and "cross-validation" not in ids
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert page.texts("span", "chip") == [f"test {k} {format_number(metrics['test_' + k])}"
                                          for k in report.HEADLINE_METRICS if f"test_{k}" in metrics]
    assert len(page.images) == 2


@pytest.mark.parametrize("name", ["config.yaml", "history.jsonl"])
def test_write_report_missing_required_file(clf, tmp_path, name):
    run_dir = _copy_run(clf, tmp_path)
    (run_dir / name).unlink()
    with pytest.raises(ConfigError, match=re.escape(name)):
        write_report(run_dir)
    assert not (run_dir / "report.html").exists()


def test_write_report_corrupt_json_names_the_file(clf, tmp_path):
    run_dir = _copy_run(clf, tmp_path)
    (run_dir / "evaluation.json").write_text('{"task": "classification", ')
    with pytest.raises(ConfigError, match="evaluation.json"):
        write_report(run_dir)


@pytest.mark.parametrize("module", [report, plots])
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_baselines_section_shows_the_model_beside_each_baseline():
    baselines = {"task": "regression", "split": "test", "metric": "r2", "model": {"r2": 0.41, "rmse": 60.0},
                 "baselines": [{"name": "training mean", "metrics": {"r2": -0.01, "rmse": 77.0}, "seconds": 0.001,
                                "skipped": None},
                               {"name": "HistGradientBoosting", "metrics": {"r2": 0.86, "rmse": 30.0}, "seconds": 0.2,
                                "skipped": None},
                               {"name": "Ridge", "metrics": None, "seconds": 0.0,
                                "skipped": "skipped: too large (9 rows x 9 features)"}]}
    config = {"name": "r", "data": {"source": "x.csv"}}
    page = parse(render_report(config=config, history=[], baselines=baselines,
                               run_info={"task": "regression"}))
    assert page.table("baselines") == [
        ["model", "R²", "RMSE", "seconds"], ["this model", "0.41", "60", ""],
        ["training mean", "-0.01", "77", "0.001"], ["HistGradientBoosting", "0.86", "30", "0.2"],
        ["Ridge", "skipped: too large (9 rows x 9 features)"]]
    assert any(t.startswith("HistGradientBoosting beats this model on the test split (R² 0.86 vs 0.41)")
               for t in page.texts("b"))
    assert "baselines" in page.texts("a")
    assert "Baselines" not in parse(render_report(config=config, history=[])).texts("h2")


def test_regression_losses_are_labelled_as_on_the_standardised_target():
    history = [{"type": "epoch", "epoch": e, "train_loss": 1.0 / (e + 1)} for e in range(3)]
    label = "Losses are the training loss on the standardised target"
    html = render_report(config={"name": "r"}, history=history, run_info={"task": "regression"})
    assert label in html
    off = {"name": "r", "data": {"standardize_target": False}}
    assert label not in render_report(config=off, history=history, run_info={"task": "regression"})
    assert label not in render_report(config={"name": "r"}, history=history, run_info={"task": "classification"})
    chips = parse(render_report(config={"name": "r"}, history=history,
                                run_info={"task": "regression", "metrics": {"test_loss": 0.5, "test_r2": 0.4}}))
    assert chips.texts("span", "chip") == ["test loss (standardised target) 0.5", "test r2 0.4"]
