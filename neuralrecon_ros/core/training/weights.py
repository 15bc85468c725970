"""The demo weights shipped in ``neuralrecon_ros/data/`` and how a checkpoint becomes them.

:func:`default_checkpoint` is what ``demo`` and ``--mode neuralrecon`` fall back to when no checkpoint is
given: the shipped file if the package has one, else None (then the user must pass upstream's weights).
The file is an fp16 copy of a training checkpoint in upstream's key layout (``{'epoch', 'model'}``,
``module.`` keys), readable by :func:`..network.checkpoint.load_checkpoint` like any other checkpoint.
Beside it, ``demo_weights.json`` records how they were trained and what they score on held-out rooms
(written by ``scripts/export_demo_weights.py``), and what inference needs to use them: ``inference`` holds
NeuralRecon parameters that :func:`apply_weights_options` applies wherever the shipped weights are the
default (replay ``--mode neuralrecon``, ``demo``, the node), ``network_input`` the input size and
normalisation they were trained with (those of upstream; the network has no other).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from ..network.checkpoint import PREFIX, read_checkpoint

#: the shipped demo weights (absent until a training run produced usable ones)
DEMO_WEIGHTS = Path(__file__).resolve().parents[2] / "data" / "demo_weights.pt"


def default_checkpoint() -> Path | None:
    """The shipped demo weights, or None when the package ships none."""
    return DEMO_WEIGHTS if DEMO_WEIGHTS.is_file() else None


def demo_weights_info(weights: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The training record beside ``weights`` (default: the shipped file), or None when there is none."""
    path = Path(weights if weights is not None else DEMO_WEIGHTS).with_suffix(".json")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def half_precision_checkpoint(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """``checkpoint``'s model weights as an fp16 upstream-layout dict (integer buffers kept, no optimizer
    state), for ``torch.save`` into the package (write it atomically: ``io.atomic.atomic_write``)."""
    state, epoch = read_checkpoint(checkpoint)
    return {
        "epoch": int(epoch or 0),
        "model": {PREFIX + k: (v.half() if v.is_floating_point() else v) for k, v in state.items()},
    }


def apply_weights_options(config: Any, info: dict[str, Any] | None) -> Any:
    """``config`` (a :class:`..network.config.NeuralReconConfig`) with the inference options the weights'
    record asks for (``info["inference"]``, e.g. ``{"gru_reset_gate_quirk": false}``), each applied only
    where ``config`` still holds the parameter's default, so a parameter the user set wins. Keys that are
    not NeuralRecon parameters (the record's ``network_input`` facts) are ignored here."""
    options = (info or {}).get("inference") or {}
    fields = {f.name: f for f in dataclasses.fields(config)}
    changes = {
        name: value
        for name, value in options.items()
        if name in fields and name != "checkpoint" and getattr(config, name) == fields[name].default
    }
    return dataclasses.replace(config, **changes) if changes else config
