#!/usr/bin/env python3
"""Turn a training run's checkpoint into the shipped demo weights (docs/training.md, "Demo weights").

Writes ``neuralrecon_ros/data/demo_weights.pt`` (fp16, upstream key layout) and ``demo_weights.json``
beside it: the run's options, length and hardware, its validation log, and the exported file's
F-score at 5 cm on held-out synthetic rooms next to depth fusion's on the same recordings.

    python scripts/export_demo_weights.py RUN/model_000004_bn.ckpt --run RUN --hardware "2-core CPU"
    python scripts/export_demo_weights.py RUN/model_000004_bn.ckpt --score-only   # compare, write nothing
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch
import yaml

from neuralrecon_ros.core.network.checkpoint import load_checkpoint
from neuralrecon_ros.core.network.model import PIXEL_MEAN, NeuralRecon
from neuralrecon_ros.core.network.projection import IMAGE_SIZE_WH
from neuralrecon_ros.core.training.trainer import METRICS_LOG, held_out_scores
from neuralrecon_ros.core.training.weights import DEMO_WEIGHTS, half_precision_checkpoint
from neuralrecon_ros.io.atomic import atomic_write, atomic_write_text

#: held-out rooms: far from the training seeds (1000 + i) and the validation seeds (501000 + i)
HELD_OUT_SEEDS = (700000, 700001, 700002, 700003)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="checkpoint of the run to ship (e.g. a *_bn.ckpt)")
    parser.add_argument("--run", type=Path, help="the run's output folder (required unless --score-only)")
    parser.add_argument("--hardware", help="what the run trained on, in words (required unless --score-only)")
    parser.add_argument("--score-only", action="store_true",
                        help="score the checkpoint's fp16 export on the held-out rooms; write nothing")
    parser.add_argument("--output", type=Path, default=DEMO_WEIGHTS)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(HELD_OUT_SEEDS))
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = parser.parse_args()
    if not args.score_only and (args.run is None or args.hardware is None):
        parser.error("--run and --hardware are required to export (or pass --score-only)")
    if args.threads:
        torch.set_num_threads(args.threads)

    half = half_precision_checkpoint(args.checkpoint)
    model = NeuralRecon()
    if args.score_only:
        model.load_state_dict({k.removeprefix("module."): v.float() for k, v in half["model"].items()})
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(args.output) as f:
            torch.save(half, f)
        load_checkpoint(model, args.output)  # score what ships, fp16 rounding included
    scores = held_out_scores(model, args.seeds, args.frames, args.width, args.height)
    if args.score_only:
        print(json.dumps({
            "checkpoint": str(args.checkpoint),
            "network_fscore_mean": statistics.fmean(s["network"]["fscore"] for s in scores),
            "depth_fscore_mean": statistics.fmean(s["depth"]["fscore"] for s in scores),
            "scenes": [{"seed": s["seed"], "fscore": s["network"]["fscore"], "prec": s["network"]["prec"],
                        "recall": s["network"]["recall"], "depth_fscore": s["depth"]["fscore"]} for s in scores],
        }, indent=2))
        return

    records = [json.loads(line) for line in (args.run / METRICS_LOG).read_text().splitlines() if line]
    train = [r for r in records if r["type"] == "train"]
    # the training that went into the checkpoint: its epoch and those before (the run may have gone on)
    trained = [r for r in train if r["epoch"] <= half["epoch"]]
    validations = [{k: v for k, v in r.items() if k != "scenes"} for r in records if r["type"] == "val"]
    info = {
        "weights": args.output.name,
        "format": "torch.save {'epoch', 'model'}: fp16 tensors, upstream NeuralRecon keys ('module.' prefix)",
        "source_checkpoint": args.checkpoint.name,
        "trained_on": "procedural synthetic rooms only (neuralrecon_ros.core.synthetic); never on real images",
        "recommendation": "for real indoor scenes use upstream's ScanNet weights (model_000047.ckpt)",
        "hardware": args.hardware,
        "training": {
            "epoch": half["epoch"],
            "steps": len(trained),
            "train_time_s": trained[-1]["train_time_s"],
            "phase1_steps": sum(1 for r in trained if r["phase"] == 1),
            "run_steps": len(train),  # the run's length; a later checkpoint may have validated worse
            "torch": torch.__version__,
            "python": platform.python_version(),
            "options": yaml.safe_load((args.run / "training_config.yaml").read_text()),
        },
        # what inference needs (neuralrecon_ros.core.training.weights.apply_weights_options): the NeuralRecon
        # parameters these weights were trained with, applied where they are the default
        "inference": {"gru_reset_gate_quirk": True},
        "network_input": {
            "size_wh": list(IMAGE_SIZE_WH),
            "pixel_mean_rgb": list(PIXEL_MEAN),
            "pixel_std": 1.0,
            "note": "upstream's input: frames of any size are resized to 640x480; the synthetic training rooms "
                    "were rendered at the run's synthetic_width x synthetic_height",
        },
        "validation": validations,
        "held_out": {
            "seeds": args.seeds,
            "frames": args.frames,
            "size": f"{args.width}x{args.height}",
            "metric": "F-score at 5 cm against the exact surfaces the camera observed",
            "network_fscore_mean": statistics.fmean(s["network"]["fscore"] for s in scores),
            "depth_fscore_mean": statistics.fmean(s["depth"]["fscore"] for s in scores),
            "scenes": scores,
        },
    }
    atomic_write_text(args.output.with_suffix(".json"), json.dumps(info, indent=2) + "\n")
    print(json.dumps(info["held_out"] | {"scenes": None}, indent=2))


if __name__ == "__main__":
    main()
