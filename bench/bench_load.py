"""Under load the node keeps its pace: bag replay alone and next to busy-looping processes, per thread setting.

    python bench/bench_load.py [--frames 90] [--width 640] [--height 480] [--modes depth]
                               [--competitors 2] [--json results.json]

Renders one synthetic RGB-D bag, then replays it (``replay_bag``, the node logic inline, as
``neuralrecon-ros replay`` does) once per thread setting, each in a fresh process (OpenMP reads its
wait policy when torch loads):

- ``torch defaults``: torch imported before ``neuralrecon_ros`` (OpenMP's own wait policy, which spins)
  and one thread per core: what the node did before ``num_threads``;
- ``N threads, passive``: the package's OpenMP wait policy with ``num_threads:=N`` (N = the cores);
- ``automatic``: the defaults a user now gets (``num_threads:=0``).

Each replay runs alone and then with ``--competitors`` busy-looping Python processes (bounded in time:
they stop by themselves after ``--load-timeout`` seconds, and the bench stops them as soon as the replay
ends). Reported: median / p95 / total of the pipeline's ``integrate`` stage (ms) and the ratio
loaded / alone of the total (target <= 2.5 with two competitors on 2 cores; the fair share of the CPU
is cores / (cores + competitors), i.e. 2x).

Last, a *threaded* replay (the live node's worker thread, the bag read as fast as it can be) under the
same load checks that the backlog policy's drops are counted: every image received is either processed
or dropped by a named reason.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BUSY_LOOP = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"
SETTINGS = ("torch defaults", "cores threads, passive", "automatic")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=90)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=["depth"], choices=("depth", "neuralrecon"))
    parser.add_argument("--competitors", type=int, default=2, help="busy-looping processes next to the replay")
    parser.add_argument("--load-timeout", type=float, default=300.0,
                        help="the busy loops end by themselves after this many seconds")
    parser.add_argument("--backlog", type=int, default=5,
                        help="maximum_backlog_length of the threaded replay (backlog drops check)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS, metavar="SETTING",
                        help=f"thread settings to compare (default: all of {', '.join(map(repr, SETTINGS))})")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat every (setting, alone, loaded) triple, interleaved: on a machine whose "
                             "background load varies, compare the rounds")
    parser.add_argument("--no-threaded", action="store_true", help="skip the threaded (backlog drops) replay")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    parser.add_argument("--child", nargs=4, metavar=("BAG", "MODE", "SETTING", "THREADED"), help=argparse.SUPPRESS)
    return parser.parse_args()


# --------------------------------------------------------------------------------- child process


def run_child(bag: str, mode: str, setting: str, threaded: bool, backlog: int) -> dict[str, Any]:
    """One replay in this (fresh) process; prints its figures as JSON."""
    if setting == "torch defaults":
        import torch  # first: OpenMP starts with its own wait policy, before neuralrecon_ros can choose one

        num_threads = torch.get_num_threads()
    from neuralrecon_ros.core.threads import available_cores
    from neuralrecon_ros.node.bag_transport import replay_bag
    from neuralrecon_ros.node.parameters import NodeParameters
    from neuralrecon_ros.node.pipeline_factory import build_pipeline

    if setting == "cores threads, passive":
        num_threads = available_cores()
    elif setting == "automatic":
        num_threads = 0
    values: dict[str, Any] = {"mode": mode, "num_threads": num_threads}
    if threaded:
        values["maximum_backlog_length"] = backlog
    params = NodeParameters(values)
    pipeline = build_pipeline(params)
    import torch

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = replay_bag(bag, out, params, pipeline, progress=False, threaded=threaded)
        wall = time.perf_counter() - start
    stage = "integrate" if mode == "depth" else "network"
    timing = result.timings.get(stage, {})
    return {"setting": setting, "mode": mode, "threads": torch.get_num_threads(),
            "wait_policy": os.environ.get("OMP_WAIT_POLICY", "(OpenMP default)") if setting != "torch defaults"
            else "(OpenMP default)", "stage": stage, "count": timing.get("count", 0),
            "median_ms": timing.get("median"), "p95_ms": timing.get("p95"), "total_ms": timing.get("total"),
            "wall_s": wall, "received_images": result.received.get("image", 0),
            "processed": result.counts.get("frames", 0), "dropped": result.dropped,
            "fragments_skipped": result.fragments_skipped}


# -------------------------------------------------------------------------------------- parent


class Competitors:
    """``n`` busy-looping processes that end by themselves after ``timeout_s`` (or when stopped)."""

    def __init__(self, n: int, timeout_s: float) -> None:
        self.n, self.timeout_s = n, timeout_s
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> Competitors:
        self.procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(self.timeout_s)])
                      for _ in range(self.n)]
        time.sleep(0.5)  # let them reach the loop
        return self

    def __exit__(self, *exc: Any) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(timeout=10)


def replay_in_child(bag: Path, mode: str, setting: str, threaded: bool, args: argparse.Namespace) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    command = [sys.executable, __file__, "--backlog", str(args.backlog),
               "--child", str(bag), mode, setting, str(int(threaded))]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"replay ({setting}, {mode}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_bag(folder: Path, args: argparse.Namespace) -> Path:
    from neuralrecon_ros.core.synthetic import make_sequence
    from neuralrecon_ros.io.synthetic_bag import write_synthetic_bag

    sequence = make_sequence(args.seed, args.frames, args.width, args.height)
    return write_synthetic_bag(sequence, folder / "bag")


def main() -> None:
    args = parse_args()
    if args.child:
        bag, mode, setting, threaded = args.child
        print(json.dumps(run_child(bag, mode, setting, threaded == "1", args.backlog)))
        return
    load_avg = os.getloadavg()
    cores = len(os.sched_getaffinity(0))
    print(f"{cores} cores, load average before: {load_avg[0]:.2f} {load_avg[1]:.2f} {load_avg[2]:.2f}; "
          f"{args.frames} frames {args.width}x{args.height}, {args.competitors} competing busy loops",
          file=sys.stderr)
    results: dict[str, Any] = {"cores": cores, "load_average_before": load_avg, "frames": args.frames,
                               "size": [args.width, args.height], "competitors": args.competitors, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        bag = write_bag(Path(tmp), args)
        for round_index in range(args.rounds):
            for mode in args.modes:
                for setting in args.settings:
                    alone = replay_in_child(bag, mode, setting, False, args)
                    with Competitors(args.competitors, args.load_timeout):
                        loaded = replay_in_child(bag, mode, setting, False, args)
                    results["rows"].append({"round": round_index + 1, "alone": alone, "loaded": loaded,
                                            "load_average": os.getloadavg()[0]})
                    print(f"  round {round_index + 1} {mode:11} {setting:24} alone {alone['total_ms']:9.1f} ms, "
                          f"loaded {loaded['total_ms']:9.1f} ms", file=sys.stderr)
        if not args.no_threaded:
            with Competitors(args.competitors, args.load_timeout):
                results["threaded_loaded"] = replay_in_child(bag, "depth", "automatic", True, args)
    results["load_average_after"] = os.getloadavg()
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


def print_table(results: dict[str, Any]) -> None:
    print(f"\n{results['frames']} frames {results['size'][0]}x{results['size'][1]}, {results['cores']} cores, "
          f"{results['competitors']} competing busy loops; stage latency in ms (median / p95 / total)")
    print(f"{'round':>5} {'mode':11} {'setting':24} {'threads':>7} {'wait policy':>17} "
          f"{'alone med/p95/total':>26} {'loaded med/p95/total':>28} {'loaded/alone':>12} {'load avg':>8}")
    for row in results["rows"]:
        alone, loaded = row["alone"], row["loaded"]

        def cells(r: dict[str, Any]) -> str:
            return f"{r['median_ms']:7.1f} /{r['p95_ms']:7.1f} /{r['total_ms']:8.0f}"

        ratio = loaded["total_ms"] / alone["total_ms"]
        print(f"{row.get('round', 1):>5} {alone['mode']:11} {alone['setting']:24} {alone['threads']:>7} "
              f"{alone['wait_policy']:>17} {cells(alone):>26} {cells(loaded):>28} {ratio:>11.2f}x "
              f"{row.get('load_average', float('nan')):8.1f}")
    threaded = results.get("threaded_loaded")
    if threaded:
        dropped = threaded["dropped"]
        accounted = threaded["processed"] + sum(dropped.values())
        verdict = "all counted" if accounted == threaded["received_images"] else "MISMATCH"
        print(f"\nthreaded replay under load (maximum_backlog_length small): {threaded['received_images']} images "
              f"received, {threaded['processed']} processed, dropped {dict(sorted(dropped.items()))}; "
              f"processed + dropped = {accounted} ({verdict})")


if __name__ == "__main__":
    main()
