"""Sparse convolution, batch norm and ReLU modules (torchsparse v1.4 parameter layout and semantics).

Supported kinds (facts §3.3/§3.4), for a tensor at stride s:

* kernel 1, stride 1: pointwise ``feats @ kernel`` with ``kernel`` of shape (in, out);
* odd kernel (3), stride 1: submanifold conv, output voxels = input voxels,
  out(p) = sum_k in(p + offset_k * s) @ kernel[k];
* kernel 2, stride 2: down conv to stride 2s, output voxels = unique floor(p / 2s) * 2s;
* kernel 2, stride 2, transposed: back to stride s on exactly the voxels (and order) that were fed
  into the matching down conv of the same family. ``kernel`` is (8, in, out) as for the down conv.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import backend
from .errors import FeatureError, KernelMapError, UnsupportedConvError
from .kernel_map import (
    DownsampleMap,
    SubmanifoldMap,
    cached_downsample_map,
    downsample_map,
    submanifold_map,
)
from .tensor import SparseTensor

# Elements per block of the gathered (rows, K * C_in) matrix: a few MB on CPU (stays in cache; measured
# best on 2-core EPYC), larger on GPUs where the block only bounds memory and kernel-launch count.
_BLOCK_ELEMENTS = 1 << 20
_BLOCK_ELEMENTS_GPU = 1 << 26


def conv_kind(kernel_size: int, stride: int, transposed: bool) -> str:
    """'pointwise' | 'submanifold' | 'down' | 'up', or raise :class:`UnsupportedConvError`."""
    if kernel_size == 1 and stride == 1 and not transposed:
        return "pointwise"
    if kernel_size % 2 == 1 and stride == 1 and not transposed:
        return "submanifold"
    if kernel_size == 2 and stride == 2:
        return "up" if transposed else "down"
    raise UnsupportedConvError(
        f"sparse conv with kernel_size={kernel_size}, stride={stride}, transposed={transposed} is not "
        "supported (supported: k1 s1, odd k s1, k2 s2 and k2 s2 transposed)"
    )


def _padded(feats: torch.Tensor) -> torch.Tensor:
    """feats with one zero row appended (the target of 'missing' neighbour indices)."""
    return torch.cat([feats, feats.new_zeros((1, feats.shape[1]))], dim=0)


def _gather_gemm(feats_padded: torch.Tensor, table: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """out[i] = concat_k feats_padded[table[k, i]] @ weight, blocked over output rows.

    table: (K, M) int rows of ``feats_padded``; weight: (K * C_in, C_out). Each block gathers a
    (rows, K * C_in) matrix (im2col) and does one GEMM, which beats per-offset gather/scatter on CPU.
    """
    k, m = table.shape
    c_in = feats_padded.shape[1]
    device_type = feats_padded.device.type
    budget = _BLOCK_ELEMENTS if device_type == "cpu" else _BLOCK_ELEMENTS_GPU
    block = max(1, budget // max(1, k * c_in))
    if m <= block:
        return torch.mm(feats_padded.index_select(0, table.t().reshape(-1)).view(m, k * c_in), weight)
    # Write blocks straight into the output unless autograd or autocast needs out-of-place results.
    in_place = not (
        (torch.is_grad_enabled() and (feats_padded.requires_grad or weight.requires_grad))
        or torch.is_autocast_enabled(device_type)
    )
    out = feats_padded.new_empty((m, weight.shape[1])) if in_place else None
    pieces = []
    for start in range(0, m, block):
        rows = table[:, start : start + block].t().reshape(-1)
        gathered = feats_padded.index_select(0, rows).view(-1, k * c_in)
        if out is None:
            pieces.append(torch.mm(gathered, weight))
        else:
            torch.mm(gathered, weight, out=out[start : start + block])
    return torch.cat(pieces) if out is None else out


def submanifold_conv(feats: torch.Tensor, kernel: torch.Tensor, kmap: SubmanifoldMap) -> torch.Tensor:
    """Submanifold conv of (N, C_in) feats with (K, C_in, C_out) kernel over a neighbour table.

    Offsets without any neighbour pair are skipped (e.g. all but the centre for isolated voxels).
    """
    active = [k for k, count in enumerate(kmap.pair_counts) if count > 0]
    if not active:  # no voxels
        return feats.new_zeros((feats.shape[0], kernel.shape[2]))
    centre = kernel.shape[0] // 2
    if active == [centre]:  # isolated voxels: the centre tap is a plain matmul
        return feats.matmul(kernel[centre])
    table = kmap.neighbours if len(active) == kernel.shape[0] else kmap.neighbours[active]
    weight = kernel[active].reshape(-1, kernel.shape[2])
    return kmap.from_sorted(_gather_gemm(_padded(kmap.to_sorted(feats)), table, weight))


def downsample_conv(feats: torch.Tensor, kernel: torch.Tensor, kmap: DownsampleMap) -> torch.Tensor:
    """Kernel-2 stride-2 conv: out(q) = sum_b in(q + b s) @ kernel[b]."""
    return _gather_gemm(_padded(feats), kmap.children, kernel.reshape(-1, kernel.shape[2]))


def transposed_conv(feats: torch.Tensor, kernel: torch.Tensor, kmap: DownsampleMap) -> torch.Tensor:
    """Transposed kernel-2 stride-2 conv: out(p) = in(parent(p)) @ kernel[tap(p)]."""
    c_out = kernel.shape[2]
    # One GEMM against all 8 taps, then pick each fine voxel's (parent, tap) row.
    all_taps = torch.mm(feats, kernel.permute(1, 0, 2).reshape(kernel.shape[1], 8 * c_out))
    return all_taps.view(-1, c_out).index_select(0, kmap.parent * 8 + kmap.tap)


def _torch_conv3d(
    x: SparseTensor, kernel: torch.Tensor, kernel_size: int, stride: int, transposed: bool
) -> SparseTensor:
    kind = conv_kind(kernel_size, stride, transposed)
    feats = x.feats
    kernel = kernel.to(feats.dtype)
    cache = x.cache
    if kind == "pointwise":
        return x.replace_feats(feats.matmul(kernel))
    if kind == "submanifold":
        kmap = submanifold_map(cache, x.coords, x.stride, kernel_size)
        return x.replace_feats(submanifold_conv(feats, kernel, kmap))
    if kind == "down":
        kmap = downsample_map(cache, x.coords, x.stride)
        out_coords = cache.coords.get(2 * x.stride, kmap.out_coords)
        return SparseTensor(downsample_conv(feats, kernel, kmap), out_coords, 2 * x.stride, cache)
    # Transposed: reuse the map of the down conv that produced this stride.
    fine = x.stride // 2
    kmap = cached_downsample_map(cache, fine)
    if x.stride % 2 != 0 or kmap is None:
        raise KernelMapError(
            f"transposed conv on a stride-{x.stride} tensor needs the kernel map of a kernel-{kernel_size} "
            f"stride-2 down conv from stride {fine} in the same family; none was run"
        )
    if kmap.children.shape[1] != x.num_voxels:
        raise KernelMapError(
            f"transposed conv input has {x.num_voxels} voxels but the matching down conv produced "
            f"{kmap.children.shape[1]}"
        )
    return SparseTensor(transposed_conv(feats, kernel, kmap), cache.coords[fine], fine, cache)


def sparse_conv3d(
    x: SparseTensor, kernel: torch.Tensor, kernel_size: int, stride: int = 1, transposed: bool = False
) -> SparseTensor:
    """Functional sparse conv (no bias) routed to the current backend (see :func:`.backend.set_backend`)."""
    if backend.get_backend() == "torchsparse":
        from . import torchsparse_adapter

        return torchsparse_adapter.conv3d(x, kernel, kernel_size, stride, transposed)
    return _torch_conv3d(x, kernel, kernel_size, stride, transposed)


class SparseConv3d(nn.Module):
    """torchsparse-compatible sparse conv: parameter ``kernel`` of shape (k^3, in, out), or (in, out) for
    k = 1; no bias. Initialised like torchsparse (uniform +-1/sqrt(fan), fan = in*k^3, out*k^3 if
    transposed); real weights come from checkpoints."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        transposed: bool = False,
    ) -> None:
        super().__init__()
        conv_kind(kernel_size, stride, transposed)  # validate early
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.transposed = transposed
        volume = kernel_size**3
        shape = (volume, in_channels, out_channels) if volume > 1 else (in_channels, out_channels)
        self.kernel = nn.Parameter(torch.empty(shape))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        fan = (self.out_channels if self.transposed else self.in_channels) * self.kernel_size**3
        bound = 1.0 / math.sqrt(fan)
        nn.init.uniform_(self.kernel, -bound, bound)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        if self.stride != 1:
            s += f", stride={self.stride}"
        if self.transposed:
            s += ", transposed=True"
        return s

    def forward(self, x: SparseTensor) -> SparseTensor:
        if x.feats.shape[1] != self.in_channels:
            raise FeatureError(
                f"SparseConv3d expects {self.in_channels} input channels, got {x.feats.shape[1]}"
            )
        return sparse_conv3d(x, self.kernel, self.kernel_size, self.stride, self.transposed)


class SparseBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over the voxel features (state-dict names weight/bias/running_mean/running_var/
    num_batches_tracked, as torchsparse's ``BatchNorm``)."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return x.replace_feats(super().forward(x.feats))


class SparseReLU(nn.ReLU):
    """ReLU over the voxel features (keeps Sequential indices identical to upstream's ``spnn.ReLU``)."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return x.replace_feats(super().forward(x.feats))
