"""Test support: a real server on a loopback socket and a small JSON-RPC client for it.

Nothing here mocks the OS: servers listen on 127.0.0.1, children are real processes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

from websockets.asyncio.client import ClientConnection, connect

from exec_server.config import Guards, Limits, Runtime
from exec_server.server import Server
from exec_server.transport.websocket import serve_websocket

PATH_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RpcFailure(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class ProcessEvents:
    """Notifications of one process, as received."""

    output: list[dict[str, Any]] = field(default_factory=list)
    exited: dict[str, Any] | None = None
    closed: dict[str, Any] | None = None
    order: list[tuple[str, int]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def data(self, stream: str | None = None) -> bytes:
        return b"".join(
            base64.b64decode(o["chunk"]) for o in self.output if stream in (None, o["stream"])
        )


class Client:
    """A JSON-RPC client over one WebSocket: calls by id, notifications routed per process."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._next_id = 0
        self._pending: dict[Any, asyncio.Future[Any]] = {}
        self.processes: dict[str, ProcessEvents] = defaultdict(ProcessEvents)
        self.notifications: list[dict[str, Any]] = []
        self.raw: list[dict[str, Any]] = []
        self.closed = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read_loop())

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, url: str, **kwargs: Any) -> AsyncIterator[Client]:
        async with connect(url, compression=None, max_size=None, **kwargs) as ws:
            client = cls(ws)
            try:
                yield client
            finally:
                client._reader.cancel()

    async def _read_loop(self) -> None:
        try:
            async for message in self.ws:
                msg = json.loads(message)
                self.raw.append(msg)
                if "method" in msg:
                    self.notifications.append(msg)
                    self._route(msg)
                else:
                    future = self._pending.pop(msg.get("id"), None)
                    if future is not None and not future.done():
                        future.set_result(msg)
        except Exception:
            pass
        finally:
            self.closed.set()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("connection closed"))

    def _route(self, msg: dict[str, Any]) -> None:
        params = msg.get("params") or {}
        pid = params.get("processId")
        method = msg["method"]
        if pid is None or not method.startswith("process/"):
            return  # e.g. network/policyDecision: kept in self.notifications only
        events = self.processes[pid]
        if method == "process/output":
            events.output.append(params)
        elif method == "process/exited":
            events.exited = params
        elif method == "process/closed":
            events.closed = params
        events.order.append((method, params["seq"]))
        events.changed.set()

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def request(self, method: str, params: Any = None, *, id: Any = None) -> dict[str, Any]:
        """Send a request and return the whole reply message."""
        if id is None:
            self._next_id += 1
            id = self._next_id
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[id] = future
        message: dict[str, Any] = {"id": id, "method": method}
        if params is not None:
            message["params"] = params
        await self.ws.send(json.dumps(message))
        return await asyncio.wait_for(future, 30)

    async def call(self, method: str, params: Any = None) -> Any:
        reply = await self.request(method, params)
        if "error" in reply:
            raise RpcFailure(reply["error"]["code"], reply["error"]["message"])
        return reply["result"]

    async def notify(self, method: str, params: Any = None) -> None:
        message: dict[str, Any] = {"method": method}
        if params is not None:
            message["params"] = params
        await self.ws.send(json.dumps(message))

    async def initialize(self, **params: Any) -> dict[str, Any]:
        result = await self.call("initialize", {"clientName": "tests", **params})
        await self.notify("initialized", {})
        return result

    async def start(
        self,
        process_id: str,
        argv: list[str],
        *,
        cwd: str = "/tmp",
        env: dict[str, str] | None = None,
        tty: bool = False,
        **extra: Any,
    ) -> Any:
        params = {
            "processId": process_id,
            "argv": argv,
            "cwd": cwd,
            "env": PATH_ENV if env is None else env,
            "tty": tty,
            **extra,
        }
        return await self.call("process/start", params)

    async def write(self, process_id: str, data: bytes, **extra: Any) -> str:
        result = await self.call(
            "process/write",
            {"processId": process_id, "chunk": base64.b64encode(data).decode(), **extra},
        )
        return str(result["status"])

    async def read(self, process_id: str, **params: Any) -> dict[str, Any]:
        return dict(await self.call("process/read", {"processId": process_id, **params}))

    async def wait_for(self, process_id: str, predicate: Any, timeout: float = 15) -> ProcessEvents:
        events = self.processes[process_id]

        async def until() -> None:
            while not predicate(events):
                events.changed.clear()
                await events.changed.wait()

        await asyncio.wait_for(until(), timeout)
        return events

    async def wait_closed(self, process_id: str, timeout: float = 15) -> ProcessEvents:
        return await self.wait_for(process_id, lambda e: e.closed is not None, timeout)

    async def wait_output(self, process_id: str, needle: bytes, timeout: float = 15) -> bytes:
        events = await self.wait_for(process_id, lambda e: needle in e.data(), timeout)
        return events.data()

    async def run(self, process_id: str, argv: list[str], **kwargs: Any) -> ProcessEvents:
        await self.start(process_id, argv, **kwargs)
        return await self.wait_closed(process_id)


@contextlib.asynccontextmanager
async def running_server(
    limits: Limits | None = None,
    *,
    runtime: Runtime | None = None,
    guards: Guards | None = None,
    **kwargs: Any,
) -> AsyncIterator[tuple[Server, str]]:
    """An in-process server on a free loopback port; yields (server, url). ``kwargs`` go to
    ``serve_websocket`` (origins, token, TLS)."""
    server = Server(limits, runtime, guards)
    bound: list[tuple[str, int]] = []
    ws_server = await serve_websocket(
        server, "127.0.0.1", 0, on_bound=lambda h, p: bound.append((h, p)), **kwargs
    )
    try:
        yield server, f"ws://{bound[0][0]}:{bound[0][1]}"
    finally:
        ws_server.close()
        await ws_server.wait_closed()
        await server.shutdown()


def upgrade_request(host: str, port: int | str, headers: dict[str, str] | None = None) -> bytes:
    """A hand-written WebSocket upgrade request (RFC 6455 §4.1), for raw-socket tests."""
    lines = [
        "GET / HTTP/1.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in (headers or {"Host": f"{host}:{port}"}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def server_command(*args: str) -> list[str]:
    """The real CLI, as a newcomer would run it."""
    return [sys.executable, "-m", "exec_server", *args]


async def start_cli(*args: str, stdin: int) -> asyncio.subprocess.Process:
    """The real CLI as a child of the test, stdout and stderr piped."""
    return await asyncio.create_subprocess_exec(
        *server_command(*args),
        stdin=stdin,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )


async def stop_cli(proc: asyncio.subprocess.Process, children: Iterable[int]) -> None:
    """Kill the CLI if it still runs, and every child of it the test recorded."""
    if proc.returncode is None:
        proc.kill()
        await proc.wait()
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def proc_state(pid: int) -> str:
    """The scheduler state of a process or thread id: "R" running, "S" asleep, "Z" zombie..."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = proc_state(pid)
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


async def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return bool(predicate())


@contextlib.contextmanager
def os_pipe(*, nonblocking: str) -> Iterator[tuple[int, int]]:
    """A pipe ``(read_end, write_end)`` with the end named ``"r"`` or ``"w"`` non-blocking,
    closed afterwards (whichever ends the test has not closed itself)."""
    r, w = os.pipe()
    os.set_blocking(r if nonblocking == "r" else w, False)
    try:
        yield r, w
    finally:
        for fd in (r, w):
            with contextlib.suppress(OSError):
                os.close(fd)


def wait_until_sync(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass; its last answer (for
    tests without a running loop)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def read_exactly(fd: int, size: int) -> bytes:
    """``size`` bytes from a (blocking) fd, however many reads it takes."""
    data = b""
    while len(data) < size:
        data += os.read(fd, size - len(data))
    return data


def open_fds() -> set[int]:
    """The fds this process has open."""
    return {int(name) for name in os.listdir("/proc/self/fd")}


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed server certificate for 127.0.0.1 and localhost, and its key, made with
    openssl. Not a CA (rustls, in codex, refuses a CA certificate as a server's)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-addext", "basicConstraints=critical,CA:FALSE",
         "-addext", "extendedKeyUsage=serverAuth",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def http_get(
    url: str, path: str, token: str | None = None, timeout: float = 10.0
) -> tuple[int, dict[str, str], str]:
    """``GET path`` on the server at a ``ws://HOST:PORT`` URL, as a probe or a scraper would:
    (status, headers with lower-case names, body). TimeoutError when nothing answers."""
    host, _, port = url.removeprefix("ws://").rpartition(":")
    host = host.strip("[]")
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            raw = await reader.read()
        finally:
            writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body.decode()


def write_files(root: Path, files: dict[str, str | bytes]) -> None:
    """Writes each ``files`` entry (a path relative to ``root``: text or bytes), making the
    folders it needs."""
    for name, contents in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(contents, bytes):
            path.write_bytes(contents)
        else:
            path.write_text(contents)


@contextlib.contextmanager
def python_server(script: str | Path, *args: str) -> Iterator[int]:
    """Runs ``script`` (Python source, or a script's path) with ``args`` in a process of its
    own, one that prints the port it listens on as its first line; yields that port, kills it
    at the end."""
    program = [str(script)] if isinstance(script, Path) else ["-c", script]
    command = [sys.executable, *program, *args]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL) as process:
        assert process.stdout is not None
        try:
            yield int(process.stdout.readline())
        finally:
            process.kill()


class QuietHandler(BaseHTTPRequestHandler):
    """An HTTP/1.1 request handler that logs nothing and answers with :meth:`send_body`."""

    protocol_version = "HTTP/1.1"

    def send_body(self, status: int, data: bytes, content_type: str = "text/plain") -> None:
        """One whole answer: status, type and length headers, then ``data``."""
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class LoopbackHttp:
    """An HTTP server on 127.0.0.1 (a free port) answering with ``handler``: it serves on a
    daemon thread from ``with`` until the block ends, then shuts down and closes its socket."""

    def __init__(self, handler: Callable[..., BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url_of(self, path: str = "") -> str:
        """``http://127.0.0.1:PORT`` followed by ``path``."""
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()
