"""Benchmark of the pure-PyTorch sparse backend on NeuralRecon level-2 sized inputs.

Cases (synthetic room: banded floor/walls/box surfaces of a 96^3 fragment volume, rotated like the
gravity-aligned camera frame, ~150k voxels):

1. one k3 submanifold conv, 32 -> 32 channels: first call (kernel-map build + conv) and reuse;
2. NeuralRecon's level-2 SPVCNN (``neuralrecon_ros.core.network.spvcnn.SPVCNN``, 75 -> 24 channels,
   voxel 0.04 m) forward on the same points, eval mode, including every map build (new family per
   forward, as in the network).

Each case runs on our backend and on torchsparse when it is importable (ratio = torchsparse / ours);
without torchsparse, case 1 is compared with a dense ``conv3d`` over the bounding grid instead.
Timings are medians of ``--repeats`` runs (wall clock and process CPU time, since the machine is shared).

    python bench/bench_sparse_conv.py [--voxels 150000] [--threads 2] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from neuralrecon_ros.core.network import sparse
from neuralrecon_ros.core.network.sparse import PointTensor, SparseConv3d, SparseTensor

LEVEL2_VOXEL_M = 0.04
LEVEL2_IN_CHANNELS = 75


def room_points(target: int, grid: int = 96) -> torch.Tensor:
    """float32 (P, 3) points in finest-voxel units: grid points within a band around the surfaces of a
    synthetic room (floor, two walls, a box), rotated by 33 deg about z and tilted 12 deg."""
    g = torch.arange(grid, dtype=torch.float32)
    X, Y, Z = torch.meshgrid(g, g, g, indexing="ij")
    box = torch.maximum(torch.maximum((X - 40).abs() - 12, (Y - 45).abs() - 10), (Z - 20).abs() - 12).abs()
    dist = torch.stack([(Z - 8).abs(), (X - 6).abs(), (Y - 90).abs(), (X - 88).abs(), box]).amin(dim=0)
    band = torch.kthvalue(dist.flatten(), min(target, dist.numel())).values
    pts = torch.nonzero(dist <= band).float() - grid / 2
    a, b = math.radians(33.0), math.radians(12.0)
    rz = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    rx = torch.tensor([[1.0, 0.0, 0.0], [0.0, math.cos(b), -math.sin(b)], [0.0, math.sin(b), math.cos(b)]])
    return pts @ (rx @ rz).T


def voxels_of(points: torch.Tensor) -> torch.Tensor:
    cells = torch.unique(torch.floor(points).to(torch.int32), dim=0)
    return torch.cat([cells, torch.zeros(cells.shape[0], 1, dtype=torch.int32)], dim=1)


def timed(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    """Median wall and CPU milliseconds of ``repeats`` calls (after one warm-up call)."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - w0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return {"wall_ms": statistics.median(wall), "cpu_ms": statistics.median(cpu)}


def bench_single_conv(coords: torch.Tensor, backend: str, repeats: int) -> dict[str, dict[str, float]]:
    sparse.set_backend(backend)
    torch.manual_seed(0)
    conv = SparseConv3d(32, 32, 3)
    feats = torch.randn(coords.shape[0], 32)
    family = SparseTensor(feats, coords)
    return {
        "first_call": timed(lambda: conv(SparseTensor(feats, coords)), repeats),  # builds the map
        "reuse": timed(lambda: conv(family), repeats),
    }


def bench_dense_conv(coords: torch.Tensor, repeats: int) -> dict[str, float]:
    """Dense conv3d 32 -> 32 over the bounding grid of the voxels (the no-torchsparse baseline)."""
    extent = (coords[:, :3].amax(dim=0) - coords[:, :3].amin(dim=0) + 1).tolist()
    volume = torch.randn(1, 32, *extent)
    weight = torch.randn(32, 32, 3, 3, 3)
    return timed(lambda: F.conv3d(volume, weight, padding=1), max(1, repeats // 2))


def bench_spvcnn(points_m: torch.Tensor, backend: str, repeats: int) -> dict[str, float]:
    from neuralrecon_ros.core.network.spvcnn import SPVCNN

    sparse.set_backend(backend)
    torch.manual_seed(0)
    net = SPVCNN(LEVEL2_IN_CHANNELS, level=2, voxel_size=LEVEL2_VOXEL_M).eval()
    feats = torch.randn(points_m.shape[0], LEVEL2_IN_CHANNELS)
    coords = torch.cat([points_m, torch.zeros(points_m.shape[0], 1)], dim=1)
    return timed(lambda: net(PointTensor(feats, coords.clone())), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--voxels", type=int, default=150_000, help="approximate number of voxels")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=str, default="", help="also write the results to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    points = room_points(args.voxels)
    coords = voxels_of(points)
    backends = ["torch"] + (["torchsparse"] if sparse.torchsparse_available() else [])
    results: dict[str, object] = {
        "voxels": int(coords.shape[0]),
        "points": int(points.shape[0]),
        "threads": args.threads,
        "backends": backends,
    }
    print(f"{coords.shape[0]} voxels ({points.shape[0]} points), {args.threads} threads, backends {backends}")
    with torch.no_grad():
        for backend in backends:
            results[f"conv_k3_32x32_{backend}"] = bench_single_conv(coords, backend, args.repeats)
            results[f"spvcnn_level2_{backend}"] = bench_spvcnn(points * LEVEL2_VOXEL_M, backend, args.repeats)
        if "torchsparse" not in backends:
            results["conv_dense_32x32_bounding_grid"] = bench_dense_conv(coords, args.repeats)
    sparse.set_backend("torch")
    for key, value in results.items():
        print(f"{key}: {value}")
    if "torchsparse" in backends:
        for case in ("conv_k3_32x32", "spvcnn_level2"):
            ours, theirs = results[f"{case}_torch"], results[f"{case}_torchsparse"]
            for part in ["first_call", "reuse"] if case.startswith("conv") else [None]:
                a = ours[part] if part else ours
                b = theirs[part] if part else theirs
                label = f"{case}{'/' + part if part else ''}"
                print(
                    f"{label}: torchsparse/ours = {b['cpu_ms'] / a['cpu_ms']:.2f}x (CPU time), "
                    f"{b['wall_ms'] / a['wall_ms']:.2f}x (wall)"
                )
    else:
        dense = results["conv_dense_32x32_bounding_grid"]
        ours = results["conv_k3_32x32_torch"]["reuse"]
        print(f"conv_k3_32x32: dense/ours = {dense['cpu_ms'] / ours['cpu_ms']:.2f}x (CPU time)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
