"""The NeuralRecon recurrent state (GRU hidden states, global TSDF) survives a map file round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuralrecon_ros.core.keyframes import KeyframeConfig
from neuralrecon_ros.core.mapping.tsdf_map import TSDFMap
from neuralrecon_ros.core.network.gru_fusion import CHANNELS, SparseStore
from neuralrecon_ros.core.network.model import NeuralRecon
from neuralrecon_ros.core.network.reconstructor import NeuralReconReconstructor
from neuralrecon_ros.core.pipeline import ReconstructionPipeline
from neuralrecon_ros.io.map_file import MapFileError, load_map_into, save_map


def pipeline_with_state(seed: int | None) -> ReconstructionPipeline:
    model = NeuralRecon()
    if seed is not None:
        g = torch.Generator().manual_seed(seed)
        model.neucon_net.gru_fusion.hidden = [
            SparseStore(torch.randint(-50, 50, (20 + i, 3), generator=g), torch.randn(20 + i, c, generator=g))
            for i, c in enumerate(CHANNELS)
        ]
        model.neucon_net.gru_fusion.hidden[1] = None  # a level never written stays absent
        model.fuse_to_global.volume = SparseStore(torch.randint(-99, 99, (30, 3), generator=g),
                                                  torch.rand(30, generator=g) * 2 - 1)
    tsdf_map = TSDFMap()
    tsdf_map.set_voxels(np.array([[1, 2, 3], [40, 5, -6]]), np.array([0.5, -0.25], np.float32))
    return ReconstructionPipeline(KeyframeConfig(), tsdf_map, NeuralReconReconstructor(tsdf_map, model=model))


def test_save_and_load_restore_the_recurrent_state_bit_exact(tmp_path):
    source = pipeline_with_state(seed=1)
    path = tmp_path / "map.nrmap"
    save_map(path, source)
    target = pipeline_with_state(seed=None)
    load_map_into(target, path)
    saved, restored = source.reconstructor.state_dict(), target.reconstructor.state_dict()
    assert set(saved) == set(restored) == {"gru0_coords", "gru0_feats", "gru2_coords", "gru2_feats",
                                           "tsdf_coords", "tsdf_values"}
    for key in saved:
        assert torch.equal(saved[key], restored[key]), key
    assert target.reconstructor.model.neucon_net.gru_fusion.hidden[1] is None


def test_a_malformed_state_is_refused_and_changes_nothing(tmp_path):
    pipeline = pipeline_with_state(seed=2)
    before = pipeline.reconstructor.state_dict()
    with pytest.raises(ValueError, match="gru0"):
        pipeline.reconstructor.load_state_dict({"gru0_coords": torch.zeros(4, 3, dtype=torch.int64),
                                                "gru0_feats": torch.zeros(4, 7)})
    with pytest.raises(ValueError, match="unexpected"):
        pipeline.reconstructor.load_state_dict({"hidden": torch.zeros(1)})
    after = pipeline.reconstructor.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # through a map file: the pipeline rolls the reconstructor back and reports the file
    path = tmp_path / "bad.nrmap"
    source = pipeline_with_state(seed=3)
    source.reconstructor.model.neucon_net.gru_fusion.hidden[0].values = torch.zeros(5, 5)
    source.reconstructor.model.neucon_net.gru_fusion.hidden[0].coords = torch.zeros(5, 3, dtype=torch.int64)
    save_map(path, source)
    with pytest.raises(MapFileError, match="rejected the saved recurrent state"):
        load_map_into(pipeline, path)
    after = pipeline.reconstructor.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
