"""The asyncio client: one connection (resumed when it drops), calls matched to replies by
id, and notifications routed to the :class:`Process` they belong to.

States are explicit (:class:`State`): ``OPEN`` sends at once; ``RECONNECTING`` keeps calls
until the session is resumed, then sends them in their original order (a repeated
``process/write`` is recognised by its ``writeId``), and catches every live process up with
``process/read`` from the last seq it delivered; ``CLOSED`` fails everything with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import secrets
import signal as signal_module
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import PurePosixPath
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote_from_bytes, unquote_to_bytes, urlsplit

import msgspec

from . import _wire
from ._transport import StdioTransport, TransportClosed, WebSocketTransport
from ._transport import Transport as _Transport
from .errors import (
    METHOD_NOT_FOUND,
    AuthenticationFailed,
    BadWorkingDirectory,
    ConnectionFailed,
    ConnectionLost,
    ExecServerError,
    ExecutorLost,
    NotSupported,
    ProcessLost,
    ProcessTimeout,
    ProgramNotFound,
    RpcError,
    ServerShutdown,
    StdinClosed,
    rpc_error,
    start_error,
)
from .fs import RemoteFS, RemotePath
from .process import Closed, CompletedProcess, Exited, Inbox, Output, Process
from .tcp import (
    FORWARD_DATA_PREFIX,
    Forwards,
    PreEncoded,
    connection_lost_error,
)

log = logging.getLogger("exec_server.client")
P = TypeVar("P", bound=asyncio.Protocol)

DEFAULT_CLIENT_NAME = "exec-server-python"
WRITE_CHUNK_BYTES = 256 * 1024
"""The largest piece of stdin sent in one ``process/write``."""

_INHERIT_ALL = {
    "inherit": "all",
    "ignoreDefaultExcludes": False,
    "exclude": [],
    "set": {},
    "includeOnly": [],
}
"""The server's own environment, less names like *KEY*, *SECRET*, *TOKEN* (PROTOCOL §8)."""

# Without closeStdin, a pipe's stdin cannot be closed: `head` reads exactly the input and
# exits, which gives the command its end of file.
_FEED_EXACTLY = 'n=$1; shift; head -c "$n" | "$@"'
# Without a size on process/start, the PTY is 24x80 until `stty` sets it.
_SET_SIZE = 'stty rows "$1" cols "$2" 2>/dev/null; shift 2; exec "$@"'


class State(enum.Enum):
    """Where a :class:`Client`'s connection stands."""

    OPEN = "open"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


@dataclass(eq=False)
class _Call:
    id: int
    method: str
    params: Any
    subject: str | None
    future: asyncio.Future[msgspec.Raw]
    generation: int = -1
    """The connection it was last sent on."""
    sends: int = 0


Opener = Callable[[], Awaitable[_Transport]]
StateListener = Callable[[State, str], None]
"""Called with the new :class:`State` and why (see :meth:`Client.on_state_change`)."""


@dataclass
class _Options:
    describe: str
    client_name: str = DEFAULT_CLIENT_NAME
    connect_timeout: float = 10.0
    reconnect: bool = True
    reconnect_timeout: float = 30.0
    _: KW_ONLY  # the optional roles below are named at every call
    executor: str | None = None
    """Set (to its URL) for a client of a pool: losing the connection for good is then
    :class:`ExecutorLost`, naming it."""
    resume_session: str | None = None


def to_file_uri(path: str) -> str:
    """An absolute path as a ``file://`` URI."""
    return "file://" + quote_from_bytes(os.fsencode(path), safe="/")


def _from_file_uri(uri: str) -> str:
    return os.fsdecode(unquote_to_bytes(urlsplit(uri).path)) if uri.startswith("file:") else uri


class Client:
    """A connection to an exec-server, made by :func:`connect` or :func:`connect_stdio`."""

    def __init__(self, opener: Opener, options: _Options) -> None:
        self._opener = opener
        self._options = options
        self.state = State.CLOSED
        self.session_id = ""
        """The server's id for this client's session (kept across reconnects)."""
        self.environment_info: dict[str, Any] | None = None
        """What the server says about its machine (shell, cwd, home...); None from 0.128."""
        self.extensions: dict[str, Any] = {}
        """The protocol extensions the server announces (``initialize`` result's ``extensions``)."""
        self.fs = RemoteFS(_SessionPort(self))
        """The server's file system."""
        self._transport: _Transport | None = None
        self._generation = 0
        self._lost = asyncio.Event()  # the current connection ended
        self._pending: dict[int, _Call] = {}
        self._processes: dict[str, _Tracked] = {}
        self._forwards = Forwards(_SessionPort(self))
        self._catch_ups: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed_error: ExecServerError = ConnectionLost("the client is not connected")
        self._next_id = 0
        self._id_prefix = f"py-{secrets.token_hex(4)}"
        self._uri_paths = False
        self._server_cwd: PurePosixPath | None = None
        self.on_server_request: ServerRequestHandler | None = None
        """Answers requests the server sends this client (``network/policyRequest``):
        awaited with the method and the decoded params, it returns the result; an exception
        becomes an error reply. None: every such request gets -32601."""
        self._state_listeners: list[StateListener] = []
        self.resumed = False
        """Whether connecting resumed the session asked for (``connect(resume_session=...)``)."""
        self.reconnect_deadline: float | None = None
        """While ``RECONNECTING``: the event loop time at which the client gives up."""

    def __repr__(self) -> str:
        return f"<Client {self._options.describe} {self.state.value} session={self.session_id}>"

    def on_state_change(self, listener: StateListener) -> Callable[[], None]:
        """Call ``listener(state, reason)`` at each change of :attr:`state` (the connection
        dropped and is being resumed, was resumed, or is closed for good); returns a function
        that stops the calls. A listener must not raise or block."""
        self._state_listeners.append(listener)
        return lambda: self._state_listeners.remove(listener)

    def _set_state(self, state: State, reason: str) -> None:
        if state is self.state:
            return
        self.state = state
        for listener in list(self._state_listeners):
            listener(state, reason)

    def supports(self, extension: str) -> bool:
        """Whether the server announced ``extension`` (e.g. ``"closeStdin"``, ``"resize"``)."""
        return self.extensions.get(extension) is True

    @property
    def live_processes(self) -> int:
        """Processes this client started that have not closed yet (a pool's measure of load)."""
        return len(self._processes)

    # ---- opening and closing --------------------------------------------------------------

    async def _open(self) -> None:
        transport = await self._opener()
        try:
            async with asyncio.timeout(self._options.connect_timeout):
                result = await self._first_handshake(transport)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await transport.close()
            if isinstance(exc, TransportClosed):
                raise ConnectionFailed(
                    f"{self._options.describe} closed the connection during the handshake "
                    f"({exc.reason})"
                ) from None
            if isinstance(exc, TimeoutError):
                raise ConnectionFailed(
                    f"{self._options.describe} did not answer `initialize` within "
                    f"{self._options.connect_timeout:g} s"
                ) from None
            raise
        self._adopt(result)
        self._attach(transport)
        self.state = State.OPEN

    async def _first_handshake(self, transport: _Transport) -> _wire.InitializeResult:
        """A new session, or the one asked for with ``resume_session`` if the server still
        has it (:attr:`resumed` says which)."""
        wanted = self._options.resume_session
        if wanted is not None:
            try:
                result = await self._handshake(transport, wanted)
                self.resumed = True
                return result
            except RpcError as exc:
                if "unknown session" not in exc.message:
                    raise
        return await self._handshake(transport, None)

    async def _handshake(self, transport: _Transport, resume: str | None) -> _wire.InitializeResult:
        """``initialize`` (resuming a session if asked), then ``initialized``. Notifications
        that arrive meanwhile are routed as usual."""
        call_id = self._new_call_id()
        params: dict[str, Any] = {"clientName": self._options.client_name}
        if resume is not None:
            params["resumeSessionId"] = resume
        await transport.send(
            _wire.encode({"id": call_id, "method": "initialize", "params": params})
        )
        while True:
            envelope = self._decode(await transport.recv())
            if envelope is None or envelope.id != call_id or envelope.method is not None:
                if envelope is not None:
                    self._route(envelope, transport)
                continue
            if envelope.error is not None:
                raise rpc_error("initialize", envelope.error.code, envelope.error.message)
            result: _wire.InitializeResult = _wire.decode(
                envelope.result,  # type: ignore[arg-type]
                _wire.InitializeResult,
            )
            break
        await transport.send(_wire.encode({"method": "initialized", "params": {}}))
        return result

    def _adopt(self, result: _wire.InitializeResult) -> None:
        self.session_id = result.session_id
        self.environment_info = result.environment_info
        self.extensions = dict(result.extensions)
        # Servers that describe their environment (0.169, ours) take file:// URIs; 0.128 paths.
        self._uri_paths = result.environment_info is not None
        cwd = (result.environment_info or {}).get("cwd")
        self._server_cwd = PurePosixPath(_from_file_uri(cwd)) if isinstance(cwd, str) else None

    def _attach(self, transport: _Transport) -> None:
        self._generation += 1
        self._transport = transport
        self._lost = asyncio.Event()
        self._spawn(self._read_loop(transport, self._generation))

    async def close(self) -> None:
        """Terminate the processes this client started that still run, then disconnect."""
        if self.state is State.OPEN:
            running = [t.process for t in self._processes.values() if not t.inbox.exit.done()]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._options.connect_timeout):
                    await asyncio.gather(*(self._end(p) for p in running))
        await self._disconnect(ConnectionLost("the client was closed"))

    async def detach(self) -> None:
        """Disconnect, leaving the processes running: the server keeps the session (see
        :attr:`session_id`) for its detach grace, during which ``connect(resume_session=...)``
        takes it up again; after it, they are killed."""
        await self._disconnect(ConnectionLost("the client detached"))

    async def _disconnect(self, error: ExecServerError) -> None:
        self._shut(error)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._transport is not None:
            with contextlib.suppress(Exception):
                await self._transport.close()

    def follow(self, process_id: str, *, tty: bool = False) -> Process:
        """A handle on a process of this session that this client did not start (one left
        running by an earlier connection): its events from the first retained seq, then
        live."""
        tracked = self._track(process_id, [process_id], tty=tty, stdin=False)
        tracked.inbox.mark_started()
        self._catch_ups[process_id] = self._spawn(self._catch_up(tracked.inbox))
        return tracked.process

    def _track(
        self,
        process_id: str,
        argv: Sequence[str],
        *,
        tty: bool,
        stdin: bool,
        stdin_size: int | None = None,
        stdin_closes_itself: bool = False,
    ) -> _Tracked:
        """A new process handle, its inbox and its port, registered under ``process_id``
        (before the start is sent: output can precede the reply)."""
        inbox = Inbox(process_id, on_closed=self._forget)
        port = _ProcessPort(self, process_id, tty, stdin or tty, stdin_size, stdin_closes_itself)
        tracked = _Tracked(Process(port, inbox, argv, tty=tty, stdin=stdin), inbox)
        self._processes[process_id] = tracked
        return tracked

    async def _end(self, process: Process) -> None:
        """Terminate a process and wait for its exit, so its handle has the code."""
        with contextlib.suppress(ExecServerError):
            await process.terminate()
            await process.wait()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _shut(self, error: ExecServerError) -> None:
        """No more calls: fail every waiting call and every live process with ``error``."""
        if self.state is State.CLOSED and self._closed_error is error:
            return
        self._closed_error = error
        self._set_state(State.CLOSED, str(error))
        for call in list(self._pending.values()):
            if not call.future.done():
                call.future.set_exception(error)
        self._pending.clear()
        for tracked in list(self._processes.values()):
            tracked.inbox.fail(error)
        self._processes.clear()
        self._forwards.fail_all(error)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task this client owns: :meth:`close` cancels and awaits it."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- receiving ------------------------------------------------------------------------

    async def _read_loop(self, transport: _Transport, generation: int) -> None:
        try:
            while True:
                raw = await transport.recv()
                if raw.startswith(FORWARD_DATA_PREFIX) and self._forwards.data_message(raw):
                    continue  # forwarded bytes, taken without a JSON decoder (see tcp.py)
                envelope = self._decode(raw)
                if envelope is not None:
                    self._route(envelope, transport)
        except TransportClosed as exc:
            reason = exc.reason
            if exc.going_away and generation == self._generation:
                with contextlib.suppress(Exception):
                    await transport.close()
                self._shut(self._shutdown_error(exc.server_reason))
                return
        except Exception as exc:  # a bug here must not leave calls waiting forever
            log.exception("the client failed to handle a message; dropping the connection")
            reason = f"the client failed to handle a message ({exc!r})"
        with contextlib.suppress(Exception):
            await transport.close()
        self._connection_lost(generation, reason)

    @staticmethod
    def _decode(raw: bytes) -> _wire.Envelope | None:
        try:
            return _wire.ENVELOPE.decode(raw)
        except msgspec.MsgspecError as exc:
            log.warning("ignoring a message from the server that is not JSON-RPC: %s", exc)
            return None

    def _route(self, envelope: _wire.Envelope, transport: _Transport) -> None:
        """Deliver a message that came on ``transport`` (a request of the server's is
        answered there: its id means nothing on another connection)."""
        if envelope.method is not None:
            if envelope.id is None:
                self._notification(envelope.method, envelope.params)
            else:
                self._spawn(self._answer(transport, envelope.id, envelope.method, envelope.params))
            return
        call = self._pending.pop(envelope.id, None) if isinstance(envelope.id, int) else None
        if call is None:
            if envelope.error is not None:
                log.warning("server error without a request: %s", envelope.error.message)
            return
        if call.future.done():
            return
        if envelope.error is not None:
            error = rpc_error(
                call.method, envelope.error.code, envelope.error.message, call.subject
            )
            call.future.set_exception(error)
        elif isinstance(envelope.result, msgspec.Raw):
            call.future.set_result(envelope.result)

    async def _answer(
        self, transport: _Transport, request_id: int | str, method: str, params: msgspec.Raw
    ) -> None:
        """Answer one request of the server's through :attr:`on_server_request`, on the
        ``transport`` it came on; if that connection has ended, the answer is dropped (the
        server failed the request with it)."""
        handler = self.on_server_request
        reply: dict[str, Any] = {"id": request_id}
        if handler is None:
            reply["error"] = {"code": -32601, "message": f"this client does not answer `{method}`"}
        else:
            try:
                reply["result"] = await handler(method, msgspec.json.decode(params))
            except Exception as exc:
                reply["error"] = {"code": -32603, "message": str(exc) or type(exc).__name__}
        with contextlib.suppress(TransportClosed):
            await transport.send(_wire.encode(reply))

    def _notification(self, method: str, params: msgspec.Raw) -> None:
        kind = _wire.NOTIFICATION_TYPES.get(method)
        if kind is None:
            if method.startswith("forward/"):
                self._forwards.notification(method, params)
            return
        try:
            decoded = _wire.decode(params, kind)
        except msgspec.ValidationError as exc:
            log.warning("ignoring a malformed %s notification: %s", method, exc)
            return
        tracked = self._processes.get(decoded.process_id)
        if tracked is None:
            return
        if isinstance(decoded, _wire.OutputParams):
            tracked.inbox.add(Output(decoded.seq, decoded.stream, decoded.chunk))
        elif isinstance(decoded, _wire.ExitedParams):
            tracked.inbox.add(Exited(decoded.seq, decoded.exit_code))
        else:
            tracked.inbox.add(Closed(decoded.seq))

    # ---- calling --------------------------------------------------------------------------

    def _new_call_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _new_id(self, kind: str) -> str:
        """A process or handle id no other client of the session will pick."""
        return f"{self._id_prefix}-{kind}{self._new_call_id()}"

    async def request(self, method: str, params: Any = None) -> Any:
        """Call any method; returns the decoded JSON result or raises :class:`RpcError`."""
        return msgspec.json.decode(await self._request(method, params))

    async def _request(
        self, method: str, params: Any, *, subject: str | None = None, done_if: str | None = None
    ) -> msgspec.Raw:
        """One call. If it had to be sent again after a reconnect, an error containing
        ``done_if`` means the first sending took effect (e.g. ``already exists``)."""
        if self.state is State.CLOSED:
            raise self._closed_error
        future: asyncio.Future[msgspec.Raw] = asyncio.get_running_loop().create_future()
        call = _Call(self._new_call_id(), method, params, subject, future)
        self._pending[call.id] = call
        if self.state is State.OPEN:
            await self._send(call)
        try:
            return await future
        except RpcError as exc:
            if done_if is not None and call.sends > 1 and done_if in exc.message:
                return msgspec.Raw(b"null")
            raise
        finally:
            self._pending.pop(call.id, None)

    async def _post(
        self, method: str, params: Any, *, subject: str | None = None
    ) -> asyncio.Future[msgspec.Raw]:
        """Send a call and return its reply as a future, without waiting for it; only on an
        open connection (what it concerns would not survive a reconnect)."""
        if self.state is not State.OPEN:
            raise (
                self._closed_error
                if self.state is State.CLOSED
                else ConnectionLost(
                    f"the connection to {self._options.describe} is being re-established"
                )
            )
        future: asyncio.Future[msgspec.Raw] = asyncio.get_running_loop().create_future()
        call = _Call(self._new_call_id(), method, params, subject, future)
        self._pending[call.id] = call
        await self._send(call)
        return future

    async def _send(self, call: _Call) -> None:
        assert self._transport is not None
        call.generation = self._generation
        call.sends += 1
        if isinstance(call.params, PreEncoded):
            encoded = call.params.request(call.id)
        else:
            message: dict[str, Any] = {"id": call.id, "method": call.method}
            if call.params is not None:
                message["params"] = call.params
            encoded = _wire.encode(message)
        with contextlib.suppress(TransportClosed):  # the read loop sees the end and acts
            await self._transport.send(encoded)

    # ---- reconnecting ---------------------------------------------------------------------

    def _connection_lost(self, generation: int, reason: str) -> None:
        if self.state is State.CLOSED or generation != self._generation:
            return
        self._lost.set()
        self._end_forwards(connection_lost_error(self._options.describe))
        if self.state is State.RECONNECTING:
            return  # the reconnecting task sees it
        if not self._options.reconnect:
            self._shut(
                self._lost_error(f"the connection to {self._options.describe} was lost: {reason}")
            )
            return
        log.info("connection to %s lost (%s); resuming", self._options.describe, reason)
        loop = asyncio.get_running_loop()
        self.reconnect_deadline = loop.time() + self._options.reconnect_timeout
        self._set_state(State.RECONNECTING, reason)
        self._spawn(self._reconnect(reason))

    async def _reconnect(self, reason: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = self.reconnect_deadline or loop.time() + self._options.reconnect_timeout
        delay, problem = 0.02, reason
        while (remaining := deadline - loop.time()) > 0:
            try:
                async with asyncio.timeout(remaining):
                    if await self._resume():
                        return
                problem = "the new connection dropped too"
                continue
            except AuthenticationFailed as exc:
                self._shut(self._lost_error(f"reconnecting failed: {exc}"))
                return
            except RpcError as exc:
                if "already attached" not in exc.message:
                    self._shut(self._unresumable(reason, exc.message))
                    return
                problem = exc.message  # the server has not yet seen the old connection end
            except (ConnectionFailed, TransportClosed, TimeoutError) as exc:
                problem = str(exc)
            await asyncio.sleep(min(delay, max(remaining, 0)))
            delay = min(delay * 2, 0.5)
        self._shut(
            self._lost_error(
                f"the connection to {self._options.describe} was lost ({reason}) and could not "
                f"be re-established within {self._options.reconnect_timeout:g} s: {problem}"
            )
        )

    def _unresumable(self, reason: str, why: str) -> ConnectionLost:
        return self._lost_error(
            f"the connection to {self._options.describe} was lost ({reason}) and the server "
            f"could not resume session {self.session_id}: {why}"
        )

    def _lost_error(self, message: str) -> ConnectionLost:
        """The connection is gone for good: :class:`ExecutorLost` for a pool's client."""
        if self._options.executor is not None:
            return ExecutorLost(message, self._options.executor)
        return ConnectionLost(message)

    def _shutdown_error(self, reason: str) -> ServerShutdown:
        executor = self._options.executor or self._options.describe
        said = reason or "no reason given"
        return ServerShutdown(f"{executor} shut down ({said})", executor, reason)

    async def _resume(self) -> bool:
        """One attempt: connect, resume the session, send again what was not answered,
        and catch every process up. False if the new connection dropped meanwhile."""
        transport = await self._opener()
        try:
            result = await self._handshake(transport, self.session_id)
        except BaseException:
            with contextlib.suppress(Exception):
                await transport.close()
            raise
        self._adopt(result)
        self._attach(transport)
        generation = self._generation
        while unsent := [c for c in self._pending.values() if c.generation != generation]:
            for call in unsent:  # in id order, so writes to one stdin keep their order
                if self._lost.is_set():
                    return False
                await self._send(call)
        if self._lost.is_set():
            return False
        self.reconnect_deadline = None
        self._set_state(State.OPEN, "resumed")
        self._catch_ups = {pid: t for pid, t in self._catch_ups.items() if not t.done()}
        for process_id, tracked in list(self._processes.items()):
            if process_id not in self._catch_ups:
                self._catch_ups[process_id] = self._spawn(self._catch_up(tracked.inbox))
        return True

    async def _catch_up(self, inbox: Inbox) -> None:
        """Read what the process produced while the connection was down, from the last seq
        delivered, then let :meth:`Inbox.settle` place the exit and close and mark any
        output the server no longer has."""
        try:
            await asyncio.shield(inbox.started)
        except Exception:
            return
        process_id = inbox.process_id
        after = inbox.delivered
        while True:
            params = {"processId": process_id, "afterSeq": after}
            try:
                raw = await self._request("process/read", params, subject=process_id)
            except RpcError as exc:
                if "unknown process" not in exc.message:
                    inbox.fail(exc)
                    return
                forgotten = f"the server forgot process {process_id} while the connection was down"
                inbox.fail(ProcessLost(f"{forgotten}; its remaining output and exit code are lost"))
                return
            except ExecServerError:
                return  # the client is closed; the process was failed with the reason
            result: _wire.ReadResult = _wire.decode(raw, _wire.ReadResult)
            for chunk in result.chunks:
                inbox.add(Output(chunk.seq, chunk.stream, chunk.chunk))
            if not result.chunks:
                inbox.settle(result.next_seq - 1, result.exited, result.exit_code, result.closed)
                return
            after = result.chunks[-1].seq

    # ---- forwarded TCP connections ----------------------------------------------------------

    async def open_connection(
        self, host: str, port: int, *, limit: int = 2**16
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP connection to ``host:port`` made from the server's machine, as
        :func:`asyncio.open_connection` returns one (``limit`` is the reader's, as there).

        Bytes travel over this client's connection (``forward/*``; the server must announce
        the ``forward`` extension, else :class:`NotSupported`). A destination that cannot be
        reached, or that the server's operator forbids, raises :class:`RpcError` saying
        why. The stream ends with the connection: if it drops, reading raises
        :class:`ConnectionLost`, even when the session is resumed.
        """
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        transport, protocol = await self.create_connection(
            lambda: asyncio.StreamReaderProtocol(reader, loop=loop), host, port
        )
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    async def create_connection(
        self, protocol_factory: Callable[[], P], host: str, port: int
    ) -> tuple[asyncio.Transport, P]:
        """:meth:`open_connection` at the level of :meth:`asyncio.loop.create_connection`:
        the protocol made by ``protocol_factory`` gets the stream's bytes, end of file and
        end (``connection_lost``, with :class:`ConnectionResetError` when the destination
        reset it), and ``pause_writing``/``resume_writing`` as the server's window fills and
        empties; the transport's ``pause_reading`` stops granting the server more."""
        return await self._forwards.create_connection(protocol_factory, host, port)

    def _end_forwards(self, error: ExecServerError) -> None:
        """The connection is gone, and with it the server's side of every stream: fail
        them, and their calls (sent again on a resumed session, they would open streams
        nobody holds, or name ones the server forgot)."""
        self._forwards.fail_all(error)
        for call in [c for c in self._pending.values() if c.method.startswith("forward/")]:
            del self._pending[call.id]
            if not call.future.done():
                call.future.set_exception(error)

    # ---- paths ----------------------------------------------------------------------------

    def _remote_path(self, path: RemotePath) -> PurePosixPath:
        remote = PurePosixPath(os.fspath(path))
        if remote.is_absolute():
            return remote
        if self._server_cwd is None:
            raise ValueError(
                f"remote path `{remote}` is relative and this server does not report its "
                "working directory: give an absolute path"
            )
        return self._server_cwd / remote

    def _wire_path(self, path: PurePosixPath) -> str:
        return to_file_uri(str(path)) if self._uri_paths else str(path)

    def _wire_cwd(self, cwd: RemotePath | None) -> str:
        if cwd is None:
            if self._server_cwd is None:
                return "."  # 0.128 resolves it against its own working directory
            return self._wire_path(self._server_cwd)
        if not PurePosixPath(os.fspath(cwd)).is_absolute() and self._server_cwd is None:
            return os.fspath(cwd)
        return self._wire_path(self._remote_path(cwd))

    # ---- processes ------------------------------------------------------------------------

    async def start(
        self,
        argv: Sequence[str],
        *,
        cwd: RemotePath | None = None,
        env: Mapping[str, str] | None = None,
        inherit_env: bool = True,
        tty: bool = False,
        stdin: bool = False,
        stdin_size: int | None = None,
        size: tuple[int, int] | None = None,
        network_proxy: Mapping[str, Any] | None = None,
    ) -> Process:
        """Start a process and return its handle.

        ``cwd`` defaults to the server's working directory. The environment is the server's
        (less names like *KEY*, *SECRET*, *TOKEN*) with ``env`` on top; with
        ``inherit_env=False`` it is exactly ``env``. ``tty`` runs it in a PTY (``size``:
        ``(rows, cols)``). ``stdin`` makes a pipe-mode stdin writable (a PTY always is).

        ``stdin_size``: the exact number of bytes that will be written; the process sees
        end-of-file right after them, even on servers that cannot close stdin (there a
        pipe-mode command runs behind ``head -c``). Implies ``stdin``.

        ``network_proxy``: ``process/start.networkProxy`` (docs/network.md): the process runs
        behind the server's managed network; its questions reach :attr:`on_server_request`.
        """
        if stdin_size is not None and stdin_size < 0:
            raise ValueError("stdin_size must not be negative")
        process = await self._start(
            list(argv),
            cwd=cwd,
            env=env,
            inherit_env=inherit_env,
            tty=tty,
            stdin=bool(stdin_size) if stdin_size is not None else stdin,  # 0: /dev/null
            size=size,
            stdin_size=stdin_size,
            network_proxy=network_proxy,
        )
        if stdin_size == 0 and tty:
            await process.close_stdin()
        return process

    async def _start(
        self,
        argv: list[str],
        *,
        cwd: RemotePath | None,
        env: Mapping[str, str] | None,
        inherit_env: bool,
        tty: bool,
        stdin: bool,
        size: tuple[int, int] | None,
        stdin_size: int | None,
        network_proxy: Mapping[str, Any] | None = None,
    ) -> Process:
        if not argv:
            raise ValueError("argv must not be empty")
        program = list(argv)
        feed_exactly = None
        if stdin_size and not tty and not self.supports("closeStdin"):
            feed_exactly = stdin_size
        process_id = self._new_id("p")
        params: dict[str, Any] = {
            "processId": process_id,
            "cwd": self._wire_cwd(cwd),
            "env": dict(env or {}),
            "tty": tty,
        }
        if inherit_env:
            params["envPolicy"] = _INHERIT_ALL
        if stdin and not tty:
            params["pipeStdin"] = True
        if network_proxy is not None:
            params["networkProxy"] = dict(network_proxy)
        if feed_exactly is not None:
            program = ["/bin/sh", "-c", _FEED_EXACTLY, "sh", str(feed_exactly), *program]
        if size is not None and tty:
            rows, cols = size
            if self.supports("resize"):
                params["size"] = {"rows": rows, "cols": cols}
            else:
                program = ["/bin/sh", "-c", _SET_SIZE, "sh", str(rows), str(cols), *program]
        params["argv"] = program
        tracked = self._track(
            process_id,
            argv,
            tty=tty,
            stdin=stdin,
            stdin_size=stdin_size,
            stdin_closes_itself=feed_exactly is not None,
        )
        try:
            try:
                await self._request(
                    "process/start", params, subject=argv[0], done_if="already exists"
                )
            except RpcError as exc:
                raise await self._start_error(exc, argv[0], cwd) from None
        except BaseException as exc:
            self._processes.pop(process_id, None)
            tracked.inbox.fail(
                exc if isinstance(exc, ExecServerError) else ConnectionLost(str(exc))
            )
            raise
        tracked.inbox.mark_started()
        return tracked.process

    async def _start_error(self, error: RpcError, program: str, cwd: RemotePath | None) -> RpcError:
        """The typed error for a failed start; when the server did not say which path was
        missing (the reference), the working directory asked for is looked at."""
        wire_cwd = self._wire_cwd(cwd)
        typed = start_error(error, program, _from_file_uri(wire_cwd))
        if isinstance(typed, ProgramNotFound) and cwd is not None and ": " not in error.message:
            with contextlib.suppress(ExecServerError, ValueError):
                if not await self.fs.is_dir(cwd):
                    where = str(self._remote_path(cwd))
                    return BadWorkingDirectory(error.method, error.code, error.message, where)
        return typed

    async def run(
        self,
        argv: Sequence[str],
        *,
        cwd: RemotePath | None = None,
        env: Mapping[str, str] | None = None,
        inherit_env: bool = True,
        input: bytes | None = None,
        timeout: float | None = None,
        tty: bool = False,
        check: bool = False,
    ) -> CompletedProcess:
        """Run a process to its end and return its exit code and output, like
        :func:`subprocess.run`.

        ``input`` is written to its stdin, followed by end-of-file. ``timeout`` (seconds)
        terminates it and raises :class:`ProcessTimeout`; ``check`` raises
        :class:`ProcessError` for a non-zero exit. In a PTY all output is ``stdout``.
        """
        argv = list(argv)
        process = await self.start(
            argv,
            cwd=cwd,
            env=env,
            inherit_env=inherit_env,
            tty=tty,
            stdin_size=None if input is None else len(input),
        )
        return await self.collect(process, input=input, timeout=timeout, check=check)

    async def collect(
        self,
        process: Process,
        *,
        input: bytes | None = None,
        timeout: float | None = None,
        check: bool = False,
    ) -> CompletedProcess:
        """The rest of :meth:`run` for a process started with ``stdin_size=len(input)``:
        feed ``input``, gather its output until it closes, and return the result."""
        argv = process.argv
        stdout, stderr = bytearray(), bytearray()
        feeder = self._spawn(self._feed(process, input)) if input else None
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                async for event in process.events():
                    if isinstance(event, Output):
                        (stderr if event.stream == "stderr" else stdout).extend(event.data)
        except TimeoutError:
            if not deadline.expired():
                raise
            with contextlib.suppress(ExecServerError):
                await process.terminate()
            raise ProcessTimeout(argv, timeout or 0.0, bytes(stdout), bytes(stderr)) from None
        finally:
            if feeder is not None:
                feeder.cancel()
                with contextlib.suppress(asyncio.CancelledError, ExecServerError):
                    await feeder
        returncode = await process.wait()
        completed = CompletedProcess(argv, returncode, bytes(stdout), bytes(stderr))
        if check:
            completed.check_returncode()
        return completed

    async def _feed(self, process: Process, data: bytes) -> None:
        """``input=`` of :meth:`run`: a process that stops reading early is not an error."""
        with contextlib.suppress(StdinClosed, ProcessLost):
            await process.write(data)

    def _forget(self, inbox: Inbox) -> None:
        """The process closed: no more events will come for it."""
        tracked = self._processes.get(inbox.process_id)
        if tracked is not None and tracked.inbox is inbox:
            del self._processes[inbox.process_id]


@dataclass(frozen=True, slots=True)
class _SessionPort:
    """The client's calls as its file system (:class:`~.fs.FsPort`) and its forwarded
    streams (:class:`~.tcp.ForwardPort`) use them."""

    client: Client

    def supports(self, extension: str) -> bool:
        return self.client.supports(extension)

    def remote_path(self, path: RemotePath) -> PurePosixPath:
        return self.client._remote_path(path)

    def wire_path(self, path: PurePosixPath) -> str:
        return self.client._wire_path(path)

    def new_id(self, kind: str) -> str:
        return self.client._new_id(kind)

    async def request(self, method: str, params: Any, *, subject: str | None = None) -> msgspec.Raw:
        return await self.client._request(method, params, subject=subject)

    async def post(
        self, method: str, params: Any, *, subject: str | None = None
    ) -> asyncio.Future[msgspec.Raw]:
        return await self.client._post(method, params, subject=subject)

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return self.client._spawn(coroutine)


@dataclass
class _ProcessPort:
    """One process's way back to its client (the :class:`ProcessPort` of its
    :class:`Process`): the calls that act on it, and what the client tracks of its stdin."""

    client: Client
    process_id: str
    tty: bool
    stdin_enabled: bool
    stdin_limit: int | None  # start(stdin_size=...)
    stdin_closes_itself: bool  # stdin_size is enforced by `head -c` on the server
    stdin_written: int = 0
    line_open: bool = False  # a PTY's input so far ends mid-line (EOF needs two Ctrl-D)

    async def write(self, data: bytes) -> None:
        """Write to stdin, keeping to the size announced at the start."""
        limit = self.stdin_limit
        if limit is not None and self.stdin_written + len(data) > limit:
            raise ValueError(
                f"process {self.process_id} was started with stdin_size={limit}: "
                f"{self.stdin_written + len(data) - limit} bytes too many"
            )
        await self._send(data)
        self.stdin_written += len(data)
        if limit is not None and self.stdin_written == limit and data:
            await self.close_stdin()  # the announced size is reached: end of file

    async def _send(self, data: bytes) -> None:
        view = memoryview(data)
        for offset in range(0, len(view), WRITE_CHUNK_BYTES):
            piece = bytes(view[offset : offset + WRITE_CHUNK_BYTES])
            params = {
                "processId": self.process_id,
                "chunk": piece,
                "writeId": self.client._new_id("w"),
            }
            raw = await self.client._request("process/write", params, subject=self.process_id)
            self._check_status(_wire.decode(raw, _wire.WriteResult).status)
        if data:
            self.line_open = data[-1:] not in (b"\n", b"\r")

    def _check_status(self, status: str) -> None:
        if status == "accepted":
            return
        if status == "stdinClosed":
            hint = "" if self.stdin_enabled else " (start it with stdin=True to write to it)"
            raise StdinClosed(f"process {self.process_id} has no open stdin{hint}")
        if status == "unknownProcess":
            raise ProcessLost(
                f"the server does not know process {self.process_id} (it ended and was forgotten)"
            )
        raise ExecServerError(
            f"writing to process {self.process_id}: the server answered {status!r}"
        )

    async def close_stdin(self) -> None:
        """Send end-of-file the way the server allows."""
        if self.stdin_closes_itself:
            return  # `head -c` ends it after the announced size
        if self.client.supports("closeStdin"):
            raw = await self.client._request(
                "process/closeStdin", {"processId": self.process_id}, subject=self.process_id
            )
            status = _wire.decode(raw, _wire.WriteResult).status
            if status != "stdinClosed":
                self._check_status(status)
        elif self.tty:
            # Ctrl-D ends input at the start of a line; after a partial line it only flushes it.
            await self._send(b"\x04\x04" if self.line_open else b"\x04")
        else:
            raise NotSupported(
                "this server cannot close a process's stdin (it does not announce the "
                "closeStdin extension); start it with stdin_size=N, or use run(input=...)"
            )

    async def signal(self, name: str) -> None:
        """Send a signal, or the nearest thing the server allows."""
        short = _signal_name(name)
        if self.client.supports("signal"):
            await self.client._request(
                "process/signal",
                {"processId": self.process_id, "signal": short},
                subject=self.process_id,
            )
            return
        if short != "INT":
            raise NotSupported(
                f"cannot send SIG{short}: this server can only interrupt a process (it does not "
                "announce the signal extension); use terminate() to kill it"
            )
        try:
            await self.client._request(
                "process/signal",
                {"processId": self.process_id, "signal": "interrupt"},
                subject=self.process_id,
            )
        except RpcError as exc:
            if exc.code != METHOD_NOT_FOUND:
                raise
            if not self.tty:
                raise NotSupported(
                    "this server cannot signal processes (no process/signal); use terminate()"
                ) from None
            await self._send(b"\x03")  # the PTY's line discipline sends SIGINT

    async def resize(self, rows: int, cols: int) -> None:
        """Set the PTY's window size."""
        if not self.client.supports("resize"):
            raise NotSupported(
                "this server cannot resize a PTY (it does not announce the resize extension)"
            )
        params = {"processId": self.process_id, "rows": rows, "cols": cols}
        await self.client._request("process/resize", params, subject=self.process_id)

    async def terminate(self) -> bool:
        """Kill the process tree; True if it was still running."""
        raw = await self.client._request(
            "process/terminate", {"processId": self.process_id}, subject=self.process_id
        )
        result: _wire.TerminateResult = _wire.decode(raw, _wire.TerminateResult)
        return result.running


@dataclass(frozen=True, slots=True)
class _Tracked:
    """A process this client follows: the handle it gave out and the inbox it feeds."""

    process: Process
    inbox: Inbox


def _signal_name(name: str | int) -> str:
    """``"SIGTERM"``, ``"term"``, ``15``, ``signal.SIGTERM`` -> ``"TERM"``; ``"interrupt"`` -> ``"INT"``."""
    if isinstance(name, int):
        return signal_module.Signals(name).name.removeprefix("SIG")
    short = name.strip().upper().removeprefix("SIG")
    return "INT" if short == "INTERRUPT" else short


@dataclass
class _Connector:
    """What :func:`connect` and :func:`connect_stdio` return: ``async with`` it."""

    opener: Opener
    options: _Options
    client: Client | None = field(default=None, init=False)

    async def __aenter__(self) -> Client:
        client = Client(self.opener, self.options)
        await client._open()
        self.client = client
        return client

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.client is not None:
            await self.client.close()


ServerRequestHandler = Callable[[str, Any], Awaitable[Any]]
"""``await handler(method, params) -> result`` for a request the server sends the client."""


def connect(
    url: str,
    *,
    token: str | None = None,
    client_name: str = DEFAULT_CLIENT_NAME,
    connect_timeout: float = 10.0,
    reconnect: bool = True,
    reconnect_timeout: float = 30.0,
    ca_file: str | None = None,
    resume_session: str | None = None,
) -> _Connector:
    """Connect to a WebSocket server: ``async with connect("ws://127.0.0.1:PORT") as client``.

    ``url`` is ``ws://HOST:PORT``, ``wss://HOST:PORT`` (the certificate verified against
    ``ca_file``, PEM, when given, else the system's CAs) or ``unix:///PATH``.

    Does the handshake (``initialize``, then ``initialized``); ``token`` is sent as
    ``Authorization: Bearer <token>``. If the connection drops, the session is resumed
    (retrying for up to ``reconnect_timeout`` seconds) and no output is lost or repeated.
    Leaving the block terminates processes still running and disconnects (see
    :meth:`Client.detach` to leave them running). ``resume_session`` takes up a session an
    earlier client detached from, if the server still has it (else a new one starts).
    Raises :class:`ConnectionFailed` or :class:`AuthenticationFailed`.
    """

    async def opener() -> _Transport:
        return await WebSocketTransport.open(url, token, connect_timeout, ca_file)

    options = _Options(
        url,
        client_name,
        connect_timeout,
        reconnect,
        reconnect_timeout,
        resume_session=resume_session,
    )
    return _Connector(opener, options)


def connect_stdio(
    argv: Sequence[str],
    *,
    client_name: str = DEFAULT_CLIENT_NAME,
    connect_timeout: float = 10.0,
    stderr: int | None = None,
) -> _Connector:
    """Start a server command that speaks over stdio (``["exec-server", "--listen",
    "stdio"]``, ``["codex", "exec-server", "--listen", "stdio"]``) and connect to it.

    Leaving the block closes its stdin, which ends its processes and the server.
    ``stderr`` is where the server's stderr goes (inherited by default).
    """
    command = list(argv)

    async def opener() -> _Transport:
        return await StdioTransport.open(command, stderr)

    options = _Options(command[0], client_name, connect_timeout, reconnect=False)
    return _Connector(opener, options)
