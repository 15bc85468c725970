"""Helpers for the bag-level node tests: a clean synthetic recording, fault-injected copies, replays.

A recording is read once into memory (a list of :class:`BagMessage`); a fault is a function that edits
that list (drop, delay, re-stamp, corrupt messages of chosen frames), and :func:`write_bag` writes the
result as a new bag with the clean bag's topics and types. Messages are deep-copied before an edit, so
recordings are shared safely between tests.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuralrecon_ros.core.synthetic import SyntheticSequence, make_sequence
from neuralrecon_ros.io.bags import BagMessage, BagReader, BagWriter
from neuralrecon_ros.io.messages import sec_to_ns
from neuralrecon_ros.io.synthetic_bag import SyntheticBagTopics, write_synthetic_bag
from neuralrecon_ros.node.bag_transport import ReplayResult, replay_bag
from neuralrecon_ros.node.parameters import NodeParameters
from neuralrecon_ros.node.pipeline_factory import build_pipeline

TOPICS = SyntheticBagTopics()
N_FRAMES = 60  # 2 s at 30 Hz
WIDTH, HEIGHT = 160, 120
#: quiet, deterministic defaults for replays: depth mode, every output off unless a test turns it on
QUIET = {
    "mode": "depth", "max_wait_for_pose_s": 0.45, "on_time_jump": "keep_map",
    "mesh_publish_rate_hz": 0.0, "full_mesh_publish_rate_hz": 0.0, "tsdf_cloud_publish_rate_hz": 0.0,
    "occupancy_publish_rate_hz": 0.0, "esdf_publish_rate_hz": 0.0, "fragment_volume_publish_rate_hz": 0.0,
    "diagnostics_rate_hz": 0.0,
}


@dataclass
class Recording:
    sequence: SyntheticSequence
    messages: list[BagMessage]

    @property
    def stamps_ns(self) -> list[int]:
        return [sec_to_ns(t) for t in self.sequence.stamps]

    def time_of(self, frame: int) -> float:
        """Bag time (s) of frame ``frame``'s messages in the clean recording."""
        return self.stamps_ns[frame] * 1e-9


def record(folder: Path, n_frames: int = N_FRAMES, seed: int = 3) -> Recording:
    sequence = make_sequence(seed=seed, n_frames=n_frames, width=WIDTH, height=HEIGHT)
    path = write_synthetic_bag(sequence, folder / "clean")
    with BagReader(path) as reader:
        messages = list(reader.messages())
    return Recording(sequence, messages)


def frame_of(recording: Recording, message: BagMessage) -> int | None:
    """Index of the frame a message belongs to (by header stamp), None for /tf_static."""
    if message.topic == TOPICS.tf_static:
        return None
    stamp_ns = _stamp_ns(message)
    return recording.stamps_ns.index(stamp_ns) if stamp_ns in recording.stamps_ns else None


def _stamp_ns(message: BagMessage) -> int:
    msg = message.msg
    stamp = msg.transforms[0].header.stamp if hasattr(msg, "transforms") else msg.header.stamp
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


Edit = Callable[[BagMessage, int | None], Iterable[BagMessage]]


def edited(recording: Recording, edit: Edit) -> list[BagMessage]:
    """Apply ``edit(message, frame)`` (returns the messages to write instead) to a copy of every message."""
    out: list[BagMessage] = []
    for message in recording.messages:
        frame = frame_of(recording, message)
        out.extend(edit(message._replace(msg=copy.deepcopy(message.msg)), frame))
    return out


def write_bag(path: Path, messages: Sequence[BagMessage], topics_from: Sequence[BagMessage]) -> Path:
    """Write ``messages`` (any bag-time order: the reader sorts) with the topics of ``topics_from``."""
    with BagWriter(path) as writer:
        for message in topics_from:
            writer.add_topic(message.topic, message.msgtype, latched=message.topic == TOPICS.tf_static)
        for message in messages:
            writer.write(message.topic, message.stamp_ns, message.msg)
    return path


def faulty_bag(folder: Path, recording: Recording, edit: Edit, name: str = "faulty") -> Path:
    return write_bag(folder / name, edited(recording, edit), recording.messages)


def replay(bag: Path, output: Path, service_calls: Sequence[Any] = (), threaded: bool = False, loops: int = 1,
           **values: Any) -> tuple[ReplayResult, Any]:
    params = NodeParameters({**QUIET, **values})
    pipeline = build_pipeline(params)
    result = replay_bag(bag, output, params, pipeline, progress=False, service_calls=service_calls,
                        threaded=threaded, loops=loops)
    return result, pipeline


def read_output(bag: Path) -> dict[str, list[tuple[int, Any]]]:
    """``{topic: [(log time ns, message), ...]}`` of an output bag, read with rosbags."""
    streams: dict[str, list[tuple[int, Any]]] = {}
    with BagReader(bag) as reader:
        for message in reader.messages():
            streams.setdefault(message.topic, []).append((message.stamp_ns, message.msg))
    return streams


def block_set(coords: Any) -> set[tuple[int, int, int]]:
    return {tuple(int(v) for v in row) for row in np.asarray(coords).reshape(-1, 3)}
