"""Bandwidth of the ~/tsdf_layer stream against the whole voxel cloud at the same rate, while the map grows.

    python bench/bench_layer_stream.py [--tiles 10] [--frames-per-tile 90] [--rate 2] [--width 320]
                                       [--height 240] [--voxel 0.04] [--threads 1] [--json]

As in ``bench_map_scale.py``, one synthetic RGB-D room sequence (core.synthetic, rendered once) is
replayed ``--tiles`` times, each copy on its own tile of a large floor, so the map grows from 1x to 10x
the area while every tile changes the map at the same pace. Frames are fused by depth fusion with colour
(the node's depth mode) at their recorded rate; every ``1 / --rate`` seconds of sequence time, as the node
would publish at ``tsdf_layer_publish_rate_hz`` = ``tsdf_cloud_publish_rate_hz`` = ``--rate``:

- **layer**: the TsdfLayer message of the blocks changed or removed since the last one (the pipeline's
  change tracker, ``io.tsdf_layer.encode_tsdf_layer``), CDR-serialised;
- **cloud**: ``~/tsdf_voxels``, the near-surface voxel cloud the node publishes for planners
  (PointCloud2 x, y, z, tsdf, weight; |tsdf| <= 0.5, the node's defaults), CDR-serialised: what a receiver
  needs each time to see the map, the baseline;
- **full layer**: a TsdfLayer message with every block (what a late joiner's resend costs once).

Per tile the table prints the map's blocks, the blocks changed per layer message, mean bytes/s of each
stream over that tile's publications, layer / cloud, and the median wall-clock ms to build + serialise one
message. The layer's cost should stay flat while the cloud's grows
with the map.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np
from bench_map_scale import shifted, tile_offsets  # same folder: the tiled-room layout


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=10, help="map grows to this many times the first tile")
    parser.add_argument("--frames-per-tile", type=int, default=90)
    parser.add_argument("--rate", type=float, default=2.0, help="publish rate of both streams (Hz)")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--voxel", type=float, default=0.04)
    parser.add_argument("--max-depth", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the results as JSON as well")
    return parser.parse_args()


def run(frames: list, offsets: list[np.ndarray], args: argparse.Namespace) -> list[dict[str, Any]]:
    from rosbags.typesys import Stores, get_typestore

    from neuralrecon_ros.core.mapping.config import MapConfig
    from neuralrecon_ros.core.mapping.layer_changes import LayerChangeTracker
    from neuralrecon_ros.core.mapping.products import tsdf_voxel_cloud
    from neuralrecon_ros.core.mapping.tsdf_map import TSDFMap
    from neuralrecon_ros.io.interfaces import register_custom_types
    from neuralrecon_ros.io.layer_replica import LayerReplica
    from neuralrecon_ros.io.messages import rosbags_types
    from neuralrecon_ros.io.planner_messages import encode_tsdf_cloud
    from neuralrecon_ros.io.tsdf_layer import TSDF_LAYER_TYPE, encode_tsdf_layer

    typestore = get_typestore(Stores.ROS2_HUMBLE)
    register_custom_types(typestore)
    types = rosbags_types(typestore)
    identity = np.eye(4)
    tsdf_map = TSDFMap(MapConfig(voxel_size=args.voxel, block_size=8, truncation_distance_vox=3.0))
    tracker = LayerChangeTracker()
    replica = LayerReplica()  # checks on the way that the stream rebuilds the map
    sequence_number = 0

    def layer_bytes(full: bool) -> tuple[int, float, int]:
        nonlocal sequence_number
        start = time.perf_counter()
        changes = tracker.take(tsdf_map, full=full)
        msg = encode_tsdf_layer(types, changes, tsdf_map, sequence_number, 0.0, "odom", identity)
        data = typestore.serialize_cdr(msg, TSDF_LAYER_TYPE)
        elapsed = time.perf_counter() - start
        replica.apply(typestore.deserialize_cdr(data, TSDF_LAYER_TYPE))
        sequence_number += 1
        return len(data), elapsed, len(changes.blocks)

    def cloud_bytes() -> tuple[int, float]:
        start = time.perf_counter()
        msg = encode_tsdf_cloud(types, tsdf_voxel_cloud(tsdf_map, 0.5, 0.0), 0.0, "odom")
        data = typestore.serialize_cdr(msg, "sensor_msgs/msg/PointCloud2")
        return len(data), time.perf_counter() - start

    layer_bytes(full=True)  # the first message (an empty map): the stream starts in sync
    period = 1.0 / args.rate
    stamps = [f.stamp for f in frames]
    tile_duration = stamps[-1] - stamps[0] + (stamps[1] - stamps[0])
    rows = []
    for tile, offset in enumerate(offsets):
        layer, cloud, layer_ms, cloud_ms, changed = [], [], [], [], []
        next_publish = stamps[0] + period
        for f in frames:
            update = tsdf_map.integrate_depth(f.depth, f.intrinsics, shifted(f.T_world_camera, offset), f.image,
                                              max_depth_m=args.max_depth, min_depth_m=0.1)
            tracker.mark(update.touched_blocks)
            if f.stamp >= next_publish:
                next_publish += period
                size, seconds, blocks = layer_bytes(full=False)
                layer.append(size)
                changed.append(blocks)
                layer_ms.append(seconds * 1e3)
                size, seconds = cloud_bytes()
                cloud.append(size)
                cloud_ms.append(seconds * 1e3)
        full_size, full_seconds, _ = layer_bytes(full=True)
        assert replica.in_sync and replica.tsdf_map is not None
        assert replica.tsdf_map.num_blocks == tsdf_map.num_blocks
        publications = len(layer)
        rows.append({
            "area": tile + 1, "blocks": tsdf_map.num_blocks, "publications": publications,
            "seconds": tile_duration, "changed_blocks_per_message": float(np.mean(changed)),
            "layer_bytes_per_s": float(np.mean(layer)) * args.rate,
            "cloud_bytes_per_s": float(np.mean(cloud)) * args.rate,
            "full_layer_bytes": full_size,
            "layer_ms": float(np.median(layer_ms)), "cloud_ms": float(np.median(cloud_ms)),
            "full_layer_ms": full_seconds * 1e3,
        })
    return rows


def print_table(rows: list[dict[str, Any]], rate: float) -> None:
    print(f"bytes/s at {rate:g} Hz (mean over each tile's publications) | median ms to build + serialise one "
          "message")
    print(f"{'area':>4} {'blocks':>7} {'changed':>7} | {'layer B/s':>11} {'cloud B/s':>11} {'layer/cloud':>11} | "
          f"{'full layer B':>12} | {'layer ms':>8} {'cloud ms':>8} {'full ms':>8}")
    for r in rows:
        print(f"{r['area']:>3}x {r['blocks']:>7} {r['changed_blocks_per_message']:>7.0f} | "
              f"{r['layer_bytes_per_s']:>11,.0f} {r['cloud_bytes_per_s']:>11,.0f} "
              f"{r['layer_bytes_per_s'] / r['cloud_bytes_per_s']:>11.3f} | {r['full_layer_bytes']:>12,} | "
              f"{r['layer_ms']:>8.1f} {r['cloud_ms']:>8.1f} {r['full_layer_ms']:>8.1f}")
    first, last = rows[0], rows[-1]
    layer_growth = last["layer_bytes_per_s"] / first["layer_bytes_per_s"]
    print(f"from 1x to {last['area']}x area: layer stream x{layer_growth:.2f}, "
          f"voxel cloud x{last['cloud_bytes_per_s'] / first['cloud_bytes_per_s']:.2f}, "
          f"map blocks x{last['blocks'] / first['blocks']:.2f}")


def main() -> None:
    args = parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    from neuralrecon_ros.core.synthetic import make_sequence

    start = time.perf_counter()
    sequence = make_sequence(args.seed, args.frames_per_tile, args.width, args.height)
    frames = list(sequence)
    offsets = tile_offsets(sequence.scene.size, args.tiles)
    size = sequence.scene.size
    print(f"rendered {len(frames)} frames {args.width}x{args.height} in {time.perf_counter() - start:.1f} s; "
          f"{args.tiles} tiles of a {size[0]:.1f} x {size[1]:.1f} m room, {frames[-1].stamp - frames[0].stamp:.1f} s "
          f"of frames per tile; voxel {args.voxel} m, colour fused; {args.threads} thread(s)", file=sys.stderr)
    rows = run(frames, offsets, args)
    print_table(rows, args.rate)
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
