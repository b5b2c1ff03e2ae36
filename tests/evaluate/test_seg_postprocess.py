"""Post-processing ops on hand arrays (2D and 3D), the spec's JSON round trip, and the
nnU-Net-style choice on held-out predictions."""

import json

import numpy as np
import pytest

from dlforge.errors import ConfigError, DataError
from dlforge.data.seg_postprocess import PostProcess, fill_holes, keep_largest, remove_small_objects
from dlforge.evaluate.seg_postprocess import choose_postprocessing, size_candidates


def test_remove_small_objects_per_class_with_face_connectivity():
    mask = np.array([[1, 1, 0, 2, 0],
                     [1, 0, 0, 0, 2],   # the two class-2 pixels touch only diagonally
                     [0, 0, 2, 2, 0]])
    out = remove_small_objects(mask, min_size=2)
    expected = np.array([[1, 1, 0, 0, 0],
                         [1, 0, 0, 0, 0],
                         [0, 0, 2, 2, 0]])
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(mask[0], [1, 1, 0, 2, 0])  # the input is not modified
    np.testing.assert_array_equal(remove_small_objects(mask, min_size=3), np.where(mask == 1, 1, 0))


def test_fill_holes_fills_background_only_and_not_open_bays():
    mask = np.zeros((7, 7), np.int64)
    mask[1:6, 1:6] = 1
    mask[2, 2] = 0          # a hole
    mask[3:5, 3:5] = 2      # another class inside the ring stays
    mask[5, 3] = 0          # a bay open to the outside stays background
    mask[6, 3] = 0
    out = fill_holes(mask)
    assert out[2, 2] == 1
    assert (out[3:5, 3:5] == 2).all()
    assert out[5, 3] == 0


def test_keep_largest_per_class():
    mask = np.array([[1, 1, 1, 0, 1],
                     [0, 0, 0, 0, 0],
                     [2, 0, 2, 2, 0]])
    np.testing.assert_array_equal(keep_largest(mask), [[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 2, 2, 0]])


def test_ops_in_3d_connect_across_slices():
    vol = np.zeros((3, 5, 5), np.int64)
    vol[0:3, 1, 1] = 1          # a 3-voxel column through the slices: one object
    vol[1, 4, 4] = 1            # a lone voxel
    out = remove_small_objects(vol, min_size=2)
    assert out[:, 1, 1].tolist() == [1, 1, 1] and out[1, 4, 4] == 0
    shell = np.ones((3, 3, 3), np.int64)
    shell[1, 1, 1] = 0
    assert fill_holes(shell)[1, 1, 1] == 1
    np.testing.assert_array_equal(keep_largest(vol)[1], np.where(np.arange(25).reshape(5, 5) == 6, 1, 0))


def test_spec_round_trips_through_json_and_applies_in_order():
    spec = PostProcess(remove_small=3, fill_holes=True, keep_largest=True)
    assert PostProcess.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert PostProcess.from_dict({}) == PostProcess() and PostProcess().name == "none"
    mask = np.zeros((6, 6), np.int64)
    mask[0:4, 0:4] = 1
    mask[1, 1] = 0
    mask[5, 5] = 1
    out = spec.apply(mask)
    assert out[1, 1] == 1 and out[5, 5] == 0 and out.sum() == 16


@pytest.mark.parametrize("bad", [{"remove_small": 0}, {"remove_small": 2.5}, {"fill_holes": "yes"},
                                 {"keep_biggest": True}])
def test_bad_specs_are_config_errors(bad):
    with pytest.raises(ConfigError):
        PostProcess.from_dict(bad)


def test_bad_masks_are_data_errors():
    with pytest.raises(DataError, match="integer label map"):
        keep_largest(np.zeros((4, 4)))
    with pytest.raises(DataError, match="one held-out prediction per true mask"):
        choose_postprocessing([np.zeros((2, 2), int)], [], num_classes=2)


def _blobs(rng, n_images=4, size=48):
    truths = []
    for _ in range(n_images):
        t = np.zeros((size, size), np.int64)
        for y, x in rng.integers(4, size - 10, (4, 2)):
            t[y:y + 6, x:x + 6] = 1
        truths.append(t)
    return truths


def test_choose_picks_remove_small_for_tiny_false_positive_specks():
    rng = np.random.default_rng(0)
    truths = _blobs(rng)
    preds = []
    for t in truths:
        p = t.copy()
        background = np.argwhere(t == 0)
        for y, x in background[rng.choice(len(background), 6, replace=False)]:
            p[y, x] = 1                                   # one-pixel specks
        preds.append(p)
    choice = choose_postprocessing(preds, truths, num_classes=2)
    assert choice.spec.remove_small is not None and choice.spec.remove_small <= 36
    rows = {r["name"]: r for r in choice.table}
    assert rows[choice.spec.name]["chosen"] and rows[choice.spec.name]["dice"] > rows["none"]["dice"]
    assert rows[choice.spec.name]["ap50"] > rows["none"]["ap50"]
    assert json.loads(json.dumps(choice.to_dict()))["chosen"] == choice.spec.name


def test_choose_keeps_none_when_every_step_hurts():
    # Small true objects, true holes and several objects: each step would damage the truth.
    t = np.zeros((20, 20), np.int64)
    t[1:3, 1:3] = 1                     # a 4-pixel object
    t[8:15, 8:15] = 1
    t[11, 11] = 0                       # a real hole
    preds = [t.copy(), t.copy()]
    choice = choose_postprocessing(preds, [t, t], num_classes=2, candidates=[8])
    assert choice.spec == PostProcess()
    assert [r["name"] for r in choice.table] == ["none", "remove_small(8)", "fill_holes", "keep_largest"]
    assert not any(r["kept"] for r in choice.table[1:])
    assert choice.table[0]["chosen"] and choice.table[0]["dice"] == 1.0


def test_choose_rejects_a_step_that_hurts_one_class_even_if_the_mean_rises():
    # nnU-Net's rule: class 1 gains (specks removed), class 2 loses its true small objects.
    t = np.zeros((60, 60), np.int64)
    t[2:20, 2:20] = 1
    t[30:45, 2:16] = 2
    t[50, 50:52] = 2                                          # a true 2-pixel object
    p = t.copy()
    p[24:58:3, 25:46:10] = 1                                  # 36 class-1 specks
    mean_gain = choose_postprocessing([p], [t], num_classes=3, candidates=[4])
    row = next(r for r in mean_gain.table if r["name"] == "remove_small(4)")
    assert row["dice"] > mean_gain.table[0]["dice"]          # the mean would go up...
    assert not row["kept"] and mean_gain.spec.remove_small is None   # ...but class 2 drops


def test_size_candidates_add_half_the_fifth_percentile_of_true_object_sizes():
    t = np.zeros((30, 30), np.int64)
    t[0:10, 0:10] = 1   # 100 pixels
    t[20:30, 20:30] = 1
    assert size_candidates([t]) == [8, 16, 32, 50, 64]


def test_true_instances_replace_the_truths_components_for_ap50():
    t = np.zeros((10, 10), np.int64)
    t[2:8, 2:8] = 1
    inst = np.zeros_like(t)
    inst[2:8, 2:5], inst[2:8, 5:8] = 1, 2            # two touching objects in one blob
    components = choose_postprocessing([t], [t], num_classes=2)
    objects = choose_postprocessing([t], [t], num_classes=2, true_instances=[inst])
    assert components.table[0]["ap50"] == 1.0 and objects.table[0]["ap50"] == 0.0
    with pytest.raises(DataError, match="instance maps"):
        choose_postprocessing([t], [t], num_classes=2, true_instances=[])
