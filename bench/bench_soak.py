"""Soak: a robot touring a multi-room world for 10,000 frames; memory, queues and latency per quarter.

    python bench/bench_soak.py RESULTS.json [--frames 10000] [--width 160] [--height 120] [--seed 0]
                               [--radius 4.0] [--bag DIR] [--runs plain,radius,planner]

Renders a seeded floor plan (``core.synthetic.floor_plan``: rooms in a grid, doorways, furniture) and a
robot's random walk through it, which keeps leaving and re-entering rooms, into a ROS 2 bag (``--bag``
keeps it for the next call). Then replays the bag through the node logic with the bag transport
(``replay_bag``, depth mode, every output at its default rate), once per run, each in a fresh process:

- ``plain``: the default parameters (the whole map is kept);
- ``radius``: ``map_clearing_radius_m:=RADIUS`` (rooms left behind leave the map and come back);
- ``planner``: no mesh outputs (``mesh_publish_rate_hz:=0``, ``full_mesh_publish_rate_hz:=0``), as a
  robot that only feeds its planner would run; nothing re-meshes the map then.

After every image the probe reads (the bench wraps ``NodeLogic.spin_once``; nothing in the package
changes): the process RSS, the map's tensor bytes and blocks, the node's input queue, camera_info and
depth stores, the worker's backlog, the TF samples held, the timer's samples held, the mesher's blocks,
the mesh chunks, the re-mesh backlog. Per quarter of the run it reports the peak of each, the
per-stage latency (median / p95 / mean of the pipeline timer's samples taken in that quarter), the wall
and CPU time per frame (CPU time is not inflated by other processes on a shared machine) and the load
average. Target: once the area is mapped the memory is flat (last quarter's peak <= 1.1 x the second's)
and so is the latency.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

#: what the probe records, peak per quarter (the key, a description)
GAUGES = {
    "rss_mib": "process resident memory (MiB)",
    "map_mib": "map tensors, incl. spare capacity (MiB)",
    "map_blocks": "map blocks",
    "input_queue": "node input queue (frames waiting for pose)",
    "info_store": "camera_info waiting for an image",
    "depth_store": "depth images waiting for an image",
    "backlog": "worker backlog",
    "tf_samples": "TF samples held",
    "timer_samples": "timer samples held",
    "mesher_blocks": "blocks with triangles",
    "mesh_chunks": "mesh chunks",
    "remesh_pending": "map updates waiting to be re-meshed",
    "layer_pending": "block keys waiting for the layer stream",
}
STAGES = ("decode", "integrate", "memory_bounds", "mesh_update", "publish_mesh_markers", "publish_mesh",
          "publish_tsdf_voxels", "publish_occupancy_grid", "publish_esdf_slice")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
MIB = 1024.0 * 1024.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="results JSON file")
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--radius", type=float, default=4.0, help="map_clearing_radius_m of the 'radius' run")
    parser.add_argument("--bag", help="bag directory: reused if it exists, else rendered there and kept")
    parser.add_argument("--runs", default="plain,radius,planner", help="comma-separated: plain, radius, planner")
    parser.add_argument("--parallel", action="store_true",
                        help="run the replays at the same time (faster; latencies then share the CPU)")
    parser.add_argument("--child", nargs=3, metavar=("BAG", "PARAMS_JSON", "FRAMES"), help=argparse.SUPPRESS)
    return parser.parse_args()


# ------------------------------------------------------------------------------------ the probe


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_BYTES


class Probe:
    """Samples the node after every tick; aggregates per quarter of the expected frames."""

    def __init__(self, frames: int) -> None:
        self.frames = frames
        self.quarters: list[dict[str, Any]] = [self._new_quarter() for _ in range(4)]
        self.last_images = 0
        self.last_totals: dict[str, tuple[int, float]] = {}
        self.quarter_start = (time.perf_counter(), time.process_time())
        self.current = 0

    @staticmethod
    def _new_quarter() -> dict[str, Any]:
        return {"peak": dict.fromkeys(GAUGES, 0.0), "stage_ms": {s: [] for s in STAGES}, "frames": 0}

    def tick(self, logic: Any) -> None:
        images = logic.received["image"]
        if images == self.last_images:
            return
        self.last_images = images
        quarter = min(3, (images - 1) * 4 // self.frames)
        if quarter != self.current:
            self._close_quarter(self.current)
            self.current = quarter
        q = self.quarters[quarter]
        q["frames"] += 1
        pipeline = logic.pipeline
        values = {
            "rss_mib": rss_bytes() / MIB,
            "map_mib": pipeline.tsdf_map.memory_bytes() / MIB,
            "map_blocks": pipeline.tsdf_map.num_blocks,
            "input_queue": logic.queue_length,
            "info_store": len(logic._infos),
            "depth_store": len(logic._depths),
            "backlog": logic.worker.backlog_length,
            "tf_samples": sum(len(edge.stamps) for edge in logic.tf._edges.values()),
            "timer_samples": pipeline.timer.num_samples_held(),
            "mesher_blocks": pipeline.mesher.num_blocks,
            "mesh_chunks": pipeline.chunker.num_chunks,
            "remesh_pending": len(pipeline._dirty_blocks),
            "layer_pending": getattr(getattr(pipeline, "layer_tracker", None), "_pending_rows", 0),
        }
        peak = q["peak"]
        for key, value in values.items():
            peak[key] = max(peak[key], float(value))
        totals = pipeline.timer.totals()
        for stage in STAGES:
            count, total = totals.get(stage, (0, 0.0))
            old_count, old_total = self.last_totals.get(stage, (0, 0.0))
            if count > old_count:  # mean of the samples taken since the last tick (usually exactly one)
                q["stage_ms"][stage].append((total - old_total) / (count - old_count))
        self.last_totals = totals

    def _close_quarter(self, quarter: int) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        q = self.quarters[quarter]
        q["wall_s"], q["cpu_s"] = wall - self.quarter_start[0], cpu - self.quarter_start[1]
        q["load_average"] = os.getloadavg()[0]
        self.quarter_start = (wall, cpu)

    def finish(self) -> list[dict[str, Any]]:
        self._close_quarter(self.current)
        out = []
        for q in self.quarters:
            frames = max(q["frames"], 1)
            stage_ms = {}
            for stage, samples in q["stage_ms"].items():
                if samples:
                    values = np.asarray(samples)
                    stage_ms[stage] = {"count": len(values), "median": float(np.median(values)),
                                       "p95": float(np.percentile(values, 95)), "mean": float(values.mean())}
            out.append({"frames": q["frames"], "peak": q["peak"], "stage_ms": stage_ms,
                        "wall_ms_per_frame": 1e3 * q.get("wall_s", 0.0) / frames,
                        "cpu_ms_per_frame": 1e3 * q.get("cpu_s", 0.0) / frames,
                        "load_average": q.get("load_average")})
        return out


def run_child(bag: str, params_json: str, frames: int) -> dict[str, Any]:
    from neuralrecon_ros.node import logic as logic_module
    from neuralrecon_ros.node.bag_transport import replay_bag
    from neuralrecon_ros.node.parameters import NodeParameters
    from neuralrecon_ros.node.pipeline_factory import build_pipeline

    probe = Probe(frames)
    original = logic_module.NodeLogic.spin_once

    def probed(self: Any, now: float) -> None:
        original(self, now)
        probe.tick(self)

    logic_module.NodeLogic.spin_once = probed  # type: ignore[method-assign]  # this process only
    params = NodeParameters({"mode": "depth", **json.loads(params_json)})
    pipeline = build_pipeline(params)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = replay_bag(bag, out, params, pipeline, progress=False)
        wall = time.perf_counter() - start
        output_mib = (Path(out) / "output.mcap").stat().st_size / MIB
    return {"params": json.loads(params_json), "wall_s": wall, "frames": result.counts.get("frames", 0),
            "dropped": result.dropped, "published": result.published, "output_bag_mib": output_mib,
            "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "quarters": probe.finish()}


# ----------------------------------------------------------------------------------- the parent


def render_bag(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    from neuralrecon_ros.core.synthetic.floor_plan import make_tour_sequence
    from neuralrecon_ros.io.synthetic_bag import write_synthetic_bag

    start = time.perf_counter()
    sequence, plan, rooms = make_tour_sequence(args.seed, args.frames, args.width, args.height)
    info = {"rooms": plan.n_rooms, "size_m": [round(float(v), 2) for v in plan.scene.room.size],
            "room_entries": len(rooms) - 1, "rooms_in_order": rooms}
    if not path.exists():
        write_synthetic_bag(sequence, path)
        info["render_s"] = time.perf_counter() - start
    return info


def main() -> None:
    args = parse_args()
    if args.child:
        bag, params_json, frames = args.child
        print(json.dumps(run_child(bag, params_json, int(frames))))
        return
    runs = {"plain": {}, "radius": {"map_clearing_radius_m": args.radius},
            "planner": {"mesh_publish_rate_hz": 0.0, "full_mesh_publish_rate_hz": 0.0}}
    chosen = [name.strip() for name in args.runs.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in runs]
    if unknown:
        sys.exit(f"unknown run(s) {unknown}; expected some of {list(runs)}")
    with tempfile.TemporaryDirectory() as tmp:
        bag = Path(args.bag) if args.bag else Path(tmp) / "bag"
        results: dict[str, Any] = {"frames": args.frames, "size": [args.width, args.height],
                                   "load_average_before": os.getloadavg(), "world": render_bag(bag, args)}
        print(f"world: {results['world']['rooms']} rooms, {results['world']['size_m']} m, the robot enters a room "
              f"{results['world']['room_entries']} times; load average {results['load_average_before']}",
              file=sys.stderr)
        children = {name: subprocess.Popen(
            [sys.executable, __file__, args.output, "--child", str(bag), json.dumps(runs[name]), str(args.frames)],
            stdout=subprocess.PIPE, text=True) for name in (chosen if args.parallel else [])}
        results["runs"] = {}
        for name in chosen:
            proc = children.get(name) or subprocess.Popen(
                [sys.executable, __file__, args.output, "--child", str(bag), json.dumps(runs[name]),
                 str(args.frames)], stdout=subprocess.PIPE, text=True)
            stdout, _ = proc.communicate()
            if proc.returncode != 0:
                sys.exit(f"soak run '{name}' failed (exit status {proc.returncode})")
            results["runs"][name] = json.loads(stdout.strip().splitlines()[-1])
    results["load_average_after"] = os.getloadavg()
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print_tables(results)


def print_tables(results: dict[str, Any]) -> None:
    for name, run in results["runs"].items():
        quarters = run["quarters"]
        print(f"\n== {name}: {run['params'] or 'default parameters'}; {run['frames']} frames in {run['wall_s']:.0f} s; "
              f"dropped {run['dropped'] or 'none'}; output bag {run['output_bag_mib']:.0f} MiB")
        print(f"{'peak per quarter':44}" + "".join(f"{'Q' + str(i + 1):>10}" for i in range(4)) + f"{'Q4/Q2':>8}")
        for key, label in GAUGES.items():
            peaks = [q["peak"][key] for q in quarters]
            ratio = peaks[3] / peaks[1] if peaks[1] else float("nan")
            print(f"{label:44}" + "".join(f"{v:10.1f}" for v in peaks) + f"{ratio:8.2f}")
        print(f"{'latency ms: median / p95 per quarter':44}")
        for stage in STAGES:
            cells = [q["stage_ms"].get(stage) for q in quarters]
            if not any(cells):
                continue
            text = "".join(f"{c['median']:6.1f}/{c['p95']:<6.1f}" if c else f"{'-':>13}" for c in cells)
            q2, q4 = cells[1], cells[3]
            ratio = f"{q4['median'] / q2['median']:8.2f}" if q2 and q4 else ""
            print(f"  {stage:42}{text}{ratio}")
        print(f"{'wall ms / frame':44}" + "".join(f"{q['wall_ms_per_frame']:10.1f}" for q in quarters))
        print(f"{'CPU ms / frame (load-independent)':44}" + "".join(f"{q['cpu_ms_per_frame']:10.1f}" for q in quarters))
        print(f"{'load average (1 min) at quarter end':44}" + "".join(f"{q['load_average']:10.1f}" for q in quarters))


if __name__ == "__main__":
    main()
