"""Upstream NeuralRecon's training loss (facts §2.7).

Per level: occupancy BCE-with-logits whose positive class is weighted by ``#neg / #pos * pos_weight``
plus an L1 between log-transformed TSDFs (``sign(x) * log(|x| + 1)``) on the voxels the ground truth
calls occupied, both over the voxels of ``mask``. The total is the level losses weighted 1.0 / 0.8 / 0.64.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

#: upstream MODEL.POS_WEIGHT of the shipped yaml files
POS_WEIGHT = 1.5
#: upstream MODEL.LW (coarse level first)
LEVEL_WEIGHTS = (1.0, 0.8, 0.64)


class LossError(ValueError):
    """Loss inputs of mismatched shapes or types."""


@dataclass
class LevelLoss:
    total: torch.Tensor  # occupancy + tsdf (scalar, differentiable)
    occupancy: float
    tsdf: float
    n_voxels: int  # voxels the loss saw (after the mask)
    n_occupied: int  # of those, occupied in the ground truth


def log_transform(x: torch.Tensor) -> torch.Tensor:
    """``sign(x) * log(|x| + 1)``: compresses large TSDF errors (upstream's TSDF loss transform)."""
    return torch.sign(x) * torch.log(x.abs() + 1.0)


def level_loss(
    tsdf: torch.Tensor,
    occ_logits: torch.Tensor,
    tsdf_target: torch.Tensor,
    occ_target: torch.Tensor,
    mask: torch.Tensor | None = None,
    pos_weight: float = POS_WEIGHT,
) -> LevelLoss:
    """The loss of one level over voxels ``mask`` (all when None); zero (still differentiable) when the
    ground truth has no occupied voxel there, as upstream."""
    n = tsdf.shape[0]
    for name, t in (("occ_logits", occ_logits), ("tsdf_target", tsdf_target), ("occ_target", occ_target)):
        if t.shape != (n,):
            raise LossError(f"{name} must have shape ({n},) like tsdf, got {tuple(t.shape)}")
    if occ_target.dtype != torch.bool:
        raise LossError(f"occ_target must be bool, got {occ_target.dtype}")
    if mask is not None:
        tsdf, occ_logits, tsdf_target, occ_target = (
            tsdf[mask],
            occ_logits[mask],
            tsdf_target[mask],
            occ_target[mask],
        )
    n_all = int(occ_target.numel())
    n_pos = int(occ_target.sum())
    if n_pos == 0:
        zero = (tsdf.sum() + occ_logits.sum()) * 0.0  # keeps the graph (and DDP-style bookkeeping) intact
        return LevelLoss(zero, 0.0, 0.0, n_all, 0)
    weight = torch.tensor(
        (n_all - n_pos) / n_pos * pos_weight, dtype=occ_logits.dtype, device=occ_logits.device
    )
    occ_loss = F.binary_cross_entropy_with_logits(
        occ_logits, occ_target.to(occ_logits.dtype), pos_weight=weight
    )
    tsdf_loss = (log_transform(tsdf[occ_target]) - log_transform(tsdf_target[occ_target])).abs().mean()
    return LevelLoss(occ_loss + tsdf_loss, float(occ_loss.detach()), float(tsdf_loss.detach()), n_all, n_pos)


def weighted_total(losses: Sequence[LevelLoss], weights: Sequence[float] = LEVEL_WEIGHTS) -> torch.Tensor:
    """Sum of the level losses times their weights (levels that did not run contribute nothing)."""
    if not losses:
        raise LossError("no level loss to sum")
    return sum(
        (w * loss.total for w, loss in zip(weights, losses)),
        start=torch.zeros((), device=losses[0].total.device),
    )
