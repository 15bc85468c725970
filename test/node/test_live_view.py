"""A replay served live to Foxglove: a WebSocket client watches it and sees what the output bag records."""

from __future__ import annotations

import socket
import threading

import pytest
from foxglove_client import FoxgloveClient, assert_stopped
from mcap.reader import make_reader
from replay_helpers import QUIET, TOPICS, record

from neuralrecon_ros.cli import main
from neuralrecon_ros.io.bags import default_typestore
from neuralrecon_ros.io.foxglove_live import FoxgloveLiveView
from neuralrecon_ros.io.interfaces import register_custom_types
from neuralrecon_ros.node import bag_transport
from neuralrecon_ros.node.bag_transport import replay_bag
from neuralrecon_ros.node.outputs import OUTPUTS, output_topic_name
from neuralrecon_ros.node.parameters import NodeParameters
from neuralrecon_ros.node.pipeline_factory import build_pipeline

MESH = output_topic_name("mesh")


def _raw_output(bag) -> dict[str, dict[int, bytes]]:
    """{topic: {log time: CDR bytes}} of the output bag, read with the mcap library."""
    streams: dict[str, dict[int, bytes]] = {}
    with open(bag, "rb") as handle:
        for _, channel, message in make_reader(handle).iter_messages():
            streams.setdefault(channel.topic, {})[message.log_time] = message.data
    return streams


def test_a_client_watches_a_replay_live(tmp_path):
    recording = record(tmp_path / "rec", n_frames=45)
    bag = tmp_path / "rec" / "clean"
    typestore = default_typestore()
    register_custom_types(typestore)
    params = NodeParameters({**QUIET, "full_mesh_publish_rate_hz": 2.0, "mesh_publish_rate_hz": 2.0})
    result = {}
    with FoxgloveLiveView(typestore, port=0) as view, FoxgloveClient(view.url) as client:
        def run() -> None:
            result["replay"] = replay_bag(bag, tmp_path / "out", params, build_pipeline(params), progress=False,
                                          live=view, rate=1.0)

        replay = threading.Thread(target=run)
        replay.start()
        try:
            wanted = {output_topic_name(out.key) for out in OUTPUTS} | {TOPICS.image, TOPICS.tf, TOPICS.tf_static}
            channels = client.wait_for_topics(wanted)
            for out in OUTPUTS:  # the output bag's types, as ROS 2 schemas
                advertised = channels[output_topic_name(out.key)]
                assert (advertised.schema_name, advertised.schema_encoding) == (out.msgtype, "ros2msg")
            assert channels[TOPICS.image].schema_name == "sensor_msgs/msg/Image"
            client.subscribe([MESH, TOPICS.image])
            received: list[tuple[str, int, bytes]] = []
            while replay.is_alive():
                try:
                    received.append(client.receive(timeout=1))
                except TimeoutError:
                    continue
        finally:
            replay.join()
    assert result["replay"].counts["frames"] == 45
    recorded = _raw_output(tmp_path / "out" / "output.mcap")
    meshes = [(t, data) for topic, t, data in received if topic == MESH]
    images = [data for topic, _, data in received if topic == TOPICS.image]
    assert meshes and len(images) >= 20  # subscribed within the first second of a 1.5 s replay
    for log_time, data in meshes:  # byte for byte what the output bag holds at that time
        assert recorded[MESH][log_time] == data
    decoded = typestore.deserialize_cdr(images[-1], "sensor_msgs/msg/Image")
    assert (decoded.width, decoded.height) == (recording.sequence.intrinsics.width,
                                               recording.sequence.intrinsics.height)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("interrupted", [False, True], ids=["finished", "ctrl_c"])
def test_cli_live_view_stops_with_the_replay(tmp_path, monkeypatch, interrupted):
    record(tmp_path / "rec", n_frames=10)
    port = _free_port()
    args = ["replay", str(tmp_path / "rec" / "clean"), "--output", str(tmp_path / "out"), "--no-progress",
            "--foxglove-port", str(port), "-p", "mode:=depth"]
    if interrupted:
        def interrupt(*args, **kwargs):
            FoxgloveClient(f"ws://127.0.0.1:{port}").close()  # the server is up during the replay
            raise KeyboardInterrupt

        monkeypatch.setattr(bag_transport, "replay_bag", interrupt)
        assert main(args) == 130  # Ctrl-C: "interrupted", exit status 130
    else:
        assert main(args) == 0
    assert_stopped(f"ws://127.0.0.1:{port}")


def test_replay_rate_must_be_positive(tmp_path):
    params = NodeParameters(QUIET)
    with pytest.raises(ValueError, match="rate must be positive"):
        replay_bag(tmp_path / "none", tmp_path / "out", params, build_pipeline(params), rate=0.0)
