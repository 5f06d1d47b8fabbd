"""Finding, starting and stopping the servers under test (ours and the Rust references).

Every server is started fresh on loopback (``ws://127.0.0.1:0``, or ``--listen stdio``), gets
one connected, initialized :class:`~bench.client.Client`, and is always stopped afterwards:
closed, SIGTERM, SIGKILL if needed, and every child it left behind killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import psutil  # type: ignore[import-untyped]
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bench.client import Client
from bench.probe import ServerProbe
from bench.wsclient import WsConnection, ws_connect

REPO = Path(__file__).resolve().parents[1]
OURS = REPO / ".venv" / "bin" / "exec-server"
INSTALLER = next(
    (
        candidate
        for candidate in (
            REPO.parent / "shared" / "peer" / "install-codex.sh",
            REPO.parent.parent / "shared" / "peer" / "install-codex.sh",  # a git worktree's
        )
        if candidate.exists()
    ),
    REPO.parent / "shared" / "peer" / "install-codex.sh",
)
REF_VERSIONS = ("0.169.0", "0.128.0")
START_TIMEOUT = 20.0
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ServerSpec:
    """How to run one server, and which dialect its clients must speak."""

    name: str
    argv: tuple[str, ...]
    cwd: str  # the `cwd` value process/start must carry for this server
    transports: frozenset[str]


class ServerStartError(Exception):
    pass


def ours() -> ServerSpec:
    # Bytecode for every module, as an installed package has: the start-up row must not
    # measure compiling sources edited since the last `make` (PYTHONDONTWRITEBYTECODE).
    subprocess.run(
        [str(OURS.parent / "python"), "-m", "compileall", "-q", str(REPO / "src")],
        stdout=subprocess.DEVNULL,
        check=False,
    )
    return ServerSpec("ours", (str(OURS),), "/tmp", frozenset({"ws", "stdio"}))


def other(name: str, argv: list[str]) -> ServerSpec:
    """Another build of this server (speaking our dialect), to compare with ours."""
    return ServerSpec(name, tuple(argv), "/tmp", frozenset({"ws", "stdio"}))


def install_reference(version: str) -> tuple[ServerSpec | None, str]:
    """Install (or find cached) a reference release; return its spec, or None and the reason."""
    try:
        done = subprocess.run(
            ["sh", str(INSTALLER), version],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"installer failed: {exc}"
    path = done.stdout.strip().splitlines()[-1:] if done.returncode == 0 else []
    if not path or not os.access(path[0], os.X_OK):
        reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return None, f"install-codex.sh {version} failed ({reason}); is npm reachable?"
    minor = int(version.split(".")[1])
    current = minor >= 169  # file:// cwd and the stdio listener (checked on 0.128 and 0.169)
    spec = ServerSpec(
        f"ref-{version.removesuffix('.0')}",
        (path[0], "exec-server"),
        "file:///tmp" if current else "/tmp",
        frozenset({"ws", "stdio"} if current else {"ws"}),
    )
    return spec, ""


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL if the bench process dies (no stray servers)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class _ServerProtocol(asyncio.SubprocessProtocol):
    """Reads the server's stdout: the first line (WebSocket URL) or JSON lines (stdio)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stdio: bool) -> None:
        self.stdio = stdio
        self.first_line: asyncio.Future[str] = loop.create_future()
        self.exited: asyncio.Future[None] = loop.create_future()
        self.client: Client | None = None
        self._buf = b""

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd != 1:
            return
        if self.stdio:
            if self.client is not None:
                self._lines(self.client, data)
        elif not self.first_line.done():
            self._buf += data
            if b"\n" in self._buf:
                line = self._buf.split(b"\n", 1)[0].decode(errors="replace").strip()
                self.first_line.set_result(line)
                self._buf = b""

    def _lines(self, client: Client, data: bytes) -> None:
        """Hand each complete JSON line to the client without copying it out of ``data``."""
        pos = 0
        try:
            if self._buf:
                end = data.find(b"\n")
                if end < 0:
                    self._buf += data
                    return
                line, self._buf = self._buf + data[:end], b""
                client.on_message(line)
                pos = end + 1
            view = memoryview(data)
            find = data.find
            on_message = client.on_message
            while (end := find(b"\n", pos)) >= 0:
                if end > pos:
                    on_message(view[pos:end])
                pos = end + 1
        except Exception as exc:  # a message the client cannot handle: the run is void
            client.connection_lost(exc)
            return
        if pos < len(data):
            self._buf = data[pos:]

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1 and self.stdio and self.client is not None:
            self.client.connection_lost(exc)

    def process_exited(self) -> None:
        if not self.first_line.done():
            if self.stdio:
                self.first_line.cancel()
            else:
                self.first_line.set_exception(
                    ServerStartError("server exited before its first line")
                )
        if not self.exited.done():
            self.exited.set_result(None)


class RunningServer:
    """A started server with its client; use ``async with`` or call :meth:`stop`."""

    def __init__(
        self,
        spec: ServerSpec,
        transport: str,
        proc: asyncio.SubprocessTransport,
        protocol: _ServerProtocol,
        stderr_path: str,
    ) -> None:
        self.spec = spec
        self.transport = transport
        self._proc = proc
        self._protocol = protocol
        self._stderr_path = stderr_path
        self.pid = proc.get_pid()
        self.url = ""  # ws:// address, for more connections to the same server
        self.probe = ServerProbe(self.pid)
        self.client: Client
        self._ws: ClientConnection | None = None
        self._fast_ws: WsConnection | None = None
        self._reader: asyncio.Task[None] | None = None

    def stderr_tail(self, lines: int = 3) -> str:
        try:
            text = Path(self._stderr_path).read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def failure(self, exc: BaseException) -> str:
        """What went wrong in a run against this server, with the end of its stderr."""
        tail = self.stderr_tail()
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return detail + (f"; stderr: {tail}" if tail else "")

    async def _connect_ws(self, url: str) -> None:
        self.client, self._fast_ws = await ws_client(url, self.spec.cwd)

    async def connect(self) -> tuple[Client, WsConnection]:
        """Another client of this (WebSocket) server, initialized; the caller closes it."""
        if not self.url:
            raise ServerStartError(f"{self.spec.name} over {self.transport}: not a ws:// server")
        client, conn = await ws_client(self.url, self.spec.cwd)
        try:
            await asyncio.wait_for(client.initialize(), START_TIMEOUT)
        except BaseException:
            await conn.close()
            raise
        return client, conn

    def pause_reading(self) -> None:
        """The client stops reading what the server sends (it keeps its connection)."""
        if self._fast_ws is not None:
            self._fast_ws.pause_reading()
        elif self.transport == "stdio":
            cast(asyncio.ReadTransport, self._proc.get_pipe_transport(1)).pause_reading()
        else:
            raise NotImplementedError("pause_reading with the websockets library")

    def resume_reading(self) -> None:
        if self._fast_ws is not None:
            self._fast_ws.resume_reading()
        elif self.transport == "stdio":
            cast(asyncio.ReadTransport, self._proc.get_pipe_transport(1)).resume_reading()
        else:
            raise NotImplementedError("resume_reading with the websockets library")

    def alive(self) -> bool:
        """The server process has not exited."""
        return not self._protocol.exited.done()

    async def _connect_websockets(self, url: str) -> None:
        ws = await connect(
            url,
            compression=None,
            max_size=None,
            max_queue=256,
            ping_interval=None,
            open_timeout=START_TIMEOUT,
        )
        self._ws = ws

        async def send(data: bytes) -> None:
            await ws.send(data, text=True)

        self.client = Client(send, cwd=self.spec.cwd)
        self._reader = asyncio.create_task(self._read_ws(ws, self.client))

    @staticmethod
    async def _read_ws(ws: ClientConnection, client: Client) -> None:
        on_message = client.on_message
        recv = ws.recv
        exc: BaseException | None = None
        try:
            while True:
                on_message(await recv(decode=False))
        except ConnectionClosed as e:
            exc = e
        except Exception as e:
            exc = e
        finally:
            client.connection_lost(exc)

    def _connect_stdio(self) -> None:
        stdin = cast(asyncio.WriteTransport, self._proc.get_pipe_transport(0))

        async def send(data: bytes) -> None:
            stdin.write(data + b"\n")

        self.client = Client(send, cwd=self.spec.cwd)
        self._protocol.client = self.client

    async def stop(self) -> None:
        kids = self.probe.descendants()
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 2)
        if self._fast_ws is not None:
            await self._fast_ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        if self.transport == "stdio":
            stdin = self._proc.get_pipe_transport(0)
            if stdin is not None:
                stdin.close()
        if not self._protocol.exited.done():
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self._protocol.exited), 3)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._protocol.exited), 5)
        self._proc.close()
        for kid in kids:
            with contextlib.suppress(psutil.Error):
                kid.kill()
        await asyncio.to_thread(psutil.wait_procs, kids, 5)
        with contextlib.suppress(OSError):
            os.unlink(self._stderr_path)

    async def __aenter__(self) -> RunningServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def ws_client(url: str, cwd: str) -> tuple[Client, WsConnection]:
    """A :class:`Client` over the lean WebSocket client, connected (not yet initialized)."""
    client: Client | None = None

    def on_message(data: memoryview) -> None:
        assert client is not None
        client.on_message(data)

    def on_lost(exc: BaseException | None) -> None:
        if client is not None:
            client.connection_lost(exc)

    conn = await ws_connect(url, on_message, on_lost, START_TIMEOUT)

    async def send(data: bytes) -> None:
        conn.send(data)

    client = Client(send, cwd=cwd)
    return client, conn


async def spawn_stdio(argv: Sequence[str]) -> asyncio.subprocess.Process:
    """A server on ``--listen stdio``: stdin and stdout piped to the bench, stderr dropped."""
    return await asyncio.create_subprocess_exec(
        *argv,
        "--listen",
        "stdio",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def start_server(
    spec: ServerSpec, transport: str, *, ws_library: bool = False
) -> RunningServer:
    """Start ``spec`` on ``transport`` ("ws" or "stdio"), connect, initialize.

    ``ws_library`` uses the ``websockets`` package instead of the lean client (cross-checks).
    """
    loop = asyncio.get_running_loop()
    stdio = transport == "stdio"
    listen = "stdio" if stdio else "ws://127.0.0.1:0"
    fd, stderr_path = tempfile.mkstemp(prefix=f"bench-{spec.name}-", suffix=".stderr")
    try:
        proc, protocol = await loop.subprocess_exec(
            lambda: _ServerProtocol(loop, stdio),
            *spec.argv,
            "--listen",
            listen,
            stdin=subprocess.PIPE if stdio else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=fd,
            preexec_fn=_die_with_parent,
        )
    except OSError as exc:
        os.close(fd)
        os.unlink(stderr_path)
        raise ServerStartError(f"cannot run {spec.argv[0]}: {exc}") from exc
    os.close(fd)
    server = RunningServer(spec, transport, proc, protocol, stderr_path)
    try:
        if stdio:
            server._connect_stdio()
        else:
            url = await asyncio.wait_for(protocol.first_line, START_TIMEOUT)
            if not url.startswith("ws://"):
                raise ServerStartError(f"first stdout line is not a ws:// URL: {url[:80]!r}")
            server.url = url
            if ws_library:
                await server._connect_websockets(url)
            else:
                await server._connect_ws(url)
        await asyncio.wait_for(server.client.initialize(), START_TIMEOUT)
    except Exception as exc:
        detail = server.failure(exc)  # before stop(), which removes the stderr file
        await server.stop()
        raise ServerStartError(detail) from exc
    except BaseException:
        await server.stop()
        raise
    return server
