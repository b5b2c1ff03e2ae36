"""Every example in the data package's docstrings runs and prints what it shows."""

from __future__ import annotations

import doctest
import importlib

import pytest

# image_folder examples read files that only a user has (they are skipped).
MODULES = ["", ".bundle", ".catalog", ".csv_file", ".idx", ".preprocess", ".sources", ".splits",
           ".tabular", "._checks", ".tokenizer", ".corpus", ".mlm", ".text", ".timeseries"]


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_run(module):
    mod = importlib.import_module(f"dlforge.data{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
