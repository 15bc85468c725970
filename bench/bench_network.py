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
        [--baseline-path /tmp/nr_before]

``--baseline-path DIR`` times a snapshot of the network package (a copy of ``neuralrecon_ros/core/network``
made before a change, kept outside the repository) in the same process: the snapshot is imported as
``neuralrecon_ros.core._baseline_network``, loads the same weights and runs the same fragments, with its
runs interleaved with ours; the report then gives both stage tables and the ratio baseline / current.
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
from types import ModuleType

import numpy as np
import torch
from PIL import Image

from neuralrecon_ros.core.network import model as current_model
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


BASELINE_PACKAGE = "neuralrecon_ros.core._baseline_network"


def import_baseline(path: Path) -> ModuleType:
    """Import a snapshot of the network package at ``path`` as :data:`BASELINE_PACKAGE`; returns its model
    module. Its relative imports of ``..timing`` etc. resolve to the current core (unchanged by snapshots)."""
    init = path / "__init__.py"
    if not init.is_file():
        sys.exit(f"--baseline-path {path} is not a copy of the network package (no __init__.py)")
    spec = importlib.util.spec_from_file_location(BASELINE_PACKAGE, init, submodule_search_locations=[str(path)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[BASELINE_PACKAGE] = package
    spec.loader.exec_module(package)
    return importlib.import_module(f"{BASELINE_PACKAGE}.model")


def load_fixture(folder: Path, device: torch.device, model_module: ModuleType = current_model,
                 ) -> tuple[torch.nn.Module, list[tuple[torch.Tensor, FragmentGeometry]]]:
    spec = importlib.util.spec_from_file_location("parity_weights_rule", folder / "weights_rule.py")
    rule = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rule)
    weights = json.loads((folder / "weights.json").read_text())
    tsv = REPO.parent / "shared" / "reference" / "neuralrecon_expected_state_dict.tsv"
    state = rule.make_state_dict(str(tsv), weights["seed"], weights["overrides"])
    model = model_module.NeuralRecon()
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


def _state(model: torch.nn.Module) -> object:
    return copy.deepcopy((model.neucon_net.gru_fusion.hidden, model.fuse_to_global.volume))


def _restore(model: torch.nn.Module, state: object) -> None:
    hidden, volume = copy.deepcopy(state)
    model.neucon_net.gru_fusion.hidden, model.fuse_to_global.volume = hidden, volume


def _time_once(model: torch.nn.Module, images: torch.Tensor, geometry: FragmentGeometry,
               device: torch.device) -> dict:
    timer = StageTimer()
    with PeakMemory(device) as memory, torch.inference_mode():
        wall0, cpu0 = time.perf_counter(), time.process_time()
        result = model(images, geometry, timer=timer)
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    stages = {name: s["total"] / 1000 for name, s in timer.summary().items()}
    stages["other"] = wall - sum(stages.values())
    return {"wall_s": wall, "cpu_s": cpu, "peak_mem_mb": memory.peak / 2**20, "stages_s": stages,
            "voxels": 0 if result is None else len(result.coords)}


def _median_run(runs: list[dict], k: int) -> dict:
    runs = sorted(runs, key=lambda r: r["wall_s"])
    median = dict(runs[len(runs) // 2])
    median["runs_wall_s"] = [r["wall_s"] for r in runs]
    median["min_wall_s"] = runs[0]["wall_s"]
    # per-stage medians over the runs (more robust than the stages of the median run on a loaded machine)
    median["stage_medians_s"] = {name: float(np.median([r["stages_s"].get(name, 0.0) for r in runs]))
                                 for name in runs[0]["stages_s"]}
    median["upstream_cpu_s"] = UPSTREAM_CPU_SECONDS[k]
    median["speedup_vs_upstream"] = UPSTREAM_CPU_SECONDS[k] / median["wall_s"]
    return median


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    backend = set_backend(args.backend)
    default = REPO.parent / "shared" / "fixtures" / "upstream_parity"
    folder = Path(os.environ.get("NEURALRECON_PARITY_FIXTURES", default))
    if not (folder / "inputs.json").is_file():
        sys.exit(f"parity fixture not found at {folder}; set NEURALRECON_PARITY_FIXTURES")
    models = {"current": load_fixture(folder, device)}
    if args.baseline_path is not None:
        baseline = import_baseline(args.baseline_path)
        importlib.import_module(f"{BASELINE_PACKAGE}.sparse").set_backend(args.backend)
        models["baseline"] = load_fixture(folder, device, baseline)
    report = {"device": str(device), "backend": backend, "threads": args.threads, "torch": torch.__version__,
              "fragments": [], "baseline_fragments": [], "uptime": _uptime()}
    n_fragments = len(models["current"][1])
    for k in range(n_fragments):
        before = {name: _state(model) for name, (model, _) in models.items()}
        runs: dict[str, list[dict]] = {name: [] for name in models}
        for _ in range(args.repeats):
            for name, (model, fragments) in models.items():  # interleaved: both see the same load
                _restore(model, before[name])
                images, geometry = fragments[k]
                runs[name].append(_time_once(model, images, geometry, device))
        report["fragments"].append(_median_run(runs["current"], k))
        if "baseline" in runs:
            report["baseline_fragments"].append(_median_run(runs["baseline"], k))
    report["uptime_after"] = _uptime()
    return report


def _uptime() -> str:
    try:
        with open("/proc/loadavg") as f:
            return "load average " + " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def _print_table(frag: dict, base: dict | None) -> None:
    header = f"    {'stage':<18} {'current':>9}"
    if base is not None:
        header += f" {'baseline':>9} {'ratio':>6}"
    print(header + "   (ms, per-stage medians)")
    names = list(frag["stage_medians_s"]) + [n for n in (base or {}).get("stage_medians_s", {})
                                             if n not in frag["stage_medians_s"]]
    for name in [*names, "total"]:
        ours = frag["wall_s"] if name == "total" else frag["stage_medians_s"].get(name, 0.0)
        line = f"    {name:<18} {ours * 1000:9.0f}"
        if base is not None:
            theirs = base["wall_s"] if name == "total" else base["stage_medians_s"].get(name, 0.0)
            ratio = f"{theirs / ours:6.2f}" if ours > 0 else "     -"
            line += f" {theirs * 1000:9.0f} {ratio}"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backend", default="torch", choices=("auto", "torch", "torchsparse"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--baseline-path", type=Path, default=None,
                        help="copy of the network package to time against in the same process")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    report = run(args)
    print(f"NeuralRecon forward, {report['device']}, backend {report['backend']}, {report['threads']} threads, "
          f"torch {report['torch']}; medians of {args.repeats} runs; {report['uptime']} before, "
          f"{report['uptime_after']} after")
    for k, frag in enumerate(report["fragments"]):
        base = report["baseline_fragments"][k] if report["baseline_fragments"] else None
        print(f"fragment {k}: {frag['wall_s']:.2f} s wall ({frag['cpu_s']:.2f} s CPU), "
              f"peak +{frag['peak_mem_mb']:.0f} MB, {frag['voxels']} voxels; "
              f"upstream {frag['upstream_cpu_s']} s -> {frag['speedup_vs_upstream']:.2f}x "
              f"(runs {', '.join(f'{w:.2f}' for w in frag['runs_wall_s'])})")
        if base is not None:
            base_runs = ", ".join(f"{w:.2f}" for w in base["runs_wall_s"])
            print(f"    baseline {base['wall_s']:.2f} s wall ({base['cpu_s']:.2f} s CPU; runs {base_runs}), "
                  f"{base['voxels']} voxels -> current is {base['wall_s'] / frag['wall_s']:.2f}x faster "
                  f"(CPU time {base['cpu_s'] / frag['cpu_s']:.2f}x)")
        _print_table(frag, base)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
