"""Outputs do not freeze when input stops: with a steady clock (live transports), output rates go on with it
once no input advances message time, and /diagnostics follows it too; without one (bag replay) nothing
changes."""

from __future__ import annotations

from test_logic import camera_stream, feed, make_logic, stamps

from neuralrecon_ros.node.logic import NodeLogic


def _count(publisher, key: str) -> int:
    return sum(1 for topic, _ in publisher.published if topic == key)


def _last_mesh_z(publisher) -> float:
    marker = [msg for topic, msg in publisher.published if topic == "mesh"][-1]
    return max(point.z for point in marker.points)


def _tick_without_input(logic: NodeLogic, now: float, steady: float, seconds: float, period: float = 0.02) -> float:
    """The node's timer ticking while neither input nor the (simulated) clock moves: only ``steady`` does."""
    for _ in range(round(seconds / period)):
        steady += period
        logic.spin_once(now, steady=steady)
    return steady


def test_the_map_and_diagnostics_keep_coming_after_the_input_stops():
    # a 0.5 Hz mesh: frames 2..5 change the map within 0.5 s of message time, so they are not shown yet
    logic, pipeline, publisher = make_logic(full_mesh_publish_rate_hz=0.5, diagnostics_rate_hz=2.0)
    ts = stamps(6)
    feed(logic, camera_stream(ts))
    assert len(pipeline.frames) == 6
    shown_while_streaming = _last_mesh_z(publisher)
    assert shown_while_streaming < 6  # the fake mesh's top vertex is at z = number of frames
    steady = 100.0
    logic.spin_once(ts[-1], steady=steady)  # input stops here
    diagnostics_before = _count(publisher, "diagnostics")
    _tick_without_input(logic, ts[-1], steady, seconds=2.5)
    assert _last_mesh_z(publisher) == 6  # the final map reached the topic without any new input
    assert _count(publisher, "diagnostics") - diagnostics_before == 5  # 2 Hz for 2.5 s of the steady clock
    meshes = _count(publisher, "mesh")
    _tick_without_input(logic, ts[-1], steady + 2.5, seconds=5.0)
    assert _count(publisher, "mesh") == meshes  # nothing changed since: nothing more is published


def test_without_a_steady_clock_outputs_follow_message_time_only():
    logic, _, publisher = make_logic(full_mesh_publish_rate_hz=0.5, diagnostics_rate_hz=2.0)
    ts = stamps(6)
    feed(logic, camera_stream(ts))
    meshes = _count(publisher, "mesh")
    for _ in range(100):  # the transport clock frozen (a bag at its end): nothing is due
        logic.spin_once(ts[-1])
    assert _count(publisher, "mesh") == meshes and _last_mesh_z(publisher) < 6
    logic.finish()  # the end of a replay publishes the final state
    assert _last_mesh_z(publisher) == 6
