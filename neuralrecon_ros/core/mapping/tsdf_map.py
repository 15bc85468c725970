"""The global sparse TSDF map: voxel blocks allocated on demand, stored as dense torch tensors.

Geometry (NeuralRecon's convention): global voxel index ``v`` (int64 (3,)) sits at map-frame position
``v * voxel_size`` (grid points, no half-voxel offset); block ``b`` holds voxels ``b * B .. b * B + B - 1``
per axis (``B = block_size``). The map frame's origin is voxel 0.

Storage (slot ``s`` = row of every tensor; rows ``0 .. num_blocks - 1`` are live, the rest is spare
capacity):

- ``_keys`` int64 (capacity,): packed block coordinate of each slot (:mod:`.keys`).
- ``_tsdf`` float32 (capacity, B, B, B): signed distance / truncation, in [-1, 1]; indexed [slot, x, y, z].
- ``_weight`` float32 (capacity, B, B, B): 0 = never observed (the TSDF value is then 1 = empty).
- ``_color`` uint8 (capacity, B, B, B, 3) RGB, allocated the first time colour is integrated.

Block lookup is a sorted key table (``_sorted_keys`` + matching ``_sorted_slots``) searched with
``torch.searchsorted``: one vectorised call for any number of queries, identical on CPU and CUDA. New
blocks are appended to the storage and merged into the table (O(M) int64 moves, no re-sort); freed blocks
are refilled with the last live blocks and their entries re-pointed, so neither integration nor removal
copies the voxel data of the whole map. We chose this over a torch linear-probing hash because it has no
load-factor tuning or collision loops, and its cost (O(log M) per query, O(M) on 8-byte keys per
allocation) is small next to the per-voxel work of integration (``bench/bench_map_scale.py``).

The class is not thread-safe; one owner (the pipeline) calls it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry import check_rigid
from ..reconstructor import MapUpdate
from ..types import CameraIntrinsics
from .allocation import band_blocks
from .config import MapConfig
from .keys import check_block_range, pack_keys, unpack_keys

#: blocks fused per pass of :meth:`TSDFMap._fuse` (2^16 voxels of 8^3 blocks): the per-voxel temporaries
#: stay in the CPU's cache and the allocator reuses them instead of page-faulting fresh memory every pass
#: (faster than one pass over all blocks, and than smaller chunks, measured at VGA / 4 cm)
FUSE_CHUNK_BLOCKS = 128
#: smallest valid depth: 0 means 'no reading' even when min_depth_m is 0
_SMALLEST_DEPTH = float(np.finfo(np.float32).tiny)


class MapInputError(ValueError):
    """An argument given to the map (depth image, colour, voxel arrays, state) is malformed."""


class TSDFMap:
    """Sparse block-hashed TSDF volume with projective depth integration and direct voxel access."""

    def __init__(self, config: MapConfig | None = None, device: str | torch.device = "cpu") -> None:
        self.config = config if config is not None else MapConfig()
        if not self.config.voxel_size > 0 or not math.isfinite(self.config.voxel_size):
            raise MapInputError(f"voxel_size must be a positive number, got {self.config.voxel_size!r}")
        if int(self.config.block_size) != self.config.block_size or self.config.block_size < 2:
            raise MapInputError(f"block_size must be an integer >= 2, got {self.config.block_size!r}")
        if not self.config.truncation_distance_vox >= 1.0:
            raise MapInputError(
                f"truncation_distance_vox must be >= 1, got {self.config.truncation_distance_vox!r}")
        self.device = torch.device(device)
        self.voxel_size = float(self.config.voxel_size)
        self.block_size = int(self.config.block_size)
        self.truncation_m = float(self.config.truncation_distance_vox) * self.voxel_size
        B = self.block_size
        grid = torch.meshgrid(*(torch.arange(B, device=self.device),) * 3, indexing="ij")
        #: (B^3, 3) local voxel offsets in storage order (x slowest, z fastest)
        self._local = torch.stack([g.reshape(-1) for g in grid], dim=1)
        #: (B^3,) flat voxel index inside a block, same order
        self._voxel_index = torch.arange(B**3, device=self.device)
        self.reset()

    # ------------------------------------------------------------------ bookkeeping

    def reset(self) -> None:
        """Drop every block and release the storage."""
        B, dev = self.block_size, self.device
        self._num = 0
        self._keys = torch.zeros(0, dtype=torch.int64, device=dev)
        self._tsdf = torch.ones((0, B, B, B), dtype=torch.float32, device=dev)
        self._weight = torch.zeros((0, B, B, B), dtype=torch.float32, device=dev)
        self._color: torch.Tensor | None = None
        self._sorted_keys = torch.zeros(0, dtype=torch.int64, device=dev)
        self._sorted_slots = torch.zeros(0, dtype=torch.int64, device=dev)

    @property
    def num_blocks(self) -> int:
        return self._num

    @property
    def has_color(self) -> bool:
        return self._color is not None

    @property
    def capacity(self) -> int:
        return int(self._keys.shape[0])

    def memory_bytes(self) -> int:
        """Bytes held by the map's tensors (including spare capacity)."""
        tensors = [self._keys, self._tsdf, self._weight, self._sorted_keys, self._sorted_slots]
        if self._color is not None:
            tensors.append(self._color)
        return int(sum(t.numel() * t.element_size() for t in tensors))

    def block_coords(self) -> np.ndarray:
        """int64 (M, 3) coordinates of the allocated blocks, in slot order."""
        return self.block_coords_tensor().cpu().numpy()

    def block_coords_tensor(self) -> torch.Tensor:
        """int64 (M, 3) coordinates of the allocated blocks on the map's device, in slot order."""
        return unpack_keys(self._keys[: self._num])

    @property
    def blocks_tsdf(self) -> torch.Tensor:
        """Live view (M, B, B, B) of the normalised TSDF of the allocated blocks, in slot order."""
        return self._tsdf[: self._num]

    @property
    def blocks_weight(self) -> torch.Tensor:
        """Live view (M, B, B, B) of the integration weights, in slot order."""
        return self._weight[: self._num]

    @property
    def blocks_color(self) -> torch.Tensor | None:
        """Live view (M, B, B, B, 3) uint8 of the voxel colours, or None when no colour was integrated."""
        return None if self._color is None else self._color[: self._num]

    def lookup_blocks(self, block_coords: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Slots (int64 (N,), on the map's device) of the given block coordinates; -1 where unallocated."""
        coords = self._as_coords(block_coords, "block_coords")
        if len(coords) == 0 or self._num == 0:
            return torch.full((len(coords),), -1, dtype=torch.int64, device=self.device)
        check_block_range(coords)
        return self._lookup_keys(pack_keys(coords))

    # ------------------------------------------------------------------ depth integration

    @torch.no_grad()
    def integrate_depth(
        self,
        depth: np.ndarray | torch.Tensor,
        intrinsics: CameraIntrinsics,
        T_map_camera: np.ndarray,
        color: np.ndarray | torch.Tensor | None = None,
        max_depth_m: float = 5.0,
        min_depth_m: float = 0.1,
        max_weight: float = 100.0,
    ) -> MapUpdate:
        """Fuse one depth image (float32 metres (H, W), 0/NaN invalid) by projective TSDF integration.

        Blocks covering the truncation band ``depth ± truncation`` of every valid pixel are allocated
        (conservatively, see :mod:`.allocation`);
        every voxel of those blocks is projected into the image (nearest pixel, pixel centres at integer
        coordinates) and, where ``sdf = depth(pixel) - z_voxel >= -truncation``, its TSDF
        ``clamp(sdf / truncation, -1, 1)`` joins a running average with weight 1 per observation; the
        weight is capped at ``max_weight`` so old observations fade. Colour (RGB uint8 (H, W, 3)) is
        averaged alongside. Returns the blocks that received at least one observation.
        """
        depth_t = self._depth_tensor(depth, intrinsics)
        color_t = None if color is None else self._color_tensor(color, depth_t.shape)
        T = check_rigid(T_map_camera, "T_map_camera")
        if not 0.0 <= min_depth_m < max_depth_m:
            raise MapInputError(f"need 0 <= min_depth_m < max_depth_m, got {min_depth_m} and {max_depth_m}")
        if not max_weight >= 1.0:
            raise MapInputError(f"max_weight must be >= 1, got {max_weight}")
        # valid: within [min_depth_m, max_depth_m] (clamping changes the others; NaN stays NaN, which
        # compares unequal) and not 0 (no reading) even if min_depth_m is 0; invalid pixels become -inf,
        # which neither spans a tile of the band nor passes ``sdf >= -truncation``
        valid = depth_t.clamp(max(min_depth_m, _SMALLEST_DEPTH), max_depth_m) == depth_t
        depth_t = torch.where(valid, depth_t, -math.inf)
        block_coords = band_blocks(depth_t, intrinsics, T, self.truncation_m, self.voxel_size * self.block_size)
        if len(block_coords) == 0:
            return MapUpdate(frames_integrated=1)
        check_block_range(block_coords)
        first_new = self._num
        slots = self._allocate_keys(pack_keys(block_coords))
        if color_t is not None and self._color is None:
            self._color = torch.zeros((*self._tsdf.shape, 3), dtype=torch.uint8, device=self.device)
        observed = self._fuse(slots, block_coords, depth_t, color_t, intrinsics, T, float(max_weight))
        unobserved_new = (slots >= first_new) & ~observed
        if bool(unobserved_new.any()):  # the band's bounding boxes over-cover a little: free those blocks
            self._free_slots(slots[unobserved_new])
        return MapUpdate(block_coords[observed].cpu().numpy(), frames_integrated=1)

    def _fuse(
        self,
        slots: torch.Tensor,
        block_coords: torch.Tensor,
        depth: torch.Tensor,
        color: torch.Tensor | None,
        intrinsics: CameraIntrinsics,
        T_map_camera: np.ndarray,
        max_weight: float,
    ) -> torch.Tensor:
        """Projective update of every voxel of ``slots``; returns bool (K,) 'block got an observation'.

        ``depth`` is -inf at invalid pixels.
        """
        B, vs = self.block_size, self.voxel_size
        R = torch.as_tensor(T_map_camera[:3, :3], dtype=torch.float64, device=self.device)
        t = torch.as_tensor(T_map_camera[:3, 3], dtype=torch.float64, device=self.device)
        # camera coordinates R^T (p - t) as block origin (float64: far from the origin) + local offset,
        # which also avoids a (K*B^3, 3) matmul; kept as (3, K, 1) and (3, 1, B^3) planes
        origin_cam = ((block_coords.to(torch.float64) * (B * vs) - t) @ R).to(torch.float32).T[:, :, None]
        local_cam = ((self._local.to(torch.float64) * vs) @ R).to(torch.float32).T[:, None, :].contiguous()
        # a one-pixel -inf border: voxels projecting outside the image read it and fail the sdf test
        depth = F.pad(depth, (1, 1, 1, 1), value=-math.inf).view(-1)
        color = None if color is None else F.pad(color, (0, 0, 1, 1, 1, 1)).view(-1, 3)
        # blocks whose every voxel is surely in front of the camera skip that test
        in_front = origin_cam[2, :, 0] + float(local_cam[2].min()) > 1e-3
        observed = torch.empty(len(slots), dtype=torch.bool, device=self.device)
        for start in range(0, len(slots), FUSE_CHUNK_BLOCKS):
            chunk = slice(start, start + FUSE_CHUNK_BLOCKS)
            observed[chunk] = self._fuse_blocks(
                slots[chunk], origin_cam[:, chunk].contiguous(), local_cam, bool(in_front[chunk].all()), depth,
                color, intrinsics, max_weight)
        return observed

    def _fuse_blocks(
        self,
        slots: torch.Tensor,
        origin_cam: torch.Tensor,
        local_cam: torch.Tensor,
        in_front: bool,
        depth: torch.Tensor,
        color: torch.Tensor | None,
        intrinsics: CameraIntrinsics,
        max_weight: float,
    ) -> torch.Tensor:
        """:meth:`_fuse` for a few blocks (camera-frame origins (3, K, 1)); ``depth`` ((H+2) * (W+2),) and
        ``color`` ((H+2) * (W+2), 3) are the images with a one-pixel border. Per-voxel work runs on
        cache-sized temporaries, in place where possible, and the map is read and written only at the voxels
        that get an observation."""
        K, trunc, B3 = len(slots), self.truncation_m, self.block_size**3
        H, W = intrinsics.height, intrinsics.width
        x, y, z = origin_cam + local_cam  # (K, B^3) each
        if not in_front:  # behind the camera: z = inf projects to the principal point with sdf = -inf
            z.masked_fill_(z <= 1e-6, math.inf)
        u = x.div_(z).mul_(intrinsics.fx).add_(intrinsics.cx + 0.5)  # floor(u) is the nearest pixel
        v = y.div_(z).mul_(intrinsics.fy).add_(intrinsics.cy + 0.5)
        pixel = v.floor_().clamp_(-1, H).add_(1).mul_(W + 2).add_(u.floor_().clamp_(-1, W).add_(1))
        pixel = pixel.to(torch.int32).view(-1)
        sdf = depth.index_select(0, pixel).view(K, B3).sub_(z)
        update = sdf >= -trunc
        voxel = _flat_nonzero(update)  # flat (block, voxel) index into this chunk
        if len(voxel) == 0:
            return torch.zeros(K, dtype=torch.bool, device=self.device)
        index = (slots[:, None] * B3 + self._voxel_index).view(-1).index_select(0, voxel)  # flat map index
        observation = sdf.view(-1).index_select(0, voxel).div_(trunc).clamp_(max=1.0)
        weight = self._weight.view(-1).index_select(0, index)
        tsdf = self._tsdf.view(-1).index_select(0, index)
        new_weight = weight + 1.0
        self._tsdf.view(-1).index_copy_(0, index, tsdf.mul_(weight).add_(observation).div_(new_weight))
        self._weight.view(-1).index_copy_(0, index, new_weight.clamp_(max=max_weight))
        if color is not None:
            assert self._color is not None
            colors = self._color.view(-1, 3)
            seen = color.index_select(0, pixel.index_select(0, voxel)).to(torch.float32)
            w = weight[:, None].expand(-1, 3).contiguous()  # faster than broadcasting it twice
            old = colors.index_select(0, index).to(torch.float32)
            colors.index_copy_(0, index, old.mul_(w).add_(seen).div_(w.add_(1.0)).round_().to(torch.uint8))
        return update.view(torch.uint8).amax(dim=1).bool()

    # ------------------------------------------------------------------ direct voxel access

    @torch.no_grad()
    def set_voxels(
        self,
        coords: np.ndarray | torch.Tensor,
        tsdf: np.ndarray | torch.Tensor,
        weight: np.ndarray | torch.Tensor | None = None,
    ) -> MapUpdate:
        """Write TSDF values (normalised; clamped to [-1, 1]) at global voxel indices, allocating blocks.

        ``weight`` defaults to 1 (observed). If a coordinate appears twice, which value wins is unspecified.
        """
        coords_t = self._as_coords(coords, "coords")
        tsdf_t = self._as_values(tsdf, len(coords_t), "tsdf")
        weight_t = (
            torch.ones_like(tsdf_t) if weight is None else self._as_values(weight, len(coords_t), "weight"))
        if len(coords_t) == 0:
            return MapUpdate()
        if bool((weight_t < 0).any()):
            raise MapInputError("weight must be >= 0")
        blocks, flat = self._split_coords(coords_t)
        keys, inverse = torch.unique(pack_keys(blocks), return_inverse=True)
        slots = self._allocate_keys(keys)
        index = slots[inverse] * self.block_size**3 + flat
        self._tsdf.view(-1)[index] = tsdf_t.clamp(-1.0, 1.0)
        self._weight.view(-1)[index] = weight_t
        return MapUpdate(unpack_keys(keys).cpu().numpy())

    @torch.no_grad()
    def set_blocks(
        self,
        block_coords: np.ndarray | torch.Tensor,
        tsdf: np.ndarray | torch.Tensor,
        weight: np.ndarray | torch.Tensor,
        color: np.ndarray | torch.Tensor | None = None,
    ) -> MapUpdate:
        """Overwrite whole blocks (allocating them): ``tsdf`` and ``weight`` (K, B, B, B) in [-1, 1] and >= 0,
        ``color`` uint8 (K, B, B, B, 3) or None.

        Colour given to a map without colour allocates it (other blocks black, as integration does); blocks
        written without colour into a map with colour become black. Block coordinates must be unique.
        """
        coords = self._as_coords(block_coords, "block_coords")
        K, B = len(coords), self.block_size
        tsdf_t = torch.as_tensor(tsdf).to(device=self.device, dtype=torch.float32)
        weight_t = torch.as_tensor(weight).to(device=self.device, dtype=torch.float32)
        for name, value in (("tsdf", tsdf_t), ("weight", weight_t)):
            if tuple(value.shape) != (K, B, B, B):
                raise MapInputError(f"{name} has shape {tuple(value.shape)}, expected {(K, B, B, B)}")
            if not bool(torch.isfinite(value).all()):
                raise MapInputError(f"{name} contains NaN or infinite values")
        if bool((tsdf_t.abs() > 1).any()) or bool((weight_t < 0).any()):
            raise MapInputError("tsdf must lie in [-1, 1] and weight must be >= 0")
        color_t = None
        if color is not None:
            color_t = torch.as_tensor(color).to(self.device)
            if tuple(color_t.shape) != (K, B, B, B, 3) or color_t.dtype != torch.uint8:
                raise MapInputError(f"color must be uint8 of shape {(K, B, B, B, 3)}, got {color_t.dtype} "
                                    f"{tuple(color_t.shape)}")
        if K == 0:
            return MapUpdate()
        check_block_range(coords)
        keys = pack_keys(coords)
        if len(torch.unique(keys)) != K:
            raise MapInputError("block_coords lists a block more than once")
        if color_t is not None and self._color is None:
            self._color = torch.zeros((*self._tsdf.shape, 3), dtype=torch.uint8, device=self.device)
        slots = self._allocate_keys(keys)
        self._tsdf[slots] = tsdf_t
        self._weight[slots] = weight_t
        if self._color is not None:
            self._color[slots] = 0 if color_t is None else color_t
        return MapUpdate(coords.cpu().numpy())

    @torch.no_grad()
    def get_voxels(
        self, coords: np.ndarray | torch.Tensor, as_tensor: bool = False
    ) -> tuple[np.ndarray, np.ndarray] | tuple[torch.Tensor, torch.Tensor]:
        """(tsdf float32 (N,), weight float32 (N,)) at global voxel indices; unallocated -> (1, 0)."""
        coords_t = self._as_coords(coords, "coords")
        tsdf = torch.ones(len(coords_t), dtype=torch.float32, device=self.device)
        weight = torch.zeros(len(coords_t), dtype=torch.float32, device=self.device)
        if len(coords_t) and self._num:
            blocks, flat = self._split_coords(coords_t)
            slots = self._lookup_keys(pack_keys(blocks))
            hit = slots >= 0
            index = slots[hit] * self.block_size**3 + flat[hit]
            tsdf[hit] = self._tsdf.view(-1)[index]
            weight[hit] = self._weight.view(-1)[index]
        if as_tensor:
            return tsdf, weight
        return tsdf.cpu().numpy(), weight.cpu().numpy()

    @torch.no_grad()
    def clear_voxels_in_box(
        self, min_coord: np.ndarray | list[int], max_coord: np.ndarray | list[int]
    ) -> MapUpdate:
        """Mark every voxel in the inclusive voxel-index box unobserved (weight 0, TSDF 1, colour 0).

        Blocks stay allocated (see :meth:`remove_empty_blocks`). Returns the allocated blocks overlapping
        the box.
        """
        lo = torch.as_tensor(np.asarray(min_coord, dtype=np.int64).reshape(-1), device=self.device)
        hi = torch.as_tensor(np.asarray(max_coord, dtype=np.int64).reshape(-1), device=self.device)
        if lo.shape != (3,) or hi.shape != (3,):
            raise MapInputError(f"box corners must be 3 integers each, got {min_coord!r} and {max_coord!r}")
        if bool((lo > hi).any()):
            raise MapInputError(f"box min {lo.tolist()} exceeds box max {hi.tolist()} on some axis")
        if self._num == 0:
            return MapUpdate()
        B = self.block_size
        coords = self.block_coords_tensor()
        overlap = ((coords * B + B - 1 >= lo) & (coords * B <= hi)).all(dim=1)
        slots = overlap.nonzero().squeeze(1)
        if len(slots) == 0:
            return MapUpdate()
        voxels = coords[slots][:, None, :] * B + self._local[None]  # (K, B^3, 3)
        inside = ((voxels >= lo) & (voxels <= hi)).all(dim=2).reshape(len(slots), B, B, B)
        self._tsdf[slots] = torch.where(inside, torch.ones((), device=self.device), self._tsdf[slots])
        self._weight[slots] = torch.where(inside, torch.zeros((), device=self.device), self._weight[slots])
        if self._color is not None:
            self._color[slots] = torch.where(
                inside[..., None], torch.zeros((), dtype=torch.uint8, device=self.device), self._color[slots])
        return MapUpdate(coords[slots].cpu().numpy())

    @torch.no_grad()
    def voxels(
        self, min_weight: float = 0.0, as_tensor: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Voxels with weight > ``min_weight``: (coords int64 (N, 3), tsdf float32 (N,), weight float32 (N,)).

        numpy arrays, or tensors on the map's device with ``as_tensor``.
        """
        weight = self._weight[: self._num].reshape(self._num, self.block_size**3)
        slot, local = (weight > min_weight).nonzero(as_tuple=True)
        coords = self.block_coords_tensor()[slot] * self.block_size + self._local[local]
        tsdf = self._tsdf[: self._num].reshape(self._num, self.block_size**3)[slot, local]
        result = (coords, tsdf, weight[slot, local])
        if as_tensor:
            return result
        return tuple(x.cpu().numpy() for x in result)  # type: ignore[return-value]

    # ------------------------------------------------------------------ block removal

    @torch.no_grad()
    def remove_blocks(self, block_coords: np.ndarray | torch.Tensor) -> MapUpdate:
        """Free the given blocks (unallocated ones are ignored); returns the blocks actually removed."""
        slots = self.lookup_blocks(block_coords)
        slots = torch.unique(slots[slots >= 0])
        if len(slots) == 0:
            return MapUpdate()
        removed = unpack_keys(self._keys[slots])
        self._free_slots(slots)
        return MapUpdate(removed.cpu().numpy())

    @torch.no_grad()
    def remove_empty_blocks(self) -> MapUpdate:
        """Free blocks in which no voxel is observed (weight 0 everywhere); returns them."""
        empty = (self._weight[: self._num].reshape(self._num, self.block_size**3) <= 0).all(dim=1)
        return self.remove_blocks(self.block_coords_tensor()[empty])

    def _free_slots(self, slots: torch.Tensor) -> None:
        """Free the live ``slots`` (unique). The last live blocks move into the holes, so a removal copies at
        most as many blocks as it frees (not the whole map), and the index is re-pointed, not re-sorted."""
        old_num, dev = self._num, self.device
        num = old_num - len(slots)
        freed = torch.zeros(old_num, dtype=torch.bool, device=dev)
        freed[slots] = True
        holes = freed[:num].nonzero().squeeze(1)
        movers = (~freed[num:]).nonzero().squeeze(1) + num  # live blocks past the new end, one per hole
        for storage in (self._keys, self._tsdf, self._weight, self._color):
            if storage is not None:
                storage[holes] = storage[movers]
        new_slot = torch.arange(old_num, device=dev)
        new_slot[movers] = holes
        new_slot[slots] = -1
        remapped = new_slot[self._sorted_slots]
        kept = remapped >= 0
        self._sorted_keys, self._sorted_slots = self._sorted_keys[kept], remapped[kept]
        self._num = num

    # ------------------------------------------------------------------ raw state

    def state_dict(self) -> dict[str, Any]:
        """The map as plain values and CPU tensors (copies), for map files.

        Keys: ``voxel_size`` (float), ``block_size`` (int), ``truncation_distance_vox`` (float),
        ``block_coords`` int64 (M, 3), ``tsdf`` float32 (M, B, B, B), ``weight`` float32 (M, B, B, B),
        ``color`` uint8 (M, B, B, B, 3) or None. Row i of the tensors belongs to block ``block_coords[i]``.
        """
        color = self.blocks_color
        return {
            "voxel_size": self.voxel_size,
            "block_size": self.block_size,
            "truncation_distance_vox": float(self.config.truncation_distance_vox),
            "block_coords": self.block_coords_tensor().cpu().clone(),
            "tsdf": self.blocks_tsdf.cpu().clone(),
            "weight": self.blocks_weight.cpu().clone(),
            "color": None if color is None else color.cpu().clone(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: str | torch.device = "cpu") -> TSDFMap:
        """A new map with the geometry and contents of ``state`` (from :meth:`state_dict`)."""
        missing = {"voxel_size", "block_size", "truncation_distance_vox"} - set(state)
        if missing:
            raise MapInputError(f"map state lacks {sorted(missing)}")
        config = MapConfig(
            voxel_size=float(state["voxel_size"]),
            block_size=int(state["block_size"]),
            truncation_distance_vox=float(state["truncation_distance_vox"]),
        )
        tsdf_map = cls(config, device=device)
        tsdf_map.load_state_dict(state)
        return tsdf_map

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the contents with ``state``; its geometry must equal this map's."""
        missing = {"voxel_size", "block_size", "block_coords", "tsdf", "weight"} - set(state)
        if missing:
            raise MapInputError(f"map state lacks {sorted(missing)}")
        truncation = float(state.get("truncation_distance_vox", self.config.truncation_distance_vox))
        if (int(state["block_size"]) != self.block_size
                or not math.isclose(float(state["voxel_size"]), self.voxel_size, rel_tol=1e-9)
                or not math.isclose(truncation, self.config.truncation_distance_vox, rel_tol=1e-9)):
            raise MapInputError(
                f"map state has voxel_size {state['voxel_size']}, block_size {state['block_size']}, "
                f"truncation_distance_vox {truncation}; this map has {self.voxel_size}, {self.block_size}, "
                f"{self.config.truncation_distance_vox}; build the map with TSDFMap.from_state_dict")
        B = self.block_size
        coords = torch.as_tensor(state["block_coords"], dtype=torch.int64).to(self.device)
        M = len(coords)
        if coords.shape != (M, 3):
            raise MapInputError(f"block_coords must be (M, 3), got {tuple(coords.shape)}")
        expected = {"tsdf": (M, B, B, B), "weight": (M, B, B, B), "color": (M, B, B, B, 3)}
        for name, shape in expected.items():
            value = state.get(name)
            if value is not None and tuple(value.shape) != shape:
                raise MapInputError(f"map state '{name}' has shape {tuple(value.shape)}, expected {shape}")
        check_block_range(coords)
        keys = pack_keys(coords)
        if len(torch.unique(keys)) != M:
            raise MapInputError("map state lists a block coordinate more than once")
        self.reset()
        self._keys = keys.clone()
        self._tsdf = torch.as_tensor(state["tsdf"], dtype=torch.float32).to(self.device).clone()
        self._weight = torch.as_tensor(state["weight"], dtype=torch.float32).to(self.device).clone()
        if state.get("color") is not None:
            self._color = torch.as_tensor(state["color"], dtype=torch.uint8).to(self.device).clone()
        self._num = M
        self._rebuild_index()

    # ------------------------------------------------------------------ internals

    def _lookup_keys(self, keys: torch.Tensor) -> torch.Tensor:
        if self._num == 0:
            return torch.full_like(keys, -1)
        pos = torch.searchsorted(self._sorted_keys, keys).clamp_(max=self._num - 1)
        found = self._sorted_keys[pos] == keys
        return torch.where(found, self._sorted_slots[pos], torch.full_like(keys, -1))

    def _allocate_keys(self, keys: torch.Tensor) -> torch.Tensor:
        """Slots of the unique ``keys``, allocating (TSDF 1, weight 0) those not yet present."""
        slots = self._lookup_keys(keys)
        missing = slots < 0
        new_keys = keys[missing]
        n = len(new_keys)
        if n == 0:
            return slots
        start = self._num
        self._reserve(start + n)
        new_slots = torch.arange(start, start + n, device=self.device)
        self._keys[start:start + n] = new_keys
        self._tsdf[start:start + n] = 1.0
        self._weight[start:start + n] = 0.0
        if self._color is not None:
            self._color[start:start + n] = 0
        self._num = start + n
        slots[missing] = new_slots
        self._index_insert(new_keys, new_slots)
        return slots

    def _reserve(self, needed: int) -> None:
        """Grow the storage (geometrically) to hold ``needed`` blocks."""
        capacity = self.capacity
        if needed <= capacity:
            return
        new_capacity = max(needed, 2 * capacity, 64)

        def grow(old: torch.Tensor, fill: float) -> torch.Tensor:
            new = torch.full((new_capacity, *old.shape[1:]), fill, dtype=old.dtype, device=self.device)
            new[: self._num] = old[: self._num]
            return new

        self._keys = grow(self._keys, 0)
        self._tsdf = grow(self._tsdf, 1.0)
        self._weight = grow(self._weight, 0.0)
        if self._color is not None:
            self._color = grow(self._color, 0)

    def _index_insert(self, keys: torch.Tensor, slots: torch.Tensor) -> None:
        """Add ``keys`` (absent from the index) at ``slots``: a merge into the sorted table, O(M + n log n)
        instead of re-sorting all M keys."""
        order = torch.argsort(keys)
        keys, slots = keys[order], slots[order]
        total = len(self._sorted_keys) + len(keys)
        # each new key lands after the old keys below it and after the new keys before it
        position = torch.searchsorted(self._sorted_keys, keys) + torch.arange(len(keys), device=self.device)
        old = torch.ones(total, dtype=torch.bool, device=self.device)
        old[position] = False
        merged_keys = torch.empty(total, dtype=torch.int64, device=self.device)
        merged_slots = torch.empty(total, dtype=torch.int64, device=self.device)
        merged_keys[position], merged_slots[position] = keys, slots
        merged_keys[old], merged_slots[old] = self._sorted_keys, self._sorted_slots
        self._sorted_keys, self._sorted_slots = merged_keys, merged_slots

    def _rebuild_index(self) -> None:
        keys = self._keys[: self._num]
        self._sorted_keys, order = torch.sort(keys)
        self._sorted_slots = order.to(torch.int64)

    def _split_coords(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Global voxel indices -> (block coords (N, 3), flat index inside the block (N,))."""
        B = self.block_size
        blocks = torch.div(coords, B, rounding_mode="floor")
        local = coords - blocks * B
        check_block_range(blocks)
        return blocks, (local[:, 0] * B + local[:, 1]) * B + local[:, 2]

    def _as_coords(self, coords: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
        coords_t = torch.as_tensor(coords).to(self.device)
        if coords_t.ndim != 2 or coords_t.shape[1] != 3:
            raise MapInputError(f"{what} must be an (N, 3) integer array, got shape {tuple(coords_t.shape)}")
        if coords_t.dtype.is_floating_point or coords_t.dtype == torch.bool:
            raise MapInputError(f"{what} must hold integer voxel/block indices, got dtype {coords_t.dtype}")
        return coords_t.to(torch.int64)

    def _as_values(self, values: np.ndarray | torch.Tensor, n: int, what: str) -> torch.Tensor:
        values_t = torch.as_tensor(values).detach().to(device=self.device, dtype=torch.float32).reshape(-1)
        if len(values_t) != n:
            raise MapInputError(f"{what} has {len(values_t)} values for {n} coordinates")
        if not bool(torch.isfinite(values_t).all()):
            raise MapInputError(f"{what} contains NaN or infinite values")
        return values_t

    def _depth_tensor(self, depth: np.ndarray | torch.Tensor, intrinsics: CameraIntrinsics) -> torch.Tensor:
        depth_t = torch.as_tensor(depth).detach().to(device=self.device, dtype=torch.float32)
        if depth_t.shape != (intrinsics.height, intrinsics.width):
            raise MapInputError(
                f"depth image has shape {tuple(depth_t.shape)}, the intrinsics describe "
                f"{intrinsics.height}x{intrinsics.width} (H x W)")
        return depth_t

    def _color_tensor(self, color: np.ndarray | torch.Tensor, shape: torch.Size) -> torch.Tensor:
        color_t = torch.as_tensor(color).to(self.device)
        if color_t.shape != (*shape, 3) or color_t.dtype != torch.uint8:
            raise MapInputError(
                f"colour image must be uint8 of shape {(*shape, 3)} (RGB, same size as the depth image), "
                f"got {color_t.dtype} {tuple(color_t.shape)}")
        return color_t


def _flat_nonzero(mask: torch.Tensor) -> torch.Tensor:
    """int64 indices of the True entries of ``mask`` (flattened), ascending. On the CPU numpy's
    ``flatnonzero`` does this several times faster than ``torch.nonzero``."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.view(-1).nonzero().squeeze(1)
