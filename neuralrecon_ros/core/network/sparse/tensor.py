"""Sparse voxel tensors, continuous point tensors and the kernel-map cache they share.

Semantics follow torchsparse v1.4 (the library NeuralRecon's checkpoint was built with):

* A :class:`SparseTensor` holds voxels at an integer tensor stride; every tensor derived from the same
  input (convolutions, batch norm, point->voxel, concatenation) shares one :class:`KernelMapCache`.
  The cache records the coordinate set of each stride (first one wins, like torchsparse ``cmaps``) so a
  transposed conv lands on exactly the voxels (and order) that were fed into the matching down conv,
  and it keeps every kernel map so that each map is built once per (stride, kind) and reused.
* A :class:`PointTensor` carries continuous points (in voxel units of the level) next to the voxels,
  with per-stride caches of the point->voxel assignment and of the trilinear voxel->point weights.
  Like upstream, the caches are keyed by stride only and are shared by derived point tensors
  (:meth:`PointTensor.replace_feats`); NeuralRecon's GRU reset-gate quirk relies on this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import CoordinateError, FeatureError, KernelMapError
from .hashing import check_int_coords


@dataclass
class KernelMapCache:
    """Per-family store of coordinate sets and kernel maps (shared by all derived tensors).

    ``coords``: stride -> (N, 4) int32 coordinate set registered for that stride.
    ``maps``: (kind, stride, kernel_size) -> backend-specific kernel map (built once, then reused).
    ``indices``: stride -> :class:`~.hashing.CoordinateIndex` of that stride's coordinates.
    ``builds``: number of kernel maps built so far (diagnostics and tests).
    ``backend_state``: private state of other backends (e.g. torchsparse ``cmaps``/``kmaps`` dicts).
    """

    coords: dict[int, torch.Tensor] = field(default_factory=dict)
    maps: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    indices: dict[int, Any] = field(default_factory=dict)
    builds: int = 0
    backend_state: dict[str, Any] = field(default_factory=dict)

    def register(self, stride: int, coords: torch.Tensor) -> None:
        """Record ``coords`` as the coordinate set of ``stride`` unless one is already registered."""
        self.coords.setdefault(stride, coords)

    def check(self, stride: int, coords: torch.Tensor) -> None:
        """Raise :class:`KernelMapError` if ``coords`` is not the set registered for ``stride``."""
        known = self.coords.get(stride)
        if known is None or known is coords:
            return
        if known.shape != coords.shape or known.device != coords.device or not torch.equal(known, coords):
            raise KernelMapError(
                f"tensor at stride {stride} has {coords.shape[0]} voxels that differ from the "
                f"{known.shape[0]} voxels registered for that stride in its kernel-map cache; tensors "
                "sharing a cache must use one coordinate set per stride (start a new family instead)"
            )


class SparseTensor:
    """Voxel features at integer coordinates.

    feats: (N, C) floating tensor. coords: (N, 4) int32, columns (x, y, z, batch) -- torchsparse layout,
    batch LAST. Coordinates are in stride-1 voxel units and are multiples of ``stride``.
    """

    def __init__(
        self,
        feats: torch.Tensor,
        coords: torch.Tensor,
        stride: int = 1,
        cache: KernelMapCache | None = None,
    ) -> None:
        check_int_coords(coords, "SparseTensor coords")
        if not isinstance(feats, torch.Tensor) or feats.ndim != 2 or not feats.is_floating_point():
            shape = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
            raise FeatureError(f"SparseTensor feats must be a floating (N, C) tensor, got {shape}")
        if feats.shape[0] != coords.shape[0]:
            raise FeatureError(
                f"SparseTensor feats has {feats.shape[0]} rows but coords has {coords.shape[0]}"
            )
        if feats.device != coords.device:
            raise FeatureError(f"SparseTensor feats on {feats.device} but coords on {coords.device}")
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise CoordinateError(f"SparseTensor stride must be a positive int, got {stride!r}")
        self.feats = feats
        self.coords = coords
        self.stride = stride
        self.cache = cache if cache is not None else KernelMapCache()
        self.cache.check(stride, coords)
        self.cache.register(stride, coords)

    def replace_feats(self, feats: torch.Tensor) -> SparseTensor:
        """Same voxels, stride and cache with new (N, C') features."""
        return SparseTensor(feats, self.coords, self.stride, self.cache)

    @property
    def num_voxels(self) -> int:
        return int(self.coords.shape[0])

    @property
    def device(self) -> torch.device:
        return self.feats.device

    def __repr__(self) -> str:
        return (
            f"SparseTensor(voxels={self.num_voxels}, channels={self.feats.shape[1]}, stride={self.stride}, "
            f"dtype={self.feats.dtype}, device={self.device})"
        )


class PointTensor:
    """Continuous points carried alongside the voxels (SPVCNN point branch).

    feats: (P, C) floating. coords: (P, 4) floating (x, y, z, batch) in voxel units of the level.
    ``vox_cache``: stride -> (voxel row of each point (P,) int64, -1 = none; points per voxel (N,) int64).
    ``devox_cache``: stride -> (corner rows (P, 8) int64, -1 = missing; trilinear weights (P, 8)).
    Both caches are keyed by stride only and reused whenever a point tensor sharing them meets a voxel
    tensor of that stride -- exactly like upstream, even if the voxels or point coordinates changed.
    """

    def __init__(
        self,
        feats: torch.Tensor,
        coords: torch.Tensor,
        vox_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
        devox_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        if not isinstance(coords, torch.Tensor) or coords.ndim != 2 or coords.shape[1] != 4:
            shape = tuple(coords.shape) if isinstance(coords, torch.Tensor) else type(coords).__name__
            raise CoordinateError(
                f"PointTensor coords must have shape (P, 4) = (x, y, z, batch), got {shape}"
            )
        if not coords.is_floating_point():
            raise CoordinateError(f"PointTensor coords must be floating point, got dtype {coords.dtype}")
        if not isinstance(feats, torch.Tensor) or feats.ndim != 2 or feats.shape[0] != coords.shape[0]:
            shape = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
            raise FeatureError(f"PointTensor feats must have shape ({coords.shape[0]}, C), got {shape}")
        if feats.device != coords.device:
            raise FeatureError(f"PointTensor feats on {feats.device} but coords on {coords.device}")
        self.feats = feats
        self.coords = coords
        self.vox_cache = vox_cache if vox_cache is not None else {}
        self.devox_cache = devox_cache if devox_cache is not None else {}

    def replace_feats(self, feats: torch.Tensor) -> PointTensor:
        """Same points with new (P, C') features; shares coords and both caches (as upstream)."""
        return PointTensor(feats, self.coords, self.vox_cache, self.devox_cache)

    @property
    def num_points(self) -> int:
        return int(self.coords.shape[0])

    def __repr__(self) -> str:
        return (
            f"PointTensor(points={self.num_points}, channels={self.feats.shape[1]}, "
            f"cached strides vox={sorted(self.vox_cache)} devox={sorted(self.devox_cache)})"
        )


def sparse_cat(tensors: list[SparseTensor] | tuple[SparseTensor, ...]) -> SparseTensor:
    """Channel-wise concatenation of tensors on the same voxels (torchsparse ``cat``); keeps the first's
    coords, stride and cache."""
    if len(tensors) == 0:
        raise CoordinateError("sparse_cat needs at least one tensor")
    first = tensors[0]
    for i, t in enumerate(tensors[1:], start=1):
        if t.stride != first.stride or t.num_voxels != first.num_voxels:
            raise FeatureError(
                f"sparse_cat: tensor {i} has {t.num_voxels} voxels at stride {t.stride}, tensor 0 has "
                f"{first.num_voxels} at stride {first.stride}"
            )
        if t.coords is not first.coords and not torch.equal(t.coords, first.coords):
            raise CoordinateError(f"sparse_cat: tensor {i} has different voxel coordinates than tensor 0")
    return first.replace_feats(torch.cat([t.feats for t in tensors], dim=1))
