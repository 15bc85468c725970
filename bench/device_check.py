"""Steps of ``bench/device_check.sh`` that need Python: map integration / meshing timing, a timed training
run, and the summary of every step into one results file.

    python bench/device_check.py mapping --device cuda --frames 30 --width 640 --height 480 --json out.json
    python bench/device_check.py training --device cuda --frames 40 --output DIR --json out.json
    python bench/device_check.py summary --results DIR

``mapping``: renders a synthetic RGB-D sequence (core.synthetic), integrates every frame into a
``TSDFMap`` on ``--device`` (4 cm voxels, 3-voxel truncation, colour) and re-meshes the touched blocks with
an ``IncrementalMesher`` after each frame; reports per-frame medians / p95 (CUDA synchronised), the
whole-map mesh extraction time and, on CUDA, the peak GPU memory.
``training``: ``neuralrecon-ros train`` on one small synthetic room (phase 1, no validation) on
``--device``; reports the per-step times from its metrics.jsonl (the first step, with warm-up, apart).
``summary``: gathers ``*.json`` step results and ``steps.tsv`` (name, status, seconds) into
``device_check.json`` and prints it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _stats(ms: list[float]) -> dict[str, float]:
    values = np.asarray(ms, dtype=np.float64)
    return {"median_ms": float(np.median(values)), "p95_ms": float(np.percentile(values, 95)),
            "mean_ms": float(values.mean()), "count": len(values)}


def mapping(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from neuralrecon_ros.core.mapping.config import MapConfig
    from neuralrecon_ros.core.mapping.meshing import IncrementalMesher, extract_mesh
    from neuralrecon_ros.core.mapping.tsdf_map import TSDFMap
    from neuralrecon_ros.core.synthetic import make_sequence

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    start = time.perf_counter()
    frames = list(make_sequence(args.seed, args.frames, args.width, args.height, rate_hz=5.0))
    render_s = time.perf_counter() - start
    config = MapConfig(voxel_size=0.04, block_size=8, truncation_distance_vox=3.0)
    warm = TSDFMap(config, device=device)  # first-call costs (CUDA context, kernels) outside the timings
    warm.integrate_depth(frames[0].depth, frames[0].intrinsics, frames[0].T_world_camera, frames[0].image)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    tsdf_map, mesher = TSDFMap(config, device=device), IncrementalMesher()
    integrate_ms, mesh_ms, touched = [], [], []
    for frame in frames:
        sync()
        t0 = time.perf_counter()
        update = tsdf_map.integrate_depth(frame.depth, frame.intrinsics, frame.T_world_camera, frame.image)
        sync()
        t1 = time.perf_counter()
        mesher.update(tsdf_map, update.touched_blocks)
        t2 = time.perf_counter()
        integrate_ms.append((t1 - t0) * 1e3)
        mesh_ms.append((t2 - t1) * 1e3)
        touched.append(len(update.touched_blocks))
    sync()
    t0 = time.perf_counter()
    mesh = extract_mesh(tsdf_map)
    extract_ms = (time.perf_counter() - t0) * 1e3
    result: dict[str, Any] = {
        "device": str(device), "frames": len(frames), "image": f"{args.width}x{args.height}",
        "render_s": render_s, "integrate_per_frame": _stats(integrate_ms),
        "incremental_mesh_per_frame": _stats(mesh_ms), "extract_whole_map_ms": extract_ms,
        "blocks": tsdf_map.num_blocks, "touched_blocks_per_frame": float(np.mean(touched)),
        "faces": len(mesh.faces), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        result["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def training(args: argparse.Namespace) -> dict[str, Any]:
    output = Path(args.output)
    # seed 1001: the "robot" trajectory style
    params = {"synthetic_train_scenes": 1, "synthetic_val_scenes": 0, "synthetic_frames": args.frames,
              "synthetic_seed": 1001,
              "phase1_epochs": 1, "phase2_epochs": 0, "device": args.device, "checkpoint_every_steps": 1000,
              "max_train_time_s": args.max_train_time_s}
    command = [sys.executable, "-m", "neuralrecon_ros.cli", "train", "--output", str(output), "--no-progress"]
    for name, value in params.items():
        command += ["-p", f"{name}:={value}"]
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    result: dict[str, Any] = {"device": args.device, "command": " ".join(command), "returncode": completed.returncode,
                              "wall_s": wall}
    if completed.returncode != 0:
        result["stderr_tail"] = completed.stderr[-3000:]
        return result
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in records if r.get("type") == "train"]
    times = np.diff([0.0] + [r["train_time_s"] for r in steps]) * 1e3
    result.update({"steps": len(steps), "first_step_ms": float(times[0]) if len(times) else None,
                   "losses": [round(r["loss"], 4) for r in steps]})
    if len(times) > 1:
        result["step_after_first"] = _stats(times[1:].tolist())
    return result


def summary(args: argparse.Namespace) -> dict[str, Any]:
    results = Path(args.results)
    report: dict[str, Any] = {"steps": []}
    table = results / "steps.tsv"
    if table.is_file():
        for line in table.read_text().splitlines():
            name, status, seconds = line.split("\t")
            report["steps"].append({"name": name, "status": status, "seconds": float(seconds)})
    for path in sorted(results.glob("*.json")):
        if path.name != "device_check.json":
            try:
                report[path.stem] = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                report[path.stem] = f"unreadable: {exc}"
    junit = results / "parity.xml"
    if junit.is_file():
        report["parity"] = _junit_counts(junit)
    for name in ("network", "network_torchsparse"):
        if isinstance(report.get(name), dict):
            report[name]["per_keyframe"] = _per_keyframe(report[name])
    return report


def _junit_counts(path: Path) -> dict[str, Any]:
    """Test counts and the failed tests' names of a pytest --junitxml file."""
    import xml.etree.ElementTree as ElementTree

    root = ElementTree.parse(path).getroot()
    cases = root.iter("testcase")
    failed, skipped, total = [], 0, 0
    for case in cases:
        total += 1
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(case.get("name"))
        elif case.find("skipped") is not None:
            skipped += 1
    return {"tests": total, "passed": total - len(failed) - skipped, "failed": len(failed), "skipped": skipped,
            "failed_tests": failed[:50]}


def _per_keyframe(network: dict[str, Any], views: int = 9) -> list[dict[str, float]]:
    """Per fragment (9 keyframes): the fragment's latency spread over its keyframes, and the 2D backbone's
    share per keyframe (the work each keyframe brings; the 3D part runs once per fragment)."""
    rows = []
    for fragment in network.get("fragments", []):
        stages = fragment.get("stage_medians_s") or fragment.get("stages_s") or {}
        wall_ms = fragment["wall_s"] * 1e3
        rows.append({"fragment_ms": wall_ms, "amortised_per_keyframe_ms": wall_ms / views,
                     "backbone_per_keyframe_ms": stages.get("backbone2d", float("nan")) * 1e3 / views,
                     "peak_mem_mb": fragment.get("peak_mem_mb", float("nan"))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("mapping")
    m.add_argument("--device", default="cpu")
    m.add_argument("--frames", type=int, default=30)
    m.add_argument("--width", type=int, default=640)
    m.add_argument("--height", type=int, default=480)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--json", type=Path, required=True)
    t = sub.add_parser("training")
    t.add_argument("--device", default="cpu")
    t.add_argument("--frames", type=int, default=150, help="frames of the synthetic training room")
    t.add_argument("--max-train-time-s", type=float, default=120.0)
    t.add_argument("--output", type=Path, required=True)
    t.add_argument("--json", type=Path, required=True)
    s = sub.add_parser("summary")
    s.add_argument("--results", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "summary":
        report = summary(args)
        text = json.dumps(report, indent=2)
        tmp = args.results / "device_check.json.tmp"
        tmp.write_text(text)
        tmp.replace(args.results / "device_check.json")
        print(text)
        return
    result = mapping(args) if args.command == "mapping" else training(args)
    args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    if result.get("returncode", 0) != 0:
        sys.exit(f"{args.command} failed (returncode {result['returncode']})")


if __name__ == "__main__":
    main()
