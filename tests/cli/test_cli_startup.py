"""Start-up cost: `dlforge --help` answers quickly, and neither the CLI nor the train path
imports a heavy library before it is needed (the machine-independent form of "reach the
first training step fast")."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def loaded_after(statement: str, modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` a fresh interpreter has imported after running ``statement``."""
    code = f"import sys\n{statement}\nprint(' '.join(m for m in {modules!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_help_answers_within_a_generous_bound():
    script = Path(sys.executable).with_name("dlforge")
    command = [str(script)] if script.exists() else [sys.executable, "-c", "from dlforge.cli import app; app()"]
    seconds = []
    for _ in range(2):  # the best of two: the first may pay for a cold disk cache
        start = time.perf_counter()
        done = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60)
        seconds.append(time.perf_counter() - start)
        assert done.returncode == 0 and "train" in done.stdout
    assert min(seconds) < 3.0, seconds  # about 0.25 s here; 1 s is the target on a developer machine


def test_the_cli_imports_neither_torch_nor_a_heavy_library():
    heavy = ("torch", "matplotlib", "sklearn", "scipy", "pandas", "optuna", "fastapi", "torchmetrics", "transformers")
    assert loaded_after("import dlforge.cli", heavy) == []


def test_the_train_path_leaves_evaluation_and_serving_libraries_for_later():
    # torchmetrics alone (with the transformers and matplotlib it pulls in) took a second
    # before the first training step; evaluation imports it when it runs.
    # scikit-learn (with scipy) took another second: splits and the digits file no longer need it.
    later = ("torchmetrics", "transformers", "matplotlib", "optuna", "fastapi", "kornia", "statsmodels", "imblearn",
             "sklearn", "scipy")
    assert loaded_after("import dlforge.cli, dlforge.pipeline, dlforge.pipeline.run", later) == []


def test_loading_and_splitting_digits_needs_no_scikit_learn():
    statement = ("from dlforge.data import load_source, prepare\n"
                 "prepare(load_source('digits'), val=0.15, test=0.15, seed=0)")
    assert loaded_after(statement, ("sklearn", "scipy")) == []
