"""The pipeline's pending re-mesh work stays bounded when nothing meshes (a node feeding only a planner)."""

from __future__ import annotations

import numpy as np
import pytest

from neuralrecon_ros.core import pipeline as pipeline_module
from neuralrecon_ros.core.synthetic import make_sequence
from neuralrecon_ros.node.parameters import NodeParameters
from neuralrecon_ros.node.pipeline_factory import build_pipeline


@pytest.fixture(scope="module")
def frames():
    return list(make_sequence(seed=4, n_frames=24, width=80, height=60))


def test_pending_updates_are_merged_and_the_mesh_is_the_same_as_meshing_every_frame(frames, monkeypatch) -> None:
    monkeypatch.setattr(pipeline_module, "_MAX_PENDING_UPDATES", 3)
    never_meshed = build_pipeline(NodeParameters({"mode": "depth"}))
    meshed_every_frame = build_pipeline(NodeParameters({"mode": "depth"}))
    pending = []
    for frame in frames:
        never_meshed.process(frame)
        pending.append(len(never_meshed._dirty_blocks))
        meshed_every_frame.process(frame)
        meshed_every_frame.update_mesh()
    assert max(pending) <= 4 and len(pending) == 24  # was one entry per frame, without bound
    merged = never_meshed._dirty_blocks[0]  # the merged entry holds each block once
    assert len(np.unique(merged, axis=0)) == len(merged)
    a, b = never_meshed.mesh(), meshed_every_frame.mesh()
    assert len(a.faces) > 1000
    np.testing.assert_array_equal(a.vertices, b.vertices)
    np.testing.assert_array_equal(a.faces, b.faces)
