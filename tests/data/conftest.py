"""Factories that write small data sources into a test's tmp_path."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def write_csv(tmp_path: Path) -> Callable[..., Path]:
    """write_csv(text, name="data.csv") -> path; the text is dedented."""

    def write(text: str, name: str = "data.csv") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return write


@pytest.fixture
def write_images(tmp_path: Path) -> Callable[..., Path]:
    """write_images({class: [uint8 (H, W) or (H, W, 3) arrays]}, suffix=".png") -> folder."""

    def write(classes: dict[str, list[np.ndarray]], suffix: str = ".png",
              name: str = "images") -> Path:
        root = tmp_path / name
        for label, images in classes.items():
            (root / label).mkdir(parents=True)
            for i, pixels in enumerate(images):
                Image.fromarray(pixels).save(root / label / f"{i:03d}{suffix}")
        return root

    return write


@pytest.fixture
def random_pixels() -> Callable[..., list[np.ndarray]]:
    """random_pixels(shape, n, seed=0) -> n seeded uint8 images of shape."""

    def make(shape: tuple[int, ...], n: int, seed: int = 0) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        return [rng.integers(0, 256, size=shape, dtype=np.uint8) for _ in range(n)]

    return make
