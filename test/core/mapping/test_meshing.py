"""Meshing: exact surfaces from analytic TSDFs, orientation, seamless blocks, incremental == from scratch."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from skimage.measure import marching_cubes

from neuralrecon_ros.core.geometry import look_at
from neuralrecon_ros.core.mapping.config import MapConfig, MeshingConfig
from neuralrecon_ros.core.mapping.meshing import (
    IncrementalMesher,
    MeshingError,
    extract_mesh,
    height_colors,
)
from neuralrecon_ros.core.mapping.tsdf_map import TSDFMap
from neuralrecon_ros.core.types import CameraIntrinsics, Mesh

VS = 0.04
TRUNC = 3 * VS


def make_map() -> TSDFMap:
    return TSDFMap(MapConfig(voxel_size=VS))


def grid(lo: tuple[int, int, int], hi: tuple[int, int, int]) -> np.ndarray:
    """int64 (N, 3) every voxel index of the inclusive box [lo, hi]."""
    axes = [np.arange(a, b + 1) for a, b in zip(lo, hi)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


def set_sdf(tsdf_map: TSDFMap, coords: np.ndarray, sdf: np.ndarray) -> None:
    tsdf_map.set_voxels(coords, np.clip(sdf / TRUNC, -1, 1).astype(np.float32))


def edge_use_counts(mesh: Mesh) -> dict[tuple[int, int], int]:
    edges = np.sort(mesh.faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    unique, counts = np.unique(edges, axis=0, return_counts=True)
    return {tuple(e): c for e, c in zip(unique.tolist(), counts.tolist())}


def triangle_set(mesh: Mesh) -> np.ndarray:
    """Sorted unique triangles as vertex keys (10 µm grid), each rotated to start at its smallest key."""
    q = np.round(mesh.vertices.astype(np.float64) / 1e-5).astype(np.int64) + (1 << 18)
    keys = ((q[:, 0] << 38) | (q[:, 1] << 19) | q[:, 2])[mesh.faces]  # (F, 3)
    start = np.argmin(keys, axis=1)
    rotated = np.stack([keys[np.arange(len(keys)), (start + i) % 3] for i in range(3)], axis=1)
    return np.unique(rotated, axis=0)


def assert_same_triangles(a: Mesh, b: Mesh) -> None:
    np.testing.assert_array_equal(triangle_set(a), triangle_set(b))


def test_skimage_mask_gates_each_cell_by_its_upper_corner():
    """meshing relies on this: mask[c + 1] switches cell c on (scikit-image's Lewiner implementation)."""
    volume = np.random.default_rng(0).standard_normal((4, 4, 4)).astype(np.float32)
    for cell in itertools.product(range(3), repeat=3):
        mask = np.zeros(volume.shape, bool)
        mask[tuple(np.array(cell) + 1)] = True
        corners = volume[cell[0]:cell[0] + 2, cell[1]:cell[1] + 2, cell[2]:cell[2] + 2]
        if corners.min() >= 0 or corners.max() < 0:
            continue
        verts, faces, _, _ = marching_cubes(volume, 0.0, mask=mask)
        assert (np.floor(verts[faces].mean(axis=1)).astype(int) == cell).all()


def test_sphere_is_exact_closed_and_outward():
    """A sphere over 8+ blocks (negative and positive coordinates) meshes into one closed surface."""
    tsdf_map = make_map()
    center, radius = np.array([0.013, -0.021, 0.007]), 0.45
    coords = grid((-16, -16, -16), (16, 16, 16))
    sdf = np.linalg.norm(coords * VS - center, axis=1) - radius
    set_sdf(tsdf_map, coords, sdf)
    mesh = extract_mesh(tsdf_map)
    assert len(mesh.faces) > 1000
    distance = np.linalg.norm(mesh.vertices - center, axis=1) - radius
    assert np.abs(distance).max() < 0.002  # linear interpolation of an exact SDF: far below a voxel
    # watertight: every edge shared by exactly two triangles, i.e. no seams between blocks
    assert set(edge_use_counts(mesh).values()) == {2}
    v = mesh.vertices.astype(np.float64)
    f = mesh.faces
    face_normals = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    outward = v[mesh.faces].mean(axis=1) - center
    assert ((face_normals * outward).sum(axis=1) > 0).all()
    assert ((mesh.vertex_normals * (v - center)).sum(axis=1) > 0).all()
    area = np.linalg.norm(face_normals, axis=1).sum() / 2
    assert area == pytest.approx(4 * np.pi * radius**2, rel=0.01)


def test_tilted_plane_over_many_blocks_has_no_gaps():
    tsdf_map = make_map()
    slope = np.array([0.2, -0.1])
    coords = grid((-25, -25, -20), (25, 25, 30))
    p = coords * VS
    normal = np.array([-slope[0], -slope[1], 1.0]) / np.linalg.norm([slope[0], slope[1], 1.0])
    sdf = (p[:, 2] - 0.31 - p[:, :2] @ slope) * normal[2]
    keep = np.abs(sdf) < 2 * TRUNC  # only a band is observed, like real fusion
    set_sdf(tsdf_map, coords[keep], sdf[keep])
    assert tsdf_map.num_blocks > 40
    mesh = extract_mesh(tsdf_map)
    v = mesh.vertices.astype(np.float64)
    area = np.linalg.norm(np.cross(v[mesh.faces[:, 1]] - v[mesh.faces[:, 0]],
                                   v[mesh.faces[:, 2]] - v[mesh.faces[:, 0]]), axis=1).sum() / 2
    # the observed cells cover x, y in [-1, 1]: the mesh is that piece of the plane, exactly
    assert area == pytest.approx(4.0 / normal[2], rel=1e-4)
    # the only open edges are on the outer boundary x = ±1 or y = ±1
    open_edges = np.array([e for e, c in edge_use_counts(mesh).items() if c == 1])
    assert set(edge_use_counts(mesh).values()) <= {1, 2}
    ends = v[open_edges]  # (E, 2, 3)
    on_border = (np.abs(np.abs(ends[..., 0]) - 1.0) < 1e-5).all(axis=1) | (
        np.abs(np.abs(ends[..., 1]) - 1.0) < 1e-5).all(axis=1)
    assert on_border.all()
    assert (mesh.vertex_normals[:, 2] > 0).all()  # normals point to positive TSDF (above the plane)


def test_unobserved_corners_produce_no_triangles():
    tsdf_map = make_map()
    coords = grid((0, 0, 0), (7, 7, 7))
    set_sdf(tsdf_map, coords, (coords[:, 2] * VS - 0.1))  # plane z = 0.1, inside one block
    full = extract_mesh(tsdf_map)
    # the block's +x/+y neighbours are unallocated: only cells with lower corner 0..6 in x and y mesh
    assert len(full.faces) == 7 * 7 * 2
    tsdf_map.set_voxels(np.array([[3, 3, 2]]), np.array([1.0], np.float32), np.array([0.0], np.float32))
    holed = extract_mesh(tsdf_map)
    assert len(holed.faces) == len(full.faces) - 4 * 2  # the 4 crossing cells around that voxel vanish


def random_blobs(tsdf_map: TSDFMap, rng: np.random.Generator, n: int) -> np.ndarray:
    """Write n random spheres (SDF band) into the map; returns the touched blocks."""
    touched = []
    for _ in range(n):
        center = rng.uniform(-1.0, 1.0, 3)
        radius = rng.uniform(0.1, 0.4)
        lo = np.floor((center - radius - TRUNC) / VS).astype(int)
        hi = np.ceil((center + radius + TRUNC) / VS).astype(int)
        coords = grid(tuple(lo), tuple(hi))
        sdf = np.linalg.norm(coords * VS - center, axis=1) - radius
        keep = np.abs(sdf) < TRUNC
        update = tsdf_map.set_voxels(coords[keep], np.clip(sdf[keep] / TRUNC, -1, 1).astype(np.float32))
        touched.append(update.touched_blocks)
    return np.concatenate(touched)


def test_incremental_mesh_equals_from_scratch():
    rng = np.random.default_rng(7)
    tsdf_map = make_map()
    mesher = IncrementalMesher()
    for step in range(6):
        if step == 3:
            touched = tsdf_map.clear_voxels_in_box([-10, -10, -10], [5, 7, 3]).touched_blocks
        elif step == 4:
            touched = tsdf_map.remove_blocks(tsdf_map.block_coords()[::5]).touched_blocks
        else:
            touched = random_blobs(tsdf_map, rng, 3)
        changed = mesher.update(tsdf_map, touched)
        assert len(changed) > 0
        incremental, scratch = mesher.mesh(), extract_mesh(tsdf_map)
        assert len(incremental.faces) == len(scratch.faces) > 0
        assert_same_triangles(incremental, scratch)
        unwelded = mesher.mesh(weld=False)
        assert_same_triangles(unwelded, scratch)
    # rebuild agrees too and reports no change
    again = IncrementalMesher()
    again.rebuild(tsdf_map)
    assert_same_triangles(again.mesh(), mesher.mesh())


def test_update_touches_only_the_neighbourhood():
    tsdf_map = make_map()
    coords = grid((-40, -40, -4), (40, 40, 4))
    set_sdf(tsdf_map, coords, coords[:, 2] * VS - 0.013)
    mesher = IncrementalMesher()
    mesher.rebuild(tsdf_map)
    before = {tuple(b): mesher.block_mesh(b) for b in mesher.block_coords().tolist()}
    # change one voxel in block (1, 1, 0): only blocks (1|0, 1|0, 0|-1) may change
    update = tsdf_map.set_voxels(np.array([[9, 9, 0]]), np.array([0.5], np.float32))
    changed = mesher.update(tsdf_map, update.touched_blocks)
    allowed = {(1 - a, 1 - b, -c) for a in (0, 1) for b in (0, 1) for c in (0, 1)}
    assert 0 < len(changed) and {tuple(c) for c in changed.tolist()} <= allowed
    for key, old in before.items():
        if key not in allowed:
            new = mesher.block_mesh(key)
            np.testing.assert_array_equal(new.vertices, old.vertices)
    assert mesher.update(tsdf_map, np.zeros((0, 3), np.int64)).shape == (0, 3)


def test_height_and_image_colours():
    tsdf_map = make_map()
    coords = grid((-8, -8, -8), (15, 15, 80))
    set_sdf(tsdf_map, coords, np.abs(coords[:, 0] * VS - 0.1) - 0.05)  # a slab: vertical walls up to 3.2 m
    config = MeshingConfig(mesh_height_min_m=0.0, mesh_height_max_m=3.0)
    mesh = extract_mesh(tsdf_map, config)
    expected = height_colors(mesh.vertices[:, 2], 0.0, 3.0)
    np.testing.assert_array_equal(mesh.vertex_colors, expected)
    low, high = height_colors(np.array([-1.0, 5.0]), 0.0, 3.0)
    assert tuple(low) != tuple(high)
    assert extract_mesh(tsdf_map, MeshingConfig(mesh_color_mode="none")).vertex_colors is None
    with pytest.raises(MeshingError, match="colour"):
        extract_mesh(tsdf_map, MeshingConfig(mesh_color_mode="image"))

    # image colours: a wall fused from an RGB-D frame carries the image colour
    K = CameraIntrinsics(100.0, 100.0, 79.5, 59.5, 160, 120)
    fused = make_map()
    depth = np.full((120, 160), 1.5, np.float32)
    image = np.zeros((120, 160, 3), np.uint8)
    image[:] = (200, 100, 50)
    eye = np.array([0.3, 0.2, 1.0])
    fused.integrate_depth(depth, K, look_at(eye, eye + np.array([1.0, 0.0, 0.0])), image)
    mesh = extract_mesh(fused)
    assert len(mesh.faces) > 100
    assert (mesh.vertex_colors == [200, 100, 50]).all()
    np.testing.assert_allclose(mesh.vertices[:, 0], 1.8, atol=1e-5)


def test_empty_map_gives_empty_mesh():
    assert extract_mesh(make_map()).is_empty
    with pytest.raises(MeshingError):
        IncrementalMesher(MeshingConfig(mesh_color_mode="rainbow"))


def test_cell_interior_vertices_of_ambiguous_cases_keep_their_place():
    """A noise TSDF is full of Lewiner's ambiguous cells, whose extra vertex lies inside the cell (off the
    grid along several axes, on no edge): every vertex must still be where scikit-image puts it."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(3)
    coords = grid((0, 0, 0), (13, 13, 13))  # crosses block borders
    values = rng.uniform(-1, 1, len(coords)).astype(np.float32)
    tsdf_map = make_map()
    tsdf_map.set_voxels(coords, values)
    mesh = extract_mesh(tsdf_map)
    dense = values.reshape(14, 14, 14)
    reference, _, _, _ = marching_cubes(dense, level=0.0)
    interior = (reference != np.floor(reference)).sum(axis=1) >= 2
    assert interior.sum() > 10  # the case under test occurs
    ours = mesh.vertices.astype(np.float64) / VS
    assert np.isfinite(ours).all()
    for a, b in ((ours, reference), (reference, ours)):
        distance, _ = cKDTree(b).query(a)
        assert distance.max() < 1e-4
