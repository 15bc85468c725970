"""Benchmark of the map at scale: integration and mesh-update cost while the map grows 1x -> 10x, vs Open3D.

    python bench/bench_map_scale.py [--tiles 10] [--frames-per-tile 54] [--fragment 9] [--width 640]
                                    [--height 480] [--voxel 0.04] [--threads 1] [--device cpu] [--json]

One synthetic room sequence (core.synthetic, RGB-D, rendered once) is replayed ``--tiles`` times, each
copy shifted onto its own tile of a large floor, so the mapped area grows from 1x to 10x while every tile
costs the same to integrate. After every fragment (``--fragment`` frames) the mesh is brought up to date:
- ours: ``IncrementalMesher.update`` of the blocks the fragment touched (and the chunks to re-send),
- Open3D: ``VoxelBlockGrid.extract_triangle_mesh`` of the whole map (it has no incremental meshing).
Integration is ``TSDFMap.integrate_depth`` vs Open3D ``compute_unique_block_coordinates`` + ``integrate``,
same voxel size, block size 8, truncation 3 voxels, depth range. Per tile the table shows median
wall-clock ms (CPU ms in the JSON) and ours / Open3D; the mesh-update column of ours should stay flat
while Open3D's grows with the map. Memory is reported per 1000 blocks: our map tensors (with and
without the spare capacity of geometric growth) and mesh cache, and Open3D's voxel attributes.

``--threads`` (default 1) is applied to torch and, via OMP_NUM_THREADS before the imports, to Open3D.
``--device cuda`` runs our map on the GPU (Open3D then uses CUDA:0 if its build has CUDA).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np
from bench_integration import Timings  # same folder: wall-clock + process-CPU timing helper


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=10, help="map grows to this many times the first tile")
    parser.add_argument("--frames-per-tile", type=int, default=54)
    parser.add_argument("--fragment", type=int, default=9, help="frames per mesh update (NeuralRecon: 9)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--voxel", type=float, default=0.04)
    parser.add_argument("--max-depth", type=float, default=5.0)
    parser.add_argument("--chunk", type=int, default=4, help="mesh_chunk_size_blocks")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="torch device of our map (cpu, cuda)")
    parser.add_argument("--no-open3d", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the results as JSON as well")
    return parser.parse_args()


def tile_offsets(room_size: np.ndarray, n: int, columns: int = 5) -> list[np.ndarray]:
    """Translations putting ``n`` copies of the room side by side on a floor, 1 m apart."""
    step = np.asarray(room_size[:2], np.float64) + 1.0
    return [np.array([(i % columns) * step[0], (i // columns) * step[1], 0.0]) for i in range(n)]


def shifted(T: np.ndarray, offset: np.ndarray) -> np.ndarray:
    T = T.copy()
    T[:3, 3] += offset
    return T


def fragment_ends(n_frames: int, fragment: int) -> set[int]:
    return {i for i in range(n_frames) if (i + 1) % fragment == 0 or i == n_frames - 1}


def bench_ours(frames: list, offsets: list[np.ndarray], args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from neuralrecon_ros.core.mapping.config import MapConfig
    from neuralrecon_ros.core.mapping.mesh_chunks import MeshChunkConfig, MeshChunker
    from neuralrecon_ros.core.mapping.meshing import IncrementalMesher
    from neuralrecon_ros.core.mapping.tsdf_map import TSDFMap

    config = MapConfig(voxel_size=args.voxel, block_size=8, truncation_distance_vox=3.0)
    warm = TSDFMap(config, device=args.device)  # first-call overheads outside the timings
    f = frames[0]
    IncrementalMesher().update(warm, warm.integrate_depth(f.depth, f.intrinsics, f.T_world_camera, f.image)
                               .touched_blocks)
    tsdf_map = TSDFMap(config, device=args.device)
    mesher, chunker = IncrementalMesher(), MeshChunker(MeshChunkConfig(mesh_chunk_size_blocks=args.chunk))
    ends = fragment_ends(len(frames), args.fragment)
    rows, peak_bytes = [], 0
    for offset in offsets:
        integrate, mesh_update, chunk_output = Timings(), Timings(), Timings()
        touched: list[np.ndarray] = []
        chunks_sent, blocks_remeshed = [], []
        for i, f in enumerate(frames):
            T = shifted(f.T_world_camera, offset)
            update = integrate.run(lambda f=f, T=T: tsdf_map.integrate_depth(
                f.depth, f.intrinsics, T, f.image, max_depth_m=args.max_depth, min_depth_m=0.1))
            touched.append(update.touched_blocks)
            peak_bytes = max(peak_bytes, tsdf_map.memory_bytes())
            if i in ends:
                blocks = np.unique(np.concatenate(touched), axis=0)
                touched = []
                changed = mesh_update.run(lambda blocks=blocks: mesher.update(tsdf_map, blocks))
                sent = chunk_output.run(lambda changed=changed: chunker.update(mesher, changed))
                chunks_sent.append(len(sent.chunks))
                blocks_remeshed.append(len(blocks))
        rows.append({"blocks": tsdf_map.num_blocks, "integrate": integrate.summary(),
                     "mesh_update": mesh_update.summary(), "chunk_output": chunk_output.summary(),
                     "chunks_sent_per_fragment": float(np.mean(chunks_sent)),
                     "touched_blocks_per_fragment": float(np.mean(blocks_remeshed)),
                     "chunks_total": chunker.num_chunks})
    blocks = tsdf_map.num_blocks
    B = tsdf_map.block_size
    live = blocks * (B**3 * (4 + 4 + (3 if tsdf_map.has_color else 0)) + 8 * 3)  # tensors + key/index
    mesh_bytes = 0
    for coord in mesher.block_coords():
        block_mesh = mesher.block_mesh(coord)
        assert block_mesh is not None
        mesh_bytes += len(block_mesh.vertices) * 15 + len(block_mesh.faces) * 12  # f32 xyz + rgb, int32 faces
    memory = {"blocks": blocks, "map_mb_per_1000": live / blocks * 1000 / 1e6,
              "map_peak_allocated_mb_per_1000": peak_bytes / blocks * 1000 / 1e6,
              "mesh_cache_mb_per_1000": mesh_bytes / blocks * 1000 / 1e6,
              "torch_threads": torch.get_num_threads(), "device": str(tsdf_map.device)}
    return {"tiles": rows, "memory": memory}


def bench_open3d(frames: list, offsets: list[np.ndarray], args: argparse.Namespace, block_count: int
                 ) -> dict[str, Any] | str:
    try:
        import open3d as o3d
    except Exception as exc:  # ImportError or a missing system library
        return f"Open3D unavailable ({type(exc).__name__}: {exc})"
    from neuralrecon_ros.core.geometry import invert

    use_cuda = args.device.startswith("cuda") and o3d.core.cuda.is_available()
    device = o3d.core.Device("CUDA:0" if use_cuda else "CPU:0")
    K = frames[0].intrinsics
    trunc_vox = 3.0
    intrinsic = o3d.core.Tensor(K.matrix, o3d.core.Dtype.Float64)
    attrs = {"attr_names": ("tsdf", "weight", "color"),
             "attr_dtypes": (o3d.core.Dtype.Float32, o3d.core.Dtype.Float32, o3d.core.Dtype.Float32),
             "attr_channels": ((1), (1), (3))}
    vbg = o3d.t.geometry.VoxelBlockGrid(**attrs, voxel_size=args.voxel, block_resolution=8,
                                        block_count=block_count, device=device)
    images = [(o3d.t.geometry.Image(o3d.core.Tensor(np.where(np.isfinite(f.depth), f.depth, 0.0)
                                                    .astype(np.float32))).to(device),
               o3d.t.geometry.Image(o3d.core.Tensor(f.image.astype(np.float32))).to(device)) for f in frames]
    ends = fragment_ends(len(frames), args.fragment)
    rows = []
    for offset in offsets:
        integrate, extract = Timings(), Timings()
        for i, (f, (depth, color)) in enumerate(zip(frames, images)):
            extrinsic = o3d.core.Tensor(invert(shifted(f.T_world_camera, offset)), o3d.core.Dtype.Float64)

            def step(depth: Any = depth, color: Any = color, extrinsic: Any = extrinsic) -> None:
                blocks = vbg.compute_unique_block_coordinates(
                    depth, intrinsic, extrinsic, 1.0, args.max_depth, trunc_vox)
                vbg.integrate(blocks, depth, color, intrinsic, intrinsic, extrinsic, 1.0, args.max_depth,
                              trunc_vox)

            integrate.run(step)
            if i in ends:
                extract.run(lambda: vbg.extract_triangle_mesh())
        rows.append({"blocks": int(vbg.hashmap().size()), "integrate": integrate.summary(),
                     "mesh_update": extract.summary()})
    blocks = int(vbg.hashmap().size())
    per_block = 8**3 * (4 + 4 + 12)
    memory = {"blocks": blocks, "attributes_mb_per_1000": per_block * 1000 / 1e6,
              "preallocated_mb": per_block * int(vbg.hashmap().capacity()) / 1e6, "device": str(device),
              "open3d": o3d.__version__}
    return {"tiles": rows, "memory": memory}


def main() -> None:
    args = parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch / Open3D start their thread pools
    import torch

    torch.set_num_threads(args.threads)
    from neuralrecon_ros.core.synthetic import make_sequence

    start = time.perf_counter()
    sequence = make_sequence(args.seed, args.frames_per_tile, args.width, args.height)
    frames = list(sequence)
    offsets = tile_offsets(sequence.scene.size, args.tiles)
    size = sequence.scene.size
    print(f"rendered {len(frames)} frames {args.width}x{args.height} in {time.perf_counter() - start:.1f} s; "
          f"{args.tiles} tiles of a {size[0]:.1f} x {size[1]:.1f} m room; voxel {args.voxel} m, fragments of "
          f"{args.fragment} frames, {args.threads} thread(s), device {args.device}", file=sys.stderr)
    results: dict[str, Any] = {"ours": bench_ours(frames, offsets, args)}
    if not args.no_open3d:
        capacity = int(results["ours"]["memory"]["blocks"] * 1.5) + 1000
        results["open3d"] = bench_open3d(frames, offsets, args, capacity)
    print_table(results)
    if args.json:
        print(json.dumps(results, indent=2))


def print_table(results: dict[str, Any]) -> None:
    ours = results["ours"]["tiles"]
    o3d = results.get("open3d")
    o3d_rows = o3d["tiles"] if isinstance(o3d, dict) else None
    print("median wall ms | integrate / frame: ours, Open3D, ours/O3D | mesh update / fragment: ours "
          "(incremental), Open3D (whole map), ours/O3D | chunks re-sent / fragment (of all)")
    print(f"{'area':>5} {'blocks':>7} | {'ours':>7} {'o3d':>7} {'ratio':>6} | {'ours':>7} {'o3d':>8} "
          f"{'ratio':>6} | {'chunks':>13}")
    for k, row in enumerate(ours):
        integrate, mesh = row["integrate"]["median_ms"], row["mesh_update"]["median_ms"]
        cells = f"{k + 1:>4}x {row['blocks']:>7} | {integrate:>7.1f} "
        if o3d_rows:
            other = o3d_rows[k]
            oi, om = other["integrate"]["median_ms"], other["mesh_update"]["median_ms"]
            cells += f"{oi:>7.1f} {integrate / oi:>6.2f} | {mesh:>7.1f} {om:>8.1f} {mesh / om:>6.3f} |"
        else:
            cells += f"{'-':>7} {'-':>6} | {mesh:>7.1f} {'-':>8} {'-':>6} |"
        print(cells + f" {row['chunks_sent_per_fragment']:>5.1f} of {row['chunks_total']:<5}")
    first, last = ours[0]["mesh_update"]["median_ms"], ours[-1]["mesh_update"]["median_ms"]
    line = f"mesh update {len(ours)}x / 1x: ours {last / first:.2f}"
    if o3d_rows:
        growth = o3d_rows[-1]["mesh_update"]["median_ms"] / o3d_rows[0]["mesh_update"]["median_ms"]
        line += f", Open3D {growth:.2f}"
    print(line)
    memory = results["ours"]["memory"]
    print(f"memory per 1000 blocks: ours map {memory['map_mb_per_1000']:.2f} MB (allocated at peak, with "
          f"spare capacity: {memory['map_peak_allocated_mb_per_1000']:.2f} MB), mesh cache "
          f"{memory['mesh_cache_mb_per_1000']:.2f} MB", end="")
    if isinstance(o3d, dict):
        o3d_memory = o3d["memory"]
        print(f"; Open3D voxel attributes {o3d_memory['attributes_mb_per_1000']:.2f} MB "
              f"({o3d_memory['preallocated_mb']:.0f} MB preallocated for {o3d_memory['blocks']} blocks)")
    else:
        print(f"; {o3d}" if o3d else "")


if __name__ == "__main__":
    main()
