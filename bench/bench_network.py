"""Per-fragment NeuralRecon forward latency and peak memory, broken down by stage.

Runs the upstream-parity fixture (two consecutive 9-view 640x480 fragments, deterministic weights;
``../shared/fixtures/upstream_parity`` or env ``NEURALRECON_PARITY_FIXTURES``) with the chosen sparse
backend, exactly the workload of upstream's reference timing on these 2-core machines (fixture README:
median of 3 forward passes from the same state, 14.3 s for fragment 0 and 19.5 s for fragment 1, torch
2.13 CPU, 2 threads). Each fragment is timed ``--repeats`` times from the same recurrent state (the
state before the fragment is restored between runs); the median run's stage breakdown is reported.
On a shared machine prefer quiet moments: OpenMP threads of a 2-thread torch slow down by an order of
magnitude when another process occupies a core (CPU time then equals wall time); ``--threads 1`` is robust.

Stages: ``backbone2d`` (9 views), ``backproject`` (all levels), ``sparse3d_level{i}`` (SPVCNN of level
i), ``gru_level{i}`` (GRU fusion of level i), ``substitution`` (global TSDF); the remainder (heads,
pruning, upsampling) is ``other``. Peak memory: CUDA ``max_memory_allocated``, on CPU the peak resident
set size sampled every 2 ms during the forward, minus the size before it.

    python bench/bench_network.py [--threads 2] [--repeats 3] [--backend torch] [--device cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from neuralrecon_ros.core.network.model import NeuralRecon
from neuralrecon_ros.core.network.projection import FragmentGeometry
from neuralrecon_ros.core.network.sparse import set_backend
from neuralrecon_ros.core.timing import StageTimer

REPO = Path(__file__).resolve().parents[1]
UPSTREAM_CPU_SECONDS = (14.3, 19.5)  # fixture README: upstream + torchsparse 1.4 CPU, 2 threads, medians


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory above the level at entry: CUDA allocator peak, or sampled RSS on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        self._base = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss_bytes() - self._base)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss_bytes() - self._base)


def load_fixture(folder: Path, device: torch.device) -> tuple[NeuralRecon, list[tuple[torch.Tensor, FragmentGeometry]]]:
    spec = importlib.util.spec_from_file_location("parity_weights_rule", folder / "weights_rule.py")
    rule = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rule)
    weights = json.loads((folder / "weights.json").read_text())
    tsv = REPO.parent / "shared" / "reference" / "neuralrecon_expected_state_dict.tsv"
    state = rule.make_state_dict(str(tsv), weights["seed"], weights["overrides"])
    model = NeuralRecon()
    model.load_state_dict({k.removeprefix("module."): torch.from_numpy(v) for k, v in state.items()})
    fragments = []
    for fr in json.loads((folder / "inputs.json").read_text())["fragments"]:
        images = np.stack([np.asarray(Image.open(folder / p), np.float32) for p in fr["images"]])
        geometry = FragmentGeometry(
            torch.tensor(np.array(fr["proj_matrices"], np.float32)),
            torch.tensor(np.array(fr["world_to_aligned_camera"], np.float32)),
            torch.tensor(fr["vol_origin_partial_voxels"]),
            torch.tensor(np.array(fr["vol_origin_partial"], np.float32)),
        )
        images_t = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        fragments.append((images_t.to(device), geometry.to(device)))
    return model.to(device).eval(), fragments


def _state(model: NeuralRecon) -> object:
    return copy.deepcopy((model.neucon_net.gru_fusion.hidden, model.fuse_to_global.volume))


def _restore(model: NeuralRecon, state: object) -> None:
    hidden, volume = copy.deepcopy(state)
    model.neucon_net.gru_fusion.hidden, model.fuse_to_global.volume = hidden, volume


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    backend = set_backend(args.backend)
    default = REPO.parent / "shared" / "fixtures" / "upstream_parity"
    folder = Path(os.environ.get("NEURALRECON_PARITY_FIXTURES", default))
    if not (folder / "inputs.json").is_file():
        sys.exit(f"parity fixture not found at {folder}; set NEURALRECON_PARITY_FIXTURES")
    model, fragments = load_fixture(folder, device)
    report = {"device": str(device), "backend": backend, "threads": args.threads, "torch": torch.__version__,
              "fragments": []}
    for k, (images, geometry) in enumerate(fragments):
        before = _state(model)
        runs = []
        for _ in range(args.repeats):
            _restore(model, before)
            timer = StageTimer()
            with PeakMemory(device) as memory, torch.no_grad():
                wall0, cpu0 = time.perf_counter(), time.process_time()
                result = model(images, geometry, timer=timer)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            stages = {name: s["total"] / 1000 for name, s in timer.summary().items()}
            stages["other"] = wall - sum(stages.values())
            runs.append({"wall_s": wall, "cpu_s": cpu, "peak_mem_mb": memory.peak / 2**20, "stages_s": stages,
                         "voxels": 0 if result is None else len(result.coords)})
        runs.sort(key=lambda r: r["wall_s"])
        median = runs[len(runs) // 2]
        median["runs_wall_s"] = [r["wall_s"] for r in runs]
        median["min_wall_s"] = runs[0]["wall_s"]
        median["upstream_cpu_s"] = UPSTREAM_CPU_SECONDS[k]
        median["speedup_vs_upstream"] = UPSTREAM_CPU_SECONDS[k] / median["wall_s"]
        report["fragments"].append(median)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backend", default="torch", choices=("auto", "torch", "torchsparse"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    report = run(args)
    print(f"NeuralRecon forward, {report['device']}, backend {report['backend']}, {report['threads']} threads, "
          f"torch {report['torch']}; medians of {args.repeats} runs")
    for k, frag in enumerate(report["fragments"]):
        print(f"fragment {k}: {frag['wall_s']:.2f} s wall ({frag['cpu_s']:.2f} s CPU), "
              f"peak +{frag['peak_mem_mb']:.0f} MB, {frag['voxels']} voxels; "
              f"upstream {frag['upstream_cpu_s']} s -> {frag['speedup_vs_upstream']:.2f}x "
              f"(runs {', '.join(f'{w:.2f}' for w in frag['runs_wall_s'])})")
        for name, seconds in frag["stages_s"].items():
            print(f"    {name:<18} {seconds * 1000:8.0f} ms")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
