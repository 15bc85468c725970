"""The shipped demo weights: found by default_checkpoint(), loadable, and reconstructing a held-out room."""

from __future__ import annotations

from pathlib import Path

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
