"""One client connection: the handshake, dispatch of requests, and the outbound queue.

Transports feed inbound messages to :meth:`Connection.receive` one at a time and provide
``send``; everything else lives here. Requests start in arrival order. A handler either
returns its result at once (the common case: no task, no switch) or an awaitable (a long
poll, a full stdin queue, file I/O), which runs as a task owned by this connection, so a
slow request never delays the ones behind it (PROTOCOL.md Part A §A2).

The outbound queue is bounded: replies always get in, but when notifications push it past
its bound the session's children stop being read until the client catches up.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from . import rpc
from .errors import INVALID_REQUEST, METHOD_NOT_FOUND, RpcError, internal_error, invalid_request
from .methods import METHODS, Method

if TYPE_CHECKING:
    from .server import Server
    from .sessions import Session

log = logging.getLogger(__name__)

FLUSH_TIMEOUT_S = 2.0
"""How long a connection whose peer stopped sending may take to deliver replies already queued."""


class Transport(Protocol):
    """What a connection needs from its transport."""

    description: str
    """Names the peer, e.g. ``exec-server websocket 127.0.0.1:5000``."""

    malformed_prefix: str
    """Begins the id -1 error for unparseable input, worded as the reference words it for
    this transport (``failed to parse websocket JSON-RPC message from exec-server websocket
    127.0.0.1:5000``; over stdio ``failed to parse JSON-RPC message from exec-server stdio``)."""

    async def send(self, message: bytes) -> None:
        """Send one JSON message (text). Raises ``ConnectionError`` once the peer is gone."""

    resumable: bool
    """Whether a client can come back to a session after this connection ends. Over stdio
    nobody can (one connection per server process), so its session ends with it (Part A §A2)."""

    def abort(self) -> None:
        """Drop the connection without a goodbye (protocol violations)."""


class HandshakeState(enum.Enum):
    NEW = "new"
    """Nothing yet: only ``initialize`` is allowed."""
    INITIALIZING = "initializing"
    """``initialize`` answered; waiting for the ``initialized`` notification."""
    READY = "ready"
    CLOSED = "closed"


class Connection:
    """A connection's protocol state; see the module docstring."""

    def __init__(self, server: Server, transport: Transport) -> None:
        self.server = server
        self.transport = transport
        self.state = HandshakeState.NEW
        self.session: Session | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._queue_wakeup = asyncio.Event()
        self._writer_idle = asyncio.Event()  # set while the writer waits on an empty queue
        self._producers_paused = False
        self._room = asyncio.Event()  # set while producers may go on (see wait_for_room)
        self._room.set()
        limits = server.limits
        self._high_messages = limits.outbound_queue_messages
        self._high_bytes = limits.outbound_queue_bytes
        self.closers: list[Any] = []
        """Callables run when the connection ends (e.g. cancel HTTP body streams)."""

    @property
    def is_open(self) -> bool:
        return self.state is not HandshakeState.CLOSED

    # ---- outbound ----------------------------------------------------------------------------

    def _enqueue(self, message: bytes) -> bool:
        self._queue.append(message)
        self._queued_bytes += len(message)
        if len(self._queue) == 1:
            self._queue_wakeup.set()
            self._writer_idle.clear()
        return len(self._queue) < self._high_messages and self._queued_bytes < self._high_bytes

    def send_notification(self, message: bytes) -> bool:
        """Queue a notification; False means "above the bound: stop producing"."""
        if self.state is HandshakeState.CLOSED:
            return True
        room = self._enqueue(message)
        if not room:
            self._producers_paused = True
            self._room.clear()
        return room

    async def wait_for_room(self) -> None:
        """After ``send_notification`` returned False: wait until the queue has drained to
        its low-water mark, or the connection has ended (for producers other than processes)."""
        await self._room.wait()

    def _send_reply(self, message: bytes) -> None:
        if self.state is not HandshakeState.CLOSED and not self._enqueue(message):
            # Replies count against the bound too: past it, serve_connection stops reading
            # requests until the client catches up, so pipelining cannot grow the queue.
            self._producers_paused = True
            self._room.clear()

    @property
    def has_room(self) -> bool:
        """False from the moment the queue passes its bound until it drains to low water."""
        return self._room.is_set()

    async def write_loop(self) -> None:
        """Send queued messages in order until the connection ends."""
        queue = self._queue
        send = self.transport.send
        low_messages = self._high_messages // 2
        low_bytes = self._high_bytes // 2
        while True:
            if not queue:
                self._queue_wakeup.clear()
                self._writer_idle.set()
                await self._queue_wakeup.wait()
                continue
            message = queue.popleft()
            self._queued_bytes -= len(message)
            await send(message)
            if (
                self._producers_paused
                and len(queue) <= low_messages
                and self._queued_bytes <= low_bytes
            ):
                self._producers_paused = False
                self._room.set()
                session = self.session
                if session is not None and session.connection is self:
                    session.processes.resume_output()

    # ---- inbound -----------------------------------------------------------------------------

    def receive(self, data: bytes | str | rpc.Malformed) -> bool:
        """Handle one inbound message (or a transport's verdict that it was unreadable).
        Returns False when the connection must be closed."""
        if self.state is HandshakeState.CLOSED:
            return False
        message = data if isinstance(data, rpc.Malformed) else rpc.decode(data)
        if type(message) is rpc.Request:
            self._handle_request(message)
            return self.is_open
        if type(message) is rpc.Notification:
            return self._handle_notification(message)
        if type(message) is rpc.Malformed:
            self._send_reply(
                rpc.encode_error(
                    -1,
                    INVALID_REQUEST,
                    f"{self.transport.malformed_prefix}: {message.reason}",
                )
            )
            return True
        return False  # a response from the client: the server never sends requests

    def _handle_notification(self, message: rpc.Notification) -> bool:
        # Like the reference, a repeated ``initialized`` is harmless; one before ``initialize``
        # (or after the session moved elsewhere) is a protocol error that closes the connection.
        if message.method != "initialized" or self.state is HandshakeState.NEW:
            return False
        session = self.session
        if session is None or session.connection is not self:
            return False
        self.state = HandshakeState.READY
        return True

    def _handle_request(self, request: rpc.Request) -> None:
        method = METHODS.get(request.method)
        if method is None:
            self._reply_error(
                request.id,
                RpcError(
                    METHOD_NOT_FOUND, f"exec-server stub does not implement `{request.method}` yet"
                ),
            )
            return
        try:
            params = method.decode(request.params)
            self._check_ready(method)
            outcome = method.handler(self, params)
        except RpcError as error:
            self._reply_error(request.id, error)
            return
        except Exception as exc:  # a bug: answer, log, keep serving
            log.exception("handler for %s failed", request.method)
            self._reply_error(request.id, internal_error(f"internal error: {exc}"))
            return
        if isinstance(outcome, Awaitable):
            task = asyncio.ensure_future(self._finish(request.id, method, outcome))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._send_reply(rpc.encode_result(request.id, method.encode(outcome)))

    async def _finish(
        self, request_id: rpc.RequestId, method: Method, outcome: Awaitable[Any]
    ) -> None:
        try:
            result = await outcome
        except RpcError as error:
            self._reply_error(request_id, error)
        except Exception as exc:
            log.exception("handler for %s failed", method.name)
            self._reply_error(request_id, internal_error(f"internal error: {exc}"))
        else:
            self._send_reply(rpc.encode_result(request_id, method.encode(result)))

    def _reply_error(self, request_id: rpc.RequestId, error: RpcError) -> None:
        self._send_reply(rpc.encode_error(request_id, error.code, error.message))

    def _check_ready(self, method: Method) -> None:
        """The one place that checks a connection may use a method family."""
        if method.family is None:
            return
        if self.state is HandshakeState.NEW:
            raise invalid_request(
                f"client must call initialize before using {method.family} methods"
            )
        if self.state is HandshakeState.INITIALIZING:
            raise invalid_request(
                f"client must send initialized before using {method.family} methods"
            )
        session = self.session
        if session is None or session.connection is not self:
            self.close()
            raise invalid_request("session has been resumed by another connection")

    # ---- handshake ---------------------------------------------------------------------------

    def begin_initialize(self) -> None:
        if self.state is not HandshakeState.NEW:
            raise invalid_request("initialize may only be sent once per connection")

    def attach(self, session: Session) -> None:
        self.session = session
        self.state = HandshakeState.INITIALIZING

    def require_session(self) -> Session:
        assert self.session is not None
        return self.session

    # ---- end ---------------------------------------------------------------------------------

    async def flush(self, writer: asyncio.Future[Any], timeout: float) -> None:
        """Wait, at most ``timeout``, until ``writer`` (the :meth:`write_loop` task) has sent
        everything queued, or has failed."""
        idle: asyncio.Future[Any] = asyncio.ensure_future(self._writer_idle.wait())
        try:
            await asyncio.wait({writer, idle}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            idle.cancel()

    def close(self) -> None:
        """The connection is over: cancel its tasks and detach its session (or end it, when
        the transport cannot be resumed). Idempotent. Messages already queued stay queued,
        for :meth:`flush`."""
        if self.state is HandshakeState.CLOSED:
            return
        self.state = HandshakeState.CLOSED
        for closer in self.closers:
            closer()
        self.closers.clear()
        for task in list(self._tasks):
            task.cancel()
        self._queue_wakeup.set()
        self._room.set()
        if self.session is not None:
            grace = None if self.transport.resumable else 0.0
            self.server.sessions.detach(self.session, self, grace)


async def _until_room_or_done(connection: Connection, writer: asyncio.Future[None]) -> None:
    """Stop reading requests while the outbound queue is past its bound (the client is not
    reading): the peer's sends back up in TCP instead of replies piling up here."""
    room = asyncio.ensure_future(connection.wait_for_room())
    try:
        await asyncio.wait({room, writer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        room.cancel()


async def serve_connection(connection: Connection, inbound: Any) -> None:
    """Drive a connection: feed ``inbound`` (an async iterator of messages) in, run the writer.

    Returns when the peer goes away or breaks the protocol; the caller closes the transport.
    """
    writer = asyncio.ensure_future(connection.write_loop())
    peer_finished = False
    try:
        async for data in inbound:
            if not connection.receive(data):
                connection.transport.abort()
                break
            if not connection.has_room:
                await _until_room_or_done(connection, writer)
            if writer.done():
                break
        else:
            peer_finished = True
    except (ConnectionError, OSError, msgspec.DecodeError):
        pass
    finally:
        connection.close()
        try:
            if peer_finished:
                # The peer sent all it will (stdin EOF): replies already queued still go out,
                # so `printf '<request>\n' | exec-server --listen stdio` gets its answer.
                await connection.flush(writer, FLUSH_TIMEOUT_S)
        finally:
            writer.cancel()
        try:
            await writer
        except (asyncio.CancelledError, ConnectionError, OSError):
            pass
        except Exception:
            log.exception("connection writer failed")
