"""train.log_to and TrackerLogger: what TensorBoard and MLflow hold is read back with their
own readers (``EventAccumulator``, ``MlflowClient``) and compared with history.jsonl."""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from dlforge.config import flat_config, validate_config
from dlforge.errors import ConfigError
from dlforge.pipeline.run import train_run
from dlforge.train import GradientMonitor, fit
from dlforge.train.trackers import TensorBoardWriter, TrackerLogger, record_scalars, tracker_params
from tests.train.conftest import make_data, make_model


def tracked_config(uri: str | None, log_to: list[str], **train: Any):
    return validate_config({"name": "iris-tracked", "data": {"source": "iris"}, "model": {"arch": "mlp", "hidden": [8]},
                            "train": {"epochs": 2, "device": "cpu", "log_every_n_steps": 2, "log_to": log_to,
                                      "mlflow_uri": uri, **train}})


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def run_config(run_dir: Path) -> dict[str, Any]:
    return yaml.safe_load((run_dir / "config.yaml").read_text())


def expected_scalars(history: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """tag -> {x: value}, from history.jsonl as record_scalars lays it out."""
    out: dict[str, dict[int, float]] = {}
    for record in history:
        found = record_scalars(record)
        if found:
            for tag, value in found[1].items():
                out.setdefault(tag, {})[found[0]] = value
    return out


def check_tensorboard(log_dir: Path, history: list[dict[str, Any]], params: dict[str, Any]) -> None:
    """Every scalar of the history is in the events at its x; grad norms and hparams are there."""
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    expected = expected_scalars(history)
    assert set(expected) <= set(acc.Tags()["scalars"])
    for tag, values in expected.items():
        got = {e.step: e.value for e in acc.Scalars(tag)}
        assert got == pytest.approx(values, rel=1e-6), tag
    assert any(t.startswith("grad_norm/") for t in expected) and "train_loss" in expected
    content = acc.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert set(start.hparams) == set(params)
    assert start.hparams["optim.lr"].number_value == pytest.approx(params["optim.lr"])


def check_mlflow(uri: str, run_id: str, history: list[dict[str, Any]], params: dict[str, Any],
                 run_name: str) -> None:
    """Params, metric histories, artifacts and status of the MLflow run, through MLflow's client."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    found = client.search_runs([run.info.experiment_id], filter_string=f"attributes.run_name = '{run_name}'")
    assert run_id in [r.info.run_id for r in found]
    assert run.info.status == "FINISHED"
    assert run.data.params == {k: str(v) for k, v in params.items()}
    for tag, values in expected_scalars(history).items():
        got = {m.step: m.value for m in client.get_metric_history(run_id, tag)}
        assert got == pytest.approx(values, rel=1e-12), tag
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"report.html", "metrics.json", "model"} <= top
    assert "model/model.safetensors" in {a.path for a in client.list_artifacts(run_id, "model")}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory) -> tuple[Path, str, str]:
    """One iris run logging to both trackers: (run_dir, MLflow URI, progress text)."""
    tmp = tmp_path_factory.mktemp("tracked")
    uri = f"sqlite:///{tmp}/mlflow.db"
    progress = io.StringIO()
    outcome = train_run(tracked_config(uri, ["tensorboard", "mlflow"]), runs_dir=tmp / "runs", progress=progress)
    return outcome.run_dir, uri, progress.getvalue()


def test_log_to_tensorboard_reads_back(tracked) -> None:
    run_dir, _, progress = tracked
    check_tensorboard(run_dir / "tensorboard", read_history(run_dir), tracker_params(flat_config(run_config(run_dir))))
    assert "logging failed" not in progress


def test_log_to_mlflow_reads_back(tracked) -> None:
    run_dir, uri, _ = tracked
    entry = json.loads((run_dir / "trackers.json").read_text())["mlflow"]
    params = tracker_params(flat_config(run_config(run_dir)))
    assert {"optim.lr", "train.epochs", "model.arch", "data.source"} <= set(params)
    check_mlflow(uri, entry["run_id"], read_history(run_dir), params, run_dir.name)


def test_unreachable_mlflow_is_reported_once_and_training_finishes(tracked, tmp_path: Path) -> None:
    run_dir, _, _ = tracked
    progress = io.StringIO()
    outcome = train_run(tracked_config("http://127.0.0.1:9", ["mlflow", "tensorboard"]), runs_dir=tmp_path,
                        progress=progress)
    text = progress.getvalue()
    assert text.count("mlflow logging failed") == 1 and "127.0.0.1:9" in text
    assert (outcome.run_dir / "report.html").exists() and not (outcome.run_dir / "trackers.json").exists()
    check_tensorboard(outcome.run_dir / "tensorboard", read_history(outcome.run_dir),
                      tracker_params(flat_config(run_config(outcome.run_dir))))
    from safetensors.torch import load_file

    same = load_file(run_dir / "model" / "model.safetensors")  # the run beside it, trackers working
    for name, value in load_file(outcome.run_dir / "model" / "model.safetensors").items():
        torch.testing.assert_close(value, same[name], rtol=0, atol=0)


class RaisingWriter:
    name = "broken"

    def __init__(self) -> None:
        self.calls = 0

    def open(self, run_name: str, params: dict[str, Any]) -> None:
        pass

    def write(self, records: list[dict[str, Any]]) -> None:
        self.calls += 1
        raise OSError(28, "No space left on device")

    def close(self, status: str | None) -> None:
        pass


class SleepyWriter(RaisingWriter):
    """A writer that has not started writing before training ends (held in ``open`` until the test
    releases it), so the queue fills whatever the machine's speed."""

    name = "sleepy"

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def open(self, run_name: str, params: dict[str, Any]) -> None:
        self.gate.wait(60)

    def write(self, records: list[dict[str, Any]]) -> None:
        pass


def _fit(callbacks: list, epochs: int = 2, n: int = 96, log_every: int = 1) -> tuple[torch.nn.Module, Any, float]:
    model = make_model()
    start = time.perf_counter()
    result = fit(model, make_data(n=n), epochs=epochs, batch_size=8, optim={"name": "adam", "lr": 1e-2},
                 device="cpu", seed=0, log_every_n_steps=log_every, callbacks=callbacks)
    return model, result, time.perf_counter() - start


def test_a_raising_writer_is_reported_once_and_the_other_keeps_writing(tmp_path: Path) -> None:
    plain, _, _ = _fit([])
    broken, stream = RaisingWriter(), io.StringIO()
    logger = TrackerLogger([broken, TensorBoardWriter(tmp_path / "tb")], params={"optim.lr": 0.01}, stream=stream)
    model, result, _ = _fit([GradientMonitor(), logger])
    assert stream.getvalue().count("note: broken logging failed (OSError") == 1 and broken.calls == 1
    assert list(logger.failed) == ["broken"] and logger.dropped == 0
    for name, value in model.state_dict().items():  # training is untouched by a tracker
        torch.testing.assert_close(value, plain.state_dict()[name], rtol=0, atol=0)
    check_tensorboard(tmp_path / "tb", result.history, {"optim.lr": 0.01})


def test_a_raising_writer_without_a_stream_warns_once(tmp_path: Path) -> None:
    with pytest.warns(RuntimeWarning, match="broken logging failed") as caught:
        _fit([TrackerLogger([RaisingWriter()])], epochs=1)
    assert len([w for w in caught if "logging failed" in str(w.message)]) == 1


def test_the_queue_never_blocks_the_step() -> None:
    stream = io.StringIO()
    sleepy = SleepyWriter()
    logger = TrackerLogger([sleepy], queue_size=16, close_timeout_s=0.2, stream=stream)
    try:
        _, result, tracked = _fit([logger], epochs=1, n=2400)
    finally:
        sleepy.gate.set()
    assert result.steps == 300
    # The writer is held in open() for up to 60 s, until after training: a step that waited for it
    # would have taken that long; 300 free steps take a few seconds even on a loaded machine.
    assert tracked < 30, tracked
    assert logger.seen == 301 and logger.dropped == 301 - 16  # the 16 places filled, the rest dropped
    text = stream.getvalue()
    assert "285 of 301 history records were not sent to sleepy" in text
    assert "still writing after 0.2 s" in text


def test_unknown_tracker_is_refused_with_the_allowed_names() -> None:
    with pytest.raises(ConfigError, match="train.log_to.0: Input should be 'tensorboard' or 'mlflow'.*'wandb'"):
        tracked_config(None, ["wandb"])


def test_a_missing_extra_is_refused_before_the_run_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # find_spec answers None: as if not installed
    with pytest.raises(ConfigError, match=r"pip install dlforge\[mlflow\]"):
        train_run(tracked_config(None, ["mlflow"]), runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_record_scalars_lays_out_epochs_and_steps() -> None:
    assert record_scalars({"type": "epoch", "epoch": 3, "train_loss": 0.25, "lr": 0.1, "time": 2}) == (
        3, {"train_loss": 0.25, "lr": 0.1, "time": 2.0})
    assert record_scalars({"type": "step", "step": 7, "epoch": 0, "loss": 1.0, "lr": 0.1, "grad_norm/total": 2.0}) == (
        7, {"step/loss": 1.0, "step/lr": 0.1, "grad_norm/total": 2.0})
    assert record_scalars({"type": "note", "event": "resharded", "step": 3}) is None


def test_an_mlflow_run_that_failed_mid_way_is_not_finished_or_reported_again(tmp_path: Path) -> None:
    from dlforge.pipeline.fit_options import finish_trackers
    from dlforge.train.trackers import MlflowWriter

    class BreaksAfterOpen(MlflowWriter):
        def write(self, records: list[dict[str, Any]]) -> None:
            raise OSError(28, "No space left on device")

    stream = io.StringIO()
    writer = BreaksAfterOpen(f"sqlite:///{tmp_path}/mlflow.db", record_to=tmp_path / "trackers.json")
    _fit([TrackerLogger([writer], stream=stream, end_run=False)], epochs=1)
    entry = json.loads((tmp_path / "trackers.json").read_text())["mlflow"]
    assert entry["run_id"] == writer.run_id and "No space left" in entry["failed"]
    finish_trackers(tmp_path, "FINISHED", stream)
    assert stream.getvalue().count("logging failed") == 1


@pytest.mark.parametrize("name", ["dlforge.train.trackers", "dlforge.train.tb_events", "dlforge.runs.export"])
def test_docstring_examples_run(name: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_event_file_checksums_equal_tensorboards_and_its_reader_reads_every_value(tmp_path: Path) -> None:
    """The checksum is TensorBoard's own (pure-Python reference), and a file holding several
    scalars per event reads back through TensorBoard's ``EventFileLoader`` value for value."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as reference

    from dlforge.train.tb_events import EventFile, masked_crc32c

    for data in (b"", b"abc", bytes(range(256)) * 3):
        assert masked_crc32c(data) == reference(data)
    points = [(step, {"step/loss": 1.0 / (step + 1), "step/lr": 0.01, "step/examples": 64.0 * step}) for step in range(5)]
    events = EventFile(tmp_path)
    events.write(points)
    events.close()
    read = [(e.step, {v.tag: v.simple_value for v in e.summary.value})
            for e in LegacyEventFileLoader(str(events.path)).Load() if e.HasField("summary")]
    assert read == [(step, {k: pytest.approx(v) for k, v in scalars.items()}) for step, scalars in points]
