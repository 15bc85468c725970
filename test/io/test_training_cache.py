"""The training cache round-trips prepared scenes exactly; bags become training scenes via the node logic."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neuralrecon_ros.core.keyframes import KeyframeConfig
from neuralrecon_ros.core.synthetic import make_sequence
from neuralrecon_ros.core.training.datasets import prepare_scene
from neuralrecon_ros.io.synthetic_bag import write_synthetic_bag
from neuralrecon_ros.io.training_cache import (
    SCENE_FILE,
    TrainingCacheError,
    cached_scene,
    load_scene,
    prepare_bag_scene,
    save_scene,
)
from neuralrecon_ros.node.parameters import NodeParameters

KEYFRAMES = KeyframeConfig(fragment_size=3)


@pytest.fixture(scope="module")
def sequence():
    return make_sequence(5, n_frames=30, width=160, height=120)


@pytest.fixture(scope="module")
def scene(sequence):
    return prepare_scene(sequence, "room5", "synthetic:test", KEYFRAMES, gt_mesh=sequence.scene.gt_mesh(0.2))


def _sorted(arrays):
    """Voxel arrays in coordinate order (block allocation order is not part of the data)."""
    coords = arrays[0]
    order = np.lexsort(coords.T[::-1])
    return [a[order] for a in arrays]


def test_round_trip_is_exact(scene, tmp_path):
    save_scene(scene, tmp_path / "room5", KEYFRAMES)
    meta = json.loads((tmp_path / "room5" / SCENE_FILE).read_text())
    assert meta["n_fragments"] == len(scene.fragments) and meta["keyframes"]["fragment_size"] == 3
    loaded = load_scene(tmp_path / "room5")
    assert (loaded.name, loaded.source) == ("room5", "synthetic:test")
    for level in range(3):
        for a, b in zip(_sorted(loaded.scene_tsdf.arrays(level)), _sorted(scene.scene_tsdf.arrays(level))):
            np.testing.assert_array_equal(a, b)
    for k in range(len(scene.fragments)):
        for f, g in zip(loaded.fragments[k], scene.fragments[k]):
            np.testing.assert_array_equal(f.image, g.image)
            np.testing.assert_array_equal(f.depth, np.nan_to_num(g.depth))
            np.testing.assert_array_equal(f.T_world_camera, g.T_world_camera)
            assert (f.intrinsics, f.index, f.stamp) == (g.intrinsics, g.index, g.stamp)
        t, u = loaded.targets[k], scene.fragment_targets(k)
        np.testing.assert_array_equal(t.vol_origin_voxels, u.vol_origin_voxels)
        for level in range(3):
            np.testing.assert_array_equal(t.occupancy[level], u.occupancy[level])
            np.testing.assert_allclose(t.tsdf[level], u.tsdf[level], atol=1e-3)  # stored as float16
    np.testing.assert_array_equal(loaded.gt_mesh.faces, scene.gt_mesh.faces)


def test_cached_scene_reuses_matching_entries_only(scene, tmp_path):
    calls = []

    def prepare():
        calls.append(1)
        return scene

    cached_scene(tmp_path, "a", "source-1", prepare)
    cached_scene(tmp_path, "a", "source-1", prepare)
    assert len(calls) == 1
    assert cached_scene(tmp_path, "a", "source-2", prepare).source == "source-2"
    assert len(calls) == 2
    (tmp_path / "a" / SCENE_FILE).write_text('{"format": "other"}')
    with pytest.raises(TrainingCacheError, match="not a neuralrecon_ros.training_cache"):
        load_scene(tmp_path / "a")


def test_bag_gives_the_same_fragments_as_the_frames(sequence, scene, tmp_path):
    bag = write_synthetic_bag(sequence, tmp_path / "room5.mcap")
    from_bag = prepare_bag_scene(bag, NodeParameters({"fragment_size": 3}))
    assert from_bag.source == f"bag:{bag.resolve()}"
    assert [[f.index for f in k] for k in from_bag.fragments] == [
        [f.index for f in k] for k in scene.fragments
    ]
    for k, keyframes in enumerate(scene.fragments):
        for f, g in zip(from_bag.fragments[k], keyframes):
            np.testing.assert_allclose(f.T_world_camera, g.T_world_camera, atol=1e-6)
            np.testing.assert_array_equal(f.image, g.image)
    # every frame's depth was fused, as from the frames directly
    assert from_bag.scene_tsdf.frames_integrated == scene.scene_tsdf.frames_integrated == len(sequence)
    a, b = from_bag.fragment_targets(0), scene.fragment_targets(0)
    assert (a.occupancy[2] == b.occupancy[2]).mean() > 0.999
