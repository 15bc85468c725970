"""A live Foxglove view: serve messages over the Foxglove WebSocket protocol while a replay runs.

:class:`FoxgloveLiveView` has the writing side of :class:`~.bags.BagWriter` (``add_topic`` /
``write``), so whatever goes into the output bag can go to Foxglove too, with the same encoding: ROS 2
CDR bytes from the same typestore, and the ``ros2msg`` schema text an MCAP file carries. A Foxglove
user and a ROS 2 user see the same topics and types. The server is the maintained ``foxglove-sdk``
package (its WebSocket server runs on its own threads).

- It binds to 127.0.0.1 unless another address is given (``0.0.0.0``: every interface, reachable from
  other machines, with no authentication).
- A message is serialized only when a client subscribes to its topic, so without a client connected a
  ``write`` costs a dictionary lookup.
- Latched topics (the whole mesh, the occupancy grid, ...) keep their last message, and a client that
  subscribes late gets it at once, as a ROS 2 transient-local subscriber would.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import foxglove
from foxglove.websocket import ServerListener

log = logging.getLogger("neuralrecon_ros")

DEFAULT_HOST = "127.0.0.1"
#: schema encoding of ROS 2 message definitions, and message encoding of ROS 2 CDR, as MCAP names them
SCHEMA_ENCODING = "ros2msg"
MESSAGE_ENCODING = "cdr"


class LiveViewError(RuntimeError):
    """The live view cannot start (port in use, bad address)."""


@dataclass
class _Topic:
    channel: Any
    msgtype: str
    latched: bool
    last: tuple[int, Any] | None = None  # latched: (log time, message) of the newest message


class FoxgloveLiveView:
    """A Foxglove WebSocket server with a bag-writer interface; use as a context manager (stops the server)."""

    def __init__(self, typestore: Any, port: int = 8765, host: str = DEFAULT_HOST,
                 name: str = "neuralrecon_ros") -> None:
        """``port`` 0 picks a free port (see :attr:`port`)."""
        self.typestore = typestore
        self._context = foxglove.Context()
        self._topics: dict[str, _Topic] = {}
        self._by_channel: dict[int, _Topic] = {}
        self._lock = threading.Lock()
        try:
            self._server = foxglove.start_server(name=name, host=host, port=port, context=self._context,
                                                 server_listener=_Listener(self))
        except Exception as exc:  # the SDK raises its own error types for a busy port or a bad address
            raise LiveViewError(f"cannot serve the live view on {host}:{port}: {exc}") from None
        self.host = host
        self.port = int(self._server.port)
        log.info("Foxglove live view on ws://%s:%d (Foxglove: Open connection -> Foxglove WebSocket)",
                 host, self.port)

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def add_topic(self, topic: str, msgtype: str, latched: bool = False) -> None:
        """Advertise ``topic`` (once) with the ROS 2 definition of ``msgtype`` from the typestore."""
        if topic in self._topics:
            return
        definition, _ = self.typestore.generate_msgdef(msgtype, ros_version=2)
        schema = foxglove.Schema(name=msgtype, encoding=SCHEMA_ENCODING, data=definition.encode())
        channel = foxglove.Channel(topic, schema=schema, message_encoding=MESSAGE_ENCODING,
                                         context=self._context)
        entry = _Topic(channel, msgtype, latched)
        with self._lock:
            self._topics[topic] = entry
            self._by_channel[channel.id()] = entry

    def write(self, topic: str, stamp_ns: int, msg: Any) -> None:
        """Send ``msg`` to the clients subscribed to ``topic`` (a latched topic also keeps it for later ones)."""
        entry = self._topics[topic]
        if entry.latched:
            entry.last = (stamp_ns, msg)
        if entry.channel.has_sinks():
            entry.channel.log(self._serialize(entry, msg), log_time=int(stamp_ns))

    def _serialize(self, entry: _Topic, msg: Any) -> bytes:
        return bytes(self.typestore.serialize_cdr(msg, entry.msgtype))

    def _subscribed(self, channel_id: int) -> None:
        """A client subscribed: give it the latched topic's last message (other subscribers get it again)."""
        with self._lock:
            entry = self._by_channel.get(channel_id)
        if entry is not None and entry.last is not None:
            stamp_ns, msg = entry.last
            entry.channel.log(self._serialize(entry, msg), log_time=int(stamp_ns))

    def close(self) -> None:
        """Stop the server (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def __enter__(self) -> FoxgloveLiveView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Listener(ServerListener):
    """Server events: only subscriptions matter here (the other callbacks keep the SDK's defaults)."""

    def __init__(self, view: FoxgloveLiveView) -> None:
        self._view = view

    def on_subscribe(self, client: Any, channel: Any) -> None:
        try:
            self._view._subscribed(channel.id)
        except Exception:  # never let a client's subscription break the server thread
            log.exception("live view: resending the latched message on '%s' failed", channel.topic)
