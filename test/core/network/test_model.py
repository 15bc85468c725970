"""Model-level behaviour: input validation and upstream's 'no valid points' case."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from neuralrecon_ros.core.geometry import look_at
from neuralrecon_ros.core.network.model import InputError, NeuralRecon
from neuralrecon_ros.core.network.projection import derive_fragment_geometry
from neuralrecon_ros.core.network.sparse import set_backend


@pytest.fixture(scope="module")
def two_views():
    K = np.array([[520.0, 0.0, 319.5], [0.0, 520.0, 239.5], [0.0, 0.0, 1.0]])
    poses = np.stack([look_at(np.array([0.0, 0.0, 1.5]), np.array([2.0, 1.0, 0.5])),
                      look_at(np.array([0.3, -0.2, 1.5]), np.array([2.0, 1.2, 0.4]))])
    images = torch.rand(2, 3, 480, 640, generator=torch.Generator().manual_seed(0)) * 255
    return images, derive_fragment_geometry(np.stack([K, K]), poses)


def test_empty_level_changes_nothing_but_the_gru_state_it_reached(two_views, caplog):
    set_backend("torch")
    torch.manual_seed(0)
    model = NeuralRecon().eval()
    with torch.no_grad():
        model.neucon_net.occ_preds[0].bias.fill_(-1e4)  # nothing survives level 0
    images, geometry = two_views
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="neuralrecon_ros"):
        assert model(images, geometry) is None
    assert "no voxel of level 0" in caplog.text
    assert len(model.global_tsdf[0]) == 0
    hidden = model.neucon_net.gru_fusion.hidden
    assert hidden[0] is not None and len(hidden[0].coords) == 24**3  # level 0 ran its GRU, as upstream
    assert hidden[1] is None and hidden[2] is None


def test_inputs_are_validated(two_views):
    model = NeuralRecon()
    images, geometry = two_views
    with pytest.raises(InputError, match=r"\(V, 3, 480, 640\)"):
        model(images[:, :, :240], geometry)
    with pytest.raises(InputError, match="float32"):
        model(images.to(torch.uint8), geometry)
    with pytest.raises(InputError, match="for 1 views"):
        model(images[:1], geometry)
