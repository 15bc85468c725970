"""Bounded map memory: the clearing radius keeps the map flat along a long corridor, offloaded blocks come
back exactly, the block cap holds with one warning per crossing, and the pipeline's mesh chunks follow."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from neuralrecon_ros.core.geometry import look_at
from neuralrecon_ros.core.keyframes import KeyframeConfig
from neuralrecon_ros.core.mapping.config import DepthFusionConfig, MapConfig
from neuralrecon_ros.core.mapping.depth_fusion import DepthFusionReconstructor
from neuralrecon_ros.core.mapping.memory import (
    BlockData,
    HostBlockStore,
    MapMemoryManager,
    MemoryBoundsConfig,
    MemoryBoundsError,
    block_centres,
    merge_blocks,
    union_blocks,
)
from neuralrecon_ros.core.mapping.mesh_chunks import concatenate_meshes
from neuralrecon_ros.core.mapping.meshing import extract_mesh
from neuralrecon_ros.core.mapping.tsdf_map import TSDFMap
from neuralrecon_ros.core.pipeline import ReconstructionPipeline
from neuralrecon_ros.core.types import CameraIntrinsics, Frame, Mesh

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
K = CameraIntrinsics(30.0, 30.0, 19.5, 14.5, 40, 30)
WALL_Y = 1.5
STEP_M = 0.25
RADIUS_M = 2.0


def corridor_pose(x: float) -> np.ndarray:
    """A camera 1 m above the floor at (x, 0), looking at the corridor wall (y = 1.5) and the floor."""
    eye = np.array([x, 0.0, 1.0])
    return look_at(eye, eye + np.array([0.3, 1.0, -0.6]))


def corridor_depth(T: np.ndarray) -> np.ndarray:
    """Exact depth of the wall y = WALL_Y and the floor z = 0 (nearest hit per pixel)."""
    u, v = np.meshgrid(np.arange(K.width), np.arange(K.height))
    rays = np.stack([(u - K.cx) / K.fx, (v - K.cy) / K.fy, np.ones_like(u, dtype=float)], axis=-1)  # z = 1
    world = rays @ T[:3, :3].T
    eye = T[:3, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        t_wall = np.where(world[..., 1] > 1e-9, (WALL_Y - eye[1]) / world[..., 1], np.inf)
        t_floor = np.where(world[..., 2] < -1e-9, -eye[2] / world[..., 2], np.inf)
    depth = np.minimum(t_wall, t_floor)  # rays have z = 1 in the camera: t is the depth
    return np.where(np.isfinite(depth), depth, 0.0).astype(np.float32)


def frame(i: int) -> Frame:
    T = corridor_pose(i * STEP_M)
    image = np.full((K.height, K.width, 3), 40 + (i * 7) % 200, np.uint8)
    return Frame(float(i), image, K, T, corridor_depth(T), "camera", i)


def make_pipeline(device: str = "cpu", **memory: object) -> ReconstructionPipeline:
    tsdf_map = TSDFMap(MapConfig(voxel_size=0.04), device=device)
    reconstructor = DepthFusionReconstructor(tsdf_map, DepthFusionConfig(max_integration_distance_m=4.0))
    return ReconstructionPipeline(KeyframeConfig(), tsdf_map, reconstructor,
                                  memory_config=MemoryBoundsConfig(**memory))  # type: ignore[arg-type]


def sorted_state(tsdf_map: TSDFMap) -> dict[str, torch.Tensor]:
    state = tsdf_map.state_dict()
    coords = state["block_coords"]
    order = torch.as_tensor(np.lexsort(coords.numpy().T[::-1]))
    return {k: state[k][order] for k in ("block_coords", "tsdf", "weight", "color") if state[k] is not None}


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def triangles(mesh: Mesh) -> np.ndarray:
    rows = np.sort(np.round(mesh.vertices.astype(np.float64)[mesh.faces], 6).reshape(-1, 9), axis=1)
    return rows[np.lexsort(rows.T[::-1])]


@pytest.mark.parametrize("device", DEVICES)
def test_clearing_radius_keeps_the_block_count_flat_along_a_long_corridor(device):
    n = 100  # 25 m of corridor
    cleared, unbounded = make_pipeline(device, map_clearing_radius_m=RADIUS_M), make_pipeline(device)
    counts, capacities, viewer = [], [], {}
    for i in range(n):
        f = frame(i)
        cleared.process(f)
        if i % 10 == 0 or i == n - 1:
            unbounded.process(f)
        counts.append(cleared.tsdf_map.num_blocks)
        capacities.append(cleared.tsdf_map.capacity)
        centres = block_centres(cleared.tsdf_map, cleared.tsdf_map.block_coords())
        assert (np.linalg.norm(centres.numpy() - f.T_world_camera[:3, 3], axis=1) <= RADIUS_M).all()
        if i % 7 == 0:  # publish now and then: the viewer's chunks follow the map
            for chunk in cleared.mesh_chunks().chunks:
                if chunk.mesh is None:
                    del viewer[chunk.marker_id]
                else:
                    viewer[chunk.marker_id] = chunk.mesh
    for chunk in cleared.mesh_chunks().chunks:
        viewer.pop(chunk.marker_id) if chunk.mesh is None else viewer.__setitem__(chunk.marker_id, chunk.mesh)
    steady = np.array(counts[20:])
    assert steady.max() <= 1.15 * steady.min() and steady.max() <= max(counts[:20]) * 1.15
    assert unbounded.tsdf_map.num_blocks > 6 * steady.max()  # the same corridor without the radius
    assert len(set(capacities[20:])) == 1  # storage stopped growing: memory is flat
    assert cleared.memory.cleared_blocks > 3 * steady.max() and cleared.memory.num_offloaded == 0
    # the mesher forgot the dropped blocks and the viewer deleted their chunks
    np.testing.assert_array_equal(triangles(concatenate_meshes(list(viewer.values()))),
                                  triangles(extract_mesh(cleared.tsdf_map, weld=False)))
    assert set(cleared.timer.summary()) >= {"integrate", "memory_bounds"}


def test_clearing_origin_can_be_another_frame():
    pipeline = make_pipeline(map_clearing_radius_m=RADIUS_M)
    pipeline.set_clearing_origin([50.0, 0.0, 0.0])  # e.g. base_link, reported by the node
    pipeline.process(frame(0))
    assert pipeline.tsdf_map.num_blocks == 0
    pipeline.set_clearing_origin(None)  # back to the camera
    pipeline.process(frame(1))
    assert pipeline.tsdf_map.num_blocks > 0


@pytest.mark.parametrize("device", DEVICES)
def test_offloaded_blocks_come_back_exactly(device):
    pipeline = make_pipeline(device, map_clearing_radius_m=6.0, map_clearing_offload=True)  # > depth range
    for i in range(3):
        pipeline.process(frame(i))
    before = sorted_state(pipeline.tsdf_map)
    manager, tsdf_map = pipeline.memory, pipeline.tsdf_map
    removed = manager.enforce(tsdf_map, [30.0, 0.0, 1.0])  # the robot drives off
    assert tsdf_map.num_blocks == 0 and manager.num_offloaded == len(before["block_coords"])
    assert len(removed.touched_blocks) == len(before["block_coords"])
    restored = manager.enforce(tsdf_map, frame(1).T_world_camera[:3, 3])  # and comes back
    assert manager.num_offloaded == 0 and len(restored.touched_blocks) == len(before["block_coords"])
    assert_same_state(sorted_state(tsdf_map), before)
    assert manager.restored_blocks == len(before["block_coords"])


def test_a_block_seen_again_while_offloaded_is_merged_like_fusion():
    reference = make_pipeline(map_clearing_radius_m=6.0)  # beyond the depth range: clears only on demand
    offloading = make_pipeline(map_clearing_radius_m=6.0, map_clearing_offload=True)
    for pipeline in (reference, offloading):
        pipeline.process(frame(0))
    offloading.memory.enforce(offloading.tsdf_map, [30.0, 0.0, 1.0])
    assert offloading.tsdf_map.num_blocks == 0
    reference.process(frame(4))  # both see other frames; the offloading map fuses them into fresh blocks
    offloading.process(frame(4))  # its camera is back: restoring merges the old copies in
    assert offloading.memory.num_offloaded == 0
    a, b = sorted_state(reference.tsdf_map), sorted_state(offloading.tsdf_map)
    assert torch.equal(a["block_coords"], b["block_coords"]) and torch.equal(a["weight"], b["weight"])
    assert (b["weight"] == 2).sum() > 1000  # many voxels were seen in both frames: merged, not overwritten
    torch.testing.assert_close(a["tsdf"], b["tsdf"], rtol=0, atol=1e-6)
    assert (a["color"].int() - b["color"].int()).abs().max() <= 1


def test_block_cap_evicts_the_farthest_and_warns_once_per_crossing(caplog):
    tsdf_map = TSDFMap(MapConfig(voxel_size=0.04, block_size=8))
    manager = MapMemoryManager(MemoryBoundsConfig(max_allocated_blocks=30))
    line = np.stack([np.arange(100) * 8, np.zeros(100, int), np.zeros(100, int)], axis=1)  # blocks (i, 0, 0)
    caplog.set_level(logging.WARNING, logger="neuralrecon_ros")
    tsdf_map.set_voxels(line[:50], np.zeros(50))
    removed = manager.enforce(tsdf_map, [0.0, 0.0, 0.0])
    kept = np.sort(tsdf_map.block_coords()[:, 0])
    np.testing.assert_array_equal(kept, np.arange(30))  # the 30 nearest blocks stay
    np.testing.assert_array_equal(np.sort(removed.touched_blocks[:, 0]), np.arange(30, 50))
    tsdf_map.set_voxels(line[50:60], np.zeros(10))  # still at the cap: evicted again, no second warning
    manager.enforce(tsdf_map, [0.0, 0.0, 0.0])
    assert tsdf_map.num_blocks == 30 and manager.evicted_blocks == 30
    assert len([r for r in caplog.records if "max_allocated_blocks" in r.message]) == 1
    tsdf_map.remove_blocks(tsdf_map.block_coords()[:5])  # 25 < 90 % of 30: the warning re-arms
    manager.enforce(tsdf_map, [0.0, 0.0, 0.0])
    tsdf_map.set_voxels(line[60:70], np.zeros(10))
    manager.enforce(tsdf_map, [0.0, 0.0, 0.0])
    assert len([r for r in caplog.records if "max_allocated_blocks" in r.message]) == 2
    assert manager.status()["cap_warnings"] == 2 and manager.at_cap


@pytest.mark.parametrize("device", DEVICES)
def test_cap_holds_along_the_corridor_and_offload_keeps_the_rest(device, caplog):
    cap = 150
    pipeline = make_pipeline(device, max_allocated_blocks=cap, map_clearing_offload=True)
    caplog.set_level(logging.WARNING, logger="neuralrecon_ros")
    for i in range(0, 60, 2):
        pipeline.process(frame(i))
        assert pipeline.tsdf_map.num_blocks <= cap
    assert pipeline.tsdf_map.num_blocks == cap and pipeline.memory.num_offloaded > cap
    assert len([r for r in caplog.records if "max_allocated_blocks" in r.message]) == 1
    stored = pipeline.memory.offloaded(pipeline.tsdf_map.block_size)
    assert len(stored) == pipeline.memory.num_offloaded and (stored.weight > 0).any()


def test_merge_and_union_of_block_copies():
    ones = torch.ones((1, 2, 2, 2))
    origin = np.array([[0, 0, 0]])
    a = BlockData(origin, 0.5 * ones, 1.0 * ones, torch.full((1, 2, 2, 2, 3), 100, dtype=torch.uint8))
    b = BlockData(origin, -0.5 * ones, 3.0 * ones, torch.full((1, 2, 2, 2, 3), 200, dtype=torch.uint8))
    b.weight[0, 0, 0, 0] = 0.0  # one voxel only in a; (1, 1, 1) in neither
    a.weight[0, 1, 1, 1] = 0.0
    b.weight[0, 1, 1, 1] = 0.0
    merged = merge_blocks(a, b)
    assert merged.tsdf[0, 0, 0, 1] == pytest.approx((0.5 - 1.5) / 4) and merged.weight[0, 0, 0, 1] == 4.0
    assert merged.tsdf[0, 0, 0, 0] == 0.5  # only a saw it
    assert merged.tsdf[0, 1, 1, 1] == 1.0 and merged.weight[0, 1, 1, 1] == 0  # neither saw it
    assert merged.color[0, 0, 0, 1].tolist() == [175] * 3 and merged.color[0, 0, 0, 0].tolist() == [100] * 3
    other = BlockData(np.array([[5, 0, 0]]), ones.clone(), ones.clone(), None)
    b_and_other = BlockData(np.concatenate([b.coords, other.coords]), torch.cat([b.tsdf, other.tsdf]),
                            torch.cat([b.weight, other.weight]), None)
    union = union_blocks(a, b_and_other)
    assert union.coords.tolist() == [[0, 0, 0], [5, 0, 0]] and union.color is not None
    assert torch.equal(union.tsdf[0], merged.tsdf[0]) and union.color[1].sum() == 0


def test_host_store_reuses_slots_and_merges_duplicates():
    store = HostBlockStore(2)
    ones = torch.ones((3, 2, 2, 2))
    coords = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0]])
    store.put(BlockData(coords, 0.5 * ones, ones, None))
    store.put(BlockData(coords[:1], -0.5 * ones[:1], ones[:1], None))  # merged: tsdf 0, weight 2
    assert len(store) == 3
    taken = store.take(coords[[2, 0]])
    assert taken.coords.tolist() == [[2, 0, 0], [0, 0, 0]] and float(taken.tsdf[1].abs().max()) == 0.0
    assert float(taken.weight[1].min()) == 2.0 and len(store) == 1
    size = store.memory_bytes()
    store.put(BlockData(coords[[0, 2]], ones[:2], ones[:2], None))  # reuses the freed slots
    assert store.memory_bytes() == size and sorted(store.coords()[:, 0].tolist()) == [0, 1, 2]
    with pytest.raises(MemoryBoundsError, match="not stored"):
        store.take(np.array([[9, 9, 9]]))


def test_bad_bounds_and_positions_are_named():
    with pytest.raises(MemoryBoundsError, match="map_clearing_radius_m"):
        MapMemoryManager(MemoryBoundsConfig(map_clearing_radius_m=-1.0))
    with pytest.raises(MemoryBoundsError, match="max_allocated_blocks"):
        MapMemoryManager(MemoryBoundsConfig(max_allocated_blocks=-3))
    manager = MapMemoryManager(MemoryBoundsConfig(map_clearing_radius_m=1.0))
    with pytest.raises(MemoryBoundsError, match="position_m"):
        manager.enforce(TSDFMap(), [np.nan, 0.0, 0.0])
    assert not MapMemoryManager().active and MapMemoryManager().enforce(TSDFMap(), [0, 0, 0]).is_empty


def test_pipeline_reset_forgets_offloaded_blocks_and_resends_all_chunks():
    pipeline = make_pipeline(map_clearing_radius_m=RADIUS_M, map_clearing_offload=True)
    for i in range(0, 30, 3):
        pipeline.process(frame(i))
    first = pipeline.mesh_chunks()
    assert first.full and len(first.chunks) > 0 and pipeline.memory.num_offloaded > 0
    assert not pipeline.mesh_chunks().full  # nothing new: an empty incremental update
    pipeline.reset()
    after = pipeline.mesh_chunks()
    assert after.full and after.chunks == [] and pipeline.memory.num_offloaded == 0
