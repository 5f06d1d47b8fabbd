"""TCP connections made from the server's machine, as asyncio streams (port forwarding).

:meth:`Client.open_connection` asks the server to connect to a host:port (``forward/open``)
and returns a real :class:`asyncio.StreamReader` and :class:`asyncio.StreamWriter` over a
transport that carries the bytes as ``forward/*`` messages. Flow control is the protocol's
credit (``docs/forwarding.md``): writes leave as the server grants room, and the server is
granted more only as the reader is drained, so neither side's memory grows with a slow
peer. A stream ends with the connection it was opened on: a reconnect fails it with
:class:`ConnectionLost`.
"""

from __future__ import annotations

import asyncio
import binascii
import collections
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

import msgspec

from .errors import ConnectionLost, ExecServerError, NotSupported

P = TypeVar("P", bound=asyncio.Protocol)


class ForwardPort(Protocol):
    """What the forwarded streams ask of the client whose connection carries them."""

    def supports(self, extension: str) -> bool:
        """Whether the server announced ``extension``."""
        ...

    def new_id(self, kind: str) -> str:
        """An id for a stream no other client of the session will pick."""
        ...

    async def request(self, method: str, params: Any, *, subject: str | None = None) -> msgspec.Raw:
        """One call; its raw result, or an :class:`~.errors.RpcError`."""
        ...

    async def post(
        self, method: str, params: Any, *, subject: str | None = None
    ) -> asyncio.Future[msgspec.Raw]:
        """Send a call on the open connection; its reply as a future, not waited for."""
        ...

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task the client owns (closing the client cancels and awaits it)."""
        ...


log = logging.getLogger("exec_server.client")

WINDOW_BYTES = 4 * 1024 * 1024
"""Bytes of the destination's the server may send before we grant more (in quarters)."""
WRITE_CHUNK_BYTES = 1024 * 1024
"""The largest piece sent in one ``forward/write``."""
WRITE_HIGH_WATER = 1024 * 1024
"""Bytes queued locally past which :meth:`asyncio.StreamWriter.drain` waits."""


class _Data(msgspec.Struct, rename="camel"):
    stream_id: str
    data: str
    """Base64, decoded by :func:`_b64decode` (SIMD where pybase64 is installed)."""


class _Credit(msgspec.Struct, rename="camel"):
    stream_id: str
    bytes: int


class _Closed(msgspec.Struct, rename="camel"):
    stream_id: str
    error: str | None = None


class _Open(msgspec.Struct, rename="camel"):
    stream_id: str
    window: int


def _codecs() -> tuple[Callable[[bytes | str | memoryview], bytes], Callable[[bytes], bytes]]:
    """Base64 both ways, strict (an invalid character raises :class:`ValueError`):
    pybase64's SIMD code when installed, else the standard library's (both several times
    faster than msgspec's for ``bytes`` fields)."""
    try:
        from pybase64 import b64decode, b64encode
    except ImportError:
        return (
            lambda text: binascii.a2b_base64(text, strict_mode=True),
            lambda data: binascii.b2a_base64(data, newline=False),
        )
    return lambda text: b64decode(text, validate=True), b64encode


_b64decode, _b64encode = _codecs()

FORWARD_DATA_PREFIX = b'{"method":"forward/data","params":{"streamId":"'
"""How our server begins every ``forward/data`` (``protocol.forward.ForwardNotifications``)."""
_DATA_FIELD = b'","data":"'
_DATA_END = b'"}}'
_DATA = msgspec.json.Decoder(_Data)
_CREDIT = msgspec.json.Decoder(_Credit)
_CLOSED = msgspec.json.Decoder(_Closed)  # forward/eof's params decode as this too


class PreEncoded:
    """A request encoded in one piece around its id (``forward/write``: its base64 is
    copied once, not into params and then into the message)."""

    __slots__ = ("_head", "_tail")

    def __init__(self, method: str, params_head: bytes, payload: bytes, params_tail: bytes) -> None:
        self._head = b',"method":%s,"params":%s' % (msgspec.json.encode(method), params_head)
        self._tail = (payload, params_tail + b"}")

    def request(self, call_id: int) -> bytes:
        """``{"id":call_id,"method":...,"params":...}`` (the id first: see slice_write)."""
        return b"".join((b'{"id":%d' % call_id, self._head, *self._tail))


class ForwardedStream:
    """One stream's client side: what the transport asks for, turned into ``forward/*``
    calls, and the server's notifications, turned into the protocol's callbacks."""

    def __init__(
        self,
        calls: ForwardPort,
        forget: Callable[[ForwardedStream], None],
        stream_id: str,
        window: int,
    ) -> None:
        self._calls = calls
        self._forget = forget
        self.id = stream_id
        self.id_json = msgspec.json.encode(stream_id)
        self.window = window
        self.protocol: asyncio.Protocol | None = None
        self.send_credit = 0
        self.to_grant = 0
        self.reading_paused = False
        self.writing_paused = False
        self.queue: collections.deque[bytes] = collections.deque()
        self.queued_bytes = 0
        self.eof_wanted = False
        self.close_wanted = False
        self.closed = False
        self.wake = asyncio.Event()
        self.sender: asyncio.Task[None] | None = None
        self.peer_error: str | None = None
        self.peer_eof = False
        """The server said the destination will send no more (``forward/eof``)."""
        self.early: list[Callable[[], None]] | None = []
        """What arrived between the ``forward/open`` reply and the protocol's making."""

    def made(self, protocol: asyncio.Protocol, transport: asyncio.Transport) -> None:
        """The protocol is connected: it gets what arrived meanwhile, in order."""
        self.protocol = protocol
        protocol.connection_made(transport)
        early, self.early = self.early or [], None
        for event in early:
            event()

    # ---- from the server ------------------------------------------------------------------

    def on_data(self, data: bytes) -> None:
        if self.early is not None:
            self.early.append(lambda: self.on_data(data))
            return
        if self.closed or self.protocol is None:
            return
        self.to_grant += len(data)
        self.protocol.data_received(data)
        if not self.reading_paused and self.to_grant >= self.window // 4:
            self._grant()

    def on_credit(self, granted: int) -> None:
        self.send_credit += granted
        self.wake.set()

    def on_eof(self) -> None:
        if self.early is not None:
            self.early.append(self.on_eof)
            return
        self.peer_eof = True
        if not self.closed and self.protocol is not None:
            self.protocol.eof_received()

    def on_closed(self, error: str | None) -> None:
        if self.early is not None:
            self.early.append(lambda: self.on_closed(error))
            return
        self.peer_error = error
        self._lost(ConnectionResetError(error) if error else None)

    def fail(self, error: ExecServerError) -> None:
        self._lost(error)

    def _lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.queue.clear()
        self.queued_bytes = 0
        self.wake.set()
        self._forget(self)
        if self.protocol is not None:
            self.protocol.connection_lost(exc)

    # ---- from the transport ---------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.closed or self.eof_wanted or self.close_wanted or not data:
            return
        self.queue.append(bytes(data))
        self.queued_bytes += len(data)
        self.wake.set()
        if not self.writing_paused and self.queued_bytes > WRITE_HIGH_WATER:
            self.writing_paused = True
            if self.protocol is not None:
                self.protocol.pause_writing()

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False
        if self.to_grant and not self.closed:
            self._grant()

    def _grant(self) -> None:
        granted, self.to_grant = self.to_grant, 0
        self._calls.spawn(self._post("forward/credit", {"streamId": self.id, "bytes": granted}))

    def shutdown(self) -> None:
        self.eof_wanted = True
        self.wake.set()

    def close(self) -> None:
        self.close_wanted = True
        self.wake.set()

    def abort(self) -> None:
        if self.closed:
            return
        self._calls.spawn(self._post("forward/close", {"streamId": self.id}))
        self._lost(None)

    # ---- sending --------------------------------------------------------------------------

    async def send_loop(self) -> None:
        """Send what is queued as the window allows, then the shutdown or the close."""
        shut = False
        try:
            while not self.closed:
                if self.queue and self.send_credit > 0:
                    await self._send_some()
                    continue
                if not self.queue and self.eof_wanted and not shut:
                    shut = True
                    await self._post("forward/shutdown", {"streamId": self.id})
                if not self.queue and self.close_wanted:
                    if not (shut and self.peer_eof):
                        await self._post("forward/close", {"streamId": self.id})
                    # else both directions are over: the server ends the stream itself (and a
                    # forward/close would cross its forward/closed and be refused)
                    self._lost(None)
                    return
                self.wake.clear()
                await self.wake.wait()
        except ExecServerError as exc:
            self._lost(exc)

    async def _send_some(self) -> None:
        size = min(self.send_credit, WRITE_CHUNK_BYTES)
        first = self.queue.popleft()
        if len(first) > size:
            self.queue.appendleft(first[size:])
            piece = first[:size]
        else:
            pieces, taken = [first], len(first)
            while self.queue and taken + len(self.queue[0]) <= size:
                taken += len(self.queue[0])
                pieces.append(self.queue.popleft())
            piece = b"".join(pieces) if len(pieces) > 1 else first
        self.send_credit -= len(piece)
        self.queued_bytes -= len(piece)
        # Encoded here in one piece, with the faster base64; the server slices it apart.
        head = b'{"streamId":%s,"data":"' % self.id_json
        await self._post(
            "forward/write", PreEncoded("forward/write", head, _b64encode(piece), b'"}')
        )
        if self.writing_paused and self.queued_bytes <= WRITE_HIGH_WATER // 4:
            self.writing_paused = False
            if not self.closed and self.protocol is not None:
                self.protocol.resume_writing()

    async def _post(self, method: str, params: dict[str, Any] | PreEncoded) -> None:
        """Send a call; its reply is only checked (an error ends the stream)."""
        with contextlib.suppress(ExecServerError):
            future = await self._calls.post(method, params, subject=self.id)
            future.add_done_callback(self._replied)

    def _replied(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if error is not None and not self.closed:
            self._lost(error if isinstance(error, Exception) else None)


class _Transport(asyncio.Transport):
    """The transport a forwarded stream's :class:`asyncio.StreamWriter` writes to."""

    def __init__(self, stream: ForwardedStream, extra: dict[str, Any]) -> None:
        super().__init__(extra)
        self._stream = stream
        self._closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._stream.write(bytes(data))

    def write_eof(self) -> None:
        self._stream.shutdown()

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return self._stream.queued_bytes

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (WRITE_HIGH_WATER // 4, WRITE_HIGH_WATER)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass  # fixed: the protocol's window decides how much is in flight

    def pause_reading(self) -> None:
        self._stream.pause_reading()

    def resume_reading(self) -> None:
        self._stream.resume_reading()

    def is_reading(self) -> bool:
        return not self._stream.reading_paused and not self._stream.closed

    def is_closing(self) -> bool:
        return self._closing or self._stream.closed

    def close(self) -> None:
        """Send what is queued, then close the stream."""
        self._closing = True
        self._stream.close()

    def abort(self) -> None:
        self._closing = True
        self._stream.abort()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._stream.protocol = protocol

    def get_protocol(self) -> asyncio.Protocol:
        assert self._stream.protocol is not None
        return self._stream.protocol


class Forwards:
    """The forwarded streams of one client, by id."""

    def __init__(self, calls: ForwardPort) -> None:
        self._calls = calls
        self._streams: dict[str, ForwardedStream] = {}

    def __len__(self) -> int:
        return len(self._streams)

    async def create_connection(
        self, protocol_factory: Callable[[], P], host: str, port: int
    ) -> tuple[asyncio.Transport, P]:
        calls = self._calls
        if not calls.supports("forward"):
            raise NotSupported(
                "this server cannot forward TCP connections (it does not announce the forward "
                "extension)"
            )
        stream_id = calls.new_id("t")
        stream = ForwardedStream(calls, self.forget, stream_id, WINDOW_BYTES)
        self._streams[stream_id] = stream  # before the call: data can follow its reply at once
        params = {"streamId": stream_id, "host": host, "port": port, "window": WINDOW_BYTES}
        try:
            raw = await calls.request("forward/open", params, subject=f"{host}:{port}")
        except BaseException:
            self._streams.pop(stream_id, None)
            raise
        opened = msgspec.json.decode(raw, type=_Open)
        stream.send_credit += opened.window
        protocol = protocol_factory()
        transport = _Transport(stream, {"peername": (host, port), "stream_id": stream_id})
        stream.made(protocol, transport)
        stream.sender = calls.spawn(stream.send_loop())
        return transport, protocol

    def data_message(self, raw: bytes) -> bool:
        """A whole ``forward/data`` message in the exact shape our server writes, taken
        apart by slicing: a JSON decoder would copy and check 350 KiB of base64 twice over.
        False (nothing done) for any other shape, which then goes the general way."""
        start = len(FORWARD_DATA_PREFIX)
        middle = raw.find(_DATA_FIELD, start)
        if middle < 0 or not raw.endswith(_DATA_END):
            return False
        stream_id = raw[start:middle]
        if b"\\" in stream_id or b'"' in stream_id:
            return False  # escapes: let the decoder read it
        try:
            data = _b64decode(memoryview(raw)[middle + len(_DATA_FIELD) : -len(_DATA_END)])
            name = stream_id.decode()
        except ValueError:  # UnicodeDecodeError too
            return False
        stream = self._streams.get(name)
        if stream is not None:
            stream.on_data(data)
        return True

    def notification(self, method: str, params: msgspec.Raw) -> None:
        """Route a ``forward/*`` notification to its stream."""
        try:
            if method == "forward/data":
                data = _DATA.decode(params)
                stream = self._streams.get(data.stream_id)
                if stream is not None:
                    stream.on_data(_b64decode(data.data))
            elif method == "forward/credit":
                credit = _CREDIT.decode(params)
                stream = self._streams.get(credit.stream_id)
                if stream is not None:
                    stream.on_credit(credit.bytes)
            elif method in ("forward/eof", "forward/closed"):
                closed = _CLOSED.decode(params)
                stream = self._streams.get(closed.stream_id)
                if stream is None:
                    return
                if method == "forward/eof":
                    stream.on_eof()
                else:
                    stream.on_closed(closed.error)
        except msgspec.ValidationError as exc:
            log.warning("ignoring a malformed %s notification: %s", method, exc)

    def forget(self, stream: ForwardedStream) -> None:
        if self._streams.get(stream.id) is stream:
            del self._streams[stream.id]

    def fail_all(self, error: ExecServerError) -> None:
        """The connection is gone: so is every stream (the server closed its side)."""
        for stream in list(self._streams.values()):
            stream.fail(error)
        self._streams.clear()


def connection_lost_error(describe: str) -> ConnectionLost:
    return ConnectionLost(
        f"the connection to {describe} was lost, and with it every forwarded stream"
    )
