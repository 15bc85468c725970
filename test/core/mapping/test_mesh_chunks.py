"""Mesh chunks: incremental chunks add up to the from-scratch mesh, only changed chunks are re-sent,
emptied chunks are deleted, and marker ids are stable and collision-free."""

from __future__ import annotations

import numpy as np
import pytest

from neuralrecon_ros.core.mapping.config import MapConfig
from neuralrecon_ros.core.mapping.mesh_chunks import (
    ChunkUpdate,
    MeshChunkConfig,
    MeshChunker,
    MeshChunkError,
    chunk_marker_id,
    concatenate_meshes,
    transform_mesh,
)
from neuralrecon_ros.core.mapping.meshing import IncrementalMesher, extract_mesh
from neuralrecon_ros.core.mapping.tsdf_map import TSDFMap
from neuralrecon_ros.core.types import Mesh

VS = 0.04
B = 8
TRUNC = 3 * VS
PLANE_Z = 3.3 * VS  # inside block layer z = 0, away from its faces


def grid(lo: tuple[int, int, int], hi: tuple[int, int, int]) -> np.ndarray:
    axes = [np.arange(a, b + 1) for a, b in zip(lo, hi)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


def plane_map() -> TSDFMap:
    """A horizontal plane over blocks x, y in 0..7 (z layer 0), observed in the voxel slab z 0..8."""
    tsdf_map = TSDFMap(MapConfig(voxel_size=VS, block_size=B))
    coords = grid((0, 0, 0), (8 * B - 1, 8 * B - 1, B))
    tsdf_map.set_voxels(coords, np.clip((coords[:, 2] * VS - PLANE_Z) / TRUNC, -1, 1))
    return tsdf_map


def bump(tsdf_map: TSDFMap, block: tuple[int, int]) -> np.ndarray:
    """Raise the surface inside one block's interior (voxels 2..5 of x and y); returns the touched blocks."""
    bx, by = block
    coords = grid((bx * B + 2, by * B + 2, 0), (bx * B + 5, by * B + 5, B - 1))
    raised = np.clip((coords[:, 2] * VS - PLANE_Z - VS) / TRUNC, -1, 1)
    return tsdf_map.set_voxels(coords, raised).touched_blocks


def triangles(mesh: Mesh) -> np.ndarray:
    """Sorted (F, 9) rows of triangle corners, each rotated to start at its smallest corner (winding kept)."""
    corners = np.round(mesh.vertices.astype(np.float64)[mesh.faces], 7)  # (F, 3, 3)
    flat = corners.reshape(-1, 3)
    rank = np.empty(len(flat), np.int64)
    rank[np.lexsort(flat.T[::-1])] = np.arange(len(flat))
    start = np.argmin(rank.reshape(-1, 3), axis=1)
    rows = np.stack([corners[np.arange(len(corners)), (start + i) % 3] for i in range(3)], axis=1)
    rows = rows.reshape(-1, 9)
    return rows[np.lexsort(rows.T[::-1])]


def small_chunks() -> MeshChunker:
    return MeshChunker(MeshChunkConfig(mesh_chunk_size_blocks=2))


class Viewer:
    """What RViz holds: marker id -> mesh, updated by chunk updates."""

    def __init__(self) -> None:
        self.markers: dict[int, Mesh] = {}

    def apply(self, update: ChunkUpdate) -> None:
        if update.full:
            self.markers.clear()
        for chunk in update.chunks:
            if chunk.mesh is None:
                assert chunk.marker_id in self.markers, "DELETE for a chunk the viewer does not hold"
                del self.markers[chunk.marker_id]
            else:
                self.markers[chunk.marker_id] = chunk.mesh

    def mesh(self) -> Mesh:
        return concatenate_meshes(list(self.markers.values()))


def ids(*chunks: tuple[int, int, int]) -> set[int]:
    return set(chunk_marker_id(np.array(chunks)).tolist())


def test_incremental_chunks_equal_the_from_scratch_mesh_over_a_sequence_of_edits():
    tsdf_map = plane_map()
    mesher, chunker, viewer = IncrementalMesher(), small_chunks(), Viewer()
    viewer.apply(chunker.update(mesher, mesher.rebuild(tsdf_map)))
    edits = [
        lambda: bump(tsdf_map, (5, 5)),
        lambda: bump(tsdf_map, (0, 7)),
        lambda: tsdf_map.clear_voxels_in_box([10, 10, 0], [30, 20, B]).touched_blocks,
        lambda: tsdf_map.remove_blocks(grid((6, 0, 0), (7, 2, 0))).touched_blocks,
        lambda: bump(tsdf_map, (3, 3)),
    ]
    for edit in edits:
        viewer.apply(chunker.update(mesher, mesher.update(tsdf_map, edit())))
        np.testing.assert_array_equal(triangles(viewer.mesh()), triangles(extract_mesh(tsdf_map, weld=False)))
    assert len(viewer.mesh().faces) > 1000


def test_only_the_changed_chunks_are_resent():
    tsdf_map = plane_map()
    mesher, chunker = IncrementalMesher(), small_chunks()
    first = chunker.update(mesher, mesher.rebuild(tsdf_map))
    assert first.full and len(first.chunks) == 16  # 8 x 8 blocks in 2 x 2 chunks
    # block (5, 5) is read by blocks (4..5, 4..5): all inside chunk (2, 2)
    update = chunker.update(mesher, mesher.update(tsdf_map, bump(tsdf_map, (5, 5))))
    assert not update.full and {c.marker_id for c in update.chunks} == ids((2, 2, 0))
    # block (4, 4) is read by blocks (3..4, 3..4): four chunks
    update = chunker.update(mesher, mesher.update(tsdf_map, bump(tsdf_map, (4, 4))))
    assert {c.marker_id for c in update.chunks} == ids((1, 1, 0), (1, 2, 0), (2, 1, 0), (2, 2, 0))
    assert all(c.mesh is not None for c in update.chunks)
    # nothing changed: nothing to send
    assert chunker.update(mesher, mesher.update(tsdf_map, np.zeros((0, 3)))).is_empty


def test_changes_accumulate_between_takes():
    tsdf_map = plane_map()
    mesher, chunker = IncrementalMesher(), small_chunks()
    chunker.update(mesher, mesher.rebuild(tsdf_map))
    chunker.mark_changed(mesher, mesher.update(tsdf_map, bump(tsdf_map, (5, 5))))
    chunker.mark_changed(mesher, mesher.update(tsdf_map, bump(tsdf_map, (1, 1))))
    update = chunker.take_changes(mesher)
    assert {c.marker_id for c in update.chunks} == ids((0, 0, 0), (2, 2, 0))
    assert chunker.take_changes(mesher).is_empty


def test_emptied_chunks_are_deleted():
    tsdf_map = plane_map()
    mesher, chunker, viewer = IncrementalMesher(), small_chunks(), Viewer()
    viewer.apply(chunker.update(mesher, mesher.rebuild(tsdf_map)))
    # clearing blocks (0..1, 0..1) empties chunk (0, 0); their readers lie in chunks with x or y = -1: none
    cleared = tsdf_map.clear_voxels_in_box([0, 0, 0], [15, 15, B]).touched_blocks
    update = chunker.update(mesher, mesher.update(tsdf_map, cleared))
    assert [(c.coord, c.mesh) for c in update.chunks] == [((0, 0, 0), None)]
    viewer.apply(update)
    # removing blocks (6..7, 6..7) empties chunk (3, 3) and re-meshes the seams of the chunks beside it
    removed = tsdf_map.remove_blocks(grid((6, 6, 0), (7, 7, 0))).touched_blocks
    update = chunker.update(mesher, mesher.update(tsdf_map, removed))
    deleted = {c.marker_id for c in update.chunks if c.mesh is None}
    resent = {c.marker_id for c in update.chunks if c.mesh is not None}
    assert deleted == ids((3, 3, 0)) and resent == ids((2, 2, 0), (2, 3, 0), (3, 2, 0))
    viewer.apply(update)
    assert len(viewer.markers) == 14 and chunker.num_chunks == 14
    np.testing.assert_array_equal(triangles(viewer.mesh()), triangles(extract_mesh(tsdf_map, weld=False)))


def test_a_chunk_that_appears_and_vanishes_between_takes_is_not_sent():
    tsdf_map = plane_map()
    mesher, chunker = IncrementalMesher(), MeshChunker()
    chunker.update(mesher, mesher.rebuild(tsdf_map))
    far = grid((200, 0, 0), (207, 7, 8))
    chunker.mark_changed(mesher, mesher.update(tsdf_map, tsdf_map.set_voxels(
        far, np.clip((far[:, 2] * VS - PLANE_Z) / TRUNC, -1, 1)).touched_blocks))
    chunker.mark_changed(mesher, mesher.update(tsdf_map, tsdf_map.remove_blocks(far // B).touched_blocks))
    assert chunker.take_changes(mesher).is_empty


def test_ids_are_stable_and_full_resends_clear_the_viewer():
    tsdf_map = plane_map()
    mesher, chunker = IncrementalMesher(), small_chunks()
    first = chunker.update(mesher, mesher.rebuild(tsdf_map))
    by_coord = {c.coord: c.marker_id for c in first.chunks}
    assert all(by_coord[c] == int(chunk_marker_id(np.array([c]))[0]) for c in by_coord)
    chunker.update(mesher, mesher.update(tsdf_map, bump(tsdf_map, (5, 5))))
    full = chunker.all_chunks(mesher)
    assert full.full and {c.coord: c.marker_id for c in full.chunks} == by_coord
    chunker.reset()  # e.g. the map was reset or replaced: the next take is full, ids unchanged
    again = chunker.update(IncrementalMesher(), IncrementalMesher().rebuild(tsdf_map))
    assert again.full


def test_marker_ids_are_int32_and_collision_free_within_the_documented_window():
    rng = np.random.default_rng(0)
    origin = np.array([-5000, 123456, -700])  # any window: ids wrap, they do not saturate
    window = origin + np.stack([rng.integers(0, n, 200000) for n in (2048, 2048, 1024)], axis=1)
    window = np.unique(window, axis=0)
    marker_ids = chunk_marker_id(window)
    assert len(np.unique(marker_ids)) == len(window)
    assert marker_ids.min() >= -(2**31) and marker_ids.max() < 2**31
    # the documented wrap: a whole window apart collides
    assert chunk_marker_id(np.array([[1, 2, 3], [1 + 2048, 2 - 2048, 3 + 1024]])).tolist() == [
        int(chunk_marker_id(np.array([[1, 2, 3]]))[0])] * 2
    neighbours = np.array([[0, 0, 0], [-1, 0, 0], [0, -1, 0], [0, 0, -1], [1, 1, 1]])
    assert len(set(chunk_marker_id(neighbours).tolist())) == 5


def test_chunk_meshes_carry_the_mesher_colours():
    tsdf_map = plane_map()
    mesher, chunker = IncrementalMesher(), MeshChunker()
    update = chunker.update(mesher, mesher.rebuild(tsdf_map))
    for chunk in update.chunks:
        assert chunk.mesh is not None and chunk.mesh.vertex_colors is not None
        assert chunk.mesh.vertex_colors.shape == (len(chunk.mesh.vertices), 3)


def test_transform_mesh_and_bad_chunk_size():
    mesh = Mesh(np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32), np.array([[0, 1, 2]]),
                vertex_normals=np.array([[1.0, 0, 0]] * 3, np.float32))
    T = np.array([[0.0, -1, 0, 1], [1, 0, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1]])
    moved = transform_mesh(mesh, T)
    np.testing.assert_allclose(moved.vertices, [[1, 3, 3], [0, 2, 3], [1, 2, 4]])
    np.testing.assert_allclose(moved.vertex_normals, [[0, 1, 0]] * 3)
    assert transform_mesh(mesh, np.eye(4)) is mesh
    for bad in (0, -2, 1.5, True):
        with pytest.raises(MeshChunkError, match="mesh_chunk_size_blocks"):
            MeshChunker(MeshChunkConfig(mesh_chunk_size_blocks=bad))
