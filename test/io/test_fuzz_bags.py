"""Hostile bags, fuzzed (Hypothesis): truncated, overwritten or foreign files and undecodable messages.

The reference is a small intact synthetic bag (4 frames of images, depth, camera_info, TF, odometry),
written as a single ``.mcap`` and as a single ``.db3`` file. Every damaged copy must open with a
:class:`BagError` naming the file, or yield messages and then possibly stop with :class:`BagReadError`;
nothing else may escape. A truncated file yields exactly the intact file's messages, in order, up to the
damage (checked message by message against the original's CDR bytes). Case counts are in ``@settings``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neuralrecon_ros.core.synthetic import make_sequence
from neuralrecon_ros.io.bags import BagError, BagReader, BagReadError, BagWriter
from neuralrecon_ros.io.synthetic_bag import write_synthetic_bag

STORAGES = ("mcap", "db3")


@dataclass
class Original:
    data: bytes  # the intact file
    messages: list[tuple[str, int, bytes]]  # (topic, bag time, CDR bytes) in reading order
    types: dict[str, str]  # topic -> message type


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, Original]:
    folder = tmp_path_factory.mktemp("bags")
    sequence = make_sequence(seed=5, n_frames=4, width=16, height=12)
    result = {}
    for storage in STORAGES:
        path = write_synthetic_bag(sequence, folder / f"clean.{storage}",
                                   storage="mcap" if storage == "mcap" else "sqlite3")
        with BagReader(path) as reader:
            serialize = reader.typestore.serialize_cdr
            messages = [(m.topic, m.stamp_ns, bytes(serialize(m.msg, m.msgtype))) for m in reader.messages()]
            types = {topic: info.msgtype for topic, info in reader.topics.items()}
        result[storage] = Original(path.read_bytes(), messages, types)
    return result


def read_all(path: Path) -> Iterator[tuple[str, int, bytes]]:
    """Messages of the bag at ``path`` as (topic, bag time, CDR bytes); BagError may end it."""
    with BagReader(path) as reader:
        serialize = reader.typestore.serialize_cdr
        for message in reader.messages():
            yield message.topic, message.stamp_ns, bytes(serialize(message.msg, message.msgtype))


def outcome(path: Path) -> tuple[list[tuple[str, int, bytes]], BagError | None]:
    """What reading gives: the messages read and the BagError that stopped it (None: read to the end)."""
    messages: list[tuple[str, int, bytes]] = []
    try:
        for message in read_all(path):
            messages.append(message)
    except BagError as exc:
        assert str(path.name) in str(exc), exc  # the message names the file
        return messages, exc
    return messages, None


@settings(max_examples=40)
@given(storage=st.sampled_from(STORAGES), fraction=st.floats(0.0, 1.0, exclude_max=True))
def test_a_truncated_bag_yields_its_intact_prefix_then_a_named_error(originals, storage, fraction):
    data, expected = originals[storage].data, originals[storage].messages
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"cut.{storage}"
        path.write_bytes(data[: int(len(data) * fraction)])
        messages, error = outcome(path)
    if error is None:  # the cut left every message readable (only the summary/index was lost)
        assert sorted(messages, key=lambda m: m[1]) == sorted(expected, key=lambda m: m[1])
        return
    assert isinstance(error, BagReadError) or not messages
    # recovery readers deliver in recording order, the intact reader in time order: compare as sets of
    # messages, each exactly as recorded
    assert all(message in expected for message in messages)
    assert len(set(messages)) == len(messages)


@settings(max_examples=30)
@given(storage=st.sampled_from(STORAGES), edits=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True),
                                                                   st.binary(min_size=1, max_size=16)),
                                                         min_size=1, max_size=4))
def test_an_overwritten_bag_reads_or_stops_with_a_named_error(originals, storage, edits):
    data = bytearray(originals[storage].data)
    for where, garbage in edits:
        at = int(len(data) * where)
        data[at:at + len(garbage)] = garbage
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"overwritten.{storage}"
        path.write_bytes(bytes(data[: len(originals[storage].data)]))
        # the property is in outcome(): any exception but a BagError naming the file fails the test (the
        # damage may hit payloads the formats do not checksum, so what is read may differ from the original)
        outcome(path)


@settings(max_examples=30)
@given(kind=st.sampled_from(["mcap", "db3", "dir_yaml", "dir_mcap", "other_suffix"]),
       payload=st.one_of(st.binary(max_size=300), st.sampled_from([b"", b"\x89MCAP0\r\n", b"SQLite format 3\0",
                                                                   b"\x89MCAP0\r\n" + bytes(64)])),
       text=st.text(max_size=200))
def test_foreign_files_are_refused_with_a_named_error(kind, payload, text):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        if kind in ("mcap", "db3", "other_suffix"):
            path = root / f"foreign.{kind if kind != 'other_suffix' else 'bag'}"
            path.write_bytes(payload)
        else:
            path = root / "foreign_bag"
            path.mkdir()
            if kind == "dir_yaml":
                (path / "metadata.yaml").write_text(text)
            (path / "foreign_bag_0.mcap").write_bytes(payload)
        with pytest.raises(BagError) as error:
            list(read_all(path))
        assert "foreign" in str(error.value)


@settings(max_examples=10)
@given(index=st.integers(0, 10**6), cut=st.floats(0.0, 1.0), flips=st.lists(
    st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(1, 255)), max_size=4))
def test_an_undecodable_message_stops_reading_with_its_topic_and_index(originals, index, cut, flips):
    """A message whose CDR bytes were damaged (truncated, bits flipped) in an intact container: read as a
    (different) message, or reading stops there with BagReadError naming the topic and message index."""
    original = originals["mcap"]
    expected = original.messages
    index %= len(expected)
    topic, _, cdr = expected[index]
    damaged = bytearray(cdr[: max(4, int(len(cdr) * cut))])
    for where, mask in flips:
        damaged[4 + int((len(damaged) - 4) * where) if len(damaged) > 4 else 0] ^= mask
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "damaged.mcap"
        with BagWriter(path) as writer:
            for name, msgtype in original.types.items():
                writer.add_topic(name, msgtype)
            for i, (name, stamp, data) in enumerate(expected):
                writer.write_raw(name, stamp, bytes(damaged) if i == index else data)
        messages, error = outcome(path)
    assert messages[:index] == expected[:index]  # everything before it, exactly
    if error is not None:
        assert len(messages) == index
        assert f"'{topic}'" in str(error) and f"message {index}" in str(error)
    else:
        assert len(messages) == len(expected)
