"""One client connection: the handshake, dispatch of requests, and flow control.

Transports feed inbound messages to :meth:`Connection.receive` one at a time and provide a
non-blocking ``send``; everything else lives here. Requests start in arrival order. A handler either
returns its result at once (the common case: no task, no switch) or an awaitable (a long
poll, a full stdin queue, file I/O), which runs as a task owned by this connection, so a
slow request never delays the ones behind it (PROTOCOL.md Part A §A2).

Outbound memory is bounded by the transport's outbox: past its bound the transport stops
reading requests and the session's children stop being read, until the client catches up.
That one backpressure signal travels transport -> connection -> session -> process manager.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from . import methods, rpc
from .errors import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    RpcError,
    internal_error,
    invalid_request,
)
from .methods import BY_REQUEST_TYPE, METHODS, Method
from .methods.forward_write import WRITE_START, slice_write
from .observability import UNKNOWN_METHOD
from .resources import Resources
from .server_requests import ServerRequests

if TYPE_CHECKING:
    from .server import Server
    from .sessions import Session

log = logging.getLogger(__name__)

CLIENT_WENT_AWAY = "the client went away"
"""Why a connection ended when its transport saw the peer leave (end of input, a closed
socket) and knows nothing more."""


class Transport(Protocol):
    """What a connection needs from its transport."""

    description: str
    """Names the peer, e.g. ``exec-server websocket 127.0.0.1:5000``."""

    malformed_prefix: str
    """Begins the id -1 error for unparseable input, worded as the reference words it for
    this transport (``failed to parse websocket JSON-RPC message from exec-server websocket
    127.0.0.1:5000``; over stdio ``failed to parse JSON-RPC message from exec-server stdio``)."""

    resumable: bool
    """Whether a client can come back to a session after this connection ends. Over stdio
    nobody can (one connection per server process), so its session ends with it (Part A §A2)."""

    def send(self, message: bytes) -> None:
        """Queue one JSON message for the peer; never blocks, never fails (a message for a
        peer that is gone is dropped)."""

    @property
    def writable(self) -> bool:
        """False while the transport's outbox is past its bound. The transport then stops
        reading the peer's requests, and calls :meth:`Connection.on_writable` once it has
        drained."""

    def abort(self) -> None:
        """Drop the connection without a goodbye (protocol violations)."""

    def resume_inbound(self) -> None:
        """Go back to handling the peer's messages after :attr:`Connection.accepting` was
        False (the transport holds messages back while it is)."""

    def shut_down(self, reason: str) -> None:
        """The server is going away: end the connection after what is queued, telling the
        peer ``reason`` where the transport can (a WebSocket close frame, code 1001)."""


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
        self._max_waiting = server.limits.max_waiting_requests
        self._producers_paused = False
        self._room = asyncio.Event()  # set while producers may go on (see wait_for_room)
        self._room.set()
        self.resources = Resources()
        """What this connection owns besides its session (HTTP body streams, ...)."""
        self.server_requests = ServerRequests()
        """Requests this server sent the client and awaits answers to."""
        self._metrics = server.metrics
        self.number = server.metrics.connection_opened(transport.description)
        """The connection's number in the events of its life (``observability.py``)."""
        server.connection_began(self)

    @property
    def is_open(self) -> bool:
        return self.state is not HandshakeState.CLOSED

    # ---- outbound ----------------------------------------------------------------------------

    def send_notification(self, message: bytes) -> bool:
        """Send a notification; False means "the client is behind: stop producing" until
        :meth:`on_writable`."""
        if self.state is HandshakeState.CLOSED:
            return True
        transport = self.transport
        transport.send(message)
        if transport.writable:
            return True
        if not self._producers_paused:
            self._metrics.backpressure_paused()
        self._producers_paused = True
        self._room.clear()
        return False

    async def wait_for_room(self) -> None:
        """After ``send_notification`` returned False: wait until the transport has drained,
        or the connection has ended (for producers other than processes)."""
        await self._room.wait()

    async def server_request(self, method: str, params: Any) -> msgspec.Raw:
        """Send the client a request and wait for its result (raw JSON). Raises
        :class:`~.server_requests.ServerRequestError` for an error answer, a closed
        connection or too many pending; the caller bounds the wait (``asyncio.timeout``)."""
        message, answer = self.server_requests.begin(method, params)
        self.transport.send(message)
        return await answer

    def _send_reply(self, message: bytes) -> None:
        # Replies are never refused: past the bound the transport stops reading requests,
        # so a client pipelining requests without reading replies cannot grow our memory.
        if self.state is not HandshakeState.CLOSED:
            self.transport.send(message)

    def on_writable(self) -> None:
        """The transport drained below its bound: let paused producers go on."""
        if not self._producers_paused:
            return
        self._producers_paused = False
        self._room.set()
        session = self.session
        if session is not None and session.connection is self:
            session.resume_output()

    # ---- inbound -----------------------------------------------------------------------------

    def receive(self, data: bytes | bytearray | memoryview | str | rpc.Malformed) -> bool:
        """Handle one inbound message (or a transport's verdict that it was unreadable).
        Returns False when the connection must be closed. Never raises: whatever goes wrong
        while handling one message becomes an error reply to it."""
        try:
            return self._receive(data)
        except Exception as exc:  # a bug: answer, log, keep serving
            log.exception("handling a message failed")
            self._send_reply(
                rpc.encode_error(-1, INTERNAL_ERROR, f"internal error handling a message: {exc}")
            )
            return self.is_open

    def _receive(self, data: bytes | bytearray | memoryview | str | rpc.Malformed) -> bool:
        if self.state is HandshakeState.CLOSED:
            return False
        if type(data) is bytes and self.state is not HandshakeState.NEW:
            if data.startswith(WRITE_START) and (sliced := slice_write(data)) is not None:
                self._dispatch(sliced[0], METHODS["forward/write"], sliced[1])  # bulk bytes
                return self.is_open
            # The usual case first: a request for a known method with valid params, decoded
            # in one step. Whatever this does not take goes the long way below, and so do
            # `initialize`, answered before the one-step decoder is built, and the first
            # request of each method module, which the long way imports (methods/).
            try:
                typed = methods.REQUESTS.decode(data)
            except (msgspec.DecodeError, UnicodeError, RecursionError, ValueError):
                pass
            else:
                request_id = typed.id
                if isinstance(request_id, str) or rpc.I64_MIN <= request_id <= rpc.I64_MAX:
                    self._dispatch(request_id, BY_REQUEST_TYPE[type(typed)], typed.params)
                    return self.is_open
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
        # A response: to a request of ours, or a protocol error that ends the connection.
        assert isinstance(message, rpc.Response)
        return self.server_requests.settle(message)

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
        except RpcError as error:
            self._reply_error(request.id, error, method.name)
            return
        self._dispatch(request.id, method, params)

    def _dispatch(self, request_id: rpc.RequestId, method: Method, params: Any) -> None:
        """Run a request's handler and answer it, now or when its awaitable is done."""
        try:
            session = self.session
            if method.family is not None and (
                self.state is not HandshakeState.READY
                or session is None
                or session.connection is not self
            ):
                self._check_ready(method)
            outcome = method.handler(self, params)
        except RpcError as error:
            self._reply_error(request_id, error, method.name)
            return
        except Exception as exc:  # a bug: answer, log, keep serving
            log.exception("handler for %s failed", method.name)
            self._reply_error(request_id, internal_error(f"internal error: {exc}"), method.name)
            return
        if isinstance(outcome, msgspec.Struct) or not isinstance(outcome, Awaitable):
            self._send_reply(rpc.encode_result(request_id, outcome))
        else:
            task = asyncio.ensure_future(self._finish(request_id, method, outcome))
            self._tasks.add(task)
            task.add_done_callback(lambda done: self._task_done(done, outcome))

    async def _finish(
        self, request_id: rpc.RequestId, method: Method, outcome: Awaitable[Any]
    ) -> None:
        try:
            result = await outcome
        except RpcError as error:
            self._reply_error(request_id, error, method.name)
        except Exception as exc:
            log.exception("handler for %s failed", method.name)
            self._reply_error(request_id, internal_error(f"internal error: {exc}"), method.name)
        else:
            self._send_reply(rpc.encode_result(request_id, result))

    @property
    def accepting(self) -> bool:
        """False while ``max_waiting_requests`` requests are waiting (long polls, full stdin
        queues, file I/O): the transport then holds further messages back, so a client cannot
        pile up tasks without bound; one finishing lets the next in."""
        return len(self._tasks) < self._max_waiting

    def _task_done(self, task: asyncio.Task[None], outcome: Awaitable[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled() and isinstance(outcome, Coroutine):
            outcome.close()  # cancelled before it ever ran: nothing will await it now
        if len(self._tasks) == self._max_waiting - 1 and self.is_open:
            self.transport.resume_inbound()

    def _reply_error(
        self, request_id: rpc.RequestId, error: RpcError, method: str = UNKNOWN_METHOD
    ) -> None:
        """Answer with ``error``, counted by ``method`` (a known method's name) and code."""
        self._metrics.rpc_error(method, error.code)
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
            self.close("its session was resumed by another connection")
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

    def close(self, reason: str = CLIENT_WENT_AWAY) -> None:
        """The connection is over for ``reason`` (a server's words, for the event): cancel its
        tasks and detach its session (or end it, when the transport cannot be resumed).
        Idempotent."""
        if self.state is HandshakeState.CLOSED:
            return
        self.state = HandshakeState.CLOSED
        self.server.connection_ended(self)
        self.resources.release_all()
        self.server_requests.fail_all()
        for task in list(self._tasks):
            task.cancel()
        self._room.set()
        session, after = self.session, ""
        if session is not None:
            grace = None if self.transport.resumable else 0.0
            after = self.server.sessions.detach(session, self, grace)
        self._metrics.connection_closed(
            self.number, reason, session.id if session is not None else None, after
        )
