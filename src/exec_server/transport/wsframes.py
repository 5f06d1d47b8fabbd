"""WebSocket frames after the handshake, sans-I/O (RFC 6455 §5), for the server side.

The ``websockets`` library's parser is a generator stepping through each frame in Python;
for a server whose messages are mostly small JSON requests that was the largest single cost
per request. This reader takes whole frames straight out of its buffer, unmasks them with the
library's C helper, joins fragments, and answers nothing itself: it returns what arrived, and
the transport decides (a pong for a ping, a close for a close).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - the C helper ships in websockets' wheels
    from websockets.utils import apply_mask

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_TOO_BIG = 1009


class FrameError(Exception):
    """The peer broke the protocol; close with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Received(NamedTuple):
    """A whole data message (opcode TEXT or BINARY) or one control frame."""

    opcode: int
    payload: bytes


def frame(opcode: int, payload: bytes = b"") -> bytes:
    """One unmasked, final frame (servers never mask)."""
    return header(opcode, len(payload)) + payload


def header(opcode: int, length: int) -> bytes:
    """FIN + ``opcode`` and the payload length."""
    first = 0x80 | opcode
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return _pack_16(first, 126, length)
    return _pack_64(first, 127, length)


_pack_16 = struct.Struct("!BBH").pack
_pack_64 = struct.Struct("!BBQ").pack
_SMALL_TEXT_HEADERS = [bytes((0x80 | OP_TEXT, n)) for n in range(126)]


def text_header(length: int) -> bytes:
    """``header(OP_TEXT, length)``, for every outgoing message: no arithmetic for the
    common sizes."""
    if length < 126:
        return _SMALL_TEXT_HEADERS[length]
    if length < 65536:
        return _pack_16(0x81, 126, length)
    return _pack_64(0x81, 127, length)


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()[:123]


class FrameReader:
    """Feed bytes from a client; get back whole messages and control frames, in order."""

    def __init__(self, max_message_bytes: int) -> None:
        self._buffer = bytearray()
        self._max = max_message_bytes
        self._fragments: list[bytes] = []
        self._fragment_opcode = -1
        self._fragment_bytes = 0

    def whole_message(self, data: bytes) -> bytes | None:
        """The payload when ``data`` is exactly one whole, final, masked data frame and
        nothing is pending (the usual read: one small request); otherwise None, and nothing
        has changed (pass ``data`` to :meth:`feed`)."""
        size = len(data)
        if size < 6 or self._buffer or self._fragment_opcode >= 0:
            return None
        first = data[0]
        if first != 0x81 and first != 0x82:  # FIN, no reserved bits, TEXT or BINARY
            return None
        length = data[1] ^ 0x80  # under 128 only when the mask bit is set
        if length < 126:
            start = 2
        elif length == 126 and size >= 4:
            length = (data[2] << 8) | data[3]
            start = 4
        else:
            return None
        if size != start + 4 + length or length > self._max:
            return None
        return apply_mask(data[start + 4 :], data[start : start + 4])

    def feed(self, data: bytes | bytearray | memoryview) -> list[Received]:
        """Everything complete so far; raises :class:`FrameError` on a violation."""
        buffer = self._buffer
        received: list[Received] = []
        if not buffer:
            # The usual case: nothing pending, so parse the read itself and keep only a tail.
            with memoryview(data) as view:
                position = self._parse(view, len(view), received)
                if position < len(view):
                    buffer += view[position:]
            return received
        buffer += data
        with memoryview(buffer) as view:
            position = self._parse(view, len(view), received)
        if position:
            del buffer[:position]
        return received

    def _parse(self, buffer: memoryview, size: int, received: list[Received]) -> int:
        position = 0
        while size - position >= 2:
            first = buffer[position]
            second = buffer[position + 1]
            if first & 0x70:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "reserved bits set")
            if not second & 0x80:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
            opcode = first & 0x0F
            length = second & 0x7F
            start = position + 2
            if length == 126:
                if size - start < 2:
                    break
                length = int.from_bytes(buffer[start : start + 2], "big")
                start += 2
            elif length == 127:
                if size - start < 8:
                    break
                length = int.from_bytes(buffer[start : start + 8], "big")
                start += 8
            if opcode >= OP_CLOSE and (length > 125 or not first & 0x80):
                raise FrameError(CLOSE_PROTOCOL_ERROR, "invalid control frame")
            if length > self._max:
                raise FrameError(CLOSE_TOO_BIG, f"frame of {length} bytes is over the limit")
            end = start + 4 + length
            if end > size:
                break
            payload = apply_mask(buffer[start + 4 : end], bytes(buffer[start : start + 4]))
            position = end
            self._frame(first & 0x80 != 0, opcode, payload, received)
        return position

    def _frame(self, fin: bool, opcode: int, payload: bytes, received: list[Received]) -> None:
        if opcode >= OP_CLOSE:
            if opcode not in (OP_CLOSE, OP_PING, OP_PONG):
                raise FrameError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
            received.append(Received(opcode, payload))
            return
        if opcode == OP_CONT:
            if self._fragment_opcode < 0:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "continuation without a message")
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._fragment_opcode >= 0:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
            if fin:
                received.append(Received(opcode, payload))
                return
            self._fragment_opcode = opcode
        else:
            raise FrameError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
        self._fragment_bytes += len(payload)
        if self._fragment_bytes > self._max:
            raise FrameError(CLOSE_TOO_BIG, "message over the limit")
        self._fragments.append(payload)
        if fin:
            message = b"".join(self._fragments)
            received.append(Received(self._fragment_opcode, message))
            self._fragments = []
            self._fragment_opcode = -1
            self._fragment_bytes = 0
