"""The shipped demo weights: found by default_checkpoint(), loadable, and reconstructing a held-out room."""

from __future__ import annotations

import pytest
import torch

from neuralrecon_ros.core.network.checkpoint import load_checkpoint
from neuralrecon_ros.core.network.model import NeuralRecon
from neuralrecon_ros.core.training import weights
from neuralrecon_ros.core.training.datasets import prepare_scene
from neuralrecon_ros.core.training.trainer import evaluate_scene

#: the F-score (5 cm) the shipped weights must reach on the held-out room below
FSCORE_FLOOR = 0.3


def test_default_checkpoint_is_the_shipped_file_when_present(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "DEMO_WEIGHTS", tmp_path / "demo_weights.pt")
    assert weights.default_checkpoint() is None
    torch.save({"epoch": 0, "model": {}}, tmp_path / "demo_weights.pt")
    assert weights.default_checkpoint() == tmp_path / "demo_weights.pt"


def test_shipped_weights_reconstruct_a_held_out_room():
    path = weights.default_checkpoint()
    if path is None:
        pytest.skip("no demo weights are shipped in neuralrecon_ros/data/")
    from neuralrecon_ros.core.synthetic import make_sequence, observed_mesh

    model = NeuralRecon()
    load_checkpoint(model, path)
    sequence = make_sequence(900_001, n_frames=120, width=320, height=240)  # not a training seed
    scene = prepare_scene(
        sequence, "held_out", "test", gt_mesh=observed_mesh(sequence.scene.gt_mesh(), sequence)
    )
    metrics = evaluate_scene(model, scene)
    assert metrics["fscore"] >= FSCORE_FLOOR, metrics
