"""Coordinate keys: torchsparse's voxel hash (for voxel ORDER) and exact packed keys (for LOOKUP).

Two different keys are used on purpose:

* :func:`torchsparse_hash` reproduces torchsparse v1.x's 64-bit FNV-1a hash bit for bit. It is only
  used to order the voxels of an initial voxelisation exactly as torchsparse does (ascending hash),
  which matters for the NeuralRecon GRU reset-gate quirk. It can in principle collide.
* :class:`CoordinatePacker` packs (batch, x, y, z) into a collision-free int64 key relative to a
  bounding box; :class:`CoordinateIndex` keeps a reference set's keys sorted and answers neighbour
  queries with one vectorised ``torch.searchsorted``. Ascending packed key == lexicographic
  (batch, x, y, z) order.
"""

from __future__ import annotations

import torch

from .errors import CoordinateError

_FNV_OFFSET_BASIS = 14695981039346656037
_FNV_PRIME_LOW = 0x1B3  # FNV prime = 2**40 + 0x1B3
_MASK32 = 0xFFFFFFFF
_MAX_KEY_BITS = 62


def check_int_coords(coords: torch.Tensor, what: str = "coords") -> None:
    """Raise :class:`CoordinateError` unless ``coords`` is an (N, 4) int32 tensor."""
    if not isinstance(coords, torch.Tensor):
        raise CoordinateError(f"{what} must be a torch.Tensor, got {type(coords).__name__}")
    if coords.dtype != torch.int32:
        raise CoordinateError(f"{what} must be int32 (x, y, z, batch), got dtype {coords.dtype}")
    if coords.ndim != 2 or coords.shape[1] != 4:
        raise CoordinateError(f"{what} must have shape (N, 4) = (x, y, z, batch), got {tuple(coords.shape)}")


def torchsparse_hash(coords: torch.Tensor) -> torch.Tensor:
    """torchsparse v1.x voxel hash of int32 (N, 4) (x, y, z, batch) coordinates -> int64 (N,).

    64-bit FNV-1a over the four values reinterpreted as uint32 (offset basis 14695981039346656037,
    prime 1099511628211), then folded: ``(h >> 60) ^ (h & 0x0FFFFFFFFFFFFFFF)``. The state is kept as
    two 32-bit halves in int64 tensors so that no signed overflow ever happens (exact on any device).
    The result lies in [0, 2**60), so signed and unsigned orders agree.
    """
    check_int_coords(coords)
    values = coords.to(torch.int64) & _MASK32  # uint32 reinterpretation
    n = coords.shape[0]
    hi = torch.full((n,), _FNV_OFFSET_BASIS >> 32, dtype=torch.int64, device=coords.device)
    lo = torch.full((n,), _FNV_OFFSET_BASIS & _MASK32, dtype=torch.int64, device=coords.device)
    for j in range(4):
        lo = lo ^ values[:, j]
        # h * (2**40 + 0x1B3) mod 2**64, on 32-bit halves: every intermediate stays below 2**43.
        lo_product = lo * _FNV_PRIME_LOW
        hi = (hi * _FNV_PRIME_LOW + (lo_product >> 32) + (lo << 8)) & _MASK32
        lo = lo_product & _MASK32
    return ((hi & 0x0FFFFFFF) << 32) | (lo ^ (hi >> 28))


class CoordinatePacker:
    """Collision-free int64 keys of (x, y, z, batch) int coordinates inside a fixed bounding box.

    Keys pack (batch, x, y, z), batch most significant, each column relative to the box's lower corner,
    so ascending key == lexicographic (batch, x, y, z) order, and inside the box
    ``key(c + d) == key(c) + offset_delta(d)`` exactly.
    """

    def __init__(self, lower: list[int], upper: list[int], device: torch.device) -> None:
        bits = [max(1, (h - lo).bit_length()) for lo, h in zip(lower, upper)]
        if sum(bits) > _MAX_KEY_BITS:
            raise CoordinateError(
                f"coordinate range too large to pack into 62 bits: x {lower[0]}..{upper[0]}, "
                f"y {lower[1]}..{upper[1]}, z {lower[2]}..{upper[2]}, batch {lower[3]}..{upper[3]}"
            )
        self.device = device
        self.lower = torch.tensor(lower, dtype=torch.int64, device=device)
        self.upper = torch.tensor(upper, dtype=torch.int64, device=device)
        # Column shifts: z lowest, then y, x, batch highest.
        shift_y = bits[2]
        shift_x = bits[2] + bits[1]
        self._shifts = (shift_x, shift_y, 0, shift_x + bits[0])

    @classmethod
    def around(cls, coords: torch.Tensor, margin: int = 0) -> CoordinatePacker:
        """Packer for the bounding box of int (N, 4) ``coords`` grown by ``margin`` on each spatial side."""
        if coords.shape[0] == 0:  # nothing to pack; any box works (queries then find nothing)
            return cls([0, 0, 0, 0], [0, 0, 0, 0], coords.device)
        lo = coords.amin(dim=0).tolist()
        hi = coords.amax(dim=0).tolist()
        margin = int(margin)
        lower = [int(v) - margin for v in lo[:3]] + [int(lo[3])]
        upper = [int(v) + margin for v in hi[:3]] + [int(hi[3])]
        return cls(lower, upper, coords.device)

    def contains(self, coords: torch.Tensor) -> torch.Tensor:
        """Bool (N,): which int (N, 4) coordinates lie inside the box."""
        c = coords.to(torch.int64)
        return ((c >= self.lower) & (c <= self.upper)).all(dim=1)

    def pack(self, coords: torch.Tensor) -> torch.Tensor:
        """int64 keys of int (N, 4) coordinates that lie inside the box (not checked)."""
        rel = coords.to(torch.int64) - self.lower
        sx, sy, sz, sb = self._shifts
        return (rel[:, 3] << sb) | (rel[:, 0] << sx) | (rel[:, 1] << sy) | (rel[:, 2] << sz)

    def unpack(self, keys: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`pack` -> int32 (N, 4) (x, y, z, batch)."""
        sx, sy, sz, sb = self._shifts
        cols = [
            (keys >> sx) & ((1 << (sb - sx)) - 1),
            (keys >> sy) & ((1 << (sx - sy)) - 1),
            (keys >> sz) & ((1 << (sy - sz)) - 1),
            keys >> sb,
        ]
        return (torch.stack(cols, dim=1) + self.lower).to(torch.int32)

    def offset_delta(self, offsets: torch.Tensor) -> torch.Tensor:
        """Key difference of integer (K, 3) spatial offsets -> int64 (K,)."""
        offsets = offsets.to(device=self.device, dtype=torch.int64)
        sx, sy, sz, _ = self._shifts
        # multiply rather than shift: offsets can be negative
        return offsets[:, 0] * (1 << sx) + offsets[:, 1] * (1 << sy) + offsets[:, 2] * (1 << sz)


class CoordinateIndex:
    """Sorted packed keys of a reference coordinate set; finds the row of query coordinates.

    ``margin`` grows the packing box so that keys of reference coordinates shifted by at most ``margin``
    per axis can be formed by adding :meth:`CoordinatePacker.offset_delta` (no bounds test needed).
    """

    def __init__(self, coords: torch.Tensor, margin: int = 0) -> None:
        check_int_coords(coords)
        self.packer = CoordinatePacker.around(coords, margin)
        self.margin = int(margin)
        self.size = int(coords.shape[0])
        self.sorted_keys, self.order = torch.sort(self.packer.pack(coords))
        if self.size > 1 and bool((self.sorted_keys[1:] == self.sorted_keys[:-1]).any()):
            raise CoordinateError("coordinate set contains duplicate voxels (same x, y, z, batch)")

    def search_keys(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(position in the sorted keys, found mask) of int64 keys of any shape."""
        if self.size == 0:
            return torch.zeros_like(keys), torch.zeros_like(keys, dtype=torch.bool)
        pos = torch.searchsorted(self.sorted_keys, keys).clamp_(max=self.size - 1)
        return pos, self.sorted_keys[pos] == keys

    def find_keys(self, keys: torch.Tensor) -> torch.Tensor:
        """Row index (into the reference coords) of each key, -1 where absent. Any shape."""
        pos, found = self.search_keys(keys)
        if self.size == 0:
            return torch.full_like(pos, -1)
        return torch.where(found, self.order[pos], torch.full_like(pos, -1))

    def find(self, coords: torch.Tensor) -> torch.Tensor:
        """Row index of each int (M, 4) query coordinate, -1 where absent (any range accepted)."""
        c = coords.to(device=self.packer.device, dtype=torch.int64)
        inside = self.packer.contains(c)
        keys = self.packer.pack(torch.where(inside[:, None], c, self.packer.lower))
        idx = self.find_keys(keys)
        return torch.where(inside, idx, torch.full_like(idx, -1))
