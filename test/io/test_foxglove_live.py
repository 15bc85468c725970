"""The Foxglove live view, through a real WebSocket client: schemas, subscriptions, latching, cost, shutdown."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from foxglove_client import FoxgloveClient, assert_stopped
from mcap.reader import make_reader

from neuralrecon_ros.io import messages as m
from neuralrecon_ros.io.bags import BagWriter, default_typestore
from neuralrecon_ros.io.foxglove_live import FoxgloveLiveView, LiveViewError

TYPESTORE = default_typestore()
TYPES = m.rosbags_types(TYPESTORE)
TF = "tf2_msgs/msg/TFMessage"


def tf_msg(x: float):
    T = np.eye(4)
    T[0, 3] = x
    return m.encode_tf_message(TYPES, [m.encode_transform_stamped(TYPES, T, 1.0, "odom", "base_link")])


def test_schemas_equal_the_output_bags_and_messages_decode(tmp_path):
    with BagWriter(tmp_path / "out.mcap") as bag:
        bag.add_topic("/tf", TF)
    with open(tmp_path / "out.mcap", "rb") as handle:  # the MCAP file's schema, read by the mcap library
        schema = next(iter(make_reader(handle).get_summary().schemas.values()))
    with FoxgloveLiveView(TYPESTORE, port=0) as view, FoxgloveClient(view.url) as client:
        view.add_topic("/tf", TF)
        advertised = client.wait_for_topics({"/tf"})["/tf"]
        assert (advertised.schema_name, advertised.schema_encoding, advertised.encoding) == (TF, "ros2msg", "cdr")
        assert advertised.schema == schema.data.decode() and schema.encoding == "ros2msg"
        client.subscribe(["/tf"])
        for attempt in range(50):  # the subscription takes effect asynchronously
            view.write("/tf", 1_000 + attempt, tf_msg(attempt))
            try:
                topic, log_time, payload = client.receive(timeout=0.2)
                break
            except TimeoutError:
                continue
        else:
            pytest.fail("no message arrived")
        received = TYPESTORE.deserialize_cdr(payload, TF)
        assert topic == "/tf" and log_time == 1_000 + attempt
        assert received.transforms[0].transform.translation.x == attempt


def test_latched_topic_reaches_a_late_subscriber():
    with FoxgloveLiveView(TYPESTORE, port=0) as view:
        view.add_topic("/map", TF, latched=True)
        view.write("/map", 7, tf_msg(1.0))
        view.write("/map", 9, tf_msg(100.0))
        with FoxgloveClient(view.url) as client:
            client.wait_for_topics({"/map"})
            client.subscribe(["/map"])
            topic, log_time, payload = client.receive(timeout=5)
        assert topic == "/map" and log_time == 9
        assert TYPESTORE.deserialize_cdr(payload, TF).transforms[0].transform.translation.x == 100.0


def test_nothing_is_serialized_without_a_subscriber(monkeypatch):
    with FoxgloveLiveView(TYPESTORE, port=0) as view:
        view.add_topic("/tf", TF)
        calls = []
        monkeypatch.setattr(view, "_serialize", lambda entry, msg: calls.append(msg) or b"")
        for i in range(100):
            view.write("/tf", i, tf_msg(i))
        assert calls == []


def test_busy_port_is_a_clear_error_and_close_stops_the_server():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(LiveViewError, match=f"127.0.0.1:{busy.getsockname()[1]}"):
            FoxgloveLiveView(TYPESTORE, port=busy.getsockname()[1])
    view = FoxgloveLiveView(TYPESTORE, port=0)
    url = view.url
    view.close()
    view.close()
    assert_stopped(url)
