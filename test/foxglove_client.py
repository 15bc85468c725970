"""A minimal Foxglove WebSocket client for the tests (the protocol's JSON control plane and binary data)."""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass
from typing import Any

from websockets.exceptions import WebSocketException
from websockets.sync.client import connect

SUBPROTOCOLS = ["foxglove.sdk.v1", "foxglove.websocket.v1"]
MESSAGE_DATA = 0x01  # binary opcode: subscription id (u32), log time (u64), payload


@dataclass(frozen=True)
class Advertised:
    id: int
    topic: str
    encoding: str
    schema_name: str
    schema_encoding: str
    schema: str


class FoxgloveClient:
    """Connects, collects advertised channels, subscribes by topic, receives (topic, log time, payload)."""

    def __init__(self, url: str) -> None:
        self._connection = connect(url, subprotocols=SUBPROTOCOLS, open_timeout=5, max_size=None)
        self.ws = self._connection.__enter__()
        self.channels: dict[str, Advertised] = {}
        self._subscriptions: dict[int, str] = {}

    def wait_for_topics(self, topics: set[str], timeout: float = 10.0) -> dict[str, Advertised]:
        while not topics <= set(self.channels):
            self._handle(self.ws.recv(timeout=timeout))
        return self.channels

    def subscribe(self, topics: list[str]) -> None:
        subscriptions = []
        for topic in topics:
            sub_id = len(self._subscriptions) + 1
            self._subscriptions[sub_id] = topic
            subscriptions.append({"id": sub_id, "channelId": self.channels[topic].id})
        self.ws.send(json.dumps({"op": "subscribe", "subscriptions": subscriptions}))

    def receive(self, timeout: float = 10.0) -> tuple[str, int, bytes]:
        """The next message on a subscribed topic (control messages in between are handled)."""
        while True:
            frame = self.ws.recv(timeout=timeout)
            if isinstance(frame, bytes) and frame[0] == MESSAGE_DATA:
                sub_id, log_time = struct.unpack_from("<IQ", frame, 1)
                return self._subscriptions[sub_id], log_time, frame[13:]
            self._handle(frame)

    def _handle(self, frame: Any) -> None:
        if isinstance(frame, bytes):
            return
        message = json.loads(frame)
        if message.get("op") == "advertise":
            for channel in message["channels"]:
                self.channels[channel["topic"]] = Advertised(
                    channel["id"], channel["topic"], channel["encoding"], channel["schemaName"],
                    channel.get("schemaEncoding", ""), channel["schema"])

    def close(self) -> None:
        self._connection.__exit__(None, None, None)

    def __enter__(self) -> FoxgloveClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def assert_stopped(url: str, timeout: float = 5.0) -> None:
    """Within ``timeout``, ``url`` stops answering: the connection is refused or closed unanswered."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            FoxgloveClient(url).close()
        except (OSError, WebSocketException):
            return
        assert time.monotonic() < deadline, f"{url} still serves"
        time.sleep(0.1)
