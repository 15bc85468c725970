"""Sparse voxel backend of the NeuralRecon network (pure PyTorch, optional torchsparse 1.4 adapter).

Layout and semantics follow torchsparse v1.4 (coords (x, y, z, batch) int32, batch LAST; kernel
(k^3, in, out) / (in, out) for k = 1; offset order of facts §3.4; FLOOR down-sampling). Kernel maps
are built once per coordinate set and reused by every layer of a tensor family (``SparseTensor.cache``).
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
