"""The reconstructor interface: how frames and fragments turn into map updates.

A reconstructor owns no map; it is given the map at construction and updates it. The pipeline
calls :meth:`Reconstructor.on_frame` for every posed frame (keyframe or not) and
:meth:`Reconstructor.on_fragment` for every closed fragment. Depth fusion works per frame;
NeuralRecon works per fragment.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from .config import ParameterError, param
from .types import Fragment, Frame


@dataclass
class MapUpdate:
    """What one reconstructor call changed: block coordinates (int64 (K, 3)) it wrote to."""

    touched_blocks: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    frames_integrated: int = 0

    @property
    def is_empty(self) -> bool:
        return len(self.touched_blocks) == 0


class Reconstructor(ABC):
    """Turns posed frames into TSDF map updates."""

    #: short name used in logs, summaries and the ``mode`` parameter
    name: str = "abstract"

    def on_frame(self, frame: Frame, is_keyframe: bool) -> MapUpdate | None:
        """Called for every frame with a valid pose. Default: nothing to do per frame."""
        return None

    @abstractmethod
    def on_fragment(self, fragment: Fragment) -> MapUpdate | None:
        """Called when a fragment of keyframes closes."""

    def reset(self) -> None:  # noqa: B027 - optional hook, stateless reconstructors keep the default
        """Forget any internal state (e.g. recurrent memory); the map is reset by its owner."""


@dataclass
class ReconstructionConfig:
    mode: str = param(
        "depth",
        "Reconstructor: 'neuralrecon' (monocular network, needs a checkpoint) or 'depth' "
        "(projective TSDF fusion of a depth image: RGB-D cameras, ground truth, reference).",
        choices=("depth", "neuralrecon"),
    )
    device: str = param(
        "cpu", "Torch device for the map and the network; 'auto' picks cuda when available.",
        choices=("cpu", "cuda", "auto"),
    )
    num_threads: int = param(
        0, "CPU threads for torch (process-wide). 0 = automatic: 1 in depth mode and for the network on "
        "cuda (small tensor passes: a second thread saves little on idle cores and stalls every "
        "parallel step when other processes load them), all cores up to 4 for the network on cpu. "
        "Idle threads sleep (OMP_WAIT_POLICY=PASSIVE unless exported otherwise) instead of spinning "
        "against the robot's other processes. See core/threads.py and bench/bench_load.py.",
        minimum=0, maximum=256,
    )


def resolve_device(name: str) -> str:
    """Turn the ``device`` parameter into a torch device string, failing clearly without CUDA."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ParameterError("parameter 'device': 'cuda' was requested but torch sees no CUDA device; use device:=cpu")
    return name
