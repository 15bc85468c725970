"""Keyframe selection and fragment assembly with upstream NeuralRecon semantics.

Upstream rule (facts §1.1): a frame is a keyframe when the angle between its optical axis and
the last keyframe's exceeds ``keyframe_min_rotation_deg`` OR the camera centres are more than
``keyframe_min_translation_m`` apart. When ``fragment_size`` keyframes are collected the fragment
closes, and the next frame becomes the first keyframe of the next fragment unconditionally.
Fragments are disjoint; an incomplete trailing fragment is never emitted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import param
from .geometry import viewing_angle_rad
from .types import Fragment, Frame


@dataclass
class KeyframeConfig:
    keyframe_min_translation_m: float = param(
        0.1, "A frame is a keyframe when its camera centre moved more than this from the last keyframe.",
        minimum=0.0, unit="m",
    )
    keyframe_min_rotation_deg: float = param(
        15.0, "... or when its viewing direction turned more than this from the last keyframe.",
        minimum=0.0, maximum=180.0, unit="deg",
    )
    fragment_size: int = param(
        9, "Keyframes per fragment (the network's window; upstream 9).", minimum=1, maximum=64
    )


class KeyframeSelector:
    """Decides whether a pose is a keyframe relative to the last accepted keyframe."""

    def __init__(self, config: KeyframeConfig) -> None:
        self.config = config
        self._last: np.ndarray | None = None

    def reset(self) -> None:
        self._last = None

    def force_next(self) -> None:
        """Make the next offered frame a keyframe regardless of motion (fragment boundary)."""
        self._last = None

    def offer(self, T_world_camera: np.ndarray) -> bool:
        """Return True (and remember the pose) when ``T_world_camera`` is a keyframe."""
        if self._last is None:
            self._last = T_world_camera
            return True
        moved = float(np.linalg.norm(T_world_camera[:3, 3] - self._last[:3, 3]))
        turned = viewing_angle_rad(self._last, T_world_camera)
        if turned > math.radians(self.config.keyframe_min_rotation_deg) or (
            moved > self.config.keyframe_min_translation_m
        ):
            self._last = T_world_camera
            return True
        return False


class FragmentBuilder:
    """Feeds frames through the keyframe selector and closes disjoint fragments."""

    def __init__(self, config: KeyframeConfig) -> None:
        self.config = config
        self.selector = KeyframeSelector(config)
        self._keyframes: list[Frame] = []
        self._next_index = 0

    @property
    def pending(self) -> list[Frame]:
        """Keyframes of the fragment being built."""
        return list(self._keyframes)

    def reset(self) -> None:
        self.selector.reset()
        self._keyframes = []
        self._next_index = 0

    def drop_pending(self) -> int:
        """Discard the fragment under construction (e.g. after a time jump); returns how many."""
        n = len(self._keyframes)
        self._keyframes = []
        self.selector.force_next()
        return n

    def add(self, frame: Frame) -> tuple[bool, Fragment | None]:
        """Offer a frame; returns (is_keyframe, the fragment it closed or None)."""
        if not self.selector.offer(frame.T_world_camera):
            return False, None
        self._keyframes.append(frame)
        if len(self._keyframes) < self.config.fragment_size:
            return True, None
        fragment = Fragment(self._next_index, self._keyframes)
        self._next_index += 1
        self._keyframes = []
        self.selector.force_next()
        return True, fragment
