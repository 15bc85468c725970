"""Parameters of the NeuralRecon reconstructor (network, checkpoint, backend, world convention).

Field names are public parameter names (ROS parameters, YAML keys, ``-p name:=value``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import param

#: where users get the released weights (NeuralRecon README, "Pretrained model" link; facts §3.1)
CHECKPOINT_DOWNLOAD_URL = "https://drive.google.com/file/d/1zKuWqm9weHSm98SZKld1PbEddgLOQkQV/view?usp=sharing"

#: ``global_frame_up_axis`` values: the axis of the global frame that points up (against gravity)
UP_AXES = ("z", "y", "-y")


@dataclass
class NeuralReconConfig:
    checkpoint: str = param(
        "",
        "Path of the upstream NeuralRecon checkpoint (model_000047.ckpt, downloaded from "
        f"{CHECKPOINT_DOWNLOAD_URL}); '' = none, which mode 'neuralrecon' refuses with instructions.",
    )
    sparse_backend: str = param(
        "auto",
        "Sparse convolution backend: 'torch' (built-in, pure PyTorch), 'torchsparse' (needs torchsparse "
        "1.4 installed) or 'auto' (torchsparse when importable, else torch).",
        choices=("auto", "torch", "torchsparse"),
    )
    half_precision: bool = param(
        False,
        "Run the 2D backbone under float16 autocast (CUDA only; ignored on CPU). Faster, not bit-faithful.",
    )
    gru_reset_gate_quirk: bool = param(
        True,
        "Reproduce upstream's reset-gate quirk in the GRU fusion (the released checkpoint was trained "
        "with it); false uses a textbook ConvGRU reset gate.",
    )
    global_frame_up_axis: str = param(
        "z",
        "Axis of global_frame that points up: 'z' (REP-103/105 odom and map frames), 'y' (ARKit, Unity, "
        "OpenGL worlds) or '-y' (a camera optical frame used as world, e.g. many visual SLAM systems).",
        choices=UP_AXES,
    )
    floor_height_m: float = param(
        0.0,
        "Height of the floor along the up axis of global_frame (e.g. -1.4 for an odom frame whose origin "
        "is where a hand-held camera started, 1.4 m above the floor). The network needs the floor near "
        "height 0: its fragment volume spans -0.32 .. 3.48 m above the floor.",
        minimum=-100.0,
        maximum=100.0,
        unit="m",
    )
