"""Connecting: the failures a person meets (refused, not a WebSocket, wrong token), stdio
servers, the blocking facade, and that the client never imports the server."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from exec_server.client import (
    AuthenticationFailed,
    ConnectionFailed,
    ConnectionLost,
    Output,
    State,
    connect,
    connect_stdio,
)
from exec_server.client import sync as blocking

from .client_support import reference_binary, server_process
from .support import REPO, running_server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_refused_connection_says_so() -> None:
    url = f"ws://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionFailed, match="connection refused") as failure:
        async with connect(url):
            pass
    assert url in str(failure.value)


async def test_a_server_that_is_not_websocket() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(ConnectionFailed, match="HTTP 404"):
            async with connect(f"ws://127.0.0.1:{port}"):
                pass


async def test_a_bad_url() -> None:
    with pytest.raises(ConnectionFailed, match="not a WebSocket URL"):
        async with connect("http://127.0.0.1:1"):
            pass


async def test_the_token_travels_as_a_bearer_header_and_401_is_authentication_failed() -> None:
    seen: list[str | None] = []

    def refuse(connection: ServerConnection, request: Request) -> Response:
        seen.append(request.headers.get("Authorization"))
        return connection.respond(401, "who are you?\n")

    async def never(connection: ServerConnection) -> None:  # pragma: no cover - refused first
        await connection.close()

    async with serve(never, "127.0.0.1", 0, process_request=refuse) as server:
        port = server.sockets[0].getsockname()[1]
        url = f"ws://127.0.0.1:{port}"
        with pytest.raises(AuthenticationFailed, match="token was not accepted"):
            async with connect(url, token="s3cret"):
                pass
        with pytest.raises(AuthenticationFailed, match="needs a token"):
            async with connect(url):
                pass
    assert seen == ["Bearer s3cret", None]


async def test_calls_after_close_fail_clearly() -> None:
    async with running_server() as (_, url):
        async with connect(url) as client:
            process = await client.start(["sleep", "30"])
            assert client.state is State.OPEN
        assert client.state is State.CLOSED
        with pytest.raises(ConnectionLost, match="closed"):
            await client.run(["true"])
        assert await process.wait() == 137  # closing terminated what still ran


def test_importing_the_client_does_not_import_the_server() -> None:
    code = (
        "import sys, exec_server.client, exec_server.client.sync, exec_server.client.cli;"
        "print(sorted(m for m in sys.modules if m.startswith('exec_server.')"
        " and not m.startswith('exec_server.client')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---- stdio ----------------------------------------------------------------------------------


def stdio_argv(kind: str) -> list[str]:
    if kind == "ours":
        return [sys.executable, "-m", "exec_server", "--listen", "stdio"]
    return [reference_binary("0.169.0"), "exec-server", "--listen", "stdio"]


@pytest.mark.parametrize("kind", ["ours", "ref-0.169"])  # 0.128 has no stdio listener
async def test_connect_stdio(kind: str, tmp_path: Path) -> None:
    async with connect_stdio(stdio_argv(kind), stderr=subprocess.DEVNULL) as client:
        result = await client.run(["sh", "-c", "echo hi; exit 2"])
        assert (result.returncode, result.stdout) == (2, b"hi\n")
        await client.fs.write_text(tmp_path / "f", "via stdio")
        assert await client.fs.read_text(tmp_path / "f") == "via stdio"
        transport = client._transport
    assert transport._process.returncode is not None  # type: ignore[union-attr]


async def test_a_stdio_server_that_dies_is_connection_lost() -> None:
    async with connect_stdio(stdio_argv("ours"), stderr=subprocess.DEVNULL) as client:
        process = await client.start(["sleep", "30"])
        client._transport._process.kill()  # type: ignore[union-attr]
        with pytest.raises(ConnectionLost, match="exited"):
            await process.wait()


async def test_a_stdio_command_that_does_not_exist() -> None:
    with pytest.raises(ConnectionFailed, match="cannot start"):
        async with connect_stdio(["/nonexistent/exec-server"]):
            pass


# ---- the blocking facade --------------------------------------------------------------------


@pytest.fixture(scope="module")
def subprocess_url() -> Iterator[str]:
    with server_process("ours-subprocess") as url:
        yield url


def test_sync_run_start_and_files(subprocess_url: str, tmp_path: Path) -> None:
    with blocking.connect(subprocess_url) as client:
        assert client.run(["echo", "hi"], check=True).stdout == b"hi\n"
        process = client.start(["sh", "-c", "read x; echo got $x; echo e >&2"], stdin=True)
        process.write(b"line\n")
        events = list(process.events())
        assert b"".join(e.data for e in events if isinstance(e, Output)) in (
            b"got line\ne\n",
            b"e\ngot line\n",
        )
        assert process.wait() == 0 and process.returncode == 0
        streamed = client.start(["sh", "-c", "echo one; echo two >&2"])
        assert streamed.stdout.read() == b"one\n" and list(streamed.stderr) == [b"two\n"]
        client.fs.write_text(tmp_path / "t.txt", "sync")
        assert client.fs.read_text(tmp_path / "t.txt") == "sync"
        with client.fs.open(tmp_path / "s.bin", "wb") as f:
            f.write(b"abc" * 100_000)
        with client.fs.open(tmp_path / "s.bin") as f:
            assert b"".join(f) == b"abc" * 100_000
        assert [e.name for e in client.fs.iterdir(tmp_path)] == ["s.bin", "t.txt"]


def test_sync_errors_are_the_same(subprocess_url: str) -> None:
    refused = f"ws://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionFailed, match="connection refused"), blocking.connect(refused):
        pass
    with blocking.connect(subprocess_url) as client, pytest.raises(FileNotFoundError):
        client.fs.read_bytes("/nonexistent/file")


def test_sync_stdio() -> None:
    argv = [sys.executable, "-m", "exec_server", "--listen", "stdio"]
    with blocking.connect_stdio(argv, stderr=subprocess.DEVNULL) as client:
        assert client.run(["pwd"], cwd=REPO).stdout == f"{REPO}\n".encode()
