"""One training pass of NeuralRecon over a fragment: per-level predictions, targets and losses.

The inference forward (:class:`~..network.neucon_net.NeuConNet`) keeps only what inference needs; training
differs in the ways upstream's training mode does (facts §2.7, §4), so this pass drives the network's
level steps (candidates, sparse_level, fuse, heads) itself:

* phase 1 (``fusion=False``): no GRU fusion; loss and pruning only on voxels seen by more than one view
  (upstream ``grid_mask``); phase 2 (``fusion=True``, FULL): GRU fusion with the scene's running hidden
  state, every voxel counts;
* the heads' outputs keep their gradients; targets are gathered at each level's voxels;
* survivors (occupancy logit > 0) beyond ``num_samples[level]`` are randomly dropped (TRAIN_NUM_SAMPLE).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..network.model import NeuralRecon
from ..network.neucon_net import THRESHOLDS
from ..network.projection import N_LEVELS, FragmentGeometry
from .losses import LEVEL_WEIGHTS, POS_WEIGHT, LevelLoss, level_loss, weighted_total
from .targets import FragmentTargets

#: upstream MODEL.TRAIN_NUM_SAMPLE
TRAIN_NUM_SAMPLE = (4096, 16384, 65536)


@dataclass
class PassResult:
    loss: torch.Tensor  # weighted total (scalar, differentiable)
    levels: list[LevelLoss] = field(default_factory=list)  # levels that ran, coarse first
    survivors: list[int] = field(default_factory=list)  # voxels passed on by each level (after sampling)

    def record(self) -> dict[str, float | int]:
        """JSON-ready per-level figures."""
        out: dict[str, float | int] = {"loss": float(self.loss.detach())}
        for i, level in enumerate(self.levels):
            out[f"loss_level{i}"] = float(level.total.detach())
            out[f"occ_loss_level{i}"] = level.occupancy
            out[f"tsdf_loss_level{i}"] = level.tsdf
            out[f"occupied_level{i}"] = level.n_occupied
        return out


def training_pass(
    model: NeuralRecon,
    images: torch.Tensor,
    geometry: FragmentGeometry,
    targets: FragmentTargets,
    fusion: bool,
    num_samples: Sequence[int] = TRAIN_NUM_SAMPLE,
    pos_weight: float = POS_WEIGHT,
    level_weights: Sequence[float] = LEVEL_WEIGHTS,
    generator: torch.Generator | None = None,
    half_precision: bool = False,
) -> PassResult:
    """Run ``model`` on one fragment in training mode and return its loss (call ``backward`` on it).

    ``images`` (V, 3, 480, 640) float32 RGB 0..255 and ``geometry`` on the model's device. With
    ``fusion`` the model's GRU hidden state carries over between calls (reset it per scene).
    """
    net = model.neucon_net
    features = model.extract_features(images, half_precision)
    device = features[0].device
    levels: list[LevelLoss] = []
    survivors: list[int] = []
    coords = feats = None
    for level in range(N_LEVELS):
        coords, feats = net.candidates(level, coords, feats, device)
        projected, _, feats = net.sparse_level(level, coords, feats, features, geometry)
        if fusion:
            fused = net.fuse(level, coords, feats, geometry)
            coords, feats = fused.coords, fused.feats
            mask = torch.ones(len(coords), dtype=torch.bool, device=device)
        else:
            mask = projected.count > 1
        tsdf, occ = net.heads(level, feats)
        tsdf_target, occ_target = targets.gather(level, coords)
        levels.append(level_loss(tsdf, occ, tsdf_target, occ_target, mask, pos_weight))

        keep = (occ.detach() > THRESHOLDS[level]) & mask
        index = keep.nonzero()[:, 0]
        if len(index) > num_samples[level]:
            chosen = torch.randperm(len(index), generator=generator)[: num_samples[level]].to(device)
            index = index[chosen.sort().values]
        survivors.append(len(index))
        if len(index) == 0:
            break  # upstream's "no valid points": the remaining levels contribute nothing
        coords = coords[index]
        feats = torch.cat([feats[index], tsdf[index, None], occ[index, None]], dim=1)
    return PassResult(weighted_total(levels, level_weights), levels, survivors)


class TrainingPassModule(torch.nn.Module):
    """:func:`training_pass` as a module's forward, so DistributedDataParallel can wrap it (DDP averages
    the gradients of whatever its wrapped forward used); returns ``(loss, PassResult)``."""

    def __init__(self, model: NeuralRecon) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        images: torch.Tensor,
        geometry: FragmentGeometry,
        targets: FragmentTargets,
        fusion: bool,
        num_samples: Sequence[int],
        pos_weight: float,
        level_weights: Sequence[float],
        generator: torch.Generator | None,
        half_precision: bool,
    ) -> tuple[torch.Tensor, PassResult]:
        result = training_pass(
            self.model, images, geometry, targets, fusion, num_samples, pos_weight, level_weights, generator,
            half_precision,
        )
        loss = result.loss
        if not loss.requires_grad:
            # nothing was predicted; a zero loss tied to the weights keeps every rank's backward in step
            loss = sum(p.sum() for p in self.model.parameters()) * 0.0
        return loss, result
