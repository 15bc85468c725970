"""Seamless, incremental marching-cubes meshing of the sparse TSDF map.

Ownership rule: block ``b`` meshes the cells whose lower corner is one of its voxels. Those cells reach
one voxel layer into the blocks at ``b + (0|1, 0|1, 0|1)``, so each block is meshed from a padded
``(B+1)^3`` copy of itself plus those 7 neighbours' first layers. Every cell is meshed by exactly one
block and shared faces see the same voxel values, so the per-block meshes join without seams or
duplicate triangles. A cell with any unobserved corner (weight <= ``mesh_min_weight``; unallocated
neighbours count as unobserved) produces no triangles.

Incremental rule: a change to block ``t`` can alter the meshes of the blocks ``t - (0|1, 0|1, 0|1)``
(the ones whose padding reads ``t``), so :class:`IncrementalMesher` re-meshes exactly those, and the
cost of an update scales with the number of touched blocks.

Marching cubes is scikit-image's (Lewiner). Many blocks go into one call: their padded volumes are laid
out side by side in one volume and the cells that would straddle two of them are masked out; vertex
positions are then recomputed exactly from their edge's two TSDF values. Triangles are
wound so their normals point out of the surface into free space (positive TSDF).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from skimage.measure import marching_cubes

from ..types import Mesh
from .config import MeshingConfig
from .keys import pack_keys, unpack_keys
from .tsdf_map import TSDFMap

#: the 8 offsets (0|1, 0|1, 0|1), self first
CORNER_OFFSETS = np.array(list(itertools.product((0, 1), repeat=3)), dtype=np.int64)

#: anchor colours of the height colour map (hand-picked: deep blue -> cyan -> green -> yellow -> red)
_HEIGHT_ANCHORS = np.array(
    [[40, 30, 140], [30, 140, 230], [40, 200, 110], [240, 210, 50], [210, 50, 30]], dtype=np.float64)

_COLOR_MODES = ("auto", "image", "height", "none")


class MeshingError(ValueError):
    """The meshing configuration or its input is invalid."""


@dataclass
class BlockMesh:
    """The triangles owned by one block: map-frame metres, faces indexing this block's vertices."""

    vertices: np.ndarray  # float32 (V, 3)
    faces: np.ndarray  # int32 (F, 3)
    colors: np.ndarray | None  # uint8 (V, 3)

    def to_mesh(self) -> Mesh:
        return Mesh(self.vertices, self.faces.astype(np.int64), self.colors)


def height_colors(z: np.ndarray, z_min: float, z_max: float) -> np.ndarray:
    """uint8 (N, 3) colours of heights ``z`` on a fixed colour ramp from ``z_min`` to ``z_max``."""
    span = max(z_max - z_min, 1e-9)
    s = np.clip((np.asarray(z, np.float64) - z_min) / span, 0.0, 1.0) * (len(_HEIGHT_ANCHORS) - 1)
    i = np.minimum(s.astype(np.int64), len(_HEIGHT_ANCHORS) - 2)
    f = (s - i)[:, None]
    return np.round(_HEIGHT_ANCHORS[i] * (1.0 - f) + _HEIGHT_ANCHORS[i + 1] * f).astype(np.uint8)


def mesh_blocks(
    tsdf_map: TSDFMap,
    block_coords: np.ndarray,
    config: MeshingConfig | None = None,
    max_blocks_per_call: int = 2048,
) -> dict[int, BlockMesh]:
    """Mesh the cells owned by the given blocks; returns {packed block key: mesh} for blocks with triangles.

    Unallocated blocks in ``block_coords`` are skipped.
    """
    config = config if config is not None else MeshingConfig()
    color_mode = _resolve_color_mode(config, tsdf_map)
    coords = np.asarray(block_coords, dtype=np.int64).reshape(-1, 3)
    coords = coords[tsdf_map.lookup_blocks(coords).cpu().numpy() >= 0]
    result: dict[int, BlockMesh] = {}
    for start in range(0, len(coords), max_blocks_per_call):
        chunk = coords[start:start + max_blocks_per_call]
        result.update(_mesh_chunk(tsdf_map, chunk, config, color_mode))
    return result


def extract_mesh(tsdf_map: TSDFMap, config: MeshingConfig | None = None, weld: bool = True) -> Mesh:
    """The whole map's mesh, from scratch."""
    mesher = IncrementalMesher(config)
    mesher.rebuild(tsdf_map)
    return mesher.mesh(weld=weld)


class IncrementalMesher:
    """A per-block mesh cache that re-meshes only what a map update can have changed."""

    def __init__(self, config: MeshingConfig | None = None) -> None:
        self.config = config if config is not None else MeshingConfig()
        if self.config.mesh_color_mode not in _COLOR_MODES:
            raise MeshingError(
                f"mesh_color_mode must be one of {_COLOR_MODES}, got {self.config.mesh_color_mode!r}")
        self._blocks: dict[int, BlockMesh] = {}
        self._mesh_cache: dict[bool, Mesh] = {}

    @property
    def num_blocks(self) -> int:
        """Blocks that currently own triangles."""
        return len(self._blocks)

    @property
    def num_faces(self) -> int:
        return sum(len(b.faces) for b in self._blocks.values())

    def block_coords(self) -> np.ndarray:
        """int64 (K, 3) coordinates of the blocks that own triangles (sorted)."""
        return unpack_keys(np.array(sorted(self._blocks), dtype=np.int64))

    def block_mesh(self, block_coord: np.ndarray | tuple[int, int, int]) -> Mesh | None:
        """The triangles owned by one block, or None if it owns none."""
        key = int(pack_keys(np.asarray(block_coord, dtype=np.int64).reshape(1, 3))[0])
        block = self._blocks.get(key)
        return None if block is None else block.to_mesh()

    def reset(self) -> None:
        self._blocks.clear()
        self._mesh_cache.clear()

    def update(self, tsdf_map: TSDFMap, touched_blocks: np.ndarray) -> np.ndarray:
        """Re-mesh after the map changed in ``touched_blocks`` (int (K, 3), allocated or removed).

        Returns int64 (C, 3) the blocks whose triangles changed, appeared or disappeared.
        """
        touched = np.asarray(touched_blocks, dtype=np.int64).reshape(-1, 3)
        if len(touched) == 0:
            return np.zeros((0, 3), np.int64)
        candidates = np.unique((touched[:, None, :] - CORNER_OFFSETS[None]).reshape(-1, 3), axis=0)
        return self._remesh(tsdf_map, candidates)

    def rebuild(self, tsdf_map: TSDFMap) -> np.ndarray:
        """Re-mesh every block of ``tsdf_map`` from scratch; returns the blocks whose triangles changed."""
        previous = unpack_keys(np.array(list(self._blocks), dtype=np.int64))
        candidates = np.unique(np.concatenate([previous, tsdf_map.block_coords()]), axis=0)
        return self._remesh(tsdf_map, candidates)

    def _remesh(self, tsdf_map: TSDFMap, candidates: np.ndarray) -> np.ndarray:
        meshed = mesh_blocks(tsdf_map, candidates, self.config)
        changed = []
        for key in pack_keys(candidates).tolist():
            old = self._blocks.pop(key, None)
            new = meshed.get(key)
            if new is not None:
                self._blocks[key] = new
            if old is not None or new is not None:
                changed.append(key)
        if changed:
            self._mesh_cache.clear()
        return unpack_keys(np.array(changed, dtype=np.int64))

    def mesh(self, weld: bool = True) -> Mesh:
        """All blocks' triangles in one mesh (blocks in key order), with area-weighted vertex normals.

        ``weld`` merges the vertices that neighbouring blocks both create on their shared faces (they are
        bit-identical by construction) and drops triangles that collapse.
        """
        cached = self._mesh_cache.get(weld)
        if cached is not None:
            return cached
        blocks = [self._blocks[key] for key in sorted(self._blocks)]
        if not blocks:
            return Mesh()
        sizes = np.array([len(b.vertices) for b in blocks])
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        vertices = np.concatenate([b.vertices for b in blocks])
        faces = np.concatenate([b.faces.astype(np.int64) + o for b, o in zip(blocks, offsets)])
        colors = None if blocks[0].colors is None else np.concatenate([b.colors for b in blocks])
        if weld:
            rows = np.ascontiguousarray(vertices).view(np.dtype((np.void, vertices.itemsize * 3))).ravel()
            _, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
            vertices = vertices[first]
            colors = None if colors is None else colors[first]
            faces = inverse.reshape(-1)[faces]
            keep = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
            faces = faces[keep]
        mesh = Mesh(vertices, faces, colors, vertex_normals(vertices, faces))
        self._mesh_cache[weld] = mesh
        return mesh


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """float32 (V, 3) area-weighted unit vertex normals (zero for vertices without faces)."""
    v = vertices.astype(np.float64)
    face_normals = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
    index = faces.reshape(-1)
    normals = np.stack(
        [np.bincount(index, np.repeat(face_normals[:, k], 3), minlength=len(v)) for k in range(3)], axis=1)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return (normals / np.maximum(length, 1e-30)).astype(np.float32)


def _resolve_color_mode(config: MeshingConfig, tsdf_map: TSDFMap) -> str:
    mode = config.mesh_color_mode
    if mode not in _COLOR_MODES:
        raise MeshingError(f"mesh_color_mode must be one of {_COLOR_MODES}, got {mode!r}")
    if mode == "auto":
        return "image" if tsdf_map.has_color else "height"
    if mode == "image" and not tsdf_map.has_color:
        raise MeshingError("mesh_color_mode 'image' needs a map with colour; integrate colour images first")
    return mode


@torch.no_grad()
def _padded_blocks(
    tsdf_map: TSDFMap, coords: np.ndarray, with_color: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(tsdf, weight, colour) of each block plus its +x/+y/+z neighbours' first layers: (K, B+1, B+1, B+1)."""
    B, K, device = tsdf_map.block_size, len(coords), tsdf_map.device
    shape = (K, B + 1, B + 1, B + 1)
    tsdf = torch.ones(shape, dtype=torch.float32, device=device)
    weight = torch.zeros(shape, dtype=torch.float32, device=device)
    color = torch.zeros((*shape, 3), dtype=torch.uint8, device=device) if with_color else None
    coords_t = torch.as_tensor(coords, device=device)
    sources = [tsdf_map.blocks_tsdf, tsdf_map.blocks_weight, tsdf_map.blocks_color]
    targets = [tsdf, weight, color]
    for offset in CORNER_OFFSETS:
        slots = tsdf_map.lookup_blocks(coords_t + torch.as_tensor(offset, device=device))
        hit = (slots >= 0).nonzero().squeeze(1)
        if len(hit) == 0:
            continue
        # own block fills [0, B) on an axis; a +1 neighbour supplies its layer 0 at index B
        src = tuple(slice(0, B) if o == 0 else slice(0, 1) for o in offset)
        dst = tuple(slice(0, B) if o == 0 else slice(B, B + 1) for o in offset)
        for source, target in zip(sources, targets):
            if target is not None and source is not None:
                target[(hit, *dst)] = source[(slice(None), *src)][slots[hit]]
    return tsdf.cpu().numpy(), weight.cpu().numpy(), None if color is None else color.cpu().numpy()


def _mesh_chunk(
    tsdf_map: TSDFMap, coords: np.ndarray, config: MeshingConfig, color_mode: str
) -> dict[int, BlockMesh]:
    B = tsdf_map.block_size
    P = B + 1
    tsdf, weight, color = _padded_blocks(tsdf_map, coords, with_color=color_mode == "image")
    observed = weight > config.mesh_min_weight
    cell_ok = np.ones((len(coords), B, B, B), dtype=bool)
    for ox, oy, oz in CORNER_OFFSETS:
        cell_ok &= observed[:, ox:ox + B, oy:oy + B, oz:oz + B]
    # only blocks whose usable cells see both signs can hold a surface
    negative, nonnegative = tsdf < 0.0, tsdf >= 0.0
    usable = np.zeros_like(observed)
    for ox, oy, oz in CORNER_OFFSETS:
        usable[:, ox:ox + B, oy:oy + B, oz:oz + B] |= cell_ok
    keep = (cell_ok.any(axis=(1, 2, 3)) & (usable & negative).any(axis=(1, 2, 3))
            & (usable & nonnegative).any(axis=(1, 2, 3)))
    if not keep.any():
        return {}
    coords, tsdf, cell_ok = coords[keep], tsdf[keep], cell_ok[keep]
    color = None if color is None else color[keep]
    K = len(coords)
    # skimage gates cell c by mask[c + 1] (checked in test_meshing); index 0 of each padded block stays
    # False, which also masks the cells straddling two neighbouring blocks of the arrangement below
    mask = np.zeros((K, P, P, P), dtype=bool)
    mask[:, 1:, 1:, 1:] = cell_ok
    # lay the padded blocks out as a near-cubic 3D arrangement: small coordinates keep float32 exact
    n = max(1, round(K ** (1.0 / 3.0)))
    layout = (n, n, -(-K // (n * n)))
    try:
        verts, faces, _, _ = marching_cubes(
            _arrange(tsdf, layout, 1.0), level=0.0, mask=_arrange(mask, layout, False))
    except RuntimeError:  # "no surface found"
        return {}
    if len(faces) == 0:
        return {}
    block, local, edge = _exact_vertices(verts, tsdf, layout)
    world = ((coords[block] * B).astype(np.float64) + local) * tsdf_map.voxel_size
    vertices = world.astype(np.float32)
    if color_mode == "image":
        assert color is not None
        a, b, t = edge  # colour varies linearly along the vertex's edge, like the TSDF
        ca = color[block, a[:, 0], a[:, 1], a[:, 2]].astype(np.float64)
        cb = color[block, b[:, 0], b[:, 1], b[:, 2]].astype(np.float64)
        colors: np.ndarray | None = np.round(ca + t[:, None] * (cb - ca)).astype(np.uint8)
    elif color_mode == "height":
        colors = height_colors(world[:, 2], config.mesh_height_min_m, config.mesh_height_max_m)
    else:
        colors = None
    return _split_by_block(coords, block, vertices, faces.astype(np.int64), colors)


def _arrange(blocks: np.ndarray, layout: tuple[int, int, int], fill: float | bool) -> np.ndarray:
    """(K, P, P, P) padded blocks -> one (nx*P, ny*P, nz*P) volume, block i at slot (i // (ny nz), ...)."""
    K, P = blocks.shape[0], blocks.shape[1]
    nx, ny, nz = layout
    slots = np.full((nx * ny * nz, P, P, P), fill, dtype=blocks.dtype)
    slots[:K] = blocks
    return slots.reshape(nx, ny, nz, P, P, P).transpose(0, 3, 1, 4, 2, 5).reshape(nx * P, ny * P, nz * P)


def _exact_vertices(
    verts: np.ndarray, tsdf: np.ndarray, layout: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Block index (V,), float64 local voxel coordinates (V, 3) and edge (a, b, t) of marching-cubes vertices.

    Vertices are recomputed from the TSDF values of their edge ``a -> b`` (padded-block voxel indices,
    int64 (V, 3)) as ``a + t`` with ``t = va / (va - vb)``, so a vertex that two blocks create on their
    shared face is bit-identical in both (scikit-image's float32 positions depend on where a block sits
    in the arrangement). ``t`` within 1e-5 of 0 or 1 snaps to the grid point, which keeps that true where
    float32 cannot resolve the offset. Vertices on grid points, and the cell-interior vertices of Lewiner's
    ambiguous cases (kept where skimage put them), have ``a == b``, ``t = 0``.
    """
    P = tsdf.shape[1]
    _, ny, nz = layout
    slot = np.floor(verts / P).astype(np.int64)
    block = (slot[:, 0] * ny + slot[:, 1]) * nz + slot[:, 2]
    local = verts.astype(np.float64) - slot * P
    a = np.floor(local).astype(np.int64)
    off_grid = local != a  # skimage's integer coordinates are exact
    # an edge vertex is off the grid along one axis; Lewiner's ambiguous cases add vertices inside a cell
    # (off the grid along several axes), which no other block shares: those keep skimage's position
    on_edge = off_grid.sum(axis=1) == 1
    rows, axis = np.nonzero(off_grid & on_edge[:, None])
    b = a.copy()
    b[rows, axis] += 1
    va = tsdf[block[rows], a[rows, 0], a[rows, 1], a[rows, 2]].astype(np.float64)
    vb = tsdf[block[rows], b[rows, 0], b[rows, 1], b[rows, 2]].astype(np.float64)
    frac = va / (va - vb)  # a crossing edge: va and vb differ in sign
    t = np.zeros(len(verts))
    t[rows] = np.where(frac < 1e-5, 0.0, np.where(frac > 1.0 - 1e-5, 1.0, frac))
    exact = np.where(on_edge[:, None], a.astype(np.float64), local)
    exact[rows, axis] += t[rows]
    return block, exact, (a, b, t)


def _split_by_block(
    coords: np.ndarray, block: np.ndarray, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None
) -> dict[int, BlockMesh]:
    """Cut one marching-cubes result into per-block meshes (no vertex is shared between blocks)."""
    K = len(coords)
    order = np.argsort(block, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    faces = rank[faces]
    face_block = block[order][faces[:, 0]]
    face_order = np.argsort(face_block, kind="stable")
    faces, face_block = faces[face_order], face_block[face_order]
    vertices = vertices[order]
    colors = None if colors is None else colors[order]
    v_count = np.bincount(block, minlength=K)
    f_count = np.bincount(face_block, minlength=K)
    v_start = np.concatenate([[0], np.cumsum(v_count)])
    f_start = np.concatenate([[0], np.cumsum(f_count)])
    keys = pack_keys(coords).tolist()
    result = {}
    for k in np.flatnonzero(f_count).tolist():
        v0, v1, f0, f1 = v_start[k], v_start[k + 1], f_start[k], f_start[k + 1]
        result[keys[k]] = BlockMesh(
            vertices[v0:v1].copy(),
            (faces[f0:f1] - v0).astype(np.int32),
            None if colors is None else colors[v0:v1].copy(),
        )
    return result
