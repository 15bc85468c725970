"""Benchmark of depth integration and mesh extraction: our sparse TSDF map next to Open3D, same frames.

    python bench/bench_integration.py [--frames 60] [--width 640] [--height 480] [--voxel 0.04]
                                      [--threads 1] [--seed 0] [--no-eval] [--json]

Renders a synthetic RGB-D sequence (core.synthetic), then integrates every frame into
- ours: ``TSDFMap.integrate_depth`` (torch, CPU),
- Open3D ``t.geometry.VoxelBlockGrid`` (compute_unique_block_coordinates + integrate) and
- Open3D legacy ``ScalableTSDFVolume``,
all at the same voxel size, truncation (3 voxels), depth range and block size (8), and times mesh
extraction from scratch plus our incremental re-mesh of one frame's touched blocks. Reports per-frame
wall-clock median / p95 and CPU time per frame (process time: not inflated by other processes on a
shared machine), ratios ours / Open3D, and optionally F-scores against the exact GT mesh.

The thread count (``--threads``, default 1) is applied to torch and, via OMP_NUM_THREADS before the
import, to Open3D, so the comparison is like for like. Open3D is optional: without it (``pip install
--no-deps open3d==0.19.0`` plus its pure-Python imports) the table shows our figures only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--voxel", type=float, default=0.04, help="voxel size in metres")
    parser.add_argument("--max-depth", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate", type=float, default=5.0, help="frame rate of the trajectory (Hz)")
    parser.add_argument("--no-eval", action="store_true", help="skip the F-score evaluation")
    parser.add_argument("--json", action="store_true", help="print the results as JSON as well")
    return parser.parse_args()


class Timings:
    """Wall-clock and process-CPU milliseconds of repeated calls."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def run(self, fn: Callable[[], Any]) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        self.wall.append((time.perf_counter() - wall) * 1e3)
        self.cpu.append((time.process_time() - cpu) * 1e3)
        return result

    def summary(self) -> dict[str, float]:
        wall = np.asarray(self.wall)
        return {"median_ms": float(np.median(wall)), "p95_ms": float(np.percentile(wall, 95)),
                "cpu_ms": float(np.mean(self.cpu)), "calls": len(wall)}


def bench_ours(frames: list, args: argparse.Namespace) -> tuple[dict[str, dict[str, float]], Any, dict]:
    import torch

    from neuralrecon_ros.core.mapping.config import MapConfig
    from neuralrecon_ros.core.mapping.meshing import IncrementalMesher, extract_mesh
    from neuralrecon_ros.core.mapping.tsdf_map import TSDFMap

    tsdf_map = TSDFMap(MapConfig(voxel_size=args.voxel, block_size=8, truncation_distance_vox=3.0))
    integrate, touched = Timings(), []
    warm = TSDFMap(tsdf_map.config)  # first-call overheads (allocator, caches) outside the timings
    warm.integrate_depth(frames[0].depth, frames[0].intrinsics, frames[0].T_world_camera, frames[0].image)
    for frame in frames:
        update = integrate.run(lambda f=frame: tsdf_map.integrate_depth(
            f.depth, f.intrinsics, f.T_world_camera, f.image, max_depth_m=args.max_depth, min_depth_m=0.1))
        touched.append(len(update.touched_blocks))
    extract = Timings()
    mesh = None
    for _ in range(3):
        mesh = extract.run(lambda: extract_mesh(tsdf_map))
    mesher = IncrementalMesher()
    mesher.rebuild(tsdf_map)
    last = frames[-1]
    update = tsdf_map.integrate_depth(last.depth, last.intrinsics, last.T_world_camera, last.image,
                                      max_depth_m=args.max_depth, min_depth_m=0.1)
    incremental = Timings()
    for _ in range(3):
        # re-meshing changes blocks, which invalidates the concatenated mesh: mesh() is timed too
        incremental.run(lambda: (mesher.update(tsdf_map, update.touched_blocks), mesher.mesh()))
    info = {"blocks": tsdf_map.num_blocks, "touched_blocks_per_frame": float(np.mean(touched)),
            "memory_mb": tsdf_map.memory_bytes() / 1e6, "faces": len(mesh.faces), "torch_threads":
            torch.get_num_threads(), "incremental_blocks": len(update.touched_blocks)}
    return ({"integrate": integrate.summary(), "extract": extract.summary(),
             "incremental": incremental.summary()}, mesh, info)


def bench_open3d(
    frames: list, args: argparse.Namespace
) -> tuple[dict[str, dict[str, dict[str, float]]], dict, dict] | str:
    try:
        import open3d as o3d
    except Exception as exc:  # ImportError or a missing system library
        return f"Open3D unavailable ({type(exc).__name__}: {exc})"
    from neuralrecon_ros.core.geometry import invert
    from neuralrecon_ros.core.types import Mesh

    K = frames[0].intrinsics
    trunc_vox = 3.0
    device = o3d.core.Device("CPU:0")
    intrinsic = o3d.core.Tensor(K.matrix, o3d.core.Dtype.Float64)
    vbg = o3d.t.geometry.VoxelBlockGrid(
        attr_names=("tsdf", "weight", "color"),
        attr_dtypes=(o3d.core.Dtype.Float32, o3d.core.Dtype.Float32, o3d.core.Dtype.Float32),
        attr_channels=((1), (1), (3)), voxel_size=args.voxel, block_resolution=8, block_count=100000,
        device=device)
    legacy = o3d.pipelines.integration.ScalableTSDFVolume(
        voxel_length=args.voxel, sdf_trunc=trunc_vox * args.voxel,
        color_type=o3d.pipelines.integration.TSDFVolumeColorType.RGB8)
    pinhole = o3d.camera.PinholeCameraIntrinsic(K.width, K.height, K.fx, K.fy, K.cx, K.cy)
    t_integrate, l_integrate = Timings(), Timings()
    for frame in frames:
        depth = np.where(np.isfinite(frame.depth), frame.depth, 0.0).astype(np.float32)
        extrinsic = invert(frame.T_world_camera)  # Open3D wants camera <- world
        depth_t = o3d.t.geometry.Image(o3d.core.Tensor(depth))
        color_t = o3d.t.geometry.Image(o3d.core.Tensor(frame.image.astype(np.float32)))
        extrinsic_t = o3d.core.Tensor(extrinsic, o3d.core.Dtype.Float64)

        def integrate_t(depth_t=depth_t, color_t=color_t, extrinsic_t=extrinsic_t) -> None:
            blocks = vbg.compute_unique_block_coordinates(
                depth_t, intrinsic, extrinsic_t, 1.0, args.max_depth, trunc_vox)
            vbg.integrate(blocks, depth_t, color_t, intrinsic, intrinsic, extrinsic_t, 1.0, args.max_depth,
                          trunc_vox)

        t_integrate.run(integrate_t)
        rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(
            o3d.geometry.Image(np.ascontiguousarray(frame.image)), o3d.geometry.Image(depth),
            depth_scale=1.0, depth_trunc=args.max_depth, convert_rgb_to_intensity=False)
        l_integrate.run(lambda rgbd=rgbd, extrinsic=extrinsic: legacy.integrate(rgbd, pinhole, extrinsic))
    t_extract, l_extract = Timings(), Timings()
    for _ in range(3):
        t_mesh = t_extract.run(lambda: vbg.extract_triangle_mesh())
        l_mesh = l_extract.run(lambda: legacy.extract_triangle_mesh())
    meshes = {
        "o3d_vbg": Mesh(t_mesh.vertex.positions.numpy().astype(np.float32),
                        t_mesh.triangle.indices.numpy().astype(np.int64)),
        "o3d_legacy": Mesh(np.asarray(l_mesh.vertices, np.float32), np.asarray(l_mesh.triangles, np.int64)),
    }
    timings = {"o3d_vbg": {"integrate": t_integrate.summary(), "extract": t_extract.summary()},
               "o3d_legacy": {"integrate": l_integrate.summary(), "extract": l_extract.summary()}}
    return timings, meshes, {"open3d": o3d.__version__}


def bench_replay(sequence: Any, args: argparse.Namespace) -> dict[str, float]:
    """The whole offline path on a bag of the same frames: read, decode, TF, integrate, outputs, PLY."""
    import tempfile
    from pathlib import Path

    from neuralrecon_ros.cli import run_replay
    from neuralrecon_ros.io.synthetic_bag import write_synthetic_bag
    from neuralrecon_ros.node.parameters import NodeParameters

    with tempfile.TemporaryDirectory() as tmp:
        bag = write_synthetic_bag(sequence, Path(tmp) / "bag")
        params = NodeParameters({"voxel_size": args.voxel, "max_integration_distance_m": args.max_depth})
        start = time.perf_counter()
        summary = run_replay(bag, Path(tmp) / "out", params, progress=False)
        wall = time.perf_counter() - start
    return {"frames": summary["frames"], "wall_s": wall, "frames_per_s": summary["frames"] / wall,
            "ms_per_frame": wall * 1e3 / max(summary["frames"], 1)}


def main() -> None:
    args = parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch / Open3D start their thread pools
    import torch

    torch.set_num_threads(args.threads)
    from neuralrecon_ros.core.metrics import evaluate_meshes
    from neuralrecon_ros.core.synthetic import make_sequence

    start = time.perf_counter()
    sequence = make_sequence(args.seed, args.frames, args.width, args.height, rate_hz=args.rate)
    frames = list(sequence)
    print(f"rendered {len(frames)} frames {args.width}x{args.height} in {time.perf_counter() - start:.1f} s; "
          f"voxel {args.voxel} m, truncation 3 voxels, depth <= {args.max_depth} m, {args.threads} thread(s)",
          file=sys.stderr)

    ours, our_mesh, info = bench_ours(frames, args)
    results: dict[str, Any] = {"ours": ours, "info": info}
    meshes = {"ours": our_mesh}
    o3d_result = bench_open3d(frames, args)
    if isinstance(o3d_result, str):
        results["open3d"] = o3d_result
    else:
        timings, o3d_meshes, o3d_info = o3d_result
        results.update(timings)
        results["info"].update(o3d_info)
        meshes.update(o3d_meshes)
    results["replay"] = bench_replay(sequence, args)
    if not args.no_eval:
        gt = sequence.scene.gt_mesh(max_edge_m=0.1)
        results["fscore"] = {name: evaluate_meshes(mesh, gt, sample_spacing=0.01)["fscore"]
                             for name, mesh in meshes.items()}
    print_table(results)
    if args.json:
        print(json.dumps(results, indent=2))


def print_table(results: dict[str, Any]) -> None:
    """Cells are 'wall median / CPU mean' in ms; ratios likewise (CPU time is robust on a busy machine)."""
    rows = [("integrate / frame", "integrate"), ("mesh extraction (whole map)", "extract"),
            ("incremental re-mesh, 1 frame", "incremental")]
    systems = [name for name in ("ours", "o3d_vbg", "o3d_legacy") if name in results]
    print(f"{'ms: wall median / cpu mean':30}" + "".join(f"{name:>18}" for name in systems)
          + "".join(f"{'ours/' + name:>18}" for name in systems[1:]))
    for label, key in rows:
        cells = []
        for name in systems:
            stats = results[name].get(key)
            cells.append(f"{stats['median_ms']:8.1f} /{stats['cpu_ms']:6.1f}" if stats else "-")
        for name in systems[1:]:
            ours, other = results["ours"].get(key), results[name].get(key)
            if ours and other:
                wall, cpu = ours["median_ms"] / other["median_ms"], ours["cpu_ms"] / other["cpu_ms"]
                cells.append(f"{wall:8.2f} /{cpu:6.2f}")
            else:
                cells.append("-")
        print(f"{label:30}" + "".join(f"{cell:>18}" for cell in cells))
    if "fscore" in results:
        print(f"{'F-score @ 5 cm vs GT':30}" + "".join(f"{results['fscore'][n]:>18.3f}" for n in systems))
    if isinstance(results.get("open3d"), str):
        print(results["open3d"])
    replay = results["replay"]
    line = (f"replay (bag -> mesh.ply, all node outputs): {replay['frames_per_s']:.1f} frames/s, "
            f"{replay['ms_per_frame']:.1f} ms/frame wall")
    if "o3d_vbg" in results:
        line += f" = {replay['ms_per_frame'] / results['o3d_vbg']['integrate']['median_ms']:.1f}x Open3D VBG integrate"
    print(line)
    info = results["info"]
    print(f"ours: {info['blocks']} blocks, {info['touched_blocks_per_frame']:.0f} touched per frame, "
          f"{info['memory_mb']:.1f} MB, {info['faces']} faces; incremental re-mesh of "
          f"{info['incremental_blocks']} touched blocks")


if __name__ == "__main__":
    main()
