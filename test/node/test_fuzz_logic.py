"""Hostile input through the node logic, fuzzed (Hypothesis): named drops, never an exception, never a lost map.

Each case starts a fresh :class:`NodeLogic` whose depth-fusion pipeline holds a map (frames 0 and 1 of a
small synthetic recording), then feeds what a transport would deliver, in bag order with ``spin_once``
after each message: TF for frames 1..3, frame 2 with one hostile part (image, depth image, camera_info,
header stamp, pose, or an extra TF message), then a clean frame 3. Checked every time:

- nothing escapes any call; every drop is a key of DROP_REASONS, and each image is either processed or
  dropped once (counts exact, from an independent classification of the hostile part);
- the map holds only what it may: where frame 2 must be dropped the final TSDF, weights and colours equal,
  voxel for voxel, those of the same stream without frame 2 (the hostile input changed nothing and cost
  nothing else: frame 3 still maps); an extra TF that is rejected or lands on an unrelated edge leaves the
  map equal to the clean stream's; a frame that is legitimately mapped leaves finite TSDF in [-1, 1] and
  finite, non-negative weights.

Case counts are in ``@settings``; the ``ci`` profile (test/conftest.py) makes them deterministic.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from fuzz_strategies import (
    COMPONENT,
    ODD_ENCODINGS,
    SIZES,
    TYPES,
    camera_infos,
    compressed_message,
    compressed_payloads,
    image_message,
    raw_images,
)
from hypothesis import event, given, settings
from hypothesis import strategies as st
from replay_helpers import QUIET

from neuralrecon_ros.core.synthetic import make_sequence
from neuralrecon_ros.io import messages as m
from neuralrecon_ros.node.logic import DROP_REASONS, NodeLogic
from neuralrecon_ros.node.parameters import NodeParameters
from neuralrecon_ros.node.pipeline_factory import build_pipeline

WIDTH, HEIGHT = 32, 24
T0, DT = 100.0, 0.5  # frames 0.5 s apart: a frame left waiting expires (max_wait_for_pose_s 0.45) at the next
GLOBAL, CAMERA = "odom", "camera_optical"
PARAMS = {**QUIET, "global_frame": GLOBAL, "keyframe_min_translation_m": 0.0, "keyframe_min_rotation_deg": 0.0}
NOT_IMAGE_DROPS = {"bad_camera_info", "invalid_transform"}  # drops of messages other than images


class NullPublisher:
    types = TYPES

    def publish(self, topic_key: str, msg: object) -> None:
        pass


@dataclass
class Clean:
    """The recording: per frame its stamp and clean messages; the map after frames 0 and 1."""

    stamps: list[float]
    tf: list[Any]
    info: list[Any]
    depth: list[Any]
    image: list[Any]
    base_map: dict[str, Any]


def stamp_of(stamp: float, frame: int) -> float:
    return stamp if frame < 0 else T0 + DT * frame


@pytest.fixture(scope="module")
def clean() -> Clean:
    return make_clean()


def make_clean() -> Clean:
    sequence = make_sequence(seed=4, n_frames=4, width=WIDTH, height=HEIGHT)
    stamps = [T0 + DT * k for k in range(4)]
    recording = Clean(stamps, [], [], [], [], {})
    for k, frame in enumerate(sequence):
        t = stamps[k]
        transform = m.encode_transform_stamped(TYPES, frame.T_world_camera, t, GLOBAL, CAMERA)
        recording.tf.append(m.encode_tf_message(TYPES, [transform]))
        recording.info.append(m.encode_camera_info(TYPES, frame.intrinsics, t, CAMERA))
        recording.depth.append(m.encode_image(TYPES, frame.depth, "32FC1", t, CAMERA))
        recording.image.append(m.encode_image(TYPES, frame.image, "rgb8", t, CAMERA))
    pipeline = build_pipeline(NodeParameters(PARAMS))
    logic = NodeLogic(NodeParameters(PARAMS), pipeline, NullPublisher())
    feed(logic, [(kind, k, getattr(recording, kind)[k]) for k in (0, 1) for kind in ("tf", "info", "depth", "image")])
    logic.finish()
    logic.close()
    assert logic.frames_processed == 2 and pipeline.tsdf_map.num_blocks > 10
    recording.base_map = pipeline.tsdf_map.state_dict()
    return recording


HANDLERS = {"tf": "on_tf", "info": "on_camera_info", "depth": "on_depth", "image": "on_image",
            "odom": "on_odometry"}


def feed(logic: NodeLogic, stream: list[tuple[str, int, Any]]) -> None:
    """Deliver ``(kind, frame, message)`` as the bag transport does: at the frame's bag time, then tick."""
    for kind, frame, msg in stream:
        now = T0 + DT * frame
        logic.observe_clock(now)
        if kind == "tf":
            logic.on_tf(msg, static=False)
        else:
            getattr(logic, HANDLERS[kind])(msg)
        logic.spin_once(now)


def run(clean: Clean, frame2: dict[str, Any] | None, extra_tf: Any = None) -> tuple[NodeLogic, dict[str, Any]]:
    """TF 1..3, frame 2 with parts replaced by ``frame2`` (None: no frame 2 at all; a part mapped to None is
    left out), an extra TF message with frame 2's, then frame 3. Returns the logic and the final map state."""
    params = NodeParameters(PARAMS)
    pipeline = build_pipeline(params)
    pipeline.load_map_state(clean.base_map)
    logic = NodeLogic(params, pipeline, NullPublisher())
    stream: list[tuple[str, int, Any]] = [("tf", 1, clean.tf[1])]
    tf2 = (frame2 or {}).get("tf", clean.tf[2])
    stream += [("tf", 2, tf2)] if tf2 is not None else []
    stream += [("tf", 2, extra_tf)] if extra_tf is not None else []
    if frame2 is not None:
        for kind in ("info", "depth", "image"):
            msg = frame2.get(kind, getattr(clean, kind)[2])
            if msg is not None:
                stream.append((kind, 2, msg))
    stream += [("tf", 3, clean.tf[3])] + [(kind, 3, getattr(clean, kind)[3]) for kind in ("info", "depth", "image")]
    try:
        feed(logic, stream)
        logic.finish()
    finally:
        logic.close()
    return logic, pipeline.tsdf_map.state_dict()


@pytest.fixture(scope="module")
def references(clean) -> dict[str, dict[str, Any]]:
    """Final maps of the clean stream ('clean': frames 2 and 3) and of the stream without frame 2 ('no_2')."""
    maps = {}
    for name, frame2 in (("clean", {}), ("no_2", None)):
        logic, state = run(clean, frame2)
        assert logic.frames_processed == (2 if name == "clean" else 1) and not logic.dropped
        maps[name] = state
    return maps


def assert_same_map(state: dict[str, Any], reference: dict[str, Any], colours: bool = True) -> None:
    coords, ref_coords = state["block_coords"].numpy(), reference["block_coords"].numpy()
    order, ref_order = np.lexsort(coords.T), np.lexsort(ref_coords.T)
    np.testing.assert_array_equal(coords[order], ref_coords[ref_order])
    names = ("tsdf", "weight", "color") if colours else ("tsdf", "weight")
    for name in names:
        if state[name] is None or reference[name] is None:
            assert state[name] is None and reference[name] is None, name
            continue
        np.testing.assert_array_equal(state[name].numpy()[order], reference[name].numpy()[ref_order], name)


def assert_sound(logic: NodeLogic, state: dict[str, Any], images: int, depth_refused: int = 0,
                 other_refused: int = 0) -> None:
    """Drops are named, each image is accounted for once, the map's values are in range. ``depth_refused``:
    depth messages dropped on arrival (counted as unsupported_encoding, not images); ``other_refused``: other
    messages (TF) dropped under a reason that images share."""
    assert set(logic.dropped) <= set(DROP_REASONS), logic.dropped
    image_drops = sum(n for reason, n in logic.dropped.items() if reason not in NOT_IMAGE_DROPS)
    image_drops -= depth_refused + other_refused
    assert logic.received["image"] == images
    assert logic.frames_processed + image_drops == images, (logic.frames_processed, logic.dropped)
    tsdf, weight = state["tsdf"], state["weight"]
    assert bool(tsdf.isfinite().all()) and bool((tsdf.abs() <= 1).all())
    assert bool(weight.isfinite().all()) and bool((weight >= 0).all())


def decoded_or_reason(msg: Any, depth: bool) -> np.ndarray | str:
    """The image the node will see, or the drop reason its decoding gives (the decoders are fuzzed on their
    own in test/io/test_fuzz_messages.py)."""
    accepted = m.DEPTH_ENCODINGS if depth else m.COLOR_ENCODINGS
    if not hasattr(msg, "format") and msg.encoding not in accepted:
        return "unsupported_encoding"
    try:
        return m.decode_compressed_image(msg) if hasattr(msg, "format") else m.decode_image(msg)
    except m.UnsupportedEncodingError:
        return "unsupported_encoding"
    except m.MessageError:
        return "bad_image"


# ------------------------------------------------------------------------------------------- strategies


def _stamped(msg: Any, frame: int = 2) -> Any:
    msg.header.stamp = m.make_time(TYPES, T0 + DT * frame)
    msg.header.frame_id = CAMERA
    return msg


@st.composite
def hostile_images(draw, depth: bool) -> Any:
    """Image or CompressedImage messages for frame 2's colour or depth topic: broken fields, foreign
    encodings, other sizes, non-image payloads, decompression bombs; now and then a valid one."""
    encodings = tuple(m.DEPTH_ENCODINGS if depth else m.COLOR_ENCODINGS)
    way = draw(st.sampled_from(["fault", "fields", "size", "compressed", "values"] + ["values"] * depth))
    if way == "fault":
        msg, _ = draw(raw_images(encodings=encodings, size=(WIDTH, HEIGHT)))
    elif way == "fields":
        encoding = draw(st.sampled_from(sorted(m.IMAGE_ENCODINGS) + ODD_ENCODINGS))
        msg = image_message(encoding, draw(SIZES), draw(SIZES), draw(SIZES), draw(st.binary(max_size=300)))
    elif way == "size":  # a valid image of another size (another camera on the topic)
        msg, _ = draw(raw_images(encodings=encodings, faults=("none",)))
    elif way == "compressed":
        fmt, payload, _ = draw(compressed_payloads(max_side=40))
        if depth and draw(st.booleans()):
            fmt = draw(st.sampled_from(["16UC1; compressedDepth", "32FC1; compressedDepth png"]))
            payload = bytes(12) + payload
        msg = compressed_message(fmt, payload)
    else:  # the right size, any values: NaN, inf, subnormal, negative, huge depth; random colours
        if depth:
            values = draw(st.lists(st.floats(width=32, allow_subnormal=True), min_size=WIDTH * HEIGHT,
                                   max_size=WIDTH * HEIGHT))
            array = np.array(values, np.float32).reshape(HEIGHT, WIDTH)
            msg = m.encode_image(TYPES, array, "32FC1", 0.0, CAMERA)
        else:
            seed = draw(st.integers(0, 2**16))
            array = np.random.default_rng(seed).integers(0, 256, (HEIGHT, WIDTH, 3), np.uint8)
            msg = m.encode_image(TYPES, array, "rgb8", 0.0, CAMERA)
    return _stamped(msg)


# ------------------------------------------------------------------------------------------------ tests


@settings(max_examples=40)
@given(part=st.sampled_from(["image", "depth"]), data=st.data())
def test_a_hostile_image_costs_only_its_frame(clean, references, part, data):
    msg = data.draw(hostile_images(depth=part == "depth"))
    logic, state = run(clean, {part: msg})
    seen = decoded_or_reason(msg, depth=part == "depth")
    refused = part == "depth" and not hasattr(msg, "format") and msg.encoding not in m.DEPTH_ENCODINGS
    assert_sound(logic, state, images=2, depth_refused=int(refused))
    if isinstance(seen, str):  # a depth image refused on arrival leaves its frame waiting in vain
        expected = {"unsupported_encoding": 1, "no_depth": 1} if refused else {seen: 1}
    elif part == "image" and seen.shape[:2] != (HEIGHT, WIDTH):
        expected = {"size_mismatch": 1}
    elif part == "depth" and (seen.ndim != 2 or abs(seen.shape[1] / seen.shape[0] - WIDTH / HEIGHT) > 0.01 * WIDTH
                              / HEIGHT):
        expected = {"unsupported_encoding" if seen.ndim != 2 else "size_mismatch": 1}
    else:  # a usable image: frame 2 is mapped (with its content); the map stays sound
        event(f"{part}: mapped")
        assert logic.frames_processed == 2 and dict(logic.dropped) == {}
        return
    event(f"{part}: {' + '.join(sorted(expected))}")
    assert dict(logic.dropped) == expected
    assert logic.frames_processed == 1
    assert_same_map(state, references["no_2"])


@settings(max_examples=30)
@given(info=camera_infos(base=make_sequence(seed=4, n_frames=1, width=WIDTH, height=HEIGHT).intrinsics,
                         stamp=T0 + 2 * DT, frame_id=CAMERA))
def test_a_hostile_camera_info_costs_only_its_frame(clean, references, info):
    logic, state = run(clean, {"info": info})
    assert_sound(logic, state, images=2)
    try:
        intrinsics = m.decode_camera_info(info)
    except m.MessageError:
        event("bad_camera_info")
        assert dict(logic.dropped) == {"bad_camera_info": 1, "no_camera_info": 1}
        assert_same_map(state, references["no_2"])
        return
    event("size_mismatch" if (intrinsics.width, intrinsics.height) != (WIDTH, HEIGHT) else "mapped")
    if (intrinsics.width, intrinsics.height) != (WIDTH, HEIGHT):
        assert dict(logic.dropped) == {"size_mismatch": 1}
        assert_same_map(state, references["no_2"])
    else:  # a usable calibration (another K of the same size): frame 2 is mapped with it
        assert logic.frames_processed == 2 and dict(logic.dropped) == {}


def _time(sec: int, nanosec: int) -> Any:
    return TYPES("builtin_interfaces/msg/Time")(sec=sec, nanosec=nanosec)


def _restamped(clean: Clean, sec: int, nanosec: int, parts: str) -> dict[str, Any]:
    frame2 = {}
    for kind in ("image",) if parts == "image" else ("image", "depth", "info"):
        msg = copy.deepcopy(getattr(clean, kind)[2])
        msg.header.stamp = _time(sec, nanosec)
        frame2[kind] = msg
    return frame2


#: newest header stamp the fuzzed cases use: frame 3's plus the wait (later ones: see the far-future test below)
LATEST_NS = round((T0 + 3 * DT + 0.45) * 1e9)


@settings(max_examples=30)
@given(sec=st.one_of(st.integers(-(2**31), LATEST_NS // 10**9), st.sampled_from([0, -1, int(T0) - 1000])),
       nanosec=st.one_of(st.integers(0, 2**32 - 1), st.just(0)), parts=st.sampled_from(["image", "all"]))
def test_a_hostile_header_stamp_costs_only_its_frame(clean, references, sec, nanosec, parts):
    """Frame 2's image (or image, depth and camera_info) stamped anywhere a Time can say up to frame 3's
    (negative, far in the past, nanosec beyond a second): frame 2 is dropped, frame 3 is still mapped."""
    stamp_ns = sec * 10**9 + nanosec
    frame3_ns = round((T0 + 3 * DT) * 1e9)
    if abs(stamp_ns - round((T0 + 2 * DT) * 1e9)) <= 10**6 or abs(stamp_ns - frame3_ns) <= 10**6 \
            or stamp_ns > LATEST_NS:
        return  # frame 2's own stamp, or frame 3's: not hostile; or a future one (below)
    logic, state = run(clean, _restamped(clean, sec, nanosec, parts))
    assert_sound(logic, state, images=2)
    assert logic.frames_processed == 1 and sum(logic.dropped.values()) >= 1, logic.dropped
    assert_same_map(state, references["no_2"])


@pytest.mark.parametrize("ahead_s", [1000, 2**31 - 1 - int(T0)])
@pytest.mark.parametrize("part", ["image", "tf"])
def test_a_far_future_stamp_costs_only_its_message(clean, references, ahead_s, part):
    sec = int(T0 + 2 * DT) + ahead_s
    if part == "image":
        logic, state = run(clean, _restamped(clean, sec, 0, "image"))
        expected_frames = 1
    else:
        tf = copy.deepcopy(clean.tf[2])
        tf.transforms[0].header.stamp = _time(sec, 0)
        logic, state = run(clean, {}, extra_tf=tf)
        expected_frames = 2
    assert logic.frames_processed == expected_frames, logic.dropped
    assert dict(logic.dropped) == {"future_stamp": 1}
    assert_sound(logic, state, images=2, other_refused=int(part == "tf"))
    assert_same_map(state, references["no_2" if part == "image" else "clean"])


@settings(max_examples=30)
@given(translation=st.tuples(COMPONENT, COMPONENT, COMPONENT), quaternion=st.tuples(COMPONENT, COMPONENT,
                                                                                      COMPONENT, COMPONENT),
       absurd=st.sampled_from([None, None, None, 1e7, -1e9, 1e200, 1.7e308]))
def test_a_hostile_pose_costs_only_its_frame(clean, references, translation, quaternion, absurd):
    """Frame 2's camera pose replaced: not finite, zero or subnormal quaternion, or a position no map can
    hold. A pose that is a usable rigid transform maps frame 2 there; anything else drops frame 2."""
    if absurd is not None:
        translation = (absurd, *translation[1:])
    tf = m.encode_tf_message(TYPES, [m.encode_transform_stamped(TYPES, np.eye(4), T0 + 2 * DT, GLOBAL, CAMERA)])
    moved = tf.transforms[0].transform
    moved.translation = TYPES("geometry_msgs/msg/Vector3")(*translation)
    moved.rotation = TYPES("geometry_msgs/msg/Quaternion")(*quaternion)
    logic, state = run(clean, {"tf": tf})
    assert_sound(logic, state, images=2)
    values = (*translation, *quaternion)
    usable = all(math.isfinite(v) for v in values) and max(abs(v) for v in quaternion) >= 1e-9
    event("rejected" if not usable else "beyond the map" if max(map(abs, translation)) >= 1e7 else "mapped")
    if not usable:  # rejected; frame 2 cannot be posed (TF 1 and 3 bracket it: interpolated instead)
        assert logic.dropped["invalid_transform"] == 1
        assert logic.frames_processed == 2
    elif max(abs(v) for v in translation) >= 1e7:  # beyond any map: the frame is dropped, named
        assert dict(logic.dropped) == {"invalid_pose": 1}, logic.dropped
        assert_same_map(state, references["no_2"])
    else:
        assert logic.frames_processed == 2 and not logic.dropped


FRAME_IDS = st.one_of(st.sampled_from(["", "/", "//", GLOBAL, CAMERA, "/" + GLOBAL, "base_link"]),
                      st.text(max_size=40), st.text(min_size=300, max_size=600))


@settings(max_examples=30)
@given(parent=FRAME_IDS, child=FRAME_IDS, translation=st.tuples(COMPONENT, COMPONENT, COMPONENT),
       quaternion=st.tuples(COMPONENT, COMPONENT, COMPONENT, COMPONENT),
       offset_s=st.one_of(st.floats(-0.6, 0.6), st.sampled_from([0.5, 0.6])))
def test_a_hostile_extra_tf_is_rejected_or_harmless(clean, references, parent, child, translation, quaternion,
                                                     offset_s):
    """One more TF message next to frame 2's: empty, absurd or looping frame ids, non-finite or degenerate
    rotations, stamps around frame 2's (non-monotonic TF). Rejected (invalid_transform) or, on an edge that
    does not carry the camera, without effect: the map equals the clean stream's. (A valid TF more than
    max_wait_for_pose_s ahead of a waiting frame expires it by design, so valid ones stay within 0.4 s.)"""
    strip = lambda name: name[1:] if name.startswith("/") else name  # noqa: E731 - tf2's leading slash
    if strip(child) in (GLOBAL, CAMERA) and strip(parent) not in ("", strip(child)):
        if not (strip(child) == GLOBAL and strip(parent) == CAMERA):  # a loop: rejected, kept in the cases
            return  # re-parents a mapped frame: a legitimate (tf2) change of the tree, not hostile input
    valid = (all(math.isfinite(v) for v in (*translation, *quaternion)) and max(map(abs, quaternion)) >= 1e-9
             and strip(parent) and strip(child) and strip(parent) != strip(child)
             and not (strip(child) == GLOBAL and strip(parent) == CAMERA))
    if valid and offset_s > 0.4:
        return
    transform = m.encode_transform_stamped(TYPES, np.eye(4), T0 + 2 * DT + offset_s, "a", "b")
    transform.header.frame_id, transform.child_frame_id = parent, child
    transform.transform.translation = TYPES("geometry_msgs/msg/Vector3")(*translation)
    transform.transform.rotation = TYPES("geometry_msgs/msg/Quaternion")(*quaternion)
    logic, state = run(clean, {}, extra_tf=m.encode_tf_message(TYPES, [transform]))
    assert_sound(logic, state, images=2)
    assert set(logic.dropped) <= {"invalid_transform", "stale_stamp"}, logic.dropped
    assert logic.frames_processed == 2
    assert_same_map(state, references["clean"])
    event("accepted, no effect" if valid else "rejected")
    assert sum(logic.dropped.values()) == (0 if valid else 1)


@settings(max_examples=10)
@given(order=st.permutations(range(3)), again=st.lists(st.integers(0, 2), max_size=4))
def test_tf_out_of_order_gives_the_same_map(clean, references, order, again):
    """Non-monotonic TF: the samples of frames 0..2 delivered in any order, some twice (re-delivered), before
    frame 2 (frame 3's with it) give exactly the map of in-order TF."""
    params = NodeParameters(PARAMS)
    pipeline = build_pipeline(params)
    pipeline.load_map_state(clean.base_map)
    logic = NodeLogic(params, pipeline, NullPublisher())
    stream = [("tf", 2, clean.tf[k]) for k in [*order, *again]]
    stream += [(kind, 2, getattr(clean, kind)[2]) for kind in ("info", "depth", "image")]
    stream += [("tf", 3, clean.tf[3])] + [(kind, 3, getattr(clean, kind)[3]) for kind in ("info", "depth", "image")]
    feed(logic, stream)
    logic.finish()
    logic.close()
    assert logic.frames_processed == 2 and not logic.dropped
    assert_same_map(pipeline.tsdf_map.state_dict(), references["clean"])


def test_a_rejected_odometry_message_changes_nothing(clean, references):
    """pose_source 'odometry': an Odometry message that is rejected (NaN orientation, stamped 0.5 s ahead,
    naming another child frame) is counted and changes nothing else: message time stays (frame 2's
    camera_info is not pruned) and the edge odometry owns stays the camera's."""
    params = NodeParameters({**PARAMS, "pose_source": "odometry"})
    pipeline = build_pipeline(params)
    pipeline.load_map_state(clean.base_map)
    logic = NodeLogic(params, pipeline, NullPublisher())

    def odometry(k: int, stamp: float | None = None, child: str = CAMERA) -> Any:
        T = m.transform_to_matrix(clean.tf[k].transforms[0].transform)
        return m.encode_odometry(TYPES, T, stamp or T0 + DT * k, GLOBAL, child)

    hostile = odometry(2, stamp=T0 + 3 * DT, child="base_link")
    hostile.pose.pose.orientation.w = float("nan")
    stream = [("odom", 1, odometry(1)), ("odom", 2, odometry(2)), ("odom", 2, hostile)]
    stream += [(kind, 2, getattr(clean, kind)[2]) for kind in ("info", "depth", "image")]
    stream += [("odom", 3, odometry(3))] + [(kind, 3, getattr(clean, kind)[3]) for kind in ("info", "depth", "image")]
    feed(logic, stream)
    logic.finish()
    logic.close()
    assert dict(logic.dropped) == {"invalid_transform": 1} and logic.frames_processed == 2
    assert_same_map(pipeline.tsdf_map.state_dict(), references["clean"])
