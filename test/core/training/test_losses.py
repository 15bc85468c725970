"""Upstream's loss: positive-weighted occupancy BCE + log-L1 TSDF on occupied voxels, level weights."""

from __future__ import annotations

import math

import pytest
import torch

from neuralrecon_ros.core.training.losses import LossError, level_loss, log_transform, weighted_total


def test_log_transform():
    x = torch.tensor([-3.0, -0.5, 0.0, 0.5, 3.0])
    expected = torch.tensor([-math.log(4.0), -math.log(1.5), 0.0, math.log(1.5), math.log(4.0)])
    torch.testing.assert_close(log_transform(x), expected)


def test_level_loss_matches_the_formula():
    tsdf = torch.tensor([0.1, -0.2, 0.9, 0.5])
    occ = torch.tensor([2.0, -1.0, 0.5, -3.0])
    tsdf_target = torch.tensor([0.0, -0.5, 1.0, 1.0])
    occ_target = torch.tensor([True, True, False, False])
    loss = level_loss(tsdf, occ, tsdf_target, occ_target, pos_weight=1.5)
    w = 2 / 2 * 1.5  # #neg / #pos * pos_weight
    bce = [
        -w * math.log(torch.sigmoid(torch.tensor(2.0))),
        -w * math.log(torch.sigmoid(torch.tensor(-1.0))),
        -math.log(1 - torch.sigmoid(torch.tensor(0.5))),
        -math.log(1 - torch.sigmoid(torch.tensor(-3.0))),
    ]
    occ_expected = sum(bce) / 4
    tsdf_expected = (abs(math.log(1.1) - 0.0) + abs(-math.log(1.2) + math.log(1.5))) / 2
    assert loss.occupancy == pytest.approx(occ_expected, rel=1e-5)
    assert loss.tsdf == pytest.approx(tsdf_expected, rel=1e-5)
    assert float(loss.total) == pytest.approx(occ_expected + tsdf_expected, rel=1e-5)
    assert (loss.n_voxels, loss.n_occupied) == (4, 2)


def test_mask_and_empty_targets():
    tsdf = torch.zeros(3, requires_grad=True)
    occ = torch.zeros(3, requires_grad=True)
    masked = level_loss(
        tsdf, occ, torch.zeros(3), torch.tensor([True, False, False]), mask=torch.tensor([False, True, True])
    )
    assert float(masked.total.detach()) == 0.0 and masked.n_occupied == 0  # no positive left: zero
    masked.total.backward()  # still part of the graph
    with pytest.raises(LossError, match="bool"):
        level_loss(tsdf, occ, torch.zeros(3), torch.zeros(3))
    with pytest.raises(LossError, match="shape"):
        level_loss(tsdf, occ[:2], torch.zeros(3), torch.zeros(3, dtype=torch.bool))


def test_level_weights():
    parts = [
        level_loss(torch.zeros(2), torch.zeros(2), torch.ones(2), torch.tensor([True, False]))
        for _ in range(3)
    ]
    total = weighted_total(parts, (1.0, 0.8, 0.64))
    assert float(total) == pytest.approx(float(parts[0].total) * 2.44, rel=1e-6)
