"""Our model's state dict is exactly upstream's checkpoint layout (facts §3, expected TSV)."""

from __future__ import annotations

import json

from neuralrecon_ros.core.network.checkpoint import PREFIX
from neuralrecon_ros.core.network.model import NeuralRecon


def test_state_dict_matches_expected_listing_exactly(expected_state_dict_tsv):
    expected = []
    for line in expected_state_dict_tsv.read_text().splitlines():
        if line.strip():
            name, shape, kind = line.split("\t")
            expected.append((name, tuple(json.loads(shape)), kind))
    model = NeuralRecon()
    parameters = {name for name, _ in model.named_parameters()}
    ours = [
        (PREFIX + name, tuple(value.shape), "param" if name in parameters else "buffer")
        for name, value in model.state_dict().items()
    ]
    assert len(ours) == len(expected) == 718
    for got, want in zip(ours, expected):  # same order, names, shapes, parameter/buffer kind
        assert got == want
    assert sum(p.numel() for p in model.parameters()) == 8_340_326
    # recurrent state and the pixel mean are not checkpoint entries
    assert not any("pixel_mean" in name for name, _, _ in ours)
