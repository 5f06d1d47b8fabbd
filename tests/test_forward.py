"""Port forwarding (``forward/*``, ``Client.open_connection``, ``exec-server forward``) over
real loopback sockets: an HTTP server behind a forward, many streams at once, a large
transfer, half-closes, a destination that vanishes, bounded memory with readers that do not
read, and the operator's refusals.

``EXEC_SERVER_FORWARD_GIB=1`` makes the large transfer 1 GiB instead of 64 MiB.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import http.client
import http.server
import os
import re
import socket
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from exec_server.client import Client as PyClient
from exec_server.client import ConnectionLost, RpcError, State, connect
from exec_server.client.forward import Forwarder, Spec, parse_spec
from exec_server.config import Guards, Limits
from exec_server.forwarding.streams import StreamTable
from exec_server.methods.forward import streams_of
from exec_server.methods.forward_write import slice_write
from exec_server.server import Server

from .client_support import CuttableProxy
from .sandbox_support import confinement, workspace_write
from .support import Client, LoopbackHttp, running_server, server_command, wait_until

MIB = 1024 * 1024
LARGE_BYTES = (1024 if os.environ.get("EXEC_SERVER_FORWARD_GIB") else 64) * MIB

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def destination(handler: Handler) -> AsyncIterator[int]:
    """A TCP server on loopback (what the forward reaches); yields its port."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await server.wait_closed()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(MIB):
            writer.write(data)
            await writer.drain()
        writer.close()


@contextlib.asynccontextmanager
async def forwarding_client(
    limits: Limits | None = None, guards: Guards | None = None
) -> AsyncIterator[tuple[Server, PyClient]]:
    async with running_server(limits, guards=guards) as (server, url), connect(url) as client:
        yield server, client


@contextlib.asynccontextmanager
async def raw_client(limits: Limits | None = None) -> AsyncIterator[Client]:
    """The tests' plain JSON-RPC client, after the handshake, to see the wire itself."""
    async with running_server(limits) as (_, url), Client.connect(url) as raw:
        await raw.initialize()
        yield raw


def stream_table(server: Server) -> StreamTable:
    """The (only) connection's stream table, to read its counters."""
    (session,) = list(server.sessions)
    assert session.connection is not None
    return streams_of(session.connection)


# ---- HTTP behind the forward -------------------------------------------------------------------


@contextlib.contextmanager
def http_server(root: Path) -> Iterator[int]:
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    with LoopbackHttp(handler) as server:
        yield server.port


async def test_the_cli_forwards_http_from_the_server(tmp_path: Path) -> None:
    """`exec-server forward 0:localhost:PORT` as a person runs it: urllib fetches through the
    printed local port, several times (each fetch its own stream), bytes exact."""
    page = os.urandom(300_000)
    (tmp_path / "page.bin").write_bytes(page)
    with http_server(tmp_path) as port:
        async with running_server() as (_, url):
            cli = await asyncio.create_subprocess_exec(
                *server_command("forward", "--url", url, f"0:localhost:{port}"),
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                assert cli.stderr is not None
                line = (await asyncio.wait_for(cli.stderr.readline(), 20)).decode()
                found = re.search(r"forwarding 127\.0\.0\.1:(\d+) -> localhost:\d+", line)
                assert found, line
                local = f"http://127.0.0.1:{found[1]}/page.bin"
                for _ in range(3):
                    body = await asyncio.to_thread(lambda: urllib.request.urlopen(local).read())
                    assert body == page
            finally:
                cli.terminate()
                await cli.wait()


async def test_the_cli_stops_with_255_when_the_server_is_gone() -> None:
    server = await asyncio.create_subprocess_exec(
        *server_command("--listen", "ws://127.0.0.1:0"), stdout=asyncio.subprocess.PIPE
    )
    assert server.stdout is not None
    url = (await asyncio.wait_for(server.stdout.readline(), 20)).decode().strip()
    cli = await asyncio.create_subprocess_exec(
        *server_command("forward", "--url", url, "--reconnect-timeout", "0", "0:localhost:9"),
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert cli.stderr is not None
        assert b"forwarding" in await asyncio.wait_for(cli.stderr.readline(), 20)
        server.kill()
        await server.wait()
        assert await asyncio.wait_for(cli.wait(), 20) == 255
        assert b"the connection to the server is lost" in await cli.stderr.read()
    finally:
        for child in (cli, server):
            if child.returncode is None:
                child.kill()
                await child.wait()


async def test_http_client_keeps_its_connection_through_the_forward(tmp_path: Path) -> None:
    """http.client with keep-alive: several requests over one forwarded stream."""
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "b.txt").write_text("second")
    with http_server(tmp_path) as port:
        async with forwarding_client() as (_, client):
            forwarder = Forwarder(client)
            try:
                await forwarder.listen(Spec("127.0.0.1", 0, "127.0.0.1", port))
                local_port = forwarder.servers[0].sockets[0].getsockname()[1]

                def fetch_both() -> list[bytes]:
                    conn = http.client.HTTPConnection("127.0.0.1", local_port, timeout=10)
                    bodies = []
                    for name in ("a.txt", "b.txt"):
                        conn.request("GET", f"/{name}")
                        bodies.append(conn.getresponse().read())
                    conn.close()
                    return bodies

                assert await asyncio.to_thread(fetch_both) == [b"first", b"second"]
            finally:
                await forwarder.close()


# ---- many streams, large transfers ---------------------------------------------------------------


async def test_a_hundred_concurrent_streams_are_byte_exact() -> None:
    async with destination(echo) as port, forwarding_client() as (_, client):

        async def one(index: int) -> None:
            payload = os.urandom(100_000 + index * 997)
            reader, writer = await client.open_connection("127.0.0.1", port)
            writer.write(payload)
            writer.write_eof()
            assert await reader.read() == payload
            writer.close()
            await writer.wait_closed()

        await asyncio.gather(*(one(i) for i in range(100)))


@pytest.mark.timeout(900)  # 1 GiB each way with EXEC_SERVER_FORWARD_GIB=1
async def test_a_large_transfer_is_byte_exact_both_ways() -> None:
    """LARGE_BYTES up (hashed by the destination) and down (generated by it)."""
    block = os.urandom(MIB)
    expected = hashlib.sha256()
    for index in range(LARGE_BYTES // MIB):
        expected.update(block[index:] + block[:index])

    async def sink_then_source(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received = hashlib.sha256()
        while data := await reader.read(MIB):
            received.update(data)
        writer.write(received.hexdigest().encode() + b"\n")
        for index in range(LARGE_BYTES // MIB):
            writer.write(block[index:] + block[:index])
            await writer.drain()
        writer.close()

    async with destination(sink_then_source) as port, forwarding_client() as (_, client):
        reader, writer = await client.open_connection("127.0.0.1", port)
        for index in range(LARGE_BYTES // MIB):
            writer.write(block[index:] + block[:index])
            await writer.drain()
        writer.write_eof()
        assert (await reader.readline()).decode().strip() == expected.hexdigest()
        downloaded, size = hashlib.sha256(), 0
        while data := await reader.read(MIB):
            downloaded.update(data)
            size += len(data)
        assert size == LARGE_BYTES
        assert downloaded.hexdigest() == expected.hexdigest()


# ---- half-close, vanishing peers ---------------------------------------------------------------


async def test_half_close_the_destination_still_answers_after_our_eof() -> None:
    async def count_then_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # to our EOF
        writer.write(f"got {len(data)} bytes".encode())
        await writer.drain()
        writer.close()

    async with destination(count_then_answer) as port, forwarding_client() as (_, client):
        reader, writer = await client.open_connection("127.0.0.1", port)
        writer.write(b"x" * 12345)
        writer.write_eof()
        assert await reader.read() == b"got 12345 bytes"


async def test_half_close_the_other_way_we_still_send_after_its_eof() -> None:
    async def greet_then_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        writer.write_eof()  # the destination is done talking, still listening
        received = await reader.read()
        writer.transport.close()
        assert received == b"after your eof"

    async with destination(greet_then_read) as port, forwarding_client() as (_, client):
        reader, writer = await client.open_connection("127.0.0.1", port)
        assert await reader.read() == b"hello"  # its EOF reached us
        writer.write(b"after your eof")
        writer.write_eof()
        await writer.wait_closed()


async def test_a_stream_over_both_ways_is_ended_by_the_server_alone() -> None:
    """After both ends of file the server ends the stream itself: closing it then sends
    nothing (a forward/close would cross the server's forward/closed and be refused, an error
    per forwarded connection)."""

    async def answer_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readexactly(1))
        writer.close()

    async with destination(answer_then_close) as port, forwarding_client() as (server, client):
        for _ in range(3):  # as `exec-server forward` ends a pair: its EOF, then the close
            reader, writer = await client.open_connection("127.0.0.1", port)
            writer.write(b"x")
            assert await reader.read() == b"x"  # to the destination's EOF
            writer.write_eof()
            writer.close()
            await writer.wait_closed()
        await client.request("process/list")  # after whatever the closes sent
        assert server.metrics.rpc_errors == {}
        assert await wait_until(lambda: len(streams_of(next(iter(server.connections)))) == 0)


async def test_a_destination_that_vanishes_ends_the_stream() -> None:
    """A reset after some bytes: they arrive, then the reader fails with the reason; the
    wire says forward/closed with an error."""

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"partial")
        await writer.drain()
        await asyncio.sleep(0.1)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()

    async with destination(reset) as port:
        async with forwarding_client() as (_, client):
            reader, _ = await client.open_connection("127.0.0.1", port)
            assert await reader.readexactly(7) == b"partial"
            with pytest.raises(ConnectionResetError, match="reset"):
                await reader.read()
        async with raw_client() as raw:
            await raw.call("forward/open", {"streamId": "s", "host": "127.0.0.1", "port": port})
            assert await wait_until(lambda: _closed(raw, "s") is not None)
            closed = _closed(raw, "s")
            assert closed is not None and "reset" in (closed["error"] or "")


async def test_a_destination_that_closes_sends_eof_then_closed() -> None:
    async def bye(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"bye")
        writer.close()

    async with destination(bye) as port, raw_client() as raw:
        await raw.call("forward/open", {"streamId": "s", "host": "127.0.0.1", "port": port})
        assert await wait_until(lambda: _methods(raw, "s")[-1:] == ["forward/eof"])
        await raw.call("forward/shutdown", {"streamId": "s"})
        assert await wait_until(lambda: _closed(raw, "s") is not None)
        assert _methods(raw, "s") == ["forward/data", "forward/eof", "forward/closed"]
        assert _closed(raw, "s") == {"streamId": "s", "error": None}
        failure = await raw.request("forward/write", {"streamId": "s", "data": ""})
        assert "unknown stream s" in failure["error"]["message"]


async def test_a_banner_sent_at_once_follows_the_open_reply_under_uvloop() -> None:
    """A destination that speaks first (SSH, SMTP): the server as the command runs it (on
    uvloop, which starts reading a new socket whatever connection_made asked) still sends
    the open reply before the banner, and the banner whole."""
    banner = b"SSH-2.0-test\r\n" * 1000

    async def speak_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(banner)
        await writer.drain()
        await reader.read()

    server = await asyncio.create_subprocess_exec(
        *server_command("--listen", "ws://127.0.0.1:0", "--loop", "uvloop"),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert server.stdout is not None
        url = (await asyncio.wait_for(server.stdout.readline(), 20)).decode().strip()
        async with destination(speak_first) as port, Client.connect(url) as raw:
            await raw.initialize()
            for index in range(10):
                stream_id = f"s{index}"
                params = {"streamId": stream_id, "host": "127.0.0.1", "port": port}
                await raw.call("forward/open", params)
                assert await wait_until(lambda s=stream_id: _data_bytes(raw, s) == len(banner))
                order = [
                    "reply"
                    if "result" in m and m["result"].get("streamId") == stream_id
                    else m.get("method")
                    for m in raw.raw
                    if "result" in m or (m.get("params") or {}).get("streamId") == stream_id
                ]
                reply = order.index("reply")
                assert "forward/data" not in order[:reply], order
    finally:
        server.kill()
        await server.wait()


async def test_a_client_that_disconnects_ends_its_streams() -> None:
    ended = asyncio.Event()

    async def wait_for_end(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.read()
        ended.set()

    async with destination(wait_for_end) as port, raw_client() as raw:
        await raw.call("forward/open", {"streamId": "s", "host": "127.0.0.1", "port": port})
        await raw.ws.close()
        await asyncio.wait_for(ended.wait(), 10)


def _methods(client: Client, stream_id: str) -> list[str]:
    seen = [
        n["method"]
        for n in client.notifications
        if n["method"].startswith("forward/") and n["params"]["streamId"] == stream_id
    ]
    return [m for i, m in enumerate(seen) if m != "forward/data" or seen[i - 1 : i] != [m]]


def _closed(client: Client, stream_id: str) -> dict[str, Any] | None:
    for n in client.notifications:
        if n["method"] == "forward/closed" and n["params"]["streamId"] == stream_id:
            return dict(n["params"])
    return None


async def test_a_dropped_connection_fails_its_streams_and_new_ones_work_after_resume() -> None:
    """Bytes in flight on a lost connection cannot be replayed: reading fails with
    ConnectionLost even though the session is resumed, and new streams work on it."""
    async with (
        destination(echo) as port,
        running_server() as (_, url),
        CuttableProxy(url) as proxy,
        connect(proxy.url, reconnect_timeout=20) as client,
    ):
        reader, writer = await client.open_connection("127.0.0.1", port)
        writer.write(b"before")
        assert await reader.readexactly(6) == b"before"
        proxy.cut()
        with pytest.raises(ConnectionLost, match="forwarded stream"):
            await reader.read()
        assert await wait_until(lambda: client.state is State.OPEN, 20)
        reader, writer = await client.open_connection("127.0.0.1", port)
        writer.write(b"after")
        assert await reader.readexactly(5) == b"after"


# ---- bounded memory -------------------------------------------------------------------------


async def test_a_client_that_does_not_read_gets_one_window_and_no_more() -> None:
    """The destination sends without end; a client that grants no credit receives exactly
    its window, and the destination's sends block (the bytes stay in kernel buffers)."""
    sent = 0

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        block = b"z" * 65536
        with contextlib.suppress(ConnectionError):
            while True:
                writer.write(block)
                await writer.drain()
                sent += len(block)

    window = 300_000
    async with destination(flood) as port, raw_client() as raw:
        params = {"streamId": "s", "host": "127.0.0.1", "port": port, "window": window}
        await raw.call("forward/open", params)
        assert await wait_until(lambda: _data_bytes(raw, "s") == window)
        await asyncio.sleep(0.5)
        assert _data_bytes(raw, "s") == window
        stalled = sent
        await asyncio.sleep(0.3)
        assert sent == stalled, "the destination's sends should block"
        assert sent < 64 * MIB
        await raw.call("forward/credit", {"streamId": "s", "bytes": 1000})
        assert await wait_until(lambda: _data_bytes(raw, "s") == window + 1000)


async def test_a_destination_that_does_not_read_holds_one_window_here() -> None:
    """The client writes without end to a destination that never reads: the server holds
    at most one window of it, the client library stops sending (drain waits)."""
    hold = asyncio.Event()

    async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hold.wait()

    window = 512 * 1024
    limits = Limits(forward_window_bytes=window)
    async with destination(never_read) as port, forwarding_client(limits) as (server, client):
        _, writer = await client.open_connection("127.0.0.1", port)
        written = 0

        async def write_forever() -> None:
            nonlocal written
            block = b"w" * 65536
            while True:
                writer.write(block)
                await writer.drain()
                written += len(block)

        task = asyncio.ensure_future(write_forever())
        try:
            table = stream_table(server)
            assert await wait_until(lambda: table.buffered_bytes > 0)
            await asyncio.sleep(1.0)
            stalled = written
            await asyncio.sleep(0.3)
            assert written == stalled, "drain() should wait"
            assert 0 < table.buffered_bytes <= window
        finally:
            task.cancel()
            hold.set()


async def test_closed_streams_that_still_hold_bytes_count_against_the_bound() -> None:
    """Closing a stream whose destination does not read leaves its window buffered until
    written: it keeps counting, so open-write-close cannot grow memory without bound."""
    hold = asyncio.Event()

    async def read_late(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hold.wait()
        with contextlib.suppress(ConnectionError):
            await reader.read()

    window = 24 * MIB  # past what the kernel's socket buffers take at once (~10 MiB)
    limits = Limits(forward_window_bytes=window, forward_max_streams=2)
    async with destination(read_late) as port, raw_client(limits) as raw:
        block = base64.b64encode(b"q" * window).decode()
        for stream_id in ("a", "b"):
            params = {"streamId": stream_id, "host": "127.0.0.1", "port": port}
            await raw.call("forward/open", params)
            await raw.call("forward/write", {"streamId": stream_id, "data": block})
            await raw.call("forward/close", {"streamId": stream_id})
        third = await raw.request(
            "forward/open", {"streamId": "c", "host": "127.0.0.1", "port": port}
        )
        assert "already has 2 open streams" in third["error"]["message"]
        hold.set()  # the destinations read: the closed streams finish and let go

        async def opens() -> bool:
            reply = await raw.request(
                "forward/open", {"streamId": "c", "host": "127.0.0.1", "port": port}
            )
            return "result" in reply

        for _ in range(100):
            if await opens():
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the closed streams were never let go")


def _data_bytes(client: Client, stream_id: str) -> int:
    return sum(
        len(base64.b64decode(n["params"]["data"]))
        for n in client.notifications
        if n["method"] == "forward/data" and n["params"]["streamId"] == stream_id
    )


# ---- the protocol's rules -------------------------------------------------------------------


async def test_misuse_gets_errors_that_say_what_to_do() -> None:
    hold = asyncio.Event()

    async def idle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hold.wait()

    limits = Limits(forward_window_bytes=1000, forward_max_streams=2)
    async with destination(idle) as port, raw_client(limits) as raw:
        opened = await raw.call(
            "forward/open", {"streamId": "a", "host": "127.0.0.1", "port": port}
        )
        assert opened == {"streamId": "a", "window": 1000}
        again = await raw.request(
            "forward/open", {"streamId": "a", "host": "127.0.0.1", "port": port}
        )
        assert "stream id a is already in use" in again["error"]["message"]
        too_much = base64.b64encode(b"x" * 1001).decode()
        failure = await raw.request("forward/write", {"streamId": "a", "data": too_much})
        assert failure["error"]["code"] == -32600
        assert "wait for forward/credit" in failure["error"]["message"]
        await raw.call("forward/open", {"streamId": "b", "host": "127.0.0.1", "port": port})
        third = await raw.request(
            "forward/open", {"streamId": "c", "host": "127.0.0.1", "port": port}
        )
        assert "already has 2 open streams" in third["error"]["message"]
        await raw.call("forward/shutdown", {"streamId": "a"})
        after = await raw.request("forward/write", {"streamId": "a", "data": "eA=="})
        assert "shut down for writing" in after["error"]["message"]
        bad_port = await raw.request(
            "forward/open", {"streamId": "d", "host": "127.0.0.1", "port": 0}
        )
        assert bad_port["error"]["code"] == -32602
        hold.set()


async def test_unreachable_destinations_say_why() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, never listening: refused
        async with forwarding_client() as (_, client):
            with pytest.raises(RpcError, match="Connection refused"):
                await client.open_connection("127.0.0.1", port)
            with pytest.raises(RpcError, match="cannot resolve"):
                await client.open_connection("no-such-host.invalid", 80)


def test_only_our_clients_exact_shape_of_forward_write_is_sliced() -> None:
    sliced = slice_write(
        b'{"id":42,"method":"forward/write","params":{"streamId":"s1","data":"eHk="}}'
    )
    assert sliced is not None
    assert sliced[0] == 42 and sliced[1].stream_id == "s1" and bytes(sliced[1].data) == b"eHk="
    for other in (
        b'{"id": 42, "method": "forward/write", "params": {"streamId": "s1", "data": "eHk="}}',
        b'{"id":"a","method":"forward/write","params":{"streamId":"s1","data":"eHk="}}',
        b'{"id":-1,"method":"forward/write","params":{"streamId":"s1","data":"eHk="}}',
        b'{"id":1,"method":"forward/write","params":{"streamId":"s\\"1","data":"eHk="}}',
        b'{"id":1,"method":"forward/write","params":{"streamId":"s1","data":"eHk=","x":1}}',
        b'{"id":1,"method":"process/write","params":{"processId":"s1","chunk":"eHk="}}',
        b'{"id":9223372036854775808,"method":"forward/write","params":{"streamId":"s1","data":"eHk="}}',
        b'{"id":01,"method":"forward/write","params":{"streamId":"s1","data":"eHk="}}',
        b'{"id":1,"method":"forward/write","params":{"streamId":"s"1","data":"eHk="}}',
        b'{"id":1,"method":"forward/write","params":{"streamId":"s1","data":"\\/\\/8="}}',
        b'{"id":1,"method":"forward/write","params":{"streamId":"s1","data":"eHk=","x":"1"}}',
    ):
        assert slice_write(other) is None, other


async def test_a_sliced_write_is_checked_as_any_other() -> None:
    """The exact shape our client writes, by hand: the handshake gate and the base64 check
    apply as on the general way."""
    message = '{"id":%d,"method":"forward/write","params":{"streamId":"s","data":"%s"}}'
    async with running_server() as (_, url), Client.connect(url) as raw:

        async def reply_to(request_id: int, data: str) -> dict[str, Any]:
            await raw.send_raw(message % (request_id, data))
            assert await wait_until(lambda: any(m.get("id") == request_id for m in raw.raw))
            return next(m for m in raw.raw if m.get("id") == request_id)

        reply = await reply_to(7, "eHk=")
        assert "initialize before using forward methods" in reply["error"]["message"]
        await raw.initialize()
        reply = await reply_to(8, "not base64!")
        assert reply["error"]["code"] == -32602
        assert "data is not valid base64" in reply["error"]["message"]


async def test_what_slicing_cannot_read_goes_the_general_way() -> None:
    """Valid JSON that only looks like our client's shape (an escaped ``/`` in the base64,
    a member after ``data``) is read as JSON, and an id beyond i64 is refused as on the
    general way, not answered under that id."""
    message = '{"id":%d,"method":"forward/write","params":{"streamId":"s","data":"%s"}}'
    async with destination(echo) as port, raw_client() as raw:
        opened = {"streamId": "s", "host": "127.0.0.1", "port": port}
        assert (await raw.request("forward/open", opened))["result"]["streamId"] == "s"

        async def reply_to(request_id: int, text: str) -> dict[str, Any]:
            await raw.send_raw(text)
            assert await wait_until(lambda: any(m.get("id") == request_id for m in raw.raw))
            return next(m for m in raw.raw if m.get("id") == request_id)

        escaped = await reply_to(11, message % (11, "\\/\\/8="))  # "//8=" as JSON may write it
        assert escaped == {"id": 11, "result": {}}
        extra = '{"id":12,"method":"forward/write","params":{"streamId":"s","data":"eHk=","x":"1"}}'
        assert await reply_to(12, extra) == {"id": 12, "result": {}}
        await raw.send_raw(message % (2**63, "eHk="))
        assert await wait_until(lambda: any(m.get("id") == -1 for m in raw.raw))
        [refusal] = [m for m in raw.raw if m.get("id") == -1]
        assert refusal["error"]["code"] == -32600
        assert not any(m.get("id") == 2**63 for m in raw.raw)


async def test_forward_methods_need_the_handshake() -> None:
    async with running_server() as (_, url), Client.connect(url) as raw:
        reply = await raw.request("forward/open", {"streamId": "a", "host": "127.0.0.1", "port": 9})
        assert "initialize before using forward methods" in reply["error"]["message"]


# ---- the operator's rules -----------------------------------------------------------------------


async def test_refused_under_a_confinement_that_restricts_the_network(tmp_path: Path) -> None:
    guards = confinement(workspace_write(str(tmp_path), network="restricted"), tmp_path)
    async with destination(echo) as port, forwarding_client(guards=guards) as (_, client):
        with pytest.raises(RpcError, match=r"confinement \(--confine\) restricts the network"):
            await client.open_connection("127.0.0.1", port)


async def test_refused_when_the_requests_own_profile_restricts_the_network(
    tmp_path: Path,
) -> None:
    root = tmp_path.as_uri()
    async with destination(echo) as port, raw_client() as raw:
        params = {"streamId": "s", "host": "127.0.0.1", "port": port}
        for network, refused in (("restricted", True), ("enabled", False)):
            profile = workspace_write(root, network=network)
            reply = await raw.request("forward/open", {**params, "sandbox": profile})
            if refused:
                assert "sandbox profile restricts the network" in reply["error"]["message"]
            else:
                assert reply["result"]["streamId"] == "s"
        bad = await raw.request(
            "forward/open", {**params, "streamId": "t", "sandbox": {"permissions": 1}}
        )
        assert bad["error"]["code"] == -32602


async def test_allowed_under_a_confinement_that_enables_the_network(tmp_path: Path) -> None:
    guards = confinement(workspace_write(str(tmp_path), network="enabled"), tmp_path)
    async with destination(echo) as port, forwarding_client(guards=guards) as (_, client):
        reader, writer = await client.open_connection("127.0.0.1", port)
        writer.write(b"ok")
        assert await reader.readexactly(2) == b"ok"


async def test_http_deny_networks_are_refused_after_name_resolution() -> None:
    guards = Guards(http_deny=("127.0.0.0/8", "::1/128"))
    async with destination(echo) as port, forwarding_client(guards=guards) as (_, client):
        for host in ("127.0.0.1", "localhost", "::ffff:127.0.0.1", "127.1"):
            with pytest.raises(RpcError, match=r"denies \(--http-deny\)") as caught:
                await client.open_connection(host, port)
            assert caught.value.code == -32600


async def test_http_deny_lets_other_networks_through() -> None:
    guards = Guards(http_deny=("10.0.0.0/8",))
    async with destination(echo) as port, forwarding_client(guards=guards) as (_, client):
        reader, writer = await client.open_connection("localhost", port)
        writer.write(b"through")
        assert await reader.readexactly(7) == b"through"


# ---- the blocking twin --------------------------------------------------------------------------


async def test_the_sync_client_gives_a_plain_socket() -> None:
    from exec_server.client import sync

    async with destination(echo) as port, running_server() as (_, url):

        def blocking() -> None:
            with sync.connect(url) as client:
                with client.create_connection(("127.0.0.1", port)) as sock:
                    payload = os.urandom(500_000)
                    sock.sendall(payload)
                    sock.shutdown(socket.SHUT_WR)
                    received = b""
                    while data := sock.recv(65536):
                        received += data
                    assert received == payload
                with pytest.raises(RpcError, match="Connection refused"):
                    client.create_connection(("127.0.0.1", _refusing_port()))

        await asyncio.to_thread(blocking)


def _refusing_port() -> int:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        return int(unused.getsockname()[1])  # nothing listens once it is closed


# ---- the command line -----------------------------------------------------------------------


def test_forward_specs_parse_as_ssh_does() -> None:
    assert parse_spec("8080:localhost:80") == Spec("127.0.0.1", 8080, "localhost", 80)
    assert parse_spec("0.0.0.0:8080:db:5432") == Spec("0.0.0.0", 8080, "db", 5432)
    assert parse_spec("*:8080:db:5432") == Spec(None, 8080, "db", 5432)
    assert parse_spec("[::1]:0:[fe80::1%eth0]:22") == Spec("::1", 0, "fe80::1%eth0", 22)
    for bad in ("8080:localhost", "x:localhost:80", "80:host:0", "80:host:70000", "[::1:80:h:1"):
        with pytest.raises(Exception, match=re.escape(bad)):
            parse_spec(bad)
