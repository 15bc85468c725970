"""LayerChangeTracker (what a layer message carries) and TSDFMap.set_blocks (how a replica writes it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuralrecon_ros.core.keyframes import KeyframeConfig
from neuralrecon_ros.core.mapping.config import MapConfig
from neuralrecon_ros.core.mapping.layer_changes import LayerChangeTracker
from neuralrecon_ros.core.mapping.memory import MemoryBoundsConfig
from neuralrecon_ros.core.mapping.tsdf_map import MapInputError, TSDFMap
from neuralrecon_ros.core.pipeline import ReconstructionPipeline
from neuralrecon_ros.core.reconstructor import MapUpdate, Reconstructor
from neuralrecon_ros.core.types import CameraIntrinsics, Frame

B = 4


def block_map(*blocks: tuple[int, int, int]) -> TSDFMap:
    tsdf_map = TSDFMap(MapConfig(voxel_size=0.1, block_size=B))
    for block in blocks:
        tsdf_map.set_voxels(np.array([block]) * B, np.array([0.5]))
    return tsdf_map


def as_set(coords: np.ndarray) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in row) for row in coords}


def test_first_take_is_full_then_only_changes():
    tsdf_map = block_map((0, 0, 0), (1, 0, 0))
    tracker = LayerChangeTracker()
    tracker.mark(np.array([[0, 0, 0]]))  # before the first take: not tracked (the take is full anyway)
    first = tracker.take(tsdf_map)
    assert first.full and as_set(first.blocks) == {(0, 0, 0), (1, 0, 0)} and len(first.removed) == 0
    assert tracker.take(tsdf_map).is_empty
    # a write, a new block and a removal; blocks touched several times are listed once
    tracker.mark(tsdf_map.set_voxels(np.array([[1, 1, 1]]), np.array([0.1])).touched_blocks)
    tracker.mark(tsdf_map.set_voxels(np.array([[0, 0, 2 * B]]), np.array([0.2])).touched_blocks)
    tracker.mark(tsdf_map.set_voxels(np.array([[1, 2, 1]]), np.array([0.3])).touched_blocks)
    tracker.mark(tsdf_map.remove_blocks(np.array([[1, 0, 0]])).touched_blocks)
    changes = tracker.take(tsdf_map)
    assert not changes.full
    assert changes.blocks.tolist() == [[0, 0, 0], [0, 0, 2]]
    assert changes.removed.tolist() == [[1, 0, 0]]
    # allocated and removed between two takes: listed as removed (a receiver ignores unknown ones)
    tracker.mark(tsdf_map.set_voxels(np.array([[5 * B, 0, 0]]), np.array([0.2])).touched_blocks)
    tracker.mark(tsdf_map.remove_blocks(np.array([[5, 0, 0]])).touched_blocks)
    assert tracker.take(tsdf_map).removed.tolist() == [[5, 0, 0]]


def test_reset_makes_the_next_take_full_and_full_on_request():
    tsdf_map = block_map((0, 0, 0))
    tracker = LayerChangeTracker()
    tracker.take(tsdf_map)
    tracker.mark(np.array([[0, 0, 0]]))
    tracker.reset()
    tsdf_map.reset()
    after_reset = tracker.take(tsdf_map)
    assert after_reset.full and len(after_reset.blocks) == 0 and not after_reset.is_empty
    tsdf_map.set_voxels(np.array([[0, 0, 0], [9, 9, 9]]), np.array([0.1, 0.2]))
    requested = tracker.take(tsdf_map, full=True)
    assert requested.full and as_set(requested.blocks) == {(0, 0, 0), (2, 2, 2)}


def test_pending_changes_stay_bounded_by_the_distinct_blocks():
    tracker = LayerChangeTracker()
    tsdf_map = block_map((0, 0, 0))
    tracker.take(tsdf_map)
    blocks = np.array([[0, 0, 0], [3, 1, 2]])
    for _ in range(50_000):
        tracker.mark(blocks)
    assert tracker._pending_rows <= 2 * 2 + 65536 + 2
    assert tracker.take(tsdf_map).removed.tolist() == [[3, 1, 2]]


class _Writer(Reconstructor):
    """Writes one voxel per frame at the block the camera's x position names."""

    name = "writer"

    def __init__(self, tsdf_map: TSDFMap) -> None:
        self.tsdf_map = tsdf_map

    def on_frame(self, frame: Frame, is_keyframe: bool) -> MapUpdate:
        x = round(float(frame.T_world_camera[0, 3]))
        return self.tsdf_map.set_voxels(np.array([[x * B, 0, 0]]), np.array([0.25]))

    def on_fragment(self, fragment):
        return None


def test_the_pipeline_reports_writes_and_clearing_radius_drops():
    tsdf_map = TSDFMap(MapConfig(voxel_size=0.25, block_size=B))  # 1 m blocks
    pipeline = ReconstructionPipeline(KeyframeConfig(), tsdf_map, _Writer(tsdf_map),
                                      memory_config=MemoryBoundsConfig(map_clearing_radius_m=2.6))
    K = CameraIntrinsics(fx=10.0, fy=10.0, cx=2.0, cy=2.0, width=4, height=4)

    def frame(x: float, stamp: float) -> Frame:
        T = np.eye(4)
        T[0, 3] = x
        return Frame(stamp=stamp, image=np.zeros((4, 4, 3), np.uint8), intrinsics=K, T_world_camera=T)

    pipeline.process(frame(0.0, 0.0))
    assert pipeline.layer_changes().full
    for i, x in enumerate((1.0, 2.0, 3.0, 4.0)):
        pipeline.process(frame(x, 1.0 + i))
    changes = pipeline.layer_changes()
    assert not changes.full
    assert as_set(changes.blocks) == as_set(tsdf_map.block_coords())
    # the camera at x = 4.5 m keeps blocks within 2.6 m of it: block 0 and 1 (centres 0.375, 1.375) left
    assert as_set(changes.removed) == {(0, 0, 0), (1, 0, 0)}
    pipeline.reset()
    assert pipeline.layer_changes().full


def test_set_blocks_overwrites_whole_blocks_and_allocates_colour():
    tsdf_map = block_map((0, 0, 0))
    tsdf = torch.linspace(-1, 1, 2 * B**3).reshape(2, B, B, B)
    weight = torch.arange(2 * B**3, dtype=torch.float32).reshape(2, B, B, B)
    color = torch.randint(0, 255, (2, B, B, B, 3), dtype=torch.uint8)
    update = tsdf_map.set_blocks(np.array([[0, 0, 0], [-1, 2, 3]]), tsdf, weight, color)
    assert as_set(update.touched_blocks) == {(0, 0, 0), (-1, 2, 3)}
    slots = tsdf_map.lookup_blocks(np.array([[0, 0, 0], [-1, 2, 3]]))
    assert torch.equal(tsdf_map.blocks_tsdf[slots], tsdf) and torch.equal(tsdf_map.blocks_weight[slots], weight)
    assert torch.equal(tsdf_map.blocks_color[slots], color)
    # without colour into a coloured map: black
    tsdf_map.set_blocks(np.array([[0, 0, 0]]), tsdf[:1], weight[:1])
    assert int(tsdf_map.blocks_color[tsdf_map.lookup_blocks(np.array([[0, 0, 0]]))].max()) == 0


@pytest.mark.parametrize("problem, kwargs", [
    ("tsdf has shape", {"tsdf": torch.ones(1, B, B, 2)}),
    ("tsdf must lie in", {"tsdf": torch.full((1, B, B, B), 1.5)}),
    ("weight contains NaN", {"weight": torch.full((1, B, B, B), float("nan"))}),
    ("color must be uint8", {"color": torch.zeros(1, B, B, B, 3)}),
    ("more than once", {"coords": np.array([[0, 0, 0], [0, 0, 0]]), "tsdf": torch.ones(2, B, B, B),
                        "weight": torch.ones(2, B, B, B)}),
])
def test_set_blocks_rejects_bad_input(problem, kwargs):
    tsdf_map = block_map()
    values = {"coords": np.array([[0, 0, 0]]), "tsdf": torch.ones(1, B, B, B), "weight": torch.ones(1, B, B, B),
              "color": None, **kwargs}
    with pytest.raises(MapInputError, match=problem):
        tsdf_map.set_blocks(values["coords"], values["tsdf"], values["weight"], values["color"])
    assert tsdf_map.num_blocks == 0
