"""Every command in the README's bash blocks runs, in order, in a temporary folder.

The README is parsed, not copied: a command added or changed there is run here. Commands
run as written through the ``dlforge`` Typer app in-process (``CliRunner``), with the
README's placeholders filled in: ``runs/<name>-<time>`` (or a literal time stamp) becomes
the newest real run folder of that name, ``$KEY`` the key ``dlforge keys create`` printed,
``localhost:8000`` the port the test's server listens on. ``dlforge serve`` starts a real
server (a subprocess) and every ``curl`` is sent to it with its headers and JSON body.

Two things are shortened, not changed: every config is validated with ``train.epochs``
capped at 1 and ``tune.n_trials`` at 2, and the input files the README assumes the user
has (``some_digit.png``, ``new_rows.csv``, ``my_digits/``, ``texts.txt``) are made from
scikit-learn's digits and breast-cancer sets (``cells.tif``: a synthetic nuclei image). ``SKIPPED`` lists the few commands that cannot
run inside a test, each with the reason and where that behaviour is tested instead.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import dlforge.config as config_module
from dlforge.cli import app
from dlforge.data import load_source

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# Command prefixes not run here, with the reason (and where the behaviour is tested).
SKIPPED = {
    "make quickstart": "builds the virtual environment; `dlforge quickstart --json` below runs its command",
    "make test": "runs this very suite",
    "dlforge train examples/text_finetune_minilm.yaml": "fine-tuning MiniLM takes over 2 minutes even for one "
                                                        "epoch on 2 cores (tests/models/test_bert*.py cover it)",
    "dlforge predict runs/text-finetune-minilm-": "needs the MiniLM run above (tests/cli/test_cli_text.py)",
    "dlforge lab report": "runs every lab experiment (minutes; tests/lab covers the report)",
}
RUN_REF = re.compile(r"runs/([A-Za-z][A-Za-z0-9_.]*(?:-[A-Za-z][A-Za-z0-9_.]*)*)-(?:<time>|\d{8}-\d{6})")


def bash_blocks(text: str) -> list[str]:
    """The bodies of the README's ```bash fences, in order."""
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def commands(block: str) -> list[list[str]]:
    """Shell words of each command in a block: continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [words for line in joined.splitlines() if (words := shlex.split(line, comments=True))]


def test_readme_parses_into_commands() -> None:
    """The parser sees what a reader sees: the serving block's body is one JSON object."""
    blocks = bash_blocks(README.read_text(encoding="utf-8"))
    flat = [c for b in blocks for c in commands(b)]
    assert any(c[:2] == ["dlforge", "ensemble"] for c in flat)
    bodies = [c[c.index("-d") + 1] for c in flat if c[0] == "curl" and "-d" in c]
    assert bodies and all(isinstance(json.loads(b), dict) for b in bodies)


# ----------------------------------------------------------------------------- running them

def _short_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cap epochs and trials wherever a config is validated (modules that imported it too)."""
    original = config_module.validate_config

    def short(raw):
        if isinstance(raw, dict):
            raw = {**raw, "train": {**(raw.get("train") or {}), "epochs": 1}}
            if isinstance(raw.get("tune"), dict):
                raw["tune"] = {**raw["tune"], "n_trials": 2}
        return original(raw)

    for name, module in list(sys.modules.items()):
        if name.startswith("dlforge") and getattr(module, "validate_config", None) is original:
            monkeypatch.setattr(module, "validate_config", short)


def _user_files(folder: Path) -> None:
    """The files the README's commands assume the user has."""
    from sklearn.datasets import load_breast_cancer, load_digits

    digits = load_digits()
    pixels = (digits.images * 255 / 16).astype(np.uint8)  # image files hold 0..255
    Image.fromarray(pixels[0]).save(folder / "some_digit.png")
    Image.fromarray(pixels[1]).save(folder / "other.png")
    for i in range(30):
        label_dir = folder / "my_digits" / str(digits.target[i])
        label_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i]).save(label_dir / f"{i}.png")
    load_breast_cancer(as_frame=True).data.head(5).to_csv(folder / "new_rows.csv", index=False)
    (folder / "texts.txt").write_text("Return the absolute value.\nOpen a file.\n", encoding="utf-8")
    cells = load_source("synthetic_nuclei", n_samples=2, seed=0).x[0, 0]  # (128, 128) in [0, 1]
    Image.fromarray((cells * 65535).astype(np.uint16)).save(folder / "cells.tif")
    shutil.copytree(ROOT / "examples", folder / "examples")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Session:
    """The README's shell: the working folder, $KEY, the server started by `dlforge serve`."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.runner, self.env = folder, CliRunner(), {}
        self.server: subprocess.Popen | None = None
        self.port = _free_port()

    def fill(self, word: str) -> str:
        word = RUN_REF.sub(lambda m: self.newest_run(m.group(1)), word)
        word = word.replace("localhost:8000", f"127.0.0.1:{self.port}")
        return re.sub(r"\$(\w+)", lambda m: self.env[m.group(1)], word)

    def newest_run(self, name: str) -> str:
        found = sorted((self.folder / "runs").glob(f"{name}-[0-9]*"), key=lambda p: p.stat().st_mtime)
        assert found, f"the README refers to runs/{name}-<time>, but no such run exists"
        return f"runs/{found[-1].name}"

    def dlforge(self, args: list[str]) -> str:
        result = self.runner.invoke(app, args, catch_exceptions=False)
        assert result.exit_code == 0, f"dlforge {' '.join(args)} exited {result.exit_code}:\n{result.output[-3000:]}"
        return result.output

    def run(self, words: list[str]) -> None:
        if (assign := re.match(r"^(\w+)=\$\((.*)\)$", " ".join(words))):  # KEY=$(dlforge keys create)
            inner = shlex.split(assign.group(2))
            self.env[assign.group(1)] = self.dlforge([self.fill(w) for w in inner[1:]]).strip().splitlines()[-1]
            return
        words = [self.fill(w) for w in words if w != "&"]
        if words[:2] == ["dlforge", "serve"]:
            self.serve(words[2:])
        elif words[0] == "curl":
            self.curl(words[1:])
        else:
            assert words[0] == "dlforge", f"the README runs {words[0]!r}, which this test does not know"
            self.dlforge(words[1:])

    def serve(self, args: list[str]) -> None:
        self.stop()
        args = [a for i, a in enumerate(args) if a != "--port" and (i == 0 or args[i - 1] != "--port")]
        script = Path(sys.executable).with_name("dlforge")
        self.server = subprocess.Popen([str(script), "serve", *args, "--port", str(self.port)], cwd=self.folder,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.server.poll() is None, self.server.stderr.read().decode()[-2000:]
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError("dlforge serve did not answer /healthz within 60 s")

    def curl(self, args: list[str]) -> None:
        headers, body, url = {}, None, None
        it = iter(args)
        for word in it:
            if word == "-H":
                key, _, value = next(it).partition(":")
                headers[key.strip()] = value.strip()
            elif word == "-d":
                body = next(it)
            elif not word.startswith("-"):
                url = word if word.startswith("http") else f"http://{word}"
        answer = httpx.request("POST" if body is not None else "GET", url, headers=headers,
                               content=body, timeout=30)
        assert answer.status_code == 200, f"curl {url}: {answer.status_code} {answer.text[:1000]}"
        if body is not None:
            sent, got = json.loads(body), answer.json()
            assert len(got["outputs"]) == len(sent["inputs"])

    def stop(self) -> None:
        if self.server is not None:
            self.server.terminate()
            self.server.wait(timeout=30)
            self.server = None


@pytest.mark.slow
def test_every_readme_command_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _short_configs(monkeypatch)
    _user_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    for var in ("DLFORGE_REGISTRY", "DLFORGE_ARTIFACTS"):
        monkeypatch.delenv(var, raising=False)
    session = Session(tmp_path)
    ran, skipped = [], []
    try:
        for block in bash_blocks(README.read_text(encoding="utf-8")):
            for words in commands(block):
                line = " ".join(words)
                if any(line.startswith(prefix) for prefix in SKIPPED):
                    skipped.append(line)
                    continue
                start = time.perf_counter()
                session.run(words)
                ran.append((time.perf_counter() - start, line))
    finally:
        session.stop()
    assert len(skipped) <= len(SKIPPED) + 1, skipped
    assert len(ran) > 30
    for seconds, line in sorted(ran, reverse=True)[:8]:  # the slowest, for whoever trims this test
        print(f"{seconds:6.1f} s  {line}")


# Python blocks not run here, by a phrase they contain, with the reason.
PYTHON_SKIPPED = {
    "tritonclient.http": "talks to the server the Serving section starts in its bash block; "
                         "tests/serve/test_v2_tritonclient.py drives a real server with the same client calls",
    'from_pretrained("minilm"': "fine-tunes MiniLM for 4 epochs (minutes on 2 cores; tests/train/test_transfer.py "
                                "and tests/pipeline/test_sequence_runs.py cover these calls)",
}


def python_blocks(text: str) -> list[str]:
    """The bodies of the README's ```python fences, in order."""
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.slow
def test_every_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each Python block runs as written, in one namespace (later blocks reuse earlier names),
    in a temporary folder; only ``fit``'s epochs are capped at 3 to keep it short."""
    import dlforge.pipeline.fit_options as fit_options_module
    import dlforge.train as train_module

    real_fit = train_module.fit

    def short_fit(*args, **kwargs):
        kwargs["epochs"] = min(kwargs.get("epochs", 10), 3)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(train_module, "fit", short_fit)
    monkeypatch.setattr(fit_options_module, "fit", short_fit)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    ran = 0
    for block in python_blocks(README.read_text(encoding="utf-8")):
        if any(phrase in block for phrase in PYTHON_SKIPPED):
            continue
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102  (the README's own code)
        ran += 1
    assert ran >= 2
    assert namespace["outcome"].metrics["test_r2"] > 0  # the DataFrame example learned, in its units
