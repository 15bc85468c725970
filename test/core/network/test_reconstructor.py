"""The NeuralRecon reconstructor: checkpoint requirement, input preparation, substitution into the map."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image

from neuralrecon_ros.core.mapping.config import MapConfig
from neuralrecon_ros.core.mapping.tsdf_map import TSDFMap
from neuralrecon_ros.core.network.config import CHECKPOINT_DOWNLOAD_URL, NeuralReconConfig
from neuralrecon_ros.core.network.model import NeuralRecon
from neuralrecon_ros.core.network.reconstructor import (
    CheckpointMissingError,
    FragmentError,
    NeuralReconReconstructor,
    ReconstructorConfigError,
    prepare_images,
)
from neuralrecon_ros.core.types import CameraIntrinsics, Fragment, Frame


def test_without_checkpoint_the_error_says_where_to_get_it():
    with pytest.raises(CheckpointMissingError) as err:
        NeuralReconReconstructor(TSDFMap(), NeuralReconConfig())
    message = str(err.value)
    assert "model_000047.ckpt" in message and CHECKPOINT_DOWNLOAD_URL in message
    assert "--checkpoint PATH" in message and "checkpoint:=PATH" in message


def test_map_voxel_size_must_be_the_network_one():
    with pytest.raises(ReconstructorConfigError, match="voxel_size"):
        NeuralReconReconstructor(TSDFMap(MapConfig(voxel_size=0.05)), model=NeuralRecon())


def test_images_are_resized_to_640x480_with_scaled_intrinsics():
    # a horizontal ramp 1280x960: after resizing, pixel u holds the ramp value at source column 2u + 0.5
    cols = np.arange(1280, dtype=np.float64)
    image = np.repeat((cols / 1280 * 200)[None, :, None], 960, axis=0).repeat(3, axis=2).astype(np.uint8)
    K = CameraIntrinsics(1000.0, 1000.0, 639.5, 479.5, 1280, 960)
    frame = Frame(0.0, image, K, np.eye(4))
    images, intrinsics = prepare_images([frame])
    assert images.shape == (1, 3, 480, 640) and images.dtype == torch.float32
    np.testing.assert_allclose(intrinsics[0], [[500.0, 0, 319.75], [0, 500.0, 239.75], [0, 0, 1]])
    u = np.arange(10, 630)
    np.testing.assert_allclose(images[0, 0, 240, u].numpy(), np.floor((2 * u + 0.5) / 1280 * 200), atol=1.0)
    bad = Frame(0.0, image[:, :1000], K, np.eye(4), index=7)
    with pytest.raises(FragmentError, match="frame 7: image is 1000x960 but its intrinsics are for 1280x960"):
        prepare_images([bad])


@pytest.fixture(scope="module")
def fixture_model(parity_dir, expected_state_dict_tsv):
    spec = importlib.util.spec_from_file_location("parity_weights_rule", parity_dir / "weights_rule.py")
    rule = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rule)
    config = json.loads((parity_dir / "weights.json").read_text())
    state = rule.make_state_dict(str(expected_state_dict_tsv), config["seed"], config["overrides"])
    model = NeuralRecon()
    model.load_state_dict({k.removeprefix("module."): torch.from_numpy(v) for k, v in state.items()})
    return model


def test_fragment_is_substituted_into_the_map_like_upstream(parity_dir, fixture_model):
    """End to end from raw frames (own geometry derivation): the map holds upstream's global TSDF."""
    fragment_input = json.loads((parity_dir / "inputs.json").read_text())["fragments"][0]
    frames = []
    for i, (path, K, pose) in enumerate(zip(fragment_input["images"], fragment_input["intrinsics"],
                                            fragment_input["cam_to_world"])):
        image = np.asarray(Image.open(parity_dir / path).convert("RGB"))
        frames.append(Frame(float(i), image, CameraIntrinsics.from_matrix(np.array(K), 640, 480), np.array(pose),
                            index=i))
    tsdf_map = TSDFMap()
    origin = np.array(fragment_input["vol_origin_partial_voxels"])
    outside, inside = origin - 5, origin + 50  # one voxel beside the fragment volume, one in it
    tsdf_map.set_voxels(np.stack([outside, inside]), np.array([-0.5, 0.25], np.float32))
    reconstructor = NeuralReconReconstructor(tsdf_map, NeuralReconConfig(sparse_backend="torch"), model=fixture_model)

    update = reconstructor.on_fragment(Fragment(0, frames))

    reference = np.load(parity_dir / "frag0_outputs.npz")
    coords, values = reference["global_coords"], reference["global_tsdf"]
    tsdf, weight = tsdf_map.get_voxels(coords)
    # The own geometry derivation's float32 inverses round by the CPU's kernels (test_projection: up to ~11
    # ulps on some machines); at a view's border that moves a sample across a pixel edge, so a few voxels
    # (22 of 37,595 seen) differ by up to 3e-4. Everything else stays within the stored-matrix parity bound.
    error = np.abs(tsdf - np.clip(values, -1, 1))
    assert (error > 5e-5).mean() < 2e-3 and error.max() < 1e-3, (int((error > 5e-5).sum()), float(error.max()))
    assert (weight == 1).all()
    # observed voxels of the map = upstream's global set plus the untouched voxel outside the volume
    map_coords, _, _ = tsdf_map.voxels(min_weight=1e-6)
    expected = {tuple(c) for c in coords.tolist()} | {tuple(outside.tolist())}
    assert {tuple(c) for c in np.asarray(map_coords).tolist()} == expected
    assert tsdf_map.get_voxels(outside[None])[0][0] == pytest.approx(-0.5)
    blocks = {tuple(b) for b in update.touched_blocks.tolist()}
    assert {tuple(b) for b in (coords // 8).tolist()} <= blocks and update.frames_integrated == 9
    # the model keeps upstream's global state; reset forgets it
    assert len(fixture_model.global_tsdf[0]) == len(coords)
    reconstructor.reset()
    assert len(fixture_model.global_tsdf[0]) == 0
    assert all(state is None for state in fixture_model.neucon_net.gru_fusion.hidden)
