"""Sparse voxel backend of the NeuralRecon network (pure PyTorch, optional torchsparse 1.4 adapter).

Layout and semantics follow torchsparse v1.4, the library of NeuralRecon's checkpoint:

* :class:`SparseTensor` (feats (N, C), coords (N, 4) int32 (x, y, z, batch) -- batch LAST, stride,
  cache): every tensor derived from one input shares a :class:`KernelMapCache`; kernel maps are built
  once per (stride, kind) and reused by all layers; the cache records each stride's coordinate set.
* :class:`SparseConv3d` (parameter ``kernel``: (k^3, in, out), or (in, out) for k = 1; no bias):
  submanifold k3 s1, k2 s2 down (FLOOR), k2 s2 transposed (back onto the down conv's input voxels, in
  their order), k1 pointwise. Offset order of facts §3.4. :class:`SparseBatchNorm`, :class:`SparseReLU`
  act on ``feats``; :func:`sparse_cat` concatenates channels (torchsparse ``cat``).
* :class:`PointTensor` + :func:`initial_voxelize` (voxels in ascending :func:`torchsparse_hash` order;
  rescales the point coordinates in place, as upstream), :func:`point_to_voxel` (mean),
  :func:`voxel_to_point` (trilinear, missing corners renormalised). Point caches are keyed by stride
  and shared by :meth:`PointTensor.replace_feats` -- upstream's semantics, which the GRU reset-gate
  quirk relies on.
* :func:`set_backend` ('torch' | 'torchsparse' | 'auto') routes all of the above through torchsparse
  (same parameters) when it is importable.

Bad input raises a :class:`SparseError` subclass naming the problem.
"""

from .backend import get_backend, resolve_backend, set_backend, torchsparse_available
from .conv import SparseBatchNorm, SparseConv3d, SparseReLU, sparse_conv3d
from .errors import (
    BackendError,
    CoordinateError,
    FeatureError,
    KernelMapError,
    SparseError,
    UnsupportedConvError,
)
from .hashing import torchsparse_hash
from .kernel_map import kernel_offsets
from .point_ops import initial_voxelize, point_to_voxel, voxel_to_point
from .tensor import KernelMapCache, PointTensor, SparseTensor, sparse_cat

__all__ = [
    "BackendError",
    "CoordinateError",
    "FeatureError",
    "KernelMapCache",
    "KernelMapError",
    "PointTensor",
    "SparseBatchNorm",
    "SparseConv3d",
    "SparseError",
    "SparseReLU",
    "SparseTensor",
    "UnsupportedConvError",
    "get_backend",
    "initial_voxelize",
    "kernel_offsets",
    "point_to_voxel",
    "resolve_backend",
    "set_backend",
    "sparse_cat",
    "sparse_conv3d",
    "torchsparse_available",
    "torchsparse_hash",
    "voxel_to_point",
]
