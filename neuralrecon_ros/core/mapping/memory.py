"""Bounded map memory: a clearing radius around the robot and a hard cap on allocated blocks.

:class:`MapMemoryManager` runs after every map update (the pipeline calls :meth:`~MapMemoryManager.enforce`
with the position of ``map_clearing_frame``, the camera by default) and applies, in order:

1. **Clearing radius** (``map_clearing_radius_m`` > 0): every block whose centre is farther than the
   radius from the position leaves the map. It is dropped, or with ``map_clearing_offload`` moved to a
   :class:`HostBlockStore` (CPU tensors) and moved back when the position comes within the radius of its
   centre again (nearest first, never beyond the cap). Offloading keeps the *map* (the device tensors that
   integration, meshing and the planner products work on) small; the host store itself is not bounded,
   so on a CPU-only machine offloading moves memory rather than saving it.
2. **Block cap** (``max_allocated_blocks`` > 0): if the map holds more blocks than the cap, the blocks
   farthest from the position are evicted (dropped, or offloaded with ``map_clearing_offload``) until it
   holds exactly the cap: new observations always win over old, distant ones, so the map keeps working
   where the robot is. The cap holds between updates; one update may allocate its own blocks beyond it
   before they are counted. Reaching the cap logs one warning; another is logged only after the map has
   fallen below 90 % of the cap again (hysteresis, so hovering at the cap does not flood the log).

A block that is observed again while its older copy is offloaded exists twice; whenever the two meet
(offloading the new copy, or restoring the old one) they are merged voxel by voxel as a weighted average
of TSDF and colour with summed weights, which is exactly depth fusion's running average.

The manager returns the blocks it removed or restored as a :class:`~..reconstructor.MapUpdate`, so the
mesher re-meshes them (removed blocks lose their triangles; their neighbours' seams are redone).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import param
from ..reconstructor import MapUpdate
from .keys import pack_keys
from .tsdf_map import TSDFMap

log = logging.getLogger("neuralrecon_ros")

#: the cap warning re-arms once the map holds fewer blocks than this fraction of the cap
CAP_REARM_FRACTION = 0.9


class MemoryBoundsError(ValueError):
    """A memory-bound parameter or argument is invalid."""


@dataclass
class MemoryBoundsConfig:
    map_clearing_radius_m: float = param(
        0.0, "Blocks whose centre is farther than this from map_clearing_frame leave the map after each "
        "update (0 = keep everything).", minimum=0.0, unit="m")
    map_clearing_frame: str = param(
        "", "TF frame whose origin centres the clearing radius and the block-cap eviction; '' = the camera "
        "(the images' frame). A robot would use base_link.")
    map_clearing_offload: bool = param(
        False, "Move blocks that leave the map (clearing radius or cap) to host memory instead of dropping "
        "them, and restore them when map_clearing_frame comes back within the radius.")
    max_allocated_blocks: int = param(
        0, "Hard cap on map blocks (0 = unlimited). At the cap the blocks farthest from map_clearing_frame "
        "are evicted (offloaded with map_clearing_offload) and a warning is logged once per crossing.",
        minimum=0)


@dataclass
class BlockData:
    """Whole blocks: coords int64 (K, 3); CPU tensors tsdf and weight (K, B, B, B), colour (K, B, B, B, 3)."""

    coords: np.ndarray
    tsdf: torch.Tensor
    weight: torch.Tensor
    color: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.coords)

    def select(self, rows: np.ndarray) -> BlockData:
        index = torch.as_tensor(rows, dtype=torch.int64)
        return BlockData(self.coords[rows], self.tsdf[index], self.weight[index],
                         None if self.color is None else self.color[index])


def merge_blocks(a: BlockData, b: BlockData) -> BlockData:
    """Voxel-wise weighted average of two copies of the same blocks (rows aligned); weights add up.

    Where neither copy observed a voxel it stays unobserved (TSDF 1). Colour averages over the copies
    that have colour.
    """
    weight = a.weight + b.weight
    safe = torch.where(weight > 0, weight, torch.ones((), dtype=weight.dtype))
    tsdf = torch.where(weight > 0, (a.tsdf * a.weight + b.tsdf * b.weight) / safe, torch.ones(()))
    color = a.color if b.color is None else b.color
    if a.color is not None and b.color is not None:
        wa, wb = a.weight[..., None], b.weight[..., None]
        mixed = (a.color.float() * wa + b.color.float() * wb) / safe[..., None]
        color = mixed.round_().clamp_(0, 255).to(torch.uint8)
    return BlockData(a.coords, tsdf, weight, color)


def union_blocks(a: BlockData, b: BlockData) -> BlockData:
    """All blocks of ``a`` and ``b`` (``a``'s order, then ``b``'s new ones); a block in both is merged."""
    if len(b) == 0:
        return a
    B = a.tsdf.shape[1] if len(a) else b.tsdf.shape[1]

    def colors(blocks: BlockData) -> torch.Tensor | None:  # colour for all or none
        if blocks.color is not None or (a.color is None and b.color is None):
            return blocks.color
        return torch.zeros((len(blocks), B, B, B, 3), dtype=torch.uint8)

    a = BlockData(a.coords, a.tsdf.clone(), a.weight.clone(), colors(a))
    b = BlockData(b.coords, b.tsdf, b.weight, colors(b))
    row_of = {key: row for row, key in enumerate(pack_keys(a.coords).tolist())}
    rows = np.array([row_of.get(key, -1) for key in pack_keys(b.coords).tolist()], dtype=np.int64)
    shared = np.flatnonzero(rows >= 0)
    if len(shared):
        merged = merge_blocks(a.select(rows[shared]), b.select(shared))
        index = torch.as_tensor(rows[shared])
        a.tsdf[index], a.weight[index] = merged.tsdf, merged.weight
        if a.color is not None and merged.color is not None:
            a.color = a.color.clone()
            a.color[index] = merged.color
    new = b.select(np.flatnonzero(rows < 0))
    return BlockData(np.concatenate([a.coords, new.coords]), torch.cat([a.tsdf, new.tsdf]),
                     torch.cat([a.weight, new.weight]),
                     None if a.color is None or new.color is None else torch.cat([a.color, new.color]))


def read_blocks(tsdf_map: TSDFMap, coords: np.ndarray) -> BlockData:
    """Copies (CPU) of the given allocated blocks of ``tsdf_map``."""
    slots = tsdf_map.lookup_blocks(coords)
    if bool((slots < 0).any()):
        raise MemoryBoundsError("read_blocks was given blocks that are not allocated")
    color = tsdf_map.blocks_color
    return BlockData(np.asarray(coords, np.int64).reshape(-1, 3), tsdf_map.blocks_tsdf[slots].cpu(),
                     tsdf_map.blocks_weight[slots].cpu(), None if color is None else color[slots].cpu())


def write_blocks(tsdf_map: TSDFMap, blocks: BlockData) -> None:
    """Allocate ``blocks`` in ``tsdf_map`` and overwrite them whole; blocks already allocated are merged
    with the map's copy (see :func:`merge_blocks`)."""
    if len(blocks) == 0:
        return
    present = (tsdf_map.lookup_blocks(blocks.coords) >= 0).cpu().numpy()
    if present.any():
        rows = np.flatnonzero(present)
        merged = merge_blocks(read_blocks(tsdf_map, blocks.coords[rows]), blocks.select(rows))
        index = torch.as_tensor(rows)
        blocks = BlockData(blocks.coords, blocks.tsdf.clone(), blocks.weight.clone(),
                           None if blocks.color is None else blocks.color.clone())
        blocks.tsdf[index], blocks.weight[index] = merged.tsdf, merged.weight
        if blocks.color is not None and merged.color is not None:
            blocks.color[index] = merged.color
    B, device = tsdf_map.block_size, tsdf_map.device
    # allocation through the public API: one unobserved voxel per block, overwritten right below
    n = len(blocks)
    tsdf_map.set_voxels(blocks.coords * B, np.ones(n, np.float32), np.zeros(n, np.float32))
    slots = tsdf_map.lookup_blocks(blocks.coords)
    tsdf_map.blocks_tsdf[slots] = blocks.tsdf.to(device)
    tsdf_map.blocks_weight[slots] = blocks.weight.to(device)
    color = tsdf_map.blocks_color
    if color is not None:  # (a map without colour never gave colour to its offloaded blocks)
        color[slots] = (torch.zeros((n, B, B, B, 3), dtype=torch.uint8) if blocks.color is None
                        else blocks.color).to(device)


def block_centres(tsdf_map: TSDFMap, coords: torch.Tensor | np.ndarray) -> torch.Tensor:
    """float64 (N, 3) map-frame centres (metres) of blocks, on the device of ``coords``."""
    coords_t = torch.as_tensor(coords)
    B = tsdf_map.block_size
    return (coords_t.to(torch.float64) * B + (B - 1) / 2.0) * tsdf_map.voxel_size


class HostBlockStore:
    """Offloaded blocks in host memory: a pool of CPU tensor slots and a block key -> slot table."""

    def __init__(self, block_size: int) -> None:
        self.block_size = int(block_size)
        self.clear()

    def clear(self) -> None:
        B = self.block_size
        self._slot_of: dict[int, int] = {}
        self._free: list[int] = []
        self._coords = np.zeros((0, 3), np.int64)
        self._live = np.zeros(0, bool)
        self._tsdf = torch.ones((0, B, B, B))
        self._weight = torch.zeros((0, B, B, B))
        self._color: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self._slot_of)

    def memory_bytes(self) -> int:
        tensors = [self._tsdf, self._weight] + ([] if self._color is None else [self._color])
        return int(sum(t.numel() * t.element_size() for t in tensors) + self._coords.nbytes)

    def coords(self) -> np.ndarray:
        """int64 (N, 3) coordinates of the stored blocks."""
        return self._coords[self._live]

    def put(self, blocks: BlockData) -> None:
        """Store ``blocks``; a block already stored is merged with the stored copy."""
        if len(blocks) == 0:
            return
        keys = pack_keys(blocks.coords).tolist()
        existing = [self._slot_of.get(k, -1) for k in keys]
        old_rows = np.array([i for i, s in enumerate(existing) if s >= 0], dtype=np.int64)
        if len(old_rows):
            old_slots = torch.as_tensor([existing[i] for i in old_rows.tolist()], dtype=torch.int64)
            stored = BlockData(blocks.coords[old_rows], self._tsdf[old_slots], self._weight[old_slots],
                               None if self._color is None else self._color[old_slots])
            merged = merge_blocks(stored, blocks.select(old_rows))
            self._write(old_slots, merged)
        new_rows = np.array([i for i, s in enumerate(existing) if s < 0], dtype=np.int64)
        if len(new_rows):
            slots = self._allocate(len(new_rows))
            self._coords[slots] = blocks.coords[new_rows]
            self._live[slots] = True
            for row, slot in zip(new_rows.tolist(), slots.tolist()):
                self._slot_of[keys[row]] = slot
            self._write(torch.as_tensor(slots), blocks.select(new_rows))

    def take(self, coords: np.ndarray) -> BlockData:
        """Remove the given stored blocks (all must be stored) and return them."""
        coords = np.asarray(coords, np.int64).reshape(-1, 3)
        try:
            slots = [self._slot_of.pop(k) for k in pack_keys(coords).tolist()]
        except KeyError:
            raise MemoryBoundsError("take() was given a block that is not stored") from None
        index = torch.as_tensor(slots, dtype=torch.int64)
        blocks = BlockData(coords, self._tsdf[index].clone(), self._weight[index].clone(),
                           None if self._color is None else self._color[index].clone())
        self._live[slots] = False
        self._free.extend(slots)
        return blocks

    def state(self) -> BlockData:
        """Copies of every stored block."""
        slots = np.flatnonzero(self._live)
        index = torch.as_tensor(slots)
        return BlockData(self._coords[slots], self._tsdf[index].clone(), self._weight[index].clone(),
                         None if self._color is None else self._color[index].clone())

    def _write(self, slots: torch.Tensor, blocks: BlockData) -> None:
        self._tsdf[slots] = blocks.tsdf.to(torch.float32)
        self._weight[slots] = blocks.weight.to(torch.float32)
        if blocks.color is not None and self._color is None:
            self._color = torch.zeros((*self._tsdf.shape, 3), dtype=torch.uint8)
        if self._color is not None:
            self._color[slots] = 0 if blocks.color is None else blocks.color

    def _allocate(self, n: int) -> np.ndarray:
        """``n`` free slots (the pool grows geometrically when it runs out: amortised O(1) per block)."""
        if len(self._free) < n:
            start = len(self._live)
            grow = max(n - len(self._free), start, 64)
            B = self.block_size
            self._coords = np.concatenate([self._coords, np.zeros((grow, 3), np.int64)])
            self._live = np.concatenate([self._live, np.zeros(grow, bool)])
            self._tsdf = torch.cat([self._tsdf, torch.ones((grow, B, B, B))])
            self._weight = torch.cat([self._weight, torch.zeros((grow, B, B, B))])
            if self._color is not None:
                self._color = torch.cat([self._color, torch.zeros((grow, B, B, B, 3), dtype=torch.uint8)])
            self._free.extend(range(start + grow - 1, start - 1, -1))  # lowest slots are handed out first
        slots = self._free[len(self._free) - n:]
        del self._free[len(self._free) - n:]
        return np.asarray(slots, dtype=np.int64)


class MapMemoryManager:
    """Applies :class:`MemoryBoundsConfig` to a map after each update (see the module docstring)."""

    def __init__(self, config: MemoryBoundsConfig | None = None) -> None:
        self.config = config if config is not None else MemoryBoundsConfig()
        radius, cap = self.config.map_clearing_radius_m, self.config.max_allocated_blocks
        if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not (
                math.isfinite(radius) and radius >= 0):
            raise MemoryBoundsError(f"map_clearing_radius_m must be a finite number >= 0, got {radius!r}")
        if isinstance(cap, bool) or not isinstance(cap, (int, np.integer)) or cap < 0:
            raise MemoryBoundsError(f"max_allocated_blocks must be an integer >= 0, got {cap!r}")
        self.radius_m = float(radius)
        self.max_blocks = int(cap)
        self.offload = bool(self.config.map_clearing_offload)
        self.store: HostBlockStore | None = None
        self.reset()

    @property
    def active(self) -> bool:
        """Whether :meth:`enforce` can do anything (a radius or a cap is set)."""
        return self.radius_m > 0 or self.max_blocks > 0

    def reset(self) -> None:
        """Forget offloaded blocks and counters (the map was reset or replaced)."""
        if self.store is not None:
            self.store.clear()
        self.store = None
        self.at_cap = False
        self.cap_warnings = 0
        self.cleared_blocks = 0  # left the map through the clearing radius
        self.evicted_blocks = 0  # left the map through the cap
        self.restored_blocks = 0  # came back from the host store

    def status(self) -> dict[str, Any]:
        """Counters for diagnostics."""
        return {
            "at_cap": self.at_cap, "cap_warnings": self.cap_warnings, "cleared_blocks": self.cleared_blocks,
            "evicted_blocks": self.evicted_blocks, "restored_blocks": self.restored_blocks,
            "offloaded_blocks": self.num_offloaded,
        }

    @property
    def num_offloaded(self) -> int:
        return 0 if self.store is None else len(self.store)

    def offloaded(self, block_size: int) -> BlockData:
        """Copies of the offloaded blocks (empty without offloading)."""
        return (self.store or HostBlockStore(block_size)).state()

    @torch.no_grad()
    def enforce(self, tsdf_map: TSDFMap, position_m: np.ndarray | list[float]) -> MapUpdate:
        """Apply the radius and the cap around ``position_m`` (map frame, metres); returns the blocks
        removed from or restored to the map."""
        if not self.active:
            return MapUpdate()
        position = np.asarray(position_m, dtype=np.float64).reshape(-1)
        if position.shape != (3,) or not np.isfinite(position).all():
            raise MemoryBoundsError(f"position_m must be 3 finite numbers, got {position_m!r}")
        changed: list[np.ndarray] = []
        if self.radius_m > 0:
            far = self._blocks_beyond(tsdf_map, position, self.radius_m)
            self.cleared_blocks += len(far)
            changed.append(self._remove(tsdf_map, far))
            if self.store is not None and len(self.store):
                changed.append(self._restore(tsdf_map, position))
        if self.max_blocks > 0:
            changed.append(self._apply_cap(tsdf_map, position))
        touched = np.concatenate(changed) if changed else np.zeros((0, 3), np.int64)
        return MapUpdate(np.unique(touched, axis=0) if len(touched) else touched.reshape(0, 3))

    def _blocks_beyond(self, tsdf_map: TSDFMap, position: np.ndarray, radius: float) -> np.ndarray:
        coords = tsdf_map.block_coords_tensor()
        if len(coords) == 0:
            return np.zeros((0, 3), np.int64)
        origin = torch.as_tensor(position, dtype=torch.float64, device=coords.device)
        distance = torch.linalg.vector_norm(block_centres(tsdf_map, coords) - origin, dim=1)
        return coords[distance > radius].cpu().numpy()

    def _remove(self, tsdf_map: TSDFMap, coords: np.ndarray) -> np.ndarray:
        """Drop or offload ``coords`` (allocated blocks) from the map."""
        if len(coords) == 0:
            return coords.reshape(0, 3)
        if self.offload:
            if self.store is None:
                self.store = HostBlockStore(tsdf_map.block_size)
            self.store.put(read_blocks(tsdf_map, coords))
        return tsdf_map.remove_blocks(coords).touched_blocks

    def _restore(self, tsdf_map: TSDFMap, position: np.ndarray) -> np.ndarray:
        assert self.store is not None
        stored = self.store.coords()
        distance = np.linalg.norm(block_centres(tsdf_map, stored).numpy() - position, axis=1)
        near = np.flatnonzero(distance <= self.radius_m)
        if self.max_blocks > 0:  # restore nearest first and only into free room: no restore/evict churn
            room = max(self.max_blocks - tsdf_map.num_blocks, 0)
            near = near[np.argsort(distance[near], kind="stable")[:room]]
        if len(near) == 0:
            return np.zeros((0, 3), np.int64)
        blocks = self.store.take(stored[near])
        write_blocks(tsdf_map, blocks)
        self.restored_blocks += len(blocks)
        return blocks.coords

    def _apply_cap(self, tsdf_map: TSDFMap, position: np.ndarray) -> np.ndarray:
        count = tsdf_map.num_blocks
        if count < CAP_REARM_FRACTION * self.max_blocks:
            self.at_cap = False
        if count <= self.max_blocks:
            return np.zeros((0, 3), np.int64)
        if not self.at_cap:
            self.at_cap = True
            self.cap_warnings += 1
            log.warning(
                "map reached max_allocated_blocks = %d (%d blocks after the last update): evicting the "
                "blocks farthest from the clearing frame (%s); raise the cap or set map_clearing_radius_m to "
                "keep the map smaller [logged again only after the map falls below %d%% of the cap]",
                self.max_blocks, count, "offloaded to host memory" if self.offload else "dropped",
                round(CAP_REARM_FRACTION * 100))
        coords = tsdf_map.block_coords_tensor()
        origin = torch.as_tensor(position, dtype=torch.float64, device=coords.device)
        distance = torch.linalg.vector_norm(block_centres(tsdf_map, coords) - origin, dim=1)
        farthest = torch.argsort(distance, descending=True, stable=True)[: count - self.max_blocks]
        evicted = coords[farthest].cpu().numpy()
        self.evicted_blocks += len(evicted)
        return self._remove(tsdf_map, evicted)
