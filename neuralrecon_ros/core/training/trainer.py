"""The training loop: two-phase schedule, augmentation, upstream-format checkpoints, resume, validation.

Schedule (facts §2.7): Adam (lr 1e-3, betas 0.9/0.999), learning rate halved at epochs 12, 24, 48,
gradient norm clipped to 1.0; phase 1 (``phase1_epochs``) trains without GRU fusion, phase 2 with it.
Each epoch visits the training scenes in a random order, each scene under its own random rotation
about z and shift (:mod:`.augment`), its fragments in recording order (phase 2 carries the GRU state
from fragment to fragment; it is reset per scene). Order, augmentation and sampling derive from
``seed`` and the epoch, so a resumed run replays the same sequence.

Files in ``output_dir``:

* ``model_<epoch:06d>.ckpt``: after each epoch, upstream's format ``{'epoch', 'model' ('module.' keys),
  'optimizer'}`` (loadable by upstream's ``main.py`` and by ``--checkpoint``);
* ``last.ckpt`` + ``last.json``: every ``checkpoint_every_steps`` steps and when stopping. ``last.ckpt`` is
  upstream's format plus a ``resume`` entry (where in the epoch the run is, the GRU state carried into the
  next fragment, the loss scaler), written atomically in one file, so ``resume`` continues exactly from
  there; ``last.json`` mirrors the position for people;
* ``metrics.jsonl``: one JSON object per line: ``{"type": "train", epoch, step, phase, lr, loss,
  loss_level<i>, occ_loss_level<i>, tsdf_loss_level<i>, ...}`` per step and ``{"type": "val", epoch,
  fscore, ..., scenes: [...]}`` per validation (F-score at 5 cm of the network's mesh on held-out
  scenes, with depth fusion's F-score on the same scenes for reference).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import ParameterError, coerce_value, config_fields, param, spec_of
from ..mapping.config import MeshingConfig
from ..mapping.meshing import extract_mesh
from ..mapping.tsdf_map import TSDFMap
from ..metrics import evaluate_meshes
from ..network.checkpoint import PREFIX, CheckpointError, atomic_torch_save, load_checkpoint, save_checkpoint
from ..network.model import NeuralRecon
from ..network.reconstructor import NeuralReconReconstructor
from ..reconstructor import resolve_device
from ..types import Fragment
from .augment import AugmentConfig, random_transform
from .datasets import PreparedScene, depth_fusion_mesh, make_sample
from .distributed import DistributedContext
from .forward import TrainingPassModule

log = logging.getLogger("neuralrecon_ros")

LAST_CHECKPOINT = "last.ckpt"
LAST_STATE = "last.json"
METRICS_LOG = "metrics.jsonl"


@dataclass
class TrainingConfig:
    # --- data
    synthetic_train_scenes: int = param(
        8, "Synthetic rooms to train on (seeds synthetic_seed ...).", minimum=0
    )
    synthetic_val_scenes: int = param(2, "Held-out synthetic rooms for validation (other seeds).", minimum=0)
    synthetic_seed: int = param(
        1000, "First training seed; validation seeds start at synthetic_seed + 500000."
    )
    synthetic_frames: int = param(240, "Frames rendered per synthetic room.", minimum=20)
    synthetic_width: int = param(
        320, "Render width of synthetic frames (the network resizes to 640x480).", minimum=32, maximum=1280
    )
    synthetic_height: int = param(240, "Render height of synthetic frames.", minimum=24, maximum=960)
    scannet_train: list = param([], "ScanNet-layout folders (color/ depth/ pose/ intrinsic/) to train on.")
    scannet_val: list = param([], "ScanNet-layout folders for validation.")
    scannet_frame_step: int = param(1, "Use every n-th frame of ScanNet-layout folders.", minimum=1)
    bag_train: list = param([], "ROS 2 bags (RGB-D + poses) to train on, read by the node logic.")
    bag_val: list = param([], "ROS 2 bags for validation.")
    bag_parameters: str = param(
        "", "Node parameter file for the bags (topics, frames, floor height); '' = defaults."
    )
    cache_dir: str = param("", "Where prepared scenes are cached; '' = <output_dir>/cache.")
    # --- schedule
    phase1_epochs: int = param(20, "Epochs without GRU fusion (upstream 0-20).", minimum=0)
    phase2_epochs: int = param(30, "Epochs with GRU fusion after phase 1 (upstream 21-50).", minimum=0)
    learning_rate: float = param(1e-3, "Adam learning rate (upstream 1e-3).", minimum=0.0)
    lr_milestones: list = param([12, 24, 48], "Epochs at which the learning rate is multiplied by lr_gamma.")
    lr_gamma: float = param(0.5, "Learning-rate decay factor at each milestone.", minimum=0.0, maximum=1.0)
    weight_decay: float = param(0.0, "Adam weight decay.", minimum=0.0)
    grad_clip_norm: float = param(1.0, "Gradient norm clip (0 = none).", minimum=0.0)
    pos_weight: float = param(
        1.5, "Occupancy positive-class weight factor (upstream POS_WEIGHT).", minimum=0.0
    )
    level_weights: list = param([1.0, 0.8, 0.64], "Loss weight of each level, coarse first (upstream LW).")
    train_num_samples: list = param(
        [4096, 16384, 65536], "Most voxels passed on by each level (TRAIN_NUM_SAMPLE)."
    )
    # --- augmentation
    random_rotation: bool = param(True, "Rotate each scene per epoch by a random angle about z.")
    random_translation: bool = param(True, "Shift each scene per epoch by a random offset.")
    max_translation_xy_m: float = param(1.0, "Largest horizontal shift per axis.", minimum=0.0, unit="m")
    max_translation_z_m: float = param(0.025, "Largest vertical shift.", minimum=0.0, unit="m")
    # --- run
    device: str = param("auto", "Torch device.", choices=("cpu", "cuda", "auto"))
    mixed_precision: bool = param(True, "CUDA only: 2D backbone under float16 autocast with loss scaling.")
    num_threads: int = param(0, "CPU threads for torch (0 = torch's default).", minimum=0)
    init_checkpoint: str = param(
        "", "Fine-tune: start from these weights (upstream model_000047.ckpt or ours)."
    )
    init_backbone: str = param(
        "",
        "Start the 2D backbone from ImageNet: 'imagenet_lite0' maps EfficientNet-Lite0's weights into MnasNet's "
        "layout (needs the 'train' extra); '' = random. Not with init_checkpoint.",
        choices=("", "imagenet_lite0"),
    )
    init_backbone_calibration_images: int = param(
        16, "Training frames (one per scene, round robin) that rank channels and recalibrate BatchNorm.", minimum=1
    )
    checkpoint_every_steps: int = param(25, "Write last.ckpt every this many steps.", minimum=1)
    validate_every_epochs: int = param(1, "Validate every this many epochs (0 = only at the end).", minimum=0)
    bn_recalibration_fragments: int = param(
        0,
        "Before validating, re-estimate BatchNorm statistics on this many training fragments (a copy of the "
        "model; saved as model_<epoch>_bn.ckpt). Helps short runs from scratch; 0 = off, as upstream.",
        minimum=0,
    )
    max_train_time_s: float = param(
        0.0, "Stop (with a checkpoint) after this much training time; 0 = no limit.", minimum=0.0, unit="s"
    )
    seed: int = param(0, "Seed of scene order, augmentation and voxel sampling.")

    def augment(self) -> AugmentConfig:
        return AugmentConfig(
            self.random_rotation, self.random_translation, self.max_translation_xy_m, self.max_translation_z_m
        )

    @property
    def total_epochs(self) -> int:
        return self.phase1_epochs + self.phase2_epochs

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FREE_LENGTH = ("lr_milestones", "scannet_train", "scannet_val", "bag_train", "bag_val")


def training_config_from_mapping(values: Mapping[str, Any]) -> TrainingConfig:
    """A validated :class:`TrainingConfig` from YAML keys; an unknown key or bad value is a ParameterError."""
    fields = {f.name: f for f in config_fields(TrainingConfig)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ParameterError(
            f"unknown training option(s) {', '.join(map(repr, unknown))}; known: {', '.join(fields)}"
        )
    defaults = TrainingConfig()
    # lists of free length are checked against an empty default (coerce_value fixes non-empty lengths)
    typed = {
        name: coerce_value(
            name, value, [] if name in _FREE_LENGTH else getattr(defaults, name), spec_of(fields[name])
        )
        for name, value in values.items()
    }
    config = TrainingConfig(**typed)
    for name in ("level_weights", "train_num_samples"):
        if len(getattr(config, name)) != 3:
            raise ParameterError(f"training option '{name}': expected 3 values (one per level)")
    if any(not isinstance(m, int) or m < 0 for m in config.lr_milestones):
        raise ParameterError(
            f"training option 'lr_milestones': expected epoch numbers, got {config.lr_milestones}"
        )
    if any(not isinstance(n, int) or n < 1 for n in config.train_num_samples):
        raise ParameterError(
            f"training option 'train_num_samples': expected positive integers, got {config.train_num_samples}"
        )
    if config.init_checkpoint and config.init_backbone:
        raise ParameterError(
            "training options 'init_checkpoint' and 'init_backbone' exclude each other: the checkpoint "
            "replaces every weight, the backbone start included"
        )
    return config


def learning_rate_at(config: TrainingConfig, epoch: int) -> float:
    """Step decay: ``learning_rate * lr_gamma ** (milestones reached by epoch)`` (MultiStepLR)."""
    return config.learning_rate * config.lr_gamma ** sum(1 for m in config.lr_milestones if epoch >= m)


class Trainer:
    """Trains a :class:`NeuralRecon` on prepared scenes; see the module doc for files and schedule."""

    def __init__(
        self,
        config: TrainingConfig,
        train_scenes: Sequence[PreparedScene],
        val_scenes: Sequence[PreparedScene],
        output_dir: str | os.PathLike,
        progress: bool = True,
        model: NeuralRecon | None = None,
        write_text: Callable[[Path, str], None] | None = None,
        distributed: DistributedContext | None = None,
    ) -> None:
        """``write_text(path, text)`` writes the small state files; pass an atomic writer (the CLI passes
        ``io.atomic.atomic_write_text``; the core cannot import io). Default: ``Path.write_text``.
        ``distributed``: this process's place in a torchrun launch (the process group must be initialised,
        :func:`.distributed.init_distributed`); None = one process."""
        if not train_scenes:
            raise ParameterError("no training scene: set synthetic_train_scenes, scannet_train or bag_train")
        self.config = config
        self.dist = distributed or DistributedContext()
        if self.dist.world_size > len(train_scenes):
            raise ParameterError(
                f"{self.dist.world_size} training processes but only {len(train_scenes)} training scenes: "
                "each process needs at least one scene"
            )
        self.train_scenes = list(train_scenes)
        self.val_scenes = list(val_scenes)
        self.output_dir = Path(output_dir)
        if self.dist.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        self.progress = progress and self.dist.is_main
        self.device = self.dist.device(resolve_device(config.device))
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.model = (model or NeuralRecon()).to(self.device).train()
        self._pass: nn.Module = TrainingPassModule(self.model)
        if self.dist.enabled:
            # find_unused_parameters: phase 1 skips the GRU fusion, a level without survivors skips the next
            self._pass = nn.parallel.DistributedDataParallel(
                self._pass,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        self.optimizer = torch.optim.Adam(
            self.model.parameters(),
            lr=config.learning_rate,
            betas=(0.9, 0.999),
            weight_decay=config.weight_decay,
        )
        self.amp = config.mixed_precision and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.epoch = 0  # the epoch in progress (or next to run)
        self.step_in_epoch = 0  # fragments of this epoch already trained
        self.global_step = 0
        self.train_time_s = 0.0
        self.previous_scene: int | None = None  # scene of the last step (phase 2 carries its GRU state)
        self.pending_validation = False  # an epoch ended but its validation has not been logged yet
        self._depth_scores: dict[str, dict[str, float | int]] = {}
        self._write_text = write_text or (lambda path, text: path.write_text(text))

    # ------------------------------------------------------------------ checkpoints

    def load_initial_weights(self, path: str | os.PathLike) -> None:
        """Fine-tuning: take the model weights of ``path`` (upstream or ours); schedule starts at epoch 0."""
        info = load_checkpoint(self.model, path)
        log.info("fine-tuning from %s (epoch %s)", info.path, info.epoch)

    def initialise_weights(self) -> None:
        """A fresh run's start: ``init_checkpoint`` (fine-tuning), ``init_backbone`` (ImageNet) or random.

        Every rank computes the same start (DDP also broadcasts rank 0's weights when it wraps the model)."""
        if self.config.init_checkpoint:
            self.load_initial_weights(self.config.init_checkpoint)
        elif self.config.init_backbone:
            from .imagenet_init import init_backbone_from_lite0

            report = init_backbone_from_lite0(self.model, self.calibration_images())
            log.info(
                "2D backbone from ImageNet (%s; BatchNorm recalibrated on %d training frames)",
                self.config.init_backbone, report.calibration_images,
            )
            if self.dist.enabled:
                self.dist.sync_buffers(self.model)
                for parameter in self.model.parameters():
                    torch.distributed.broadcast(parameter.data, 0)

    def calibration_images(self) -> torch.Tensor:
        """``init_backbone_calibration_images`` training frames (V, 3, 480, 640) RGB 0..255: the middle
        keyframe of fragment ``k // n_scenes`` of scene ``k % n_scenes``, round robin over the scenes."""
        from ..network.reconstructor import prepare_images

        frames = []
        for k in range(self.config.init_backbone_calibration_images):
            scene = self.train_scenes[k % len(self.train_scenes)]
            fragment = scene.fragments[(k // len(self.train_scenes)) % len(scene.fragments)]
            frames.append(fragment[len(fragment) // 2])
        return prepare_images(frames)[0]

    def save(self, path: Path, completed_epoch: int) -> None:
        if self.dist.is_main:
            save_checkpoint(self.model, path, completed_epoch, self.optimizer.state_dict())

    def resume(self) -> bool:
        """Continue from ``last.ckpt`` or the newest ``model_*.ckpt``; False if none exists.

        From ``last.ckpt`` the run continues exactly: weights, optimizer moments, position in the epoch
        (whose scene order, augmentation and voxel sampling derive from ``seed``), the GRU state carried into
        the next fragment and the loss scaler; ``metrics.jsonl`` lines written after it are dropped."""
        last = self.output_dir / LAST_CHECKPOINT
        if last.is_file():
            content = self._load_full(last)
            state = content.get("resume")
            if state is None:  # written before the resume entry existed: the position is in last.json
                state = json.loads((self.output_dir / LAST_STATE).read_text())
            self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
            self.global_step, self.train_time_s = int(state["global_step"]), float(state["train_time_s"])
            previous = int(state.get("previous_scene", -1))
            recurrent = content.get("recurrent_state")
            ranks = content.get("ranks") or []
            if self.dist.enabled and len(ranks) == self.dist.world_size:  # this rank's own scene and GRU state
                previous, recurrent = int(ranks[self.dist.rank]["previous_scene"]), ranks[self.dist.rank]["state"]
            self.previous_scene = previous if previous >= 0 else None
            self.pending_validation = bool(state.get("pending_validation", False))
            if recurrent:
                self.model.load_recurrent_state(recurrent)
            if content.get("scaler"):
                self.scaler.load_state_dict(content["scaler"])
        else:
            epochs = sorted(self.output_dir.glob("model_[0-9]*[0-9].ckpt"))
            if not epochs:
                return False
            completed = int(self._load_full(epochs[-1]).get("epoch", 0))
            self.epoch, self.step_in_epoch = completed + 1, 0
        if self.dist.is_main:
            self._drop_metrics_after(self.global_step)
        log.info("resuming at epoch %d, step %d of the epoch", self.epoch, self.step_in_epoch)
        return True

    def _load_full(self, path: Path) -> dict[str, Any]:
        load_checkpoint(self.model, path)
        content = torch.load(path, map_location="cpu", weights_only=True)
        if content.get("optimizer"):
            try:
                self.optimizer.load_state_dict(content["optimizer"])
            except (ValueError, KeyError) as exc:
                raise CheckpointError(
                    f"checkpoint {str(path)!r}: optimizer state does not fit: {exc}"
                ) from None
        return content

    def _drop_metrics_after(self, step: int) -> None:
        """Forget metrics of steps after ``step`` (and validations run after it): they will be redone."""
        path = self.output_dir / METRICS_LOG
        if not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record.get("step", 0) > step or (record.get("type") == "val" and self.pending_validation
                                                and record.get("step", 0) == step):
                continue
            kept.append(line)
        self._write_text(path, "".join(line + "\n" for line in kept))

    def _save_last(self) -> None:
        """``last.ckpt`` with everything an exact resume needs, in one atomic file (rank 0 writes it)."""
        self.dist.sync_buffers(self.model)
        ranks = self.dist.gather_objects({
            "previous_scene": -1 if self.previous_scene is None else self.previous_scene,
            "state": self.model.recurrent_state(),
        })  # each rank carries its own scene's GRU state
        if not self.dist.is_main:
            return
        state = {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "train_time_s": self.train_time_s,
            "previous_scene": -1 if self.previous_scene is None else self.previous_scene,
            "pending_validation": self.pending_validation,
        }
        content = {
            "epoch": self.epoch - 1,
            "model": {PREFIX + k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "resume": state,
            "recurrent_state": self.model.recurrent_state(),
            "scaler": self.scaler.state_dict() if self.amp else {},
            "ranks": ranks if self.dist.enabled else [],
        }
        atomic_torch_save(content, self.output_dir / LAST_CHECKPOINT)
        self._write_text(self.output_dir / LAST_STATE, json.dumps(state) + "\n")

    # ------------------------------------------------------------------ loop

    def _log(self, record: dict[str, Any]) -> None:
        if self.dist.is_main:
            with open(self.output_dir / METRICS_LOG, "a") as f:
                f.write(json.dumps(record) + "\n")

    def epoch_plan(self, epoch: int, rank: int = 0, world_size: int = 1) -> list[tuple[int, int, np.ndarray]]:
        """(scene index, fragment index, T_aug) of every step of ``epoch`` for process ``rank`` of
        ``world_size``, deterministic in (seed, epoch).

        The epoch's scene order is shuffled; process r takes scenes r, r + world_size, ... of it (whole
        scenes, fragments in recording order) and every process stops after as many steps as the shortest
        share has, so all take the same number of steps. One process takes every scene."""
        rng = np.random.default_rng([self.config.seed, epoch])
        augment = self.config.augment()
        shares: list[list[tuple[int, int, np.ndarray]]] = [[] for _ in range(world_size)]
        for position, s in enumerate(rng.permutation(len(self.train_scenes))):
            T_aug = random_transform(rng, augment)
            shares[position % world_size].extend(
                (int(s), f, T_aug) for f in range(len(self.train_scenes[s].fragments))
            )
        return shares[rank][: min(len(share) for share in shares)]

    def step_generator(self, step: int, rank: int = 0) -> torch.Generator:
        """The voxel-sampling generator of global step ``step`` on process ``rank``."""
        return torch.Generator().manual_seed((self.config.seed * 1_000_003 + step) * 1009 + rank)

    def run(self, time_limit_s: float | None = None) -> dict[str, Any]:
        """Train until the schedule ends or the time limit (then validate once more and checkpoint);
        returns the last validation record (or {})."""
        from tqdm import tqdm

        limit = time_limit_s if time_limit_s is not None else (self.config.max_train_time_s or math.inf)
        last_val: dict[str, Any] = {}
        if self.pending_validation:  # interrupted while validating the last epoch
            last_val = self._validate_all()
        while self.epoch < self.config.total_epochs:
            fusion = self.epoch >= self.config.phase1_epochs
            lr = learning_rate_at(self.config, self.epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            plan = self.epoch_plan(self.epoch, self.dist.rank, self.dist.world_size)
            bar = tqdm(
                total=len(plan),
                initial=self.step_in_epoch,
                desc=f"epoch {self.epoch}",
                unit="frag",
                disable=not self.progress,
                leave=False,
            )
            for s, f, T_aug in plan[self.step_in_epoch :]:
                if self.train_time_s >= limit:
                    bar.close()
                    self._save_last()
                    log.info("time limit reached after %.0f s of training", self.train_time_s)
                    return self._validate_all() if self.val_scenes else last_val
                if s != self.previous_scene or f == 0:
                    self.model.reset_state()
                    self.previous_scene = s
                started = time.perf_counter()
                record = self.train_step(self.train_scenes[s], f, T_aug, fusion)
                # rank 0's clock decides the time limit on every rank
                self.train_time_s = self.dist.broadcast_float(self.train_time_s + time.perf_counter() - started)
                self.step_in_epoch += 1
                self.global_step += 1
                self._log(
                    {
                        "type": "train",
                        "epoch": self.epoch,
                        "step": self.global_step,
                        "phase": 2 if fusion else 1,
                        "lr": lr,
                        "scene": self.train_scenes[s].name,
                        "fragment": f,
                        "train_time_s": round(self.train_time_s, 2),
                        **record,
                    }
                )
                bar.set_postfix(loss=f"{record['loss']:.3f}")
                bar.update()
                if self.global_step % self.config.checkpoint_every_steps == 0:
                    self._save_last()
            bar.close()
            self.model.reset_state()
            self.previous_scene = None
            self.dist.sync_buffers(self.model)
            self.save(self.output_dir / f"model_{self.epoch:06d}.ckpt", self.epoch)
            self.epoch += 1
            self.step_in_epoch = 0
            every = self.config.validate_every_epochs
            self.pending_validation = bool(self.val_scenes) and (
                (every and self.epoch % every == 0) or self.epoch == self.config.total_epochs
            )
            self._save_last()
            if self.pending_validation:
                last_val = self._validate_all()
        self.dist.sync_buffers(self.model)
        return last_val

    def _validate_all(self) -> dict[str, Any]:
        """Validation on rank 0 while the other ranks wait; clears (and checkpoints) the pending flag."""
        record = self.validate() if self.dist.is_main else {}
        self.dist.barrier()
        self.pending_validation = False
        self._save_last()
        return record

    def train_step(
        self, scene: PreparedScene, fragment: int, T_aug: np.ndarray | None, fusion: bool
    ) -> dict[str, Any]:
        """One optimisation step on one fragment; returns its loss record."""
        sample = make_sample(scene, fragment, T_aug, self.device)
        loss, result = self._pass(
            sample.images,
            sample.geometry,
            sample.targets,
            fusion,
            self.config.train_num_samples,
            self.config.pos_weight,
            self.config.level_weights,
            self.step_generator(self.global_step, self.dist.rank),
            self.amp,
        )
        self.optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:
            # under DDP, backward averages the gradients over the ranks: every rank then steps identically
            self.scaler.scale(loss).backward()
            if self.config.grad_clip_norm > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return {**result.record(), "survivors": result.survivors}

    # ------------------------------------------------------------------ validation

    def validate(self) -> dict[str, Any]:
        """F-score (5 cm) of the network's reconstruction of each validation scene, next to depth fusion's."""
        model = self.model
        if self.config.bn_recalibration_fragments:
            model = copy.deepcopy(self.model)
            fragments = self.config.bn_recalibration_fragments
            recalibrate_batchnorm(model, self.train_scenes, fragments, self.device)
            save_checkpoint(model, self.output_dir / f"model_{self.epoch - 1:06d}_bn.ckpt", self.epoch - 1)
        scenes = [self.evaluate_scene(scene, model) for scene in self.val_scenes]
        self.model.train()
        record: dict[str, Any] = {"type": "val", "epoch": self.epoch - 1, "step": self.global_step}
        for key in ("fscore", "prec", "recall", "acc", "comp", "depth_fscore"):
            values = [s[key] for s in scenes if math.isfinite(s[key])]
            record[key] = float(np.mean(values)) if values else math.nan
        record["scenes"] = scenes
        self._log(record)
        log.info(
            "validation after epoch %d: F-score %.3f (depth fusion %.3f)",
            record["epoch"],
            record["fscore"],
            record["depth_fscore"],
        )
        return record

    def evaluate_scene(self, scene: PreparedScene, model: NeuralRecon) -> dict[str, Any]:
        """Reconstruct ``scene`` from RGB and poses with ``model`` (the product's reconstructor)."""
        metrics = evaluate_scene(model, scene, self.device)
        if scene.name not in self._depth_scores:
            self._depth_scores[scene.name] = evaluate_meshes(
                depth_fusion_mesh(scene.scene_tsdf), scene.evaluation_mesh()
            )
        return {
            "scene": scene.name,
            **{k: metrics[k] for k in ("fscore", "prec", "recall", "acc", "comp")},
            "depth_fscore": self._depth_scores[scene.name]["fscore"],
        }


@torch.no_grad()
def recalibrate_batchnorm(
    model: NeuralRecon,
    scenes: Sequence[PreparedScene],
    max_fragments: int,
    device: str | torch.device = "cpu",
) -> int:
    """Replace every BatchNorm's running statistics by their average over up to ``max_fragments`` training
    fragments (train-mode forward passes, inference pruning, no gradients) -- "precise BN".

    Early in training the running statistics lag far behind the weights (and the 2D backbone normalises
    single images), so eval-mode outputs can collapse; this re-estimates them for the current weights.
    Returns the number of fragments used; leaves ``model`` in train mode with its state reset.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    used = 0
    for scene in scenes:
        model.reset_state()
        for index in range(len(scene.fragments)):
            if used >= max_fragments:
                break
            sample = make_sample(scene, index, device=device)
            model(sample.images, sample.geometry)
            used += 1
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.reset_state()
    return used


def evaluate_scene(
    model: NeuralRecon,
    scene: PreparedScene,
    device: str | torch.device = "cpu",
    on_fragment: Callable[[int], None] | None = None,
) -> dict[str, float | int]:
    """NeuralRecon 3D metrics of ``model``'s reconstruction of ``scene`` against its evaluation mesh.

    Runs the product's :class:`NeuralReconReconstructor` on the recorded fragments (fresh recurrent
    state, a fresh map) and meshes the map; leaves ``model`` in eval mode with its state reset.
    """
    tsdf_map = TSDFMap(device=device)
    reconstructor = NeuralReconReconstructor(tsdf_map, model=model, device=device)
    reconstructor.reset()
    for index, keyframes in enumerate(scene.fragments):
        reconstructor.on_fragment(Fragment(index, keyframes))
        if on_fragment is not None:
            on_fragment(index)
    mesh = extract_mesh(tsdf_map, MeshingConfig(mesh_color_mode="none"))
    reconstructor.reset()
    return evaluate_meshes(mesh, scene.evaluation_mesh())


def held_out_scores(
    model: NeuralRecon,
    seeds: Sequence[int],
    n_frames: int,
    width: int,
    height: int,
    device: str | torch.device = "cpu",
) -> list[dict[str, Any]]:
    """The network's metrics (from RGB and poses) and depth fusion's (RGB-D) on synthetic rooms ``seeds``.

    Each room is scored against the exact surfaces its camera observed; pick seeds no training run used.
    """
    from .datasets import synthetic_scene

    scores = []
    for seed in seeds:
        scene = synthetic_scene(seed, n_frames, width, height)
        network = evaluate_scene(model, scene, device)
        depth = evaluate_meshes(depth_fusion_mesh(scene.scene_tsdf), scene.evaluation_mesh())
        scores.append({
            "seed": seed,
            "fragments": len(scene.fragments),
            "network": {k: network[k] for k in ("fscore", "prec", "recall", "acc", "comp")},
            "depth": {k: depth[k] for k in ("fscore", "prec", "recall", "acc", "comp")},
        })
    return scores
