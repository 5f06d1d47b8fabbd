"""Support for the client tests: servers to talk to (ours in-process or as a subprocess, the
reference releases) and a TCP proxy whose connections a test can cut mid-stream."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

import pexpect
import pytest

from exec_server.config import Limits

from .support import REPO, running_server

PEER_INSTALLER = os.path.join(os.path.dirname(REPO), "shared", "peer", "install-codex.sh")
REFERENCES = {"ref-0.128": "0.128.0", "ref-0.169": "0.169.0"}
SERVER_KINDS = ["ours", "ours-subprocess", *REFERENCES]


def reference_binary(version: str) -> str:
    """The reference codex binary of that release, installed if needed; skips the test
    (saying why) when it cannot be had."""
    if not os.path.exists(PEER_INSTALLER):
        pytest.skip(f"no reference installer at {PEER_INSTALLER}")
    found = subprocess.run(
        ["sh", PEER_INSTALLER, version], capture_output=True, text=True, timeout=600
    )
    if found.returncode != 0 or not found.stdout.strip():
        pytest.skip(f"reference codex {version} unavailable: {found.stderr.strip()[-300:]}")
    return found.stdout.strip().splitlines()[-1]


def server_argv(kind: str, listen: str = "ws://127.0.0.1:0") -> list[str]:
    """The command line of a server of that kind (not ``ours``, which runs in-process)."""
    if kind == "ours-subprocess":
        return [sys.executable, "-m", "exec_server", "--listen", listen]
    return [reference_binary(REFERENCES[kind]), "exec-server", "--listen", listen]


@contextlib.contextmanager
def server_process(
    kind: str,
    cwd: str | os.PathLike[str] | None = None,
    *,
    extra: Sequence[str] = (),
    preexec_fn: Callable[[], None] | None = None,
) -> Iterator[str]:
    """A server as a child process on a free loopback port (working in ``cwd``, with the
    ``extra`` options, ``preexec_fn`` run before it starts); yields its URL."""
    child = subprocess.Popen(
        [*server_argv(kind), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd=cwd,
        preexec_fn=preexec_fn,
    )
    try:
        assert child.stdout is not None
        url = child.stdout.readline().decode().strip()
        assert url.startswith("ws://"), f"{kind} printed {url!r} instead of its URL"
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()


@contextlib.asynccontextmanager
async def any_server(kind: str, limits: Limits | None = None) -> AsyncIterator[str]:
    """A server of that kind; yields its URL."""
    if kind == "ours":
        async with running_server(limits) as (_, url):
            yield url
    else:
        with server_process(kind) as url:
            yield url


@dataclass(eq=False)
class _Pair:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            writer.transport.abort()


class CuttableProxy:
    """A loopback TCP proxy in front of a server.

    :meth:`cut` drops every connection through it at once (the client sees the socket
    die, the server sees its peer go); ``cut_after`` cuts when that many bytes have gone
    from the server to the client, possibly in the middle of a frame; while ``refusing``,
    new connections are closed as soon as they are accepted.
    """

    def __init__(self, upstream_url: str) -> None:
        host, _, port = upstream_url.removeprefix("ws://").rpartition(":")
        self._upstream = (host, int(port))
        self._server: asyncio.Server | None = None
        self._pairs: set[_Pair] = set()
        self.downstream_bytes = 0
        self.cut_after: list[int] = []
        """Thresholds of ``downstream_bytes``, lowest first; each cuts once."""
        self.cuts = 0
        self.refusing = False
        self.connections = 0

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"ws://{host}:{port}"

    async def __aenter__(self) -> CuttableProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for pair in list(self._pairs):
            pair.abort()
            for task in pair.tasks:
                task.cancel()
            await asyncio.gather(*pair.tasks, return_exceptions=True)
        await self._server.wait_closed()

    def cut(self) -> None:
        """Drop every open connection."""
        self.cuts += 1
        for pair in list(self._pairs):
            pair.abort()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.transport.abort()
            return
        pair = _Pair(writer, up_writer)
        self._pairs.add(pair)
        loop = asyncio.get_running_loop()
        pair.tasks = [
            loop.create_task(self._pump(reader, up_writer, pair, downstream=False)),
            loop.create_task(self._pump(up_reader, writer, pair, downstream=True)),
        ]
        await asyncio.gather(*pair.tasks, return_exceptions=True)
        self._pairs.discard(pair)

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        pair: _Pair,
        downstream: bool,
    ) -> None:
        try:
            while data := await source.read(16384):
                if downstream and self.cut_after:
                    room = self.cut_after[0] - self.downstream_bytes
                    if room <= len(data):
                        sink.write(data[: max(room, 0)])
                        self.downstream_bytes += max(room, 0)
                        self.cut_after.pop(0)
                        self.cut()
                        return
                if downstream:
                    self.downstream_bytes += len(data)
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            pair.abort()


# ---- the command line ------------------------------------------------------------------------

CLI = [sys.executable, "-m", "exec_server"]
WAIT = 30  # seconds pexpect waits for a screen before failing the test


def cli(
    *args: str,
    url: str | None,
    stdin: bytes | None = None,
    stdin_file: BinaryIO | None = None,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """The CLI with ``$EXEC_SERVER_URL`` set to ``url``; stdin from bytes, a file, or none;
    ``extra_env`` on top of ours (less any token of ours)."""
    env = {key: value for key, value in os.environ.items() if key != "EXEC_SERVER_TOKEN"}
    env.update({"EXEC_SERVER_URL": url or "", **(extra_env or {})})
    if stdin_file is not None:
        return subprocess.run(
            [*CLI, *args], stdin=stdin_file, capture_output=True, env=env, cwd=REPO, timeout=60
        )
    return subprocess.run(
        [*CLI, *args], input=stdin or b"", capture_output=True, env=env, cwd=REPO, timeout=60
    )


def spawn_in_terminal(command: str, *, rows: int = 30, cols: int = 100) -> pexpect.spawn:
    """``command`` (a shell line) in a new pseudo-terminal of that size."""
    env = {**os.environ, "TERM": "xterm-test", "PS1": "$ "}
    return pexpect.spawn(
        "/bin/sh", ["-c", command], env=env, cwd=REPO, dimensions=(rows, cols), timeout=WAIT
    )


def shell_line(url: str, *extra: str) -> str:
    """``exec-server shell --url URL EXTRA...`` inside a shell that records the terminal's
    modes before and after it."""
    command = shlex.join([*CLI, "shell", "--url", url, *extra])
    return f"stty -g > modes.before; {command}; code=$?; stty -g > modes.after; exit $code"
