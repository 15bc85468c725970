"""build_pipeline: the reconstructor and weights the parameters ask for, the shipped weights by default."""

from __future__ import annotations

import pytest
import torch

from neuralrecon_ros.core.mapping.depth_fusion import DepthFusionReconstructor
from neuralrecon_ros.core.network.checkpoint import save_checkpoint
from neuralrecon_ros.core.network.model import NeuralRecon
from neuralrecon_ros.core.network.reconstructor import NeuralReconReconstructor
from neuralrecon_ros.core.training import weights
from neuralrecon_ros.node.parameters import NodeParameters
from neuralrecon_ros.node.pipeline_factory import build_pipeline


@pytest.fixture
def two_checkpoints(tmp_path, monkeypatch):
    """A stand-in for the shipped weights and another checkpoint, with different weights."""
    paths = []
    for seed, name in ((1, "shipped.pt"), (2, "given.ckpt")):
        torch.manual_seed(seed)
        save_checkpoint(NeuralRecon(), tmp_path / name)
        paths.append(tmp_path / name)
    monkeypatch.setattr(weights, "DEMO_WEIGHTS", paths[0])
    return paths


def _loaded_from(pipeline) -> str:
    reconstructor = pipeline.reconstructor
    assert isinstance(reconstructor, NeuralReconReconstructor)
    return str(reconstructor.checkpoint_info.path)


def test_neuralrecon_mode_defaults_to_the_shipped_weights(two_checkpoints):
    shipped, given = two_checkpoints
    assert _loaded_from(build_pipeline(NodeParameters({"mode": "neuralrecon"}))) == str(shipped)
    pipeline = build_pipeline(NodeParameters({"mode": "neuralrecon", "checkpoint": str(given)}))
    assert _loaded_from(pipeline) == str(given)
    reference = torch.load(given, weights_only=True)["model"]
    key = "module.neucon_net.tsdf_preds.0.weight"
    assert torch.equal(pipeline.reconstructor.model.state_dict()[key.removeprefix("module.")], reference[key])


def test_depth_mode_loads_no_network(two_checkpoints):
    assert isinstance(build_pipeline(NodeParameters()).reconstructor, DepthFusionReconstructor)
