import math

import torch

from dlforge.train.state_io import load_state, save_state


def test_round_trip_keeps_nesting_types_and_tensors(tmp_path):
    state = {
        "w": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "rng": torch.get_rng_state(),
        "groups": {0: {"lr": 0.1, "betas": [0.9, 0.999]}, 1: {"lr": float("inf")}},
        "history": [{"epoch": 0, "loss": 1.5}, None, True, "text"],
        "empty": {},
    }
    path = tmp_path / "s.safetensors"
    save_state(path, state)
    back = load_state(path)
    torch.testing.assert_close(back["w"], state["w"])
    assert torch.equal(back["rng"], state["rng"])
    assert set(back["groups"]) == {0, 1}  # int keys survive JSON
    assert back["groups"][0]["betas"] == [0.9, 0.999]
    assert math.isinf(back["groups"][1]["lr"])
    assert back["history"] == state["history"]
    assert back["empty"] == {}
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_shared_storage_tensors_are_saved(tmp_path):
    w = torch.randn(4, 4)
    save_state(tmp_path / "s.safetensors", {"a": w, "b": w, "view": w[0]})
    back = load_state(tmp_path / "s.safetensors")
    torch.testing.assert_close(back["view"], w[0])
    torch.testing.assert_close(back["b"], w)


def test_crash_during_write_keeps_the_previous_file(tmp_path, monkeypatch):
    import os

    import pytest

    path = tmp_path / "s.safetensors"
    save_state(path, {"step": 1})

    def power_cut(src, dst):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", power_cut)
    with pytest.raises(OSError):
        save_state(path, {"step": 2})
    monkeypatch.undo()
    assert load_state(path) == {"step": 1}
    assert list(tmp_path.iterdir()) == [path]  # the temp file was cleaned up
