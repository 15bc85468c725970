"""Optimisation on one fragment, checkpoints in upstream format, resume, fine-tuning, demo-weight export."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from neuralrecon_ros.core.config import ParameterError
from neuralrecon_ros.core.network.checkpoint import PREFIX, load_checkpoint
from neuralrecon_ros.core.network.model import NeuralRecon
from neuralrecon_ros.core.training.datasets import make_sample
from neuralrecon_ros.core.training.forward import training_pass
from neuralrecon_ros.core.training.trainer import (
    LAST_STATE,
    METRICS_LOG,
    Trainer,
    TrainingConfig,
    learning_rate_at,
    training_config_from_mapping,
)
from neuralrecon_ros.core.training.weights import half_precision_checkpoint

SAMPLES = [256, 1024, 4096]


def _config(**overrides) -> TrainingConfig:
    values = {
        "synthetic_train_scenes": 0,
        "synthetic_val_scenes": 0,
        "phase1_epochs": 1,
        "phase2_epochs": 1,
        "train_num_samples": SAMPLES,
        "device": "cpu",
        "validate_every_epochs": 0,
        "checkpoint_every_steps": 1,
        "random_translation": True,
        "random_rotation": True,
    }
    values.update(overrides)
    return training_config_from_mapping(values)


def _first_fragments(scene, n):
    scene.fragment_targets(0)  # fills the target list
    return dataclasses.replace(scene, fragments=scene.fragments[:n], targets=scene.targets[:n])


def test_a_few_steps_on_one_fragment_reduce_the_loss(small_scene):
    scene, _ = small_scene
    torch.manual_seed(0)
    model = NeuralRecon().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    sample = make_sample(scene, 0)
    losses = []
    for step in range(5):
        model.reset_state()
        result = training_pass(
            model,
            sample.images,
            sample.geometry,
            sample.targets,
            True,
            SAMPLES,
            generator=torch.Generator().manual_seed(step),
        )
        optimizer.zero_grad()
        result.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(result.loss.detach()))
        assert len(result.levels) >= 1 and all(np.isfinite(x.total.item()) for x in result.levels)
    assert losses[-1] < 0.8 * losses[0], losses
    # gradients reached the 2D backbone, the GRU fusion and every level's heads
    assert model.backbone2d.conv0[0].weight.grad is not None
    assert model.neucon_net.gru_fusion.fusion_nets[0].convz.point_transforms[0].weight.grad is not None
    assert all(head.weight.grad is not None for head in model.neucon_net.occ_preds[: len(result.levels)])


def test_checkpoints_are_upstream_format_reload_bit_exact_and_resume(small_scene, tmp_path):
    scene = _first_fragments(small_scene[0], 2)
    torch.manual_seed(1)
    # one epoch of 2 steps (phase 2 is covered above); cached targets: cheap steps
    plain = {"random_rotation": False, "random_translation": False, "phase2_epochs": 0}
    trainer = Trainer(_config(**plain), [scene], [], tmp_path, progress=False)
    trainer.run(time_limit_s=1e-9)  # one step, then the time limit stops it with a checkpoint
    assert trainer.global_step == 1
    state = json.loads((tmp_path / LAST_STATE).read_text())
    assert state == {"epoch": 0, "step_in_epoch": 1, "global_step": 1, "train_time_s": state["train_time_s"],
                     "previous_scene": 0, "pending_validation": False}

    content = torch.load(tmp_path / "last.ckpt", weights_only=True)
    # upstream's three entries, plus what an exact resume needs (upstream's loader ignores extra keys)
    assert set(content) == {"epoch", "model", "optimizer", "resume", "recurrent_state", "scaler", "ranks"}
    assert content["resume"] == state
    assert len(content["model"]) == 718 and all(k.startswith(PREFIX) for k in content["model"])
    assert set(content["optimizer"]) == {"state", "param_groups"}
    fresh = NeuralRecon()
    load_checkpoint(fresh, tmp_path / "last.ckpt")
    trained = trainer.model.state_dict()
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, trained[key]), key

    # resume continues at the same place with the same weights and optimizer moments
    resumed = Trainer(_config(**plain), [scene], [], tmp_path, progress=False)
    assert resumed.resume()
    assert (resumed.epoch, resumed.step_in_epoch, resumed.global_step) == (0, 1, 1)
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(value, trained[key]), key
    a, b = resumed.optimizer.state_dict()["state"], trainer.optimizer.state_dict()["state"]
    assert all(torch.equal(a[i]["exp_avg"], b[i]["exp_avg"]) for i in b)

    # finishing the epoch writes its upstream checkpoint; one metrics line per step
    resumed.run()
    assert resumed.epoch == 1
    assert torch.load(tmp_path / "model_000000.ckpt", weights_only=True)["epoch"] == 0
    lines = [json.loads(line) for line in (tmp_path / METRICS_LOG).read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2] and [r["fragment"] for r in lines] == [0, 1]
    assert all("loss_level0" in r and r["phase"] == 1 for r in lines)

    # validation scores the product reconstructor's mesh next to depth fusion's (a model predicting nothing
    # here, which keeps it fast: an untrained one predicts half the volume occupied)
    one = _first_fragments(scene, 1)
    empty = NeuralRecon()
    with torch.no_grad():
        empty.neucon_net.occ_preds[0].bias.fill_(-1e4)
    before = {k: v.clone() for k, v in empty.state_dict().items()}
    validator = Trainer(
        _config(bn_recalibration_fragments=1), [one], [one], tmp_path / "val", progress=False, model=empty
    )
    validator.epoch = 1  # as after the first epoch
    record = validator.validate()
    # BatchNorm statistics were re-estimated on a copy (saved), the training model is untouched
    assert all(torch.equal(v, before[k]) for k, v in empty.state_dict().items())
    recalibrated = torch.load(tmp_path / "val" / "model_000000_bn.ckpt", weights_only=True)["model"]
    assert int(recalibrated["module.backbone2d.conv0.1.num_batches_tracked"]) == len(one.fragments[0])
    assert not torch.equal(
        recalibrated["module.backbone2d.conv0.1.running_var"], before["backbone2d.conv0.1.running_var"]
    )
    assert set(record) >= {"fscore", "prec", "recall", "depth_fscore", "scenes"}
    assert record["fscore"] == 0.0 and record["depth_fscore"] > 0.5
    assert json.loads((tmp_path / "val" / METRICS_LOG).read_text())["type"] == "val"

    # fine-tuning from it, and the fp16 export of it, load like upstream weights
    tuned = Trainer(_config(), [scene], [], tmp_path / "tune", progress=False)
    tuned.load_initial_weights(tmp_path / "model_000000.ckpt")
    assert all(
        torch.equal(v, reference)
        for v, reference in zip(tuned.model.state_dict().values(), resumed.model.state_dict().values())
    )
    half = half_precision_checkpoint(tmp_path / "model_000000.ckpt")
    assert all(v.dtype in (torch.float16, torch.int64) for v in half["model"].values())
    torch.save(half, tmp_path / "half.pt")
    model = NeuralRecon()
    load_checkpoint(model, tmp_path / "half.pt")
    reference = resumed.model.state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, reference[key].to(value.dtype), rtol=1e-3, atol=1e-4)


def test_schedule_and_options():
    config = _config(learning_rate=1e-3, lr_milestones=[2, 4], lr_gamma=0.5)
    assert [learning_rate_at(config, e) for e in range(6)] == [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4]
    with pytest.raises(ParameterError, match="unknown training option"):
        training_config_from_mapping({"epochs": 3})
    with pytest.raises(ParameterError, match="train_num_samples"):
        training_config_from_mapping({"train_num_samples": [1, 2]})
    with pytest.raises(ParameterError, match="no training scene"):
        Trainer(_config(), [], [], "/tmp/unused_training_dir", progress=False)


def test_epoch_plan_is_deterministic(small_scene, tmp_path):
    scene, _ = small_scene
    trainer = Trainer(_config(), [scene, scene], [], tmp_path, progress=False)
    plan_a, plan_b = trainer.epoch_plan(3), trainer.epoch_plan(3)
    assert [(s, f) for s, f, _ in plan_a] == [(s, f) for s, f, _ in plan_b]
    assert all(np.array_equal(a[2], b[2]) for a, b in zip(plan_a, plan_b))
    # one transform per scene, rotation about z only
    T = plan_a[0][2]
    assert np.allclose(T[2, :3], [0, 0, 1]) and abs(T[2, 3]) <= 0.025
    assert not np.allclose(trainer.epoch_plan(4)[0][2], T)
