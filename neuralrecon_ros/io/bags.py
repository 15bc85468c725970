"""ROS 2 bag reading and writing without a ROS install (``rosbags``, plus recovery readers).

:class:`BagReader` opens a rosbag2 directory (with ``metadata.yaml``), a bare ``.mcap`` or ``.db3``
file, or a directory whose recording was killed before ``metadata.yaml`` was written. It lists
topics and yields ``(topic, msgtype, bag_time_ns, msg)`` in time order. A bag that is damaged
part-way is read up to the damage, then :class:`BagReadError` is raised, so a caller keeps what it
already processed. An MCAP file without its footer (killed recorder) and a truncated SQLite file
are read by recovery readers in file order.

:class:`BagWriter` writes a rosbag2 directory, or a single ``.mcap``/``.db3`` file when the path
has that suffix, atomically: everything goes to a temporary directory beside the target, which is
renamed into place on a clean close (and removed on an error).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import struct
import tempfile
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from rosbags.highlevel import AnyReader
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer, WriterError
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore

from .messages import RosbagsTypes

log = logging.getLogger("neuralrecon_ros")

STORAGE_SUFFIXES = {"mcap": ".mcap", "sqlite3": ".db3"}
#: rosbag2 metadata version written (8 is the oldest rosbags writes; Jazzy reads 8 and 9)
BAG_VERSION = 8


class BagError(RuntimeError):
    """A bag cannot be opened, written, or does not hold what was asked for."""


class BagTopicError(BagError):
    """A topic is missing from a bag or carries an unexpected message type."""


class BagReadError(BagError):
    """Reading stopped part-way because the bag is damaged; earlier messages were delivered."""


def default_typestore() -> Any:
    """A fresh ROS 2 Humble typestore (fresh so that registering custom types stays local)."""
    return get_typestore(Stores.ROS2_HUMBLE)


def register_definitions(typestore: Any, definitions: dict[str, str], idl: bool = False) -> None:
    """Register custom message types, ``{'pkg/msg/Name': '<.msg text>'}`` (or IDL text)."""
    types: dict[str, Any] = {}
    try:
        for name, text in definitions.items():
            types.update(get_types_from_idl(text) if idl else get_types_from_msg(text, name))
        typestore.register(types)
    except Exception as exc:  # rosbags raises parser-specific types for bad definitions
        raise BagError(f"cannot register message definitions {sorted(definitions)}: {exc}") from exc


class BagMessage(NamedTuple):
    topic: str
    msgtype: str
    stamp_ns: int
    msg: Any


@dataclass(frozen=True)
class TopicSummary:
    topic: str
    msgtype: str
    count: int | None  # None when unknown (recovery readers count while reading)


# ============================================================================================
# reading


class _Source:
    """Where raw messages come from: ``topics`` and ``raw(topics)`` -> (topic, msgtype, ns, bytes)."""

    topics: dict[str, TopicSummary]
    typestore: Any
    start_ns: int | None = None
    end_ns: int | None = None

    def raw(self, topics: Collection[str]) -> Iterator[tuple[str, str, int, bytes]]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _RosbagsSource(_Source):
    """The normal path: rosbags' AnyReader over an intact bag."""

    def __init__(self, paths: list[Path]) -> None:
        self.reader = AnyReader(paths, default_typestore=default_typestore())
        try:
            self.reader.open()
        except BaseException:
            with contextlib.suppress(Exception):
                self.reader.close()
            raise
        self.typestore = self.reader.typestore
        self.topics = {
            name: TopicSummary(name, info.msgtype or "?", info.msgcount)
            for name, info in self.reader.topics.items()
        }
        if self.reader.message_count:
            self.start_ns, self.end_ns = self.reader.start_time, self.reader.end_time - 1

    def raw(self, topics: Collection[str]) -> Iterator[tuple[str, str, int, bytes]]:
        connections = [c for c in self.reader.connections if c.topic in topics]
        if not connections:
            return
        for connection, stamp_ns, data in self.reader.messages(connections=connections):
            yield connection.topic, connection.msgtype, stamp_ns, data

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.reader.close()


class _McapStreamSource(_Source):
    """Recovery: an MCAP file without a valid footer/index, read record by record.

    Chunks come in file order, the messages inside each chunk in time order (as a recorder writes
    them, this is time order but for stragglers across chunk borders).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.typestore = default_typestore()
        self._schemas: dict[int, Any] = {}
        self._channels: dict[int, tuple[str, str]] = {}
        # A first pass over the readable records finds the channels and counts messages.
        counts: dict[int, int] = {}
        for record in self._messages(stop_on_error=True):
            counts[record.channel_id] = counts.get(record.channel_id, 0) + 1
        self.topics = {
            topic: TopicSummary(topic, msgtype, counts.get(channel_id, 0))
            for channel_id, (topic, msgtype) in self._channels.items()
        }

    def _messages(self, stop_on_error: bool) -> Iterator[Any]:
        """Message records of every readable chunk; BagReadError (or a quiet stop) at the damage."""
        from mcap import records as mcap_records
        from mcap.stream_reader import StreamReader, breakup_chunk

        with open(self.path, "rb") as handle:
            stream = iter(StreamReader(handle, emit_chunks=True, validate_crcs=True).records)
            while True:
                try:
                    record = next(stream)
                    inner = (
                        breakup_chunk(record, validate_crc=True)
                        if isinstance(record, mcap_records.Chunk)
                        else [record]
                    )
                except StopIteration:
                    return
                except Exception as exc:  # EndOfFile, bad CRC, bad record length, ...
                    if stop_on_error:
                        return
                    reason = str(exc) or "unexpected end of file"
                    raise BagReadError(
                        f"bag {self.path} is damaged: reading stopped at byte {handle.tell()} "
                        f"({type(exc).__name__}: {reason})"
                    ) from exc
                messages = []
                for item in inner:
                    if isinstance(item, mcap_records.Schema):
                        self._schemas[item.id] = item
                    elif isinstance(item, mcap_records.Channel):
                        self._add_channel(item)
                    elif isinstance(item, mcap_records.Message) and item.channel_id in self._channels:
                        messages.append(item)
                messages.sort(key=lambda item: item.log_time)
                yield from messages

    def _add_channel(self, channel: Any) -> None:
        schema = self._schemas.get(channel.schema_id)
        msgtype = schema.name if schema is not None else "?"
        if schema is not None and msgtype not in self.typestore.types:
            idl = schema.encoding == "ros2idl"
            register_definitions(self.typestore, {msgtype: schema.data.decode()}, idl=idl)
        self._channels[channel.id] = (channel.topic, msgtype)

    def raw(self, topics: Collection[str]) -> Iterator[tuple[str, str, int, bytes]]:
        for record in self._messages(stop_on_error=False):
            topic, msgtype = self._channels[record.channel_id]
            if topic in topics:
                yield topic, msgtype, record.log_time, record.data


class _Sqlite3RecoverySource(_Source):
    """Recovery: a truncated ``.db3``, padded (in temporary copies) to the size its header declares.

    SQLite refuses a file shorter than its header says; padded, the intact pages read normally and
    reading fails where the damage starts. Rows come in insertion order (= recording order).

    A row whose data reaches into the missing part (a large message spills into overflow pages further
    on) would read the padding as if it were recorded. So the file is padded twice, with 0x00 and with
    0xFF bytes, and both copies are read in step: a row is delivered only when both copies agree on it,
    i.e. when none of its bytes comes from the padding; the first disagreement ends reading there.
    """

    _PADDING = (b"\x00", b"\xff")

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tmpdir = tempfile.TemporaryDirectory(prefix="neuralrecon_bag_recovery_")
        self.connections: list[sqlite3.Connection] = []
        try:
            self._open_copies(Path(self._tmpdir.name))
        except BaseException:
            self.close()
            raise

    def _open_copies(self, folder: Path) -> None:
        path = self.path
        for i, fill in enumerate(self._PADDING):
            copy = folder / f"{i}_{path.name}"
            shutil.copyfile(path, copy)
            with open(copy, "r+b") as handle:
                header = handle.read(100)
                if len(header) < 100 or not header.startswith(b"SQLite format 3\0"):
                    raise BagError(f"{path} is not an SQLite database (bad header)")
                page_size = struct.unpack(">H", header[16:18])[0]
                page_size = 65536 if page_size == 1 else page_size
                pages = struct.unpack(">I", header[28:32])[0]
                missing = page_size * pages - handle.seek(0, os.SEEK_END)
                while missing > 0:
                    chunk = min(missing, 1 << 20)
                    handle.write(fill * chunk)
                    missing -= chunk
            self.connections.append(sqlite3.connect(f"file:{copy}?mode=ro", uri=True))
        self.connection = self.connections[0]
        self.typestore = default_typestore()
        try:
            rows = self._agreed("SELECT id, name, type FROM topics ORDER BY id")
            self._register_embedded_definitions()
        except (sqlite3.DatabaseError, BagReadError) as exc:
            raise BagError(f"bag {path} is damaged beyond recovery: {exc}") from exc
        try:
            query = "SELECT topic_id, COUNT(*) FROM messages GROUP BY topic_id"
            counts = dict(self.connection.execute(query))
        except sqlite3.DatabaseError:
            counts = {}  # damaged message pages: counts stay unknown
        self._topic_ids = {topic_id: (name, msgtype) for topic_id, name, msgtype in rows}
        self.topics = {
            name: TopicSummary(name, msgtype, counts.get(topic_id))
            for topic_id, (name, msgtype) in self._topic_ids.items()
        }

    def _rows(self, query: str, *args: Any) -> Iterator[tuple[Any, ...]]:
        """Rows of ``query`` on which both padded copies agree; BagReadError at the first disagreement."""
        cursors = [connection.execute(query, *args) for connection in self.connections]
        while True:
            rows = [cursor.fetchone() for cursor in cursors]
            if rows[0] != rows[1]:
                raise BagReadError(
                    f"bag {self.path} is damaged: reading stopped where a row reaches past the end of the "
                    "truncated file"
                )
            if rows[0] is None:
                return
            yield rows[0]

    def _agreed(self, query: str) -> list[tuple[Any, ...]]:
        return list(self._rows(query))

    def _register_embedded_definitions(self) -> None:
        query = "SELECT name FROM sqlite_master WHERE type='table'"
        tables = {row[0] for row in self._agreed(query)}
        if "message_definitions" not in tables:  # Humble-era files carry no definitions
            return
        query = "SELECT topic_type, encoding, encoded_message_definition FROM message_definitions ORDER BY id"
        for msgtype, encoding, text in self._agreed(query):
            if msgtype not in self.typestore.types and text:
                register_definitions(self.typestore, {msgtype: text}, idl=encoding == "ros2idl")

    def raw(self, topics: Collection[str]) -> Iterator[tuple[str, str, int, bytes]]:
        wanted = [tid for tid, (name, _) in self._topic_ids.items() if name in topics]
        if not wanted:
            return
        marks = ",".join("?" * len(wanted))
        query = f"SELECT topic_id, timestamp, data FROM messages WHERE topic_id IN ({marks}) ORDER BY id"
        try:
            for topic_id, stamp_ns, data in self._rows(query, wanted):
                name, msgtype = self._topic_ids[topic_id]
                yield name, msgtype, stamp_ns, data
        except sqlite3.DatabaseError as exc:
            raise BagReadError(f"bag {self.path} is damaged: reading stopped ({exc})") from exc

    def close(self) -> None:
        for connection in self.connections:
            connection.close()
        self._tmpdir.cleanup()


def _storage_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in (".mcap", ".db3"))


class BagReader:
    """Read a ROS 2 bag: ``for topic, msgtype, stamp_ns, msg in reader.messages(topics): ...``."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"bag not found: {self.path}")
        self.recovered = False  # True when a recovery reader is in use (damaged bag)
        self._source = self._open()

    # --- opening ----------------------------------------------------------------------------

    def _open(self) -> _Source:
        paths = [self.path]
        if self.path.is_dir() and not (self.path / "metadata.yaml").exists():
            paths = _storage_files(self.path)
            if not paths:
                raise BagError(
                    f"{self.path} is not a ROS 2 bag: no metadata.yaml and no .mcap/.db3 file in it"
                )
            log.warning("bag %s has no metadata.yaml (recording interrupted?); reading %s",
                        self.path, ", ".join(p.name for p in paths))
        elif self.path.is_file() and self.path.suffix not in (".mcap", ".db3"):
            raise BagError(f"{self.path}: not a ROS 2 bag (expected a directory, a .mcap or a .db3 file)")
        try:
            return _RosbagsSource(paths)
        except Exception as exc:  # rosbags raises many types on damaged or foreign files (TypeError, ...)
            return self._recover(paths, exc)

    def _recover(self, paths: list[Path], error: Exception) -> _Source:
        files = paths if paths[0].is_file() else _storage_files(paths[0])
        if len(files) != 1:
            raise BagError(f"cannot open bag {self.path}: {error}") from error
        file = files[0]
        try:
            source: _Source = (
                _McapStreamSource(file) if file.suffix == ".mcap" else _Sqlite3RecoverySource(file)
            )
        except BagError:
            raise
        except Exception as exc:
            raise BagError(f"cannot open bag {self.path}: {error} (recovery failed too: {exc})") from exc
        if not source.topics:
            source.close()
            raise BagError(f"cannot open bag {self.path}: {error} (no readable topics)")
        self.recovered = True
        log.error("bag %s is damaged (%s); reading what is readable, in recording order", self.path, error)
        return source

    # --- what is in it ----------------------------------------------------------------------

    @property
    def topics(self) -> dict[str, TopicSummary]:
        return dict(self._source.topics)

    @property
    def typestore(self) -> Any:
        return self._source.typestore

    @property
    def types(self) -> RosbagsTypes:
        """Message classes of this bag's types (for building messages, e.g. in tests)."""
        return RosbagsTypes(self._source.typestore)

    @property
    def start_ns(self) -> int | None:
        return self._source.start_ns

    @property
    def end_ns(self) -> int | None:
        return self._source.end_ns

    @property
    def message_count(self) -> int | None:
        counts = [t.count for t in self._source.topics.values()]
        return None if any(c is None for c in counts) else sum(c for c in counts if c is not None)

    def describe_topics(self) -> str:
        if not self._source.topics:
            return "(no topics)"
        return ", ".join(
            f"{t.topic} ({t.msgtype}" + (f", {t.count} msgs)" if t.count is not None else ")")
            for t in sorted(self._source.topics.values(), key=lambda t: t.topic)
        )

    def require(self, topic: str, msgtypes: str | Collection[str], purpose: str = "") -> str:
        """Check ``topic`` exists with one of ``msgtypes``; return its type or raise BagTopicError."""
        allowed = (msgtypes,) if isinstance(msgtypes, str) else tuple(msgtypes)
        what = f" ({purpose})" if purpose else ""
        info = self._source.topics.get(topic)
        if info is None:
            raise BagTopicError(
                f"topic '{topic}'{what} is not in bag {self.path}; it has: {self.describe_topics()}"
            )
        if info.msgtype not in allowed:
            raise BagTopicError(
                f"topic '{topic}'{what} in bag {self.path} carries {info.msgtype}, "
                f"expected {' or '.join(allowed)}"
            )
        return info.msgtype

    # --- reading ----------------------------------------------------------------------------

    def messages(self, topics: Iterable[str] | None = None) -> Iterator[BagMessage]:
        """Deserialized messages of ``topics`` (all when None) in bag-time order.

        Raises :class:`BagTopicError` before yielding anything if a topic is not in the bag, and
        :class:`BagReadError` after the last readable message if the bag is damaged.
        """
        wanted = set(self._source.topics) if topics is None else set(topics)
        if missing := sorted(wanted - set(self._source.topics)):
            raise BagTopicError(
                f"topic(s) {', '.join(missing)} not in bag {self.path}; it has: {self.describe_topics()}"
            )
        return self._iterate(wanted)

    def _iterate(self, wanted: set[str]) -> Iterator[BagMessage]:
        count, last_ns = 0, None
        deserialize = self._source.typestore.deserialize_cdr
        try:
            for topic, msgtype, stamp_ns, data in self._source.raw(wanted):
                try:
                    msg = deserialize(data, msgtype)
                except Exception as exc:  # rosbags raises several types for malformed CDR
                    raise BagReadError(
                        f"bag {self.path}: message {count} on '{topic}' ({msgtype}) cannot be decoded: {exc}"
                    ) from exc
                yield BagMessage(topic, msgtype, stamp_ns, msg)
                count, last_ns = count + 1, stamp_ns
        except BagReadError:
            raise
        except Exception as exc:  # a storage reader failing part-way through a damaged file
            where = f" at bag time {last_ns} ns" if last_ns is not None else ""
            raise BagReadError(
                f"bag {self.path} is damaged: reading stopped after {count} messages{where}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def close(self) -> None:
        self._source.close()

    def __enter__(self) -> BagReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ============================================================================================
# writing


def _qos(latched: bool) -> list[Qos]:
    """Offered QoS for a topic: reliable keep-last(1); transient_local when ``latched``."""
    infinite = QosTime(0x7FFFFFFF, 0xFFFFFFFF)
    return [
        Qos(
            QosHistory.KEEP_LAST,
            1,
            QosReliability.RELIABLE,
            QosDurability.TRANSIENT_LOCAL if latched else QosDurability.VOLATILE,
            infinite,
            infinite,
            QosLiveliness.AUTOMATIC,
            infinite,
            False,
        )
    ]


class BagWriter:
    """Write a ROS 2 bag atomically.

    ``path`` ending in ``.mcap``/``.db3`` gives that single file; any other path gives a rosbag2
    directory. An existing target is refused unless ``overwrite``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        storage: str | None = None,
        overwrite: bool = False,
        typestore: Any | None = None,
    ) -> None:
        self.path = Path(path)
        suffix_storage = {v: k for k, v in STORAGE_SUFFIXES.items()}.get(self.path.suffix)
        storage = storage or suffix_storage or "mcap"
        if storage not in STORAGE_SUFFIXES:
            raise BagError(f"unknown bag storage '{storage}'; expected 'mcap' or 'sqlite3'")
        if suffix_storage is not None and suffix_storage != storage:
            raise BagError(
                f"bag path {self.path} has suffix {self.path.suffix} but storage '{storage}' was asked"
            )
        self.storage = storage
        self.single_file = suffix_storage is not None
        self.overwrite = overwrite
        if self.path.exists() and not overwrite:
            raise BagError(f"output bag {self.path} exists already; remove it or ask to overwrite")
        self.typestore = typestore or default_typestore()
        self.types = RosbagsTypes(self.typestore)
        self._writer: Writer | None = None
        self._tmpdir: Path | None = None
        self._connections: dict[str, Any] = {}

    # --- lifecycle --------------------------------------------------------------------------

    def open(self) -> BagWriter:
        parent = self.path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self._tmpdir = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=parent))
        except OSError as exc:
            raise BagError(f"cannot write bag {self.path}: {exc.strerror or exc}") from exc
        plugin = StoragePlugin.MCAP if self.storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self._staging_dir, version=BAG_VERSION, storage_plugin=plugin)
        self._writer.open()
        return self

    @property
    def _staging_dir(self) -> Path:
        assert self._tmpdir is not None
        name = self.path.stem if self.single_file else self.path.name
        return self._tmpdir / name

    def close(self) -> None:
        """Finish the bag and move it into place."""
        if self._writer is None:
            return
        writer, self._writer = self._writer, None
        try:
            writer.close()
            staged = self._staging_dir
            if self.single_file:
                staged = staged / f"{staged.name}{STORAGE_SUFFIXES[self.storage]}"
            if self.path.exists():
                if not self.overwrite:
                    raise BagError(f"output bag {self.path} appeared while writing; not overwriting it")
                shutil.rmtree(self.path) if self.path.is_dir() else self.path.unlink()
            os.replace(staged, self.path)
        except (WriterError, OSError) as exc:
            raise BagError(f"cannot finish bag {self.path}: {exc}") from exc
        finally:
            self._cleanup()

    def abort(self) -> None:
        """Discard everything written; the target path is left untouched."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            with contextlib.suppress(Exception):
                writer.close()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> BagWriter:
        return self.open() if self._writer is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # --- content ----------------------------------------------------------------------------

    def register_types(self, definitions: dict[str, str]) -> None:
        """Make custom message types writable: ``{'pkg/msg/Name': '<.msg text>'}``."""
        register_definitions(self.typestore, definitions)

    @property
    def topics(self) -> dict[str, str]:
        return {topic: c.msgtype for topic, c in self._connections.items()}

    def add_topic(self, topic: str, msgtype: str, latched: bool = False) -> None:
        """Declare a topic (once); ``latched`` offers transient_local durability like a map topic."""
        if self._writer is None:
            raise BagError(f"bag {self.path} is not open (use it as a context manager)")
        if topic in self._connections:
            if self._connections[topic].msgtype != msgtype:
                raise BagTopicError(
                    f"topic '{topic}' was added as {self._connections[topic].msgtype}, not {msgtype}"
                )
            return
        if msgtype not in self.typestore.types:
            raise BagTopicError(
                f"message type '{msgtype}' of topic '{topic}' is unknown; register_types() it first"
            )
        self._connections[topic] = self._writer.add_connection(
            topic, msgtype, typestore=self.typestore, offered_qos_profiles=_qos(latched)
        )

    def write(self, topic: str, stamp_ns: int, msg: Any) -> None:
        """Serialize and write ``msg`` on ``topic`` (added before) at bag time ``stamp_ns``."""
        connection = self._connection(topic)
        try:
            data = self.typestore.serialize_cdr(msg, connection.msgtype)
        except Exception as exc:  # rosbags raises several types for a message of the wrong shape
            raise BagError(
                f"cannot serialize a message for '{topic}' as {connection.msgtype}: {exc}"
            ) from exc
        self._write(connection, stamp_ns, data)

    def write_raw(self, topic: str, stamp_ns: int, data: bytes) -> None:
        """Write already CDR-serialized bytes."""
        self._write(self._connection(topic), stamp_ns, data)

    def _connection(self, topic: str) -> Any:
        if self._writer is None:
            raise BagError(f"bag {self.path} is not open (use it as a context manager)")
        try:
            return self._connections[topic]
        except KeyError:
            raise BagTopicError(
                f"topic '{topic}' was not added to bag {self.path}; call add_topic first"
            ) from None

    def _write(self, connection: Any, stamp_ns: int, data: bytes) -> None:
        if stamp_ns < 0:
            raise BagError(f"bag time must be non-negative, got {stamp_ns} ns on '{connection.topic}'")
        assert self._writer is not None
        self._writer.write(connection, int(stamp_ns), data)
