"""The shipped demo weights: found by default_checkpoint(), loadable, and reconstructing a held-out room."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from neuralrecon_ros.core.network.checkpoint import load_checkpoint
from neuralrecon_ros.core.network.model import NeuralRecon
from neuralrecon_ros.core.training import weights
from neuralrecon_ros.core.training.trainer import held_out_scores, training_config_from_mapping

#: the F-score (5 cm) the shipped weights must reach on the held-out room below (RGB and poses only)
FSCORE_FLOOR = 0.15  # measured 0.238 (200 frames); random weights score 0.0
#: a held-out room of scripts/export_demo_weights.py (no training or validation seed), fewer frames
HELD_OUT_SEED, HELD_OUT_FRAMES = 700000, 200
#: the options of the run behind the shipped weights, for `neuralrecon-ros train --config`
TRAINING_OPTIONS = Path(__file__).resolve().parents[3] / "docs" / "demo_weights_training.yaml"


def shipped() -> tuple[object, dict]:
    path = weights.default_checkpoint()
    if path is None:
        pytest.skip("no demo weights are shipped in neuralrecon_ros/data/")
    info = weights.demo_weights_info()
    assert info is not None, f"{path} ships without its training record {path.with_suffix('.json')}"
    return path, info


def test_default_checkpoint_is_the_shipped_file_when_present(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "DEMO_WEIGHTS", tmp_path / "demo_weights.pt")
    assert weights.default_checkpoint() is None and weights.demo_weights_info() is None
    torch.save({"epoch": 0, "model": {}}, tmp_path / "demo_weights.pt")
    (tmp_path / "demo_weights.json").write_text('{"hardware": "x"}')
    assert weights.default_checkpoint() == tmp_path / "demo_weights.pt"
    assert weights.demo_weights_info() == {"hardware": "x"}


def test_shipped_weights_are_compact_and_documented():
    path, info = shipped()
    content = torch.load(path, map_location="cpu", weights_only=True)
    floats = [v for v in content["model"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    assert all(key.startswith("module.") for key in content["model"])  # upstream's key layout
    held_out = info["held_out"]
    assert HELD_OUT_SEED in held_out["seeds"]
    assert held_out["network_fscore_mean"] >= FSCORE_FLOOR
    assert info["training"]["steps"] > 0 and info["training"]["train_time_s"] > 0


def test_shipped_weights_reconstruct_a_held_out_room():
    path, _ = shipped()
    model = NeuralRecon()
    load_checkpoint(model, path)
    (score,) = held_out_scores(model, [HELD_OUT_SEED], HELD_OUT_FRAMES, 320, 240)
    assert score["fragments"] >= 2
    assert score["network"]["fscore"] >= FSCORE_FLOOR, score
    assert score["depth"]["fscore"] > 0.7, score  # the recording itself is sound (GT fusion: depth <= 3 m)


def test_the_documented_training_options_are_those_of_the_shipped_run():
    options = yaml.safe_load(TRAINING_OPTIONS.read_text())
    training_config_from_mapping(options)  # a valid options file
    _, info = shipped()
    recorded = info["training"]["options"]
    assert {k: recorded[k] for k in options} == options


def test_the_weights_record_sets_inference_options_where_the_user_left_the_default(tmp_path, monkeypatch):
    """What the record's ``inference`` asks for reaches the reconstructor when the shipped weights are the
    default (replay --mode neuralrecon, demo and the node all build their pipeline here); a parameter the
    user set wins; an explicit checkpoint is not governed by the shipped record."""
    from neuralrecon_ros.core.network.config import NeuralReconConfig
    from neuralrecon_ros.core.network.world import network_from_global
    from neuralrecon_ros.node.parameters import NodeParameters
    from neuralrecon_ros.node.pipeline_factory import build_pipeline

    config = NeuralReconConfig()
    record = {"inference": {"gru_reset_gate_quirk": False, "floor_height_m": 0.5, "checkpoint": "x.pt"},
              "network_input": {"size_wh": [640, 480]}}
    applied = weights.apply_weights_options(config, record)
    assert (applied.gru_reset_gate_quirk, applied.floor_height_m, applied.checkpoint) == (False, 0.5, "")
    explicit = weights.apply_weights_options(NeuralReconConfig(floor_height_m=-1.0), record)
    assert explicit.floor_height_m == -1.0 and explicit.gru_reset_gate_quirk is False
    assert weights.apply_weights_options(config, None) == config

    model = NeuralRecon(gru_reset_gate_quirk=False)
    torch.save({"epoch": 0, "model": {"module." + k: v for k, v in model.state_dict().items()}},
               tmp_path / "demo_weights.pt")
    (tmp_path / "demo_weights.json").write_text(json.dumps(record))
    monkeypatch.setattr(weights, "DEMO_WEIGHTS", tmp_path / "demo_weights.pt")
    base = {"mode": "neuralrecon", "device": "cpu"}
    pipeline = build_pipeline(NodeParameters(base))
    assert pipeline.reconstructor.config.gru_reset_gate_quirk is False
    assert pipeline.reconstructor.config.checkpoint == str(tmp_path / "demo_weights.pt")
    np.testing.assert_allclose(pipeline.T_map_global, network_from_global("z", 0.5))
    pipeline = build_pipeline(NodeParameters(base | {"floor_height_m": -1.0}))
    np.testing.assert_allclose(pipeline.T_map_global, network_from_global("z", -1.0))
    # a checkpoint given explicitly: the shipped record does not apply
    pipeline = build_pipeline(NodeParameters(base | {"checkpoint": str(tmp_path / "demo_weights.pt")}))
    assert pipeline.reconstructor.config.gru_reset_gate_quirk is True
