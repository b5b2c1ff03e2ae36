"""The docstring examples of the engine-side modules run as written."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["dlforge.train.engine", "dlforge.train.batches", "dlforge.train.devices", "dlforge.train.callbacks", "dlforge.train.tbptt", "dlforge.train.transfer",
           "dlforge.train.optim", "dlforge.pipeline.data", "dlforge.pipeline.model", "dlforge.models.rnn", "dlforge.data.augment",
           "dlforge.data.mix", "dlforge.data.imbalance"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
