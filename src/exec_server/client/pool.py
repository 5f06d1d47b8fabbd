"""Many executors as one: each new session goes to a ready executor with the fewest sessions.

    async with Pool(["ws://10.0.0.1:8765", "ws://10.0.0.2:8765"], token=TOKEN) as pool:
        result = await pool.run(["make", "test"])        # on the least busy executor
        async with pool.session() as client:              # a whole session on one executor
            await client.run(["uname", "-n"])

``Pool("ws://executors.example:8765")`` with a DNS name takes every address the name resolves
to as one executor (a Kubernetes headless Service), resolved again as the pool goes on.

What the pool promises:

* A new session or a new process is placed only on an executor whose ``/readyz`` answers 200
  (checked at most every ``probe_interval`` seconds), preferring the one where this pool holds
  the fewest sessions (for :meth:`Pool.session`) or the fewest running processes (for
  :meth:`Pool.run` and :meth:`Pool.start`).
* An executor that is down *before* a start (unreachable, not ready, draining, its connection
  already lost) is skipped and the start goes to the next one.
* A process whose executor dies once it was started is never run again elsewhere: it ends
  with :class:`~.errors.ExecutorLost` naming the executor (after ``reconnect_timeout`` seconds
  of trying to resume there). Whether to run it again is the caller's decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from . import client as _client
from ._transport import WebSocketTransport
from .errors import AuthenticationFailed, ConnectionFailed, ExecServerError, RpcError
from .fs import RemotePath
from .process import CompletedProcess, Process

DRAINING_PREFIX = "this exec-server is shutting down"
"""How a draining server's refusal of a start begins (the server's ``methods/process.py``)."""


@dataclass(eq=False)
class Executor:
    """One executor of a pool, as the pool sees it."""

    url: str
    sessions: int = 0
    """Sessions of this pool open there (``Pool.session``)."""
    problem: str | None = None
    """Why it was last found not ready, or None."""
    checked_at: float = float("-inf")
    shared: _client.Client | None = field(default=None, repr=False)
    """The session that :meth:`Pool.run` and :meth:`Pool.start` use there."""
    opening: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @property
    def load(self) -> int:
        """Processes of the shared session that have not closed, plus the sessions."""
        running = self.shared.live_processes if self.shared is not None else 0
        return running + self.sessions

    def usable_shared(self) -> _client.Client | None:
        """The shared session if it is open now (a start on it is sent at once)."""
        shared = self.shared
        return shared if shared is not None and shared.state is _client.State.OPEN else None


class Pool:
    """Sessions and processes spread over executors; see the module docstring."""

    def __init__(
        self,
        targets: str | Sequence[str],
        *,
        token: str | None = None,
        client_name: str = _client.DEFAULT_CLIENT_NAME,
        connect_timeout: float = 10.0,
        reconnect_timeout: float = 5.0,
        probe_timeout: float = 2.0,
        probe_interval: float = 1.0,
    ) -> None:
        """``targets``: executor URLs (``ws://HOST:PORT``), or one URL whose host is a DNS
        name standing for all its addresses. ``reconnect_timeout``: how long a dropped
        connection is retried before its processes are reported lost."""
        self._targets = [targets] if isinstance(targets, str) else list(targets)
        if not self._targets:
            raise ValueError("a pool needs at least one executor URL")
        self._token = token
        self._client_name = client_name
        self._connect_timeout = connect_timeout
        self._reconnect_timeout = reconnect_timeout
        self._probe_timeout = probe_timeout
        self._probe_interval = probe_interval
        self._executors: dict[str, Executor] = {}
        self._resolved: tuple[float, list[str]] = (float("-inf"), [])
        self._sessions: set[_client.Client] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"<Pool {len(self._executors)} executors>"

    @property
    def executors(self) -> list[Executor]:
        """The executors known so far (after the first placement or :meth:`refresh`)."""
        return list(self._executors.values())

    # ---- executors ------------------------------------------------------------------------

    async def refresh(self) -> list[Executor]:
        """The executors the targets stand for now: DNS names are resolved again once
        ``probe_interval`` has passed (a name may now stand for other addresses)."""
        now = asyncio.get_running_loop().time()
        resolved_at, urls = self._resolved
        if now - resolved_at >= self._probe_interval or not urls:
            urls = []
            for target in self._targets:
                urls += await _expand(target)
            self._resolved = (now, urls)
        for url in urls:
            if url not in self._executors:
                self._executors[url] = Executor(url)
        return [self._executors[url] for url in dict.fromkeys(urls)]

    async def _ready(self, executor: Executor) -> bool:
        """Whether ``/readyz`` answered 200 (asked again once ``probe_interval`` passed)."""
        loop = asyncio.get_running_loop()
        if loop.time() - executor.checked_at < self._probe_interval:
            return executor.problem is None
        executor.problem = await probe_ready(executor.url, self._probe_timeout)
        executor.checked_at = loop.time()
        return executor.problem is None

    def _down(self, executor: Executor, problem: str) -> None:
        executor.problem = problem
        executor.checked_at = asyncio.get_running_loop().time()

    async def _candidates(self, by_sessions: bool) -> list[Executor]:
        executors = await self.refresh()
        executors.sort(key=lambda e: e.sessions if by_sessions else e.load)
        return executors

    def _nothing_ready(self, tried: Sequence[Executor]) -> ConnectionFailed:
        problems = "; ".join(f"{e.url}: {e.problem or 'not tried'}" for e in tried)
        return ConnectionFailed(f"no executor of the pool is ready ({problems})")

    # ---- sessions -------------------------------------------------------------------------

    def _connector(self, url: str) -> _client._Connector:
        token = self._token

        async def opener() -> WebSocketTransport:
            return await WebSocketTransport.open(url, token, self._connect_timeout)

        options = _client._Options(
            url,
            self._client_name,
            self._connect_timeout,
            reconnect=True,
            reconnect_timeout=self._reconnect_timeout,
            executor=url,
        )
        return _client._Connector(opener, options)

    async def _open_on(self, executor: Executor) -> _client.Client | None:
        """A new session there, or None (and the executor marked down) if it cannot be had."""
        if not await self._ready(executor):
            return None
        connector = self._connector(executor.url)
        try:
            return await connector.__aenter__()
        except AuthenticationFailed:
            raise  # the pool's token is wrong: trying elsewhere would hide it
        except (ConnectionFailed, RpcError) as exc:
            self._down(executor, str(exc))
            return None

    async def _open_session(self) -> tuple[Executor, _client.Client]:
        self._check_open()
        candidates = await self._candidates(by_sessions=True)
        for executor in candidates:
            client = await self._open_on(executor)
            if client is not None:
                executor.sessions += 1
                self._sessions.add(client)
                return executor, client
        raise self._nothing_ready(candidates)

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[_client.Client]:
        """A session of its own on the ready executor with the fewest of this pool's
        sessions: ``async with pool.session() as client``. Raises
        :class:`~.errors.ConnectionFailed` when no executor is ready."""
        executor, client = await self._open_session()
        try:
            yield client
        finally:
            executor.sessions -= 1
            self._sessions.discard(client)
            await client.close()

    # ---- processes ------------------------------------------------------------------------

    async def _shared_on(self, executor: Executor) -> _client.Client | None:
        async with executor.opening:
            shared = executor.usable_shared()
            if shared is not None:
                return shared if await self._ready(executor) else None
            if executor.shared is not None and executor.shared.state is _client.State.CLOSED:
                executor.shared = None
            if executor.shared is not None:
                return None  # resuming after a drop: not a place for new work now
            executor.shared = await self._open_on(executor)
            return executor.shared

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
    ) -> Process:
        """Start a process on the ready executor running the fewest of this pool's processes
        (see :meth:`exec_server.client.Client.start`). An executor found down before the
        start is skipped; :meth:`executor_of` names where it runs."""
        _, process = await self._start(
            argv,
            cwd=cwd,
            env=env,
            inherit_env=inherit_env,
            tty=tty,
            stdin=stdin,
            stdin_size=stdin_size,
            size=size,
        )
        return process

    def executor_of(self, process: Process) -> str | None:
        """The URL of the executor a process of this pool was started on."""
        for executor in self._executors.values():
            if executor.shared is not None and executor.shared is process.client:
                return executor.url
        return None

    async def _start(self, argv: Sequence[str], **options: Any) -> tuple[_client.Client, Process]:
        self._check_open()
        candidates = await self._candidates(by_sessions=False)
        for executor in candidates:
            client = await self._shared_on(executor)
            if client is None or client.state is not _client.State.OPEN:
                continue
            try:
                # Sent at once on an open connection: from here on, a lost executor means
                # the process may have started, and it is reported lost, never rerun.
                return client, await client.start(argv, **options)
            except RpcError as exc:
                if not exc.message.startswith(DRAINING_PREFIX):
                    raise
                self._down(executor, exc.message)  # refused, nothing ran: try the next
        raise self._nothing_ready(candidates)

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
        """Run a process to its end on the least busy ready executor (see
        :meth:`exec_server.client.Client.run`); :class:`~.errors.ExecutorLost` if that
        executor dies before it ends."""
        client, process = await self._start(
            argv,
            cwd=cwd,
            env=env,
            inherit_env=inherit_env,
            tty=tty,
            stdin_size=None if input is None else len(input),
        )
        return await client.collect(process, input=input, timeout=timeout, check=check)

    # ---- the end --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ExecServerError("the pool is closed")

    async def close(self) -> None:
        """Close every session of the pool (their running processes are terminated)."""
        self._closed = True
        clients = [e.shared for e in self._executors.values() if e.shared is not None]
        clients += list(self._sessions)
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        for executor in self._executors.values():
            executor.shared = None

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def _expand(target: str) -> list[str]:
    """The executor URLs a target stands for: itself for a literal IP, else one per address
    its DNS name resolves to (ConnectionFailed when it resolves to none)."""
    parts = urlsplit(target)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConnectionFailed(f"`{target}` is not an executor URL; expected ws://HOST:PORT")
    host = parts.hostname
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return [target]
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConnectionFailed(f"cannot resolve {host}: {exc}") from None
    urls = []
    for family, _, _, _, address in infos:
        shown = f"[{address[0]}]" if family == socket.AF_INET6 else str(address[0])
        urls.append(f"{parts.scheme}://{shown}:{port}{parts.path}")
    return list(dict.fromkeys(urls))


async def probe_ready(url: str, timeout: float = 2.0) -> str | None:
    """Ask an executor's ``/readyz``: None when it answers 200, else what went wrong."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "wss" else 80)
    tls = None
    if parts.scheme == "wss":
        import ssl

        tls = ssl.create_default_context()
    shown = f"[{host}]" if ":" in host else host
    request = f"GET /readyz HTTP/1.1\r\nHost: {shown}:{port}\r\nConnection: close\r\n\r\n"
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, ssl=tls)
            try:
                writer.write(request.encode())
                status_line = await reader.readline()
            finally:
                writer.close()
    except (OSError, TimeoutError) as exc:
        return f"/readyz unreachable ({exc or type(exc).__name__})"
    fields = status_line.split()
    if len(fields) >= 2 and fields[1] == b"200":
        return None
    return f"/readyz answered {status_line.decode(errors='replace').strip() or 'nothing'}"
