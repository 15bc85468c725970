"""Benchmark of the synthetic scenes: render speed, GT mesh size, bag writing.

    python bench/bench_synth.py [--frames 300] [--width 640] [--height 480] [--seed 0] [--bag PATH]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from neuralrecon_ros.core.synthetic import make_sequence, render
from neuralrecon_ros.core.timing import StageTimer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--style", default="handheld", choices=("handheld", "robot"))
    parser.add_argument("--bag", action="store_true", help="also time writing the sequence as an MCAP bag")
    args = parser.parse_args()

    timer = StageTimer()
    start = time.perf_counter()
    sequence = make_sequence(args.seed, args.frames, args.width, args.height, style=args.style)
    setup_s = time.perf_counter() - start

    start, start_cpu = time.perf_counter(), time.process_time()
    for pose in sequence.poses:
        with timer.stage("render_frame"):
            render(sequence.scene, pose, sequence.intrinsics)
    render_s = time.perf_counter() - start
    render_cpu_s = time.process_time() - start_cpu  # unaffected by other processes sharing the cores

    start = time.perf_counter()
    mesh = sequence.scene.gt_mesh(max_edge_m=0.02)
    mesh_s = time.perf_counter() - start
    frame_ms = timer.summary()["render_frame"]

    result = {
        "frames": args.frames,
        "resolution": f"{args.width}x{args.height}",
        "room_m": [round(float(v), 2) for v in sequence.scene.room.size],
        "scene_and_trajectory_s": round(setup_s, 3),
        "render_total_s": round(render_s, 2),
        "render_total_cpu_s": round(render_cpu_s, 2),
        "render_frame_ms_median": round(frame_ms["median"], 1),
        "render_frame_ms_p95": round(frame_ms["p95"], 1),
        "gt_mesh_s": round(mesh_s, 2),
        "gt_mesh_vertices": len(mesh.vertices),
        "gt_mesh_faces": len(mesh.faces),
        "gt_mesh_mb": round((mesh.vertices.nbytes + mesh.faces.nbytes) / 1e6, 1),
    }
    if args.bag:
        from neuralrecon_ros.io.synthetic_bag import write_synthetic_bag

        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            path = write_synthetic_bag(sequence, Path(tmp) / "synthetic.mcap", storage="mcap")
            result["bag_write_s"] = round(time.perf_counter() - start, 2)
            result["bag_mb"] = round(path.stat().st_size / 1e6, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
