"""Small prepared synthetic scenes shared by the training tests (3-view fragments keep them cheap)."""

from __future__ import annotations

import pytest

from neuralrecon_ros.core.keyframes import KeyframeConfig
from neuralrecon_ros.core.network.sparse import set_backend
from neuralrecon_ros.core.synthetic import make_sequence
from neuralrecon_ros.core.training.datasets import PreparedScene, prepare_scene

#: tiny fragments: 3 keyframes instead of 9
SMALL_KEYFRAMES = KeyframeConfig(fragment_size=3)


def small_sequence(seed: int = 3, n_frames: int = 40):
    return make_sequence(seed, n_frames=n_frames, width=160, height=120)


@pytest.fixture(scope="session")
def small_keyframes() -> KeyframeConfig:
    return SMALL_KEYFRAMES


@pytest.fixture(scope="session")
def small_frames() -> list:
    """30 rendered frames (160x120) of room 3."""
    return list(small_sequence(n_frames=30))


@pytest.fixture(scope="session")
def small_scene() -> tuple[PreparedScene, object]:
    """A prepared synthetic room (160x120, 40 frames, 3-keyframe fragments) and its sequence."""
    set_backend("torch")
    sequence = small_sequence()
    scene = prepare_scene(sequence, "small", "synthetic:test", SMALL_KEYFRAMES)
    assert len(scene.fragments) >= 2
    return scene, sequence
