"""Training that survives interruption (exact resume) and runs as several processes (DDP over gloo)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
import torch.multiprocessing as mp

from neuralrecon_ros.core.network.model import NeuralRecon
from neuralrecon_ros.core.training.datasets import make_sample
from neuralrecon_ros.core.training.distributed import DistributedContext
from neuralrecon_ros.core.training.forward import training_pass
from neuralrecon_ros.core.training.trainer import METRICS_LOG, Trainer, training_config_from_mapping

SAMPLES = [256, 1024, 4096]


def _config(**overrides):
    values = {
        "synthetic_train_scenes": 0, "synthetic_val_scenes": 0, "phase1_epochs": 1, "phase2_epochs": 0,
        "train_num_samples": SAMPLES, "device": "cpu", "validate_every_epochs": 0, "checkpoint_every_steps": 1,
        "num_threads": 1, "seed": 5,
    }
    return training_config_from_mapping(values | overrides)


def _first_fragments(scene, n):
    scene.fragment_targets(0)
    return dataclasses.replace(scene, fragments=scene.fragments[:n], targets=scene.targets[:n])


def test_an_interrupted_run_resumes_exactly(small_scene, tmp_path):
    """Stopped after one step of phase 2 (mid-scene: the GRU state carries into the next fragment) and
    resumed by a new trainer, the run ends bit-identical to one that was never interrupted."""
    scene = _first_fragments(small_scene[0], 2)
    config = _config(phase1_epochs=0, phase2_epochs=1, checkpoint_every_steps=10)

    torch.manual_seed(0)
    straight = Trainer(config, [scene], [], tmp_path / "straight", progress=False)
    straight.run()
    assert straight.global_step == 2

    torch.manual_seed(0)
    first = Trainer(config, [scene], [], tmp_path / "resumed", progress=False)
    first.run(time_limit_s=1e-9)  # one step, then the time limit checkpoints and stops
    assert first.global_step == 1 and first.previous_scene == 0
    with open(tmp_path / "resumed" / METRICS_LOG, "a") as f:  # a step logged after the checkpoint, then killed
        f.write(json.dumps({"type": "train", "step": 2, "loss": 0.0}) + "\n")
        f.write(json.dumps({"type": "val", "step": 2, "fscore": 0.0}) + "\n")
    torch.manual_seed(123)  # a different fresh model: everything must come from the checkpoint
    second = Trainer(config, [scene], [], tmp_path / "resumed", progress=False)
    assert second.resume()
    assert (second.epoch, second.step_in_epoch, second.global_step) == (0, 1, 1)
    assert second.model.recurrent_state().keys() == first.model.recurrent_state().keys() != set()
    second.run()

    expected = straight.model.state_dict()
    for key, value in second.model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    lines = [json.loads(line) for line in (tmp_path / "resumed" / METRICS_LOG).read_text().splitlines()]
    straight_lines = [json.loads(line) for line in (tmp_path / "straight" / METRICS_LOG).read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]  # the orphan lines of step 2 were dropped, then step 2 redone
    assert [r["loss"] for r in lines] == [r["loss"] for r in straight_lines]


def _rank_main(rank: int, world: int, init_file: str, scenes: list, out_dir: str, result_dir: str) -> None:
    from torch import distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(rank)  # different local starts: DDP must broadcast rank 0's weights
    trainer = Trainer(_config(), scenes, [], out_dir, progress=False, distributed=DistributedContext(rank, world))
    trainer.run()
    torch.save(
        {"params": dict(trainer.model.named_parameters()), "buffers": dict(trainer.model.named_buffers()),
         "steps": trainer.global_step},
        Path(result_dir) / f"rank{rank}.pt",
    )
    dist.destroy_process_group()


def test_two_processes_average_their_gradients(small_scene, tmp_path):
    """Two ranks (gloo, CPU) train two steps on their own scene; both end with identical weights, equal to
    one process applying the average of the two shards' gradients (clip, Adam) from rank 0's start."""
    base = _first_fragments(small_scene[0], 2)
    scenes = [dataclasses.replace(base, name="a"), dataclasses.replace(base, name="b")]
    torch.manual_seed(0)
    start = NeuralRecon().state_dict()  # rank 0's start (seed 0)
    mp.spawn(
        _rank_main,
        args=(2, str(tmp_path / "rendezvous"), scenes, str(tmp_path / "run"), str(tmp_path)),
        nprocs=2,
        join=True,
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["steps"] == ranks[1]["steps"] == 2
    for part in ("params", "buffers"):
        for key, value in ranks[0][part].items():
            assert torch.equal(value, ranks[1][part][key]), (part, key)
    # only rank 0 wrote: one metrics line per step, the checkpoints
    lines = (tmp_path / "run" / METRICS_LOG).read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
    assert (tmp_path / "run" / "model_000000.ckpt").is_file()

    # the same two steps in one process: each rank's shard, gradients averaged, clipped, one Adam step
    config = _config()
    planner = Trainer(config, scenes, [], tmp_path / "unused", progress=False)
    shards = [planner.epoch_plan(0, r, 2) for r in range(2)]
    assert sorted(len({s for s, _, _ in shard}) for shard in shards) == [1, 1]  # a whole scene each
    assert {shards[0][0][0], shards[1][0][0]} == {0, 1}
    model = NeuralRecon()
    model.load_state_dict(start)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, betas=(0.9, 0.999))
    parameters = list(model.parameters())
    for step in range(2):
        total = [torch.zeros_like(p) for p in parameters]
        for rank in range(2):
            s, f, T_aug = shards[rank][step]
            model.reset_state()
            sample = make_sample(scenes[s], f, T_aug)
            result = training_pass(
                model, sample.images, sample.geometry, sample.targets, False, SAMPLES,
                generator=planner.step_generator(step, rank),
            )
            grads = torch.autograd.grad(result.loss, parameters, allow_unused=True)
            total = [t + (g if g is not None else 0) for t, g in zip(total, grads)]
        for p, t in zip(parameters, total):
            p.grad = t / 2
        torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip_norm)
        optimizer.step()
    reference = dict(model.named_parameters())
    moved = 0
    for key, value in ranks[0]["params"].items():
        torch.testing.assert_close(value, reference[key].detach(), rtol=1e-4, atol=2e-5, msg=key)
        moved += not torch.equal(value, start[key])
    assert moved > 100  # the steps did change the weights
    assert os.environ.get("RANK") is None  # the test itself ran single-process
