"""The server-side WebSocket frame reader, sans-I/O: frames in, messages and control out."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exec_server.transport.wsframes import (
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_TEXT,
    FrameError,
    FrameReader,
    Received,
    frame,
    header,
)


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
    """A frame as a client sends it: masked (RFC 6455 §5.3)."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head = bytes((first, bit | n))
    elif n < 65536:
        head = struct.pack("!BBH", first, bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, bit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_every_length_encoding(size: int) -> None:
    payload = os.urandom(size)
    assert FrameReader(1 << 20).feed(client_frame(OP_TEXT, payload)) == [Received(OP_TEXT, payload)]


def test_fragments_are_joined_and_control_frames_may_come_between() -> None:
    data = (
        client_frame(OP_TEXT, b'{"id":', fin=False)
        + client_frame(OP_PING, b"p")
        + client_frame(OP_CONT, b"1", fin=False)
        + client_frame(OP_CONT, b"}")
    )
    assert FrameReader(1024).feed(data) == [Received(OP_PING, b"p"), Received(OP_TEXT, b'{"id":1}')]


messages = st.lists(
    st.tuples(st.sampled_from([OP_TEXT, OP_BINARY]), st.binary(max_size=300), st.integers(1, 4)),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(messages, st.lists(st.integers(1, 64), min_size=1, max_size=50))
def test_any_split_of_the_stream_reads_the_same(
    sent: list[tuple[int, bytes, int]], cuts: list[int]
) -> None:
    stream = b""
    for opcode, payload, pieces in sent:
        size = -(-len(payload) // pieces) or 1
        parts = [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]
        for index, part in enumerate(parts):
            stream += client_frame(
                opcode if index == 0 else OP_CONT, part, fin=index == len(parts) - 1
            )
    reader = FrameReader(1 << 20)
    got: list[Received] = []
    position = 0
    for cut in cuts * (len(stream) // max(sum(cuts), 1) + 1):
        if position >= len(stream):
            break
        got += reader.feed(stream[position : position + cut])
        position += cut
    got += reader.feed(stream[position:])
    assert got == [Received(opcode, payload) for opcode, payload, _ in sent]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (client_frame(OP_TEXT, b"x", mask=False), CLOSE_PROTOCOL_ERROR),
        (bytes((0x80 | 0x40 | OP_TEXT, 0x80)) + b"\0\0\0\0", CLOSE_PROTOCOL_ERROR),
        (client_frame(OP_CONT, b"x"), CLOSE_PROTOCOL_ERROR),
        (
            client_frame(OP_TEXT, b"a", fin=False) + client_frame(OP_TEXT, b"b"),
            CLOSE_PROTOCOL_ERROR,
        ),
        (client_frame(OP_PING, b"x" * 126), CLOSE_PROTOCOL_ERROR),
        (client_frame(OP_PING, b"x", fin=False), CLOSE_PROTOCOL_ERROR),
        (client_frame(0x3, b"x"), CLOSE_PROTOCOL_ERROR),
        (client_frame(0xB, b"x"), CLOSE_PROTOCOL_ERROR),
        (client_frame(OP_TEXT, b"x" * 101), CLOSE_TOO_BIG),
        (
            client_frame(OP_TEXT, b"x" * 60, fin=False) + client_frame(OP_CONT, b"x" * 60),
            CLOSE_TOO_BIG,
        ),
    ],
    ids=[
        "unmasked",
        "reserved-bits",
        "orphan-continuation",
        "message-inside-fragmented-one",
        "long-control-frame",
        "fragmented-control-frame",
        "reserved-data-opcode",
        "reserved-control-opcode",
        "frame-over-limit",
        "fragments-over-limit",
    ],
)
def test_violations_name_the_close_code(data: bytes, code: int) -> None:
    with pytest.raises(FrameError) as info:
        FrameReader(100).feed(data)
    assert info.value.code == code


def test_a_partial_frame_waits_for_the_rest() -> None:
    data = client_frame(OP_TEXT, b"hello world")
    reader = FrameReader(1024)
    for i in range(len(data) - 1):
        assert reader.feed(data[i : i + 1]) == []
    assert reader.feed(data[-1:]) == [Received(OP_TEXT, b"hello world")]


def test_server_frames_are_unmasked_and_final() -> None:
    assert frame(OP_CLOSE, b"\x03\xe8") == b"\x88\x02\x03\xe8"
    assert header(OP_TEXT, 70000)[:2] == bytes((0x81, 127))
    assert header(OP_TEXT, 300) == bytes((0x81, 126)) + (300).to_bytes(2, "big")


one_frame = st.builds(
    client_frame,
    st.sampled_from([OP_TEXT, OP_BINARY, OP_CONT, OP_PING, OP_CLOSE, 0x3]),
    st.one_of(st.binary(max_size=200), st.just(bytes(70_000))),
    fin=st.booleans(),
    mask=st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(one_frame, st.integers(0, 3), st.binary(max_size=3))
def test_the_whole_message_shortcut_agrees_with_the_parser(
    data: bytes, trim: int, extra: bytes
) -> None:
    """whole_message takes only what feed would read as exactly one data message, and
    changes nothing when it declines."""
    data = data[: len(data) - trim] + extra
    limit = 150  # some frames are over it
    reader = FrameReader(limit)
    shortcut = reader.whole_message(data)
    try:
        parsed: list[Received] | None = FrameReader(limit).feed(data)
    except FrameError:
        parsed = None
    if shortcut is not None:
        assert parsed is not None and len(parsed) == 1
        assert parsed[0].opcode in (OP_TEXT, OP_BINARY)
        assert parsed[0].payload == shortcut
    else:
        try:
            assert reader.feed(data) == parsed
        except FrameError:
            assert parsed is None


def test_the_whole_message_shortcut_declines_while_a_frame_is_pending() -> None:
    data = client_frame(OP_TEXT, b"hello")
    reader = FrameReader(1024)
    assert reader.feed(data[:3]) == []
    assert reader.whole_message(data) is None
    fragmented = FrameReader(1024)
    assert fragmented.feed(client_frame(OP_TEXT, b"a", fin=False)) == []
    assert fragmented.whole_message(client_frame(OP_TEXT, b"b")) is None
