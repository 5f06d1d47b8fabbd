"""The TCP streams of one connection, each carrying bytes both ways under credit.

Flow control is a credit window in each direction, counted in bytes:

- **Destination -> client.** The client says at ``open`` how many bytes it can take
  (``window``) and grants more as its application consumes them. A stream reads its socket
  only while it has credit, and never more than the credit left in one read (a buffered
  protocol: the read goes into a buffer of that size), so nothing waits here for credit: the
  bytes stay in the kernel, and the destination's sends block, as with any slow reader.
  Reading also stops, for every stream of the connection, while the connection's outbound
  queue is past its bound (:meth:`StreamEvents.data` returned False), until it drains.
- **Client -> destination.** The server grants the client ``window_bytes`` per stream and
  grants bytes back once they are in the kernel (the socket's user-space write buffer is
  empty again), in batches of a quarter window. A destination that does not read therefore
  holds at most one window per stream here, and the client stops sending.

So one stream holds at most ``window_bytes`` of the client's data plus nothing of the
destination's; one connection at most ``max_streams`` times that, plus its bounded
outbound queue. A stream the client closed (or that ended) still counts until its socket
has written what it holds, so closing streams cannot lift the bound. Streams are closed when their connection ends (bytes in flight on a lost
connection cannot be replayed, so a resumed session starts with none).

Nothing here knows JSON-RPC: :class:`StreamEvents` is what the wire mapping provides.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from typing import Protocol, cast

from .dial import Network, dial
from .errors import ConnectFailed, StreamMisuse, UnknownStream


class StreamEvents(Protocol):
    """Where a table reports what its streams do (the client's side of them)."""

    def data(self, stream_id: str, data: memoryview) -> bool:
        """Bytes from the destination (valid only during the call). False means the client's
        side is past its bound: stop reading until :meth:`wait_for_room`."""

    def credit(self, stream_id: str, granted: int) -> None:
        """The client may send ``granted`` more bytes on the stream."""

    def eof(self, stream_id: str) -> None:
        """The destination will send no more (it shut down its side, or closed)."""

    def closed(self, stream_id: str, error: str | None) -> None:
        """The stream is over (the last event of a stream the client did not close itself);
        ``error`` says why when it did not end cleanly."""

    def wait_for_room(self) -> Awaitable[None]:
        """Done once the client's side has room again after :meth:`data` returned False."""


class StreamState(enum.Enum):
    CONNECTING = "connecting"
    """The connection is being made; nothing is read yet."""
    OPEN = "open"
    CLOSED = "closed"


class _Stream(asyncio.BufferedProtocol):
    """One forwarded TCP connection, as its socket's protocol."""

    def __init__(self, table: StreamTable, stream_id: str, send_credit: int) -> None:
        self.table = table
        self.id = stream_id
        self.state = StreamState.CONNECTING
        self.transport: asyncio.Transport | None = None
        self.announced = False
        """The client was told the stream is open: from now on its end is reported."""
        self.failure: str | None = None
        """Why it ended before it was announced."""
        self.send_credit = send_credit
        """Bytes of the destination's we may still send the client."""
        self.receive_window = table.window_bytes
        """Bytes the client may still send us."""
        self.to_grant = 0
        """Bytes the client sent that left its window and were not granted back yet."""
        self.write_paused = False
        """The socket's user-space write buffer holds bytes (the kernel did not take all)."""
        self.read_eof = False
        self.write_shut = False
        self.early = bytearray()
        """Bytes read before the client was told the stream is open."""

    # ---- the socket's side ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = cast(asyncio.Transport, transport)  # uvloop's is not a subclass, but is one
        self.transport = stream
        # Paused from the first byte on: a write is granted back once nothing waits in user space.
        stream.set_write_buffer_limits(high=0, low=0)
        stream.pause_reading()  # until the client has been told the stream is open

    def get_buffer(self, sizehint: int) -> memoryview:
        # Never more than the credit: what is read can always be sent at once.
        size = min(self.send_credit, self.table.read_bytes)
        return self.table.buffer[: size if size > 0 else self.table.read_bytes]

    def buffer_updated(self, nbytes: int) -> None:
        self.send_credit -= nbytes
        if self.state is StreamState.CONNECTING:
            # uvloop starts reading after connection_made whatever it asked: keep the bytes
            # until the client has its reply (one read at most, reading pauses now).
            self.early += self.table.buffer[:nbytes]
        elif not self.table.events.data(self.id, self.table.buffer[:nbytes]):
            self.table.outbound_full()
        self.update_reading()

    def eof_received(self) -> bool:
        self.read_eof = True
        if self.state is StreamState.OPEN:
            self.table.events.eof(self.id)
            if self.write_shut:
                self._finish(None)
        return True  # keep the socket open: the client may still send (a half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.table.lingered(self)
        if self.state is StreamState.CLOSED:
            return
        error: str | None
        if exc is not None:
            error = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        else:
            error = None if self.read_eof else "the destination closed the connection"
        self._finish(error or None, close=False)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.to_grant and self.state is StreamState.OPEN:
            self._grant()

    # ---- the client's side ------------------------------------------------------------------

    def start(self) -> None:
        """The client knows the stream now: begin reading."""
        if self.state is StreamState.CONNECTING:
            self.state = StreamState.OPEN
            if self.early:
                early, self.early = self.early, bytearray()
                if not self.table.events.data(self.id, memoryview(early)):
                    self.table.outbound_full()
            if self.read_eof:
                self.table.events.eof(self.id)
            self.update_reading()

    def write(self, data: bytes) -> None:
        if self.write_shut:
            raise StreamMisuse(f"stream {self.id} was shut down for writing")
        if len(data) > self.receive_window:
            raise StreamMisuse(
                f"stream {self.id}: {len(data)} bytes written with {self.receive_window} left in "
                "its window (wait for forward/credit before sending more)"
            )
        assert self.transport is not None
        self.receive_window -= len(data)
        self.transport.write(data)
        self.to_grant += len(data)
        if not self.write_paused and self.to_grant >= self.table.grant_batch_bytes:
            self._grant()

    def _grant(self) -> None:
        granted, self.to_grant = self.to_grant, 0
        self.receive_window += granted
        self.table.events.credit(self.id, granted)

    def credit(self, granted: int) -> None:
        self.send_credit += granted
        self.update_reading()

    def shutdown(self) -> None:
        """No more bytes from the client: EOF to the destination once the buffer is written."""
        if self.write_shut:
            return
        self.write_shut = True
        assert self.transport is not None
        if self.transport.can_write_eof():
            self.transport.write_eof()
        if self.read_eof:
            self._finish(None)

    def close(self) -> None:
        """The client closed it: what is buffered is still written, then the socket closes."""
        self.state = StreamState.CLOSED
        self._close_transport()

    def _close_transport(self) -> None:
        """Close the socket once its buffer is written; until then the stream still counts
        against the table's bounds (a client could otherwise leave any number of closed
        streams holding a window each for destinations that never read)."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()
            self.table.lingering(self)

    def abort(self) -> None:
        self.state = StreamState.CLOSED
        if self.transport is not None:
            self.transport.abort()

    # ---- state ------------------------------------------------------------------------------

    def update_reading(self) -> None:
        """Read while open, credited and the connection has room. Asked of the transport
        each time (both calls are no-ops when nothing changes): a remembered state could
        disagree with uvloop's, which starts reading after connection_made."""
        transport = self.transport
        if transport is None or transport.is_closing() or self.read_eof:
            return
        if (
            self.state is StreamState.OPEN
            and self.send_credit > 0
            and not self.table.outbound_paused
        ):
            transport.resume_reading()
        else:
            transport.pause_reading()

    def _finish(self, error: str | None, close: bool = True) -> None:
        announced = self.state is StreamState.OPEN or self.announced
        self.state = StreamState.CLOSED
        self.table.forget(self)
        if close:
            self._close_transport()
        if announced:
            self.table.events.closed(self.id, error)
        else:
            self.failure = error or "the destination closed the connection at once"

    @property
    def buffered_bytes(self) -> int:
        """The client's bytes waiting in user space for the kernel to take them."""
        transport = self.transport
        return transport.get_write_buffer_size() if transport is not None else 0


class StreamTable:
    """The forwarded streams of one connection; see the module docstring.

    Stream ids are the client's (so a notification can never arrive before the client
    knows the id it names). ``open`` connects; every other operation takes effect at once.
    """

    def __init__(
        self,
        events: StreamEvents,
        *,
        deny: tuple[Network, ...],
        window_bytes: int,
        read_bytes: int,
        max_streams: int,
        connect_timeout_s: float,
    ) -> None:
        self.events = events
        self.deny = deny
        self.window_bytes = window_bytes
        self.grant_batch_bytes = max(window_bytes // 4, 1)
        self.read_bytes = read_bytes
        self.max_streams = max_streams
        self.connect_timeout_s = connect_timeout_s
        self.buffer = memoryview(bytearray(read_bytes))
        """Every read of every stream lands here and is sent before the next one happens."""
        self.outbound_paused = False
        self._streams: dict[str, _Stream] = {}
        self._connecting: set[str] = set()
        self._lingering: set[_Stream] = set()
        """Streams closed or finished whose sockets still write what was buffered."""
        self._waiter: asyncio.Task[None] | None = None
        self._released = False

    def __len__(self) -> int:
        return len(self._streams)

    @property
    def buffered_bytes(self) -> int:
        """Client bytes held in user space by all streams, lingering ones included (each at
        most one window)."""
        streams = [*self._streams.values(), *self._lingering]
        return sum(stream.buffered_bytes for stream in streams)

    @property
    def held_streams(self) -> int:
        """Streams counted against ``max_streams``: open, being opened, or lingering."""
        return len(self._streams) + len(self._connecting) + len(self._lingering)

    async def open(self, stream_id: str, host: str, port: int, window: int) -> int:
        """Connect ``stream_id`` to ``host:port``; ``window``: bytes the client can take
        before it grants more. Returns the window granted to the client."""
        if self._released:
            raise ConnectFailed("the connection is closing")
        if stream_id in self._streams or stream_id in self._connecting:
            raise StreamMisuse(f"stream id {stream_id} is already in use")
        if self.held_streams >= self.max_streams:
            raise StreamMisuse(
                f"this connection already has {self.max_streams} open streams (closed ones count "
                "until their sockets have written what they hold); close one first"
            )
        if window <= 0:
            raise StreamMisuse("window must be at least 1 byte")
        make: Callable[[], _Stream] = lambda: _Stream(self, stream_id, window)  # noqa: E731
        self._connecting.add(stream_id)
        try:
            transport, stream = await dial(host, port, self.deny, make, self.connect_timeout_s)
        finally:
            self._connecting.discard(stream_id)
        if self._released:
            transport.abort()
            raise ConnectFailed("the connection is closing")
        if stream.state is StreamState.CLOSED:
            raise ConnectFailed(f"connection to {host}:{port} ended at once: {stream.failure}")
        self._streams[stream_id] = stream
        stream.announced = True  # the reply leaves in this same step; reading starts after it
        asyncio.get_running_loop().call_soon(stream.start)
        return self.window_bytes

    def _get(self, stream_id: str) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise UnknownStream(f"unknown stream {stream_id} (never opened, or already closed)")
        return stream

    def write(self, stream_id: str, data: bytes) -> None:
        """Send ``data`` to the destination (within the stream's window)."""
        self._get(stream_id).write(data)

    def credit(self, stream_id: str, granted: int) -> None:
        """The client can take ``granted`` more bytes."""
        self._get(stream_id).credit(granted)

    def shutdown(self, stream_id: str) -> None:
        """The client sends no more: EOF to the destination after what is buffered."""
        self._get(stream_id).shutdown()

    def close(self, stream_id: str) -> None:
        """The client is done with the stream: it is closed and forgotten, with no event."""
        stream = self._get(stream_id)
        self.forget(stream)
        stream.close()

    def forget(self, stream: _Stream) -> None:
        if self._streams.get(stream.id) is stream:
            del self._streams[stream.id]

    def lingering(self, stream: _Stream) -> None:
        if not self._released:
            self._lingering.add(stream)

    def lingered(self, stream: _Stream) -> None:
        self._lingering.discard(stream)

    # ---- the connection's outbound bound ------------------------------------------------------

    def outbound_full(self) -> None:
        """The client's side is past its bound: every stream stops reading until it drains."""
        if self.outbound_paused or self._released:
            return
        self.outbound_paused = True
        for stream in list(self._streams.values()):
            stream.update_reading()
        self._waiter = asyncio.get_running_loop().create_task(self._wait_for_room())

    async def _wait_for_room(self) -> None:
        await self.events.wait_for_room()
        self._waiter = None
        self.outbound_paused = False
        for stream in list(self._streams.values()):
            stream.update_reading()

    # ---- Resource -----------------------------------------------------------------------------

    def release(self) -> None:
        """The connection ended: every stream is dropped at once. Idempotent."""
        self._released = True
        if self._waiter is not None:
            self._waiter.cancel()
            self._waiter = None
        streams = [*self._streams.values(), *self._lingering]
        self._streams.clear()
        self._lingering.clear()
        for stream in streams:
            stream.abort()
