"""Mesh chunks: the per-block mesh cache grouped into fixed cubes of blocks, for incremental display.

A chunk is a cube of ``C x C x C`` blocks (``C = mesh_chunk_size_blocks``): chunk ``c`` holds the blocks
``c * C .. c * C + C - 1`` per axis, and its mesh is the concatenation of those blocks' meshes (as the
:class:`~.meshing.IncrementalMesher` caches them: map frame, no welding across blocks). A viewer keeps one
marker per chunk and only the chunks whose blocks changed are sent again, so the cost of an update
scales with what changed, not with the map.

Marker ids (:func:`chunk_marker_id`): the chunk coordinate packed into 32 bits, 11 bits for x, 11 for y
and 10 for z, each taken modulo its range (two's complement wrap), as a signed int32. Two chunks get the
same id only if their coordinates differ by a multiple of 2048 on x or y, or 1024 on z. So ids are
collision-free for any map spanning fewer than 2048 x 2048 x 1024 chunks: with the default 4-block chunks
of 8 x 0.04 m blocks (1.28 m) that is 2.6 km x 2.6 km x 1.3 km, wherever the map lies. Ids depend on the
coordinate only, so they are stable across updates, restarts and saved maps.

:class:`MeshChunker` records which blocks own triangles in which chunk as the mesher reports changes
(cheap), and builds chunk meshes only when asked (:meth:`MeshChunker.take_changes`), so meshing can run
more often than publishing without losing a change.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..config import param
from ..types import Mesh
from .keys import pack_keys, unpack_keys

if TYPE_CHECKING:  # only for annotations: reading MeshChunkConfig does not load scikit-image
    from .meshing import IncrementalMesher

#: bits per axis of a chunk marker id (x, y, z); 32 in total
ID_BITS = (11, 11, 10)


class MeshChunkError(ValueError):
    """A chunk parameter or argument is invalid."""


@dataclass
class MeshChunkConfig:
    mesh_chunk_size_blocks: int = param(
        4, "Blocks per side of a mesh chunk, the unit of incremental mesh output (one TRIANGLE_LIST "
        "marker per chunk; only changed chunks are re-sent).", minimum=1, maximum=64)


@dataclass(frozen=True)
class ChunkMesh:
    """One chunk's state to show: its mesh (map frame), or None when it became empty (delete it)."""

    coord: tuple[int, int, int]
    marker_id: int
    mesh: Mesh | None


@dataclass
class ChunkUpdate:
    """Chunks to (re)draw or delete. ``full``: ``chunks`` lists every non-empty chunk and a viewer should
    drop every chunk it holds first (after a reset, a map load, or a full resend on request)."""

    chunks: list[ChunkMesh] = field(default_factory=list)
    full: bool = False

    @property
    def is_empty(self) -> bool:
        return not self.chunks and not self.full

    @property
    def num_deleted(self) -> int:
        return sum(chunk.mesh is None for chunk in self.chunks)


def chunk_marker_id(chunk_coords: np.ndarray) -> np.ndarray:
    """int64 (N,) marker ids (values in the int32 range) of int (N, 3) chunk coordinates; see module doc."""
    coords = np.asarray(chunk_coords, dtype=np.int64).reshape(-1, 3)
    bx, by, bz = ID_BITS
    packed = ((coords[:, 0] & ((1 << bx) - 1)) << (by + bz)) | ((coords[:, 1] & ((1 << by) - 1)) << bz) | (
        coords[:, 2] & ((1 << bz) - 1))
    return np.where(packed >= 1 << 31, packed - (1 << 32), packed)


def transform_mesh(mesh: Mesh, T_to_from: np.ndarray) -> Mesh:
    """``mesh`` with vertices and normals mapped by the rigid ``T_to_from`` (the same object if identity)."""
    T = np.asarray(T_to_from, dtype=np.float64)
    if np.array_equal(T, np.eye(4)):
        return mesh
    R, t = T[:3, :3], T[:3, 3]
    normals = mesh.vertex_normals
    return dataclasses.replace(
        mesh,
        vertices=(mesh.vertices.astype(np.float64) @ R.T + t).astype(np.float32),
        vertex_normals=None if normals is None else (normals.astype(np.float64) @ R.T).astype(np.float32),
    )


class MeshChunker:
    """Groups an :class:`IncrementalMesher`'s per-block meshes into chunks and tracks which changed."""

    def __init__(self, config: MeshChunkConfig | None = None) -> None:
        self.config = config if config is not None else MeshChunkConfig()
        size = self.config.mesh_chunk_size_blocks
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise MeshChunkError(f"mesh_chunk_size_blocks must be an integer >= 1, got {size!r}")
        self.chunk_size = int(size)
        self.reset()

    def reset(self) -> None:
        """Forget every chunk; the next :meth:`take_changes` is a full update (a viewer clears first)."""
        self._members: dict[int, set[int]] = {}  # chunk key -> keys of its blocks that own triangles
        self._dirty: set[int] = set()  # chunk keys changed since the last take
        self._shown: set[int] = set()  # chunk keys non-empty at the last take (what a viewer holds)
        self._full_pending = True

    @property
    def num_chunks(self) -> int:
        """Chunks that currently hold triangles."""
        return len(self._members)

    def chunk_of(self, block_coords: np.ndarray) -> np.ndarray:
        """int64 (N, 3) chunk coordinates of int (N, 3) block coordinates."""
        return np.floor_divide(np.asarray(block_coords, dtype=np.int64).reshape(-1, 3), self.chunk_size)

    def mark_changed(self, mesher: IncrementalMesher, changed_blocks: np.ndarray) -> None:
        """Note blocks whose triangles changed (what :meth:`IncrementalMesher.update` returns)."""
        blocks = np.asarray(changed_blocks, dtype=np.int64).reshape(-1, 3)
        if len(blocks) == 0:
            return
        block_keys = pack_keys(blocks).tolist()
        chunk_keys = pack_keys(self.chunk_of(blocks)).tolist()
        for block, coord, chunk in zip(block_keys, blocks, chunk_keys):
            members = self._members.get(chunk)
            if mesher.block_mesh(coord) is not None:
                if members is None:
                    members = self._members[chunk] = set()
                members.add(block)
            elif members is not None:
                members.discard(block)
                if not members:
                    del self._members[chunk]
            self._dirty.add(chunk)

    def take_changes(self, mesher: IncrementalMesher) -> ChunkUpdate:
        """The chunks changed since the last take (or since :meth:`reset`: a full update), then forget them.

        A chunk that emptied is returned with ``mesh=None`` only if it was non-empty at the last take.
        """
        if self._full_pending:
            return self.all_chunks(mesher)
        chunks = []
        for chunk in sorted(self._dirty):
            if chunk in self._members:
                chunks.append(self._chunk(mesher, chunk))
                self._shown.add(chunk)
            elif chunk in self._shown:
                self._shown.discard(chunk)
                chunks.append(self._chunk(mesher, chunk))
        self._dirty.clear()
        return ChunkUpdate(chunks)

    def update(self, mesher: IncrementalMesher, changed_blocks: np.ndarray) -> ChunkUpdate:
        """:meth:`mark_changed` then :meth:`take_changes`."""
        self.mark_changed(mesher, changed_blocks)
        return self.take_changes(mesher)

    def all_chunks(self, mesher: IncrementalMesher) -> ChunkUpdate:
        """Every non-empty chunk (a full resend: ``full=True``); pending changes are included and cleared."""
        chunks = [self._chunk(mesher, chunk) for chunk in sorted(self._members)]
        self._shown = set(self._members)
        self._dirty.clear()
        self._full_pending = False
        return ChunkUpdate(chunks, full=True)

    def _chunk(self, mesher: IncrementalMesher, chunk: int) -> ChunkMesh:
        x, y, z = (int(v) for v in unpack_keys(np.array([chunk], dtype=np.int64))[0])
        marker_id = int(chunk_marker_id(np.array([[x, y, z]]))[0])
        members = self._members.get(chunk)
        if not members:
            return ChunkMesh((x, y, z), marker_id, None)
        blocks = unpack_keys(np.array(sorted(members), dtype=np.int64))
        meshes = [mesher.block_mesh(block) for block in blocks]
        return ChunkMesh((x, y, z), marker_id, concatenate_meshes([m for m in meshes if m is not None]))


def concatenate_meshes(meshes: list[Mesh]) -> Mesh:
    """One mesh holding every face of ``meshes`` (vertices not merged; colours kept if all have them)."""
    if not meshes:
        return Mesh()
    offsets = np.cumsum([0] + [len(m.vertices) for m in meshes[:-1]])
    vertices = np.concatenate([m.vertices for m in meshes]).astype(np.float32, copy=False)
    faces = np.concatenate([m.faces.astype(np.int64) + o for m, o in zip(meshes, offsets)])
    with_colors = all(m.vertex_colors is not None for m in meshes)
    colors = np.concatenate([m.vertex_colors for m in meshes]) if with_colors else None  # type: ignore[misc]
    return Mesh(vertices, faces, colors)
