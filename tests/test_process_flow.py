"""Flow on one connection: long polls never hold up other requests, and a client that stops
reading is absorbed by a bounded queue and then by pausing the child (Part A §A2)."""

from __future__ import annotations

import asyncio
import base64
import fcntl
import json
import random
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from exec_server.config import Limits
from exec_server.connection import Connection
from exec_server.process.manager import ManagedProcess
from exec_server.server import Server

from .support import PATH_ENV, Client, running_server, wait_until
from .test_process_helpers import fire, no_stray_children, reply_index

__all__ = ["no_stray_children"]

QUEUE_BYTES = 64 * 1024
CHUNK = 4096
F_GETPIPE_SZ = 1032


@pytest.fixture
def limits() -> Limits:
    return Limits(
        outbound_queue_bytes=QUEUE_BYTES,
        read_chunk_bytes=CHUNK,
    )


# ---- long polls ------------------------------------------------------------------------------


async def test_long_poll_does_not_delay_later_requests(client: Client) -> None:
    await client.start("quiet", ["sleep", "100"])
    await client.start("other", ["cat"], pipeStdin=True)
    replies = await fire(
        client,
        [
            ("process/read", {"processId": "quiet", "afterSeq": 0, "waitMs": 2000}),
            ("process/write", {"processId": "other", "chunk": "aGkK"}),
            ("process/read", {"processId": "other", "afterSeq": 0}),
            ("environment/status", None),
        ],
    )
    long_poll, *others = replies
    assert long_poll["result"]["chunks"] == []  # it did wait out its deadline
    for reply in others:
        assert "result" in reply, reply
        # Every later request was answered before the long poll was.
        assert reply_index(client, reply) < reply_index(client, long_poll)
    await client.call("process/terminate", {"processId": "quiet"})
    await client.call("process/terminate", {"processId": "other"})
    await client.wait_closed("quiet")
    await client.wait_closed("other")


async def test_many_concurrent_long_polls_each_get_their_own_answer(client: Client) -> None:
    await client.start("feed", ["cat"], pipeStdin=True)
    polls = [
        ("process/read", {"processId": "feed", "afterSeq": 0, "waitMs": 600_000}) for _ in range(20)
    ]
    write = ("process/write", {"processId": "feed", "chunk": "eAo="})
    replies = await fire(client, [*polls, write])
    for reply in replies[:-1]:
        assert [c["seq"] for c in reply["result"]["chunks"]] == [1]
    await client.call("process/terminate", {"processId": "feed"})
    await client.wait_closed("feed")


# ---- backpressure ----------------------------------------------------------------------------

TOTAL = 8 * 1024 * 1024  # several times every buffer between the child and the client


@pytest.fixture
async def server_and_url(limits: Limits) -> AsyncIterator[tuple[Server, str]]:
    async with running_server(limits) as pair:
        yield pair


@pytest.fixture
async def paused_ws(server_and_url: tuple[Server, str]) -> AsyncIterator[ClientConnection]:
    """A raw WebSocket with a tiny receive buffer that reads only when the test calls recv,
    past the handshake."""
    _, url = server_and_url
    host, port = url.removeprefix("ws://").rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # also stops autotuning
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    async with connect(url, sock=sock, compression=None, max_size=None, max_queue=1) as ws:
        await _call(ws, 1, "initialize", {"clientName": "paused"})
        await ws.send(json.dumps({"method": "initialized"}))
        yield ws


async def _call(ws: ClientConnection, request_id: int, method: str, params: Any) -> Any:
    await ws.send(json.dumps({"id": request_id, "method": method, "params": params}))
    reply = json.loads(await ws.recv())
    assert reply.get("id") == request_id, reply
    return reply["result"]


def _only_session_connection(server: Server) -> Connection:
    (session,) = server.sessions
    assert session.connection is not None
    return session.connection


def _process(server: Server, process_id: str) -> ManagedProcess:
    (session,) = server.sessions
    return session.processes.get(process_id)


def _record_queue_peak(connection: Connection) -> dict[str, int]:
    """Watch a connection's outbound buffer from the inside: what the transport holds (not yet
    flushed, plus what the socket has not taken), after every message it is given."""
    peak = {"bytes": 0, "largest": 0}
    transport: Any = connection.transport
    send = transport.send

    def recording_send(message: bytes) -> None:
        send(message)
        socket_buffer = transport._transport.get_write_buffer_size()
        peak["bytes"] = max(peak["bytes"], transport.outbox.queued_bytes + socket_buffer)
        peak["largest"] = max(peak["largest"], len(message))

    transport.send = recording_send
    return peak


def _pipe_is_full(process: ManagedProcess) -> bool:
    child = process.child
    if child is None or child.stdout < 0:
        return False
    buffered = bytearray(4)
    fcntl.ioctl(child.stdout, 0x541B, buffered)  # FIONREAD
    return int.from_bytes(buffered, sys.byteorder) >= fcntl.fcntl(child.stdout, F_GETPIPE_SZ)


async def test_a_client_that_stops_reading_blocks_the_child_and_loses_nothing(
    server_and_url: tuple[Server, str], paused_ws: ClientConnection, tmp_path: Path
) -> None:
    server, _ = server_and_url
    ws = paused_ws

    peak = _record_queue_peak(_only_session_connection(server))

    done = tmp_path / "done"
    await _start_flood(ws, f"random.Random(11).randbytes({TOTAL})", done, tty=False)
    # The test reads nothing now. The server must stop reading the child's pipe, the pipe
    # fills, and the child blocks in write() before it can finish.
    process = await _wait_for_process(server, "flood")
    assert await wait_until(lambda: process.paused and _pipe_is_full(process), timeout=30)
    assert process.paused and _pipe_is_full(process)
    assert not done.exists()
    assert process.log.exit_code is None

    # Only now read again: every notification, in seq order, with no gap.
    expected = random.Random(11).randbytes(TOTAL)
    received, exit_code = await _read_to_the_close(ws, "stdout")
    assert exit_code == 0
    assert len(received) == TOTAL
    assert received == expected
    assert done.exists()

    # The buffer stayed within its bound, plus the message that crossed it and at most one
    # more already read from the child when the pause arrived.
    assert peak["bytes"] <= QUEUE_BYTES + 2 * peak["largest"]
    assert peak["largest"] <= 4 * CHUNK  # base64 of one read, plus the envelope


async def test_a_pty_is_held_back_too_and_loses_nothing(
    server_and_url: tuple[Server, str], paused_ws: ClientConnection, tmp_path: Path
) -> None:
    server, _ = server_and_url
    ws = paused_ws

    done = tmp_path / "done"
    # Hex, so no newline for the PTY to translate: the bytes arrive as written.
    data = f"random.Random(12).randbytes({TOTAL // 2}).hex().encode()"
    await _start_flood(ws, data, done, tty=True)
    process = await _wait_for_process(server, "flood")
    assert await wait_until(lambda: process.paused, timeout=30)
    await asyncio.sleep(0.5)  # unheld, the child would write all of it in far less
    assert not done.exists()
    assert process.log.exit_code is None

    expected = random.Random(12).randbytes(TOTAL // 2).hex().encode()
    received, exit_code = await _read_to_the_close(ws, "pty")
    assert exit_code == 0
    assert len(received) == len(expected)
    assert received == expected
    assert done.exists()


async def _start_flood(ws: ClientConnection, data: str, done: Path, *, tty: bool) -> None:
    """Start ``flood``: a child that writes the bytes of the expression ``data`` in 64 KiB
    writes, then creates ``done``."""
    script = (
        "import random, sys\n"
        f"data = memoryview({data})\n"
        "for i in range(0, len(data), 65536):\n"
        "    sys.stdout.buffer.write(data[i:i + 65536]); sys.stdout.flush()\n"
        f"open({str(done)!r}, 'w').close()\n"
    )
    start = {
        "processId": "flood",
        "argv": [sys.executable, "-c", script],
        "cwd": "/tmp",
        "env": PATH_ENV,
        "tty": tty,
    }
    await ws.send(json.dumps({"id": 2, "method": "process/start", "params": start}))


async def _read_to_the_close(ws: ClientConnection, stream: str) -> tuple[bytearray, int | None]:
    """Every notification of ``flood`` in seq order with no gap, up to process/closed, which
    comes right after process/exited: (the output, the exit code)."""
    received = bytearray()
    next_seq = 1
    exit_code = None
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if "id" in message:
            assert message == {"id": 2, "result": {"processId": "flood", "sandboxType": "none"}}
            continue
        params = message["params"]
        assert params["seq"] == next_seq, f"gap or disorder at {next_seq}: {params['seq']}"
        next_seq += 1
        if message["method"] == "process/output":
            assert exit_code is None, "output after the exit"
            assert params["stream"] == stream
            received += base64.b64decode(params["chunk"])
        elif message["method"] == "process/exited":
            exit_code = params["exitCode"]
        else:
            assert message["method"] == "process/closed"
            assert exit_code is not None, "closed before exited"
            return received, exit_code


async def _wait_for_process(server: Server, process_id: str) -> ManagedProcess:
    def started() -> bool:
        sessions = list(server.sessions)
        return bool(sessions) and process_id in {p.process_id for p in sessions[0].processes}

    assert await wait_until(started)
    return _process(server, process_id)


async def test_other_processes_keep_flowing_once_the_client_reads(
    server_and_url: tuple[Server, str],
) -> None:
    # Two floods into one connection, read by the ordinary client: both complete exactly.
    _, url = server_and_url
    async with Client.connect(url) as client:
        await client.initialize()
        script = (
            "import random, sys; "
            "sys.stdout.buffer.write(random.Random(int(sys.argv[1])).randbytes(3_000_000))"
        )
        await client.start("a", [sys.executable, "-c", script, "1"])
        await client.start("b", [sys.executable, "-c", script, "2"])
        for name, seed in (("a", 1), ("b", 2)):
            events = await client.wait_closed(name, timeout=60)
            assert events.data() == random.Random(seed).randbytes(3_000_000)
            assert [s for _, s in events.order] == list(range(1, len(events.order) + 1))


async def test_pipelined_requests_wait_while_replies_back_up(
    server_and_url: tuple[Server, str], paused_ws: ClientConnection
) -> None:
    # Replies count against the same bound: a client that sends many requests and reads
    # none of the replies makes the server stop reading its requests, not grow its queue.
    server, _ = server_and_url
    ws = paused_ws
    big = {"processId": "big", "argv": ["head", "-c", "49152", "/dev/zero"], "cwd": "/tmp"}
    await _call(ws, 2, "process/start", {**big, "env": PATH_ENV, "tty": False})
    while json.loads(await ws.recv())["method"] != "process/closed":
        pass
    cat = {"processId": "cat", "argv": ["cat"], "cwd": "/tmp", "pipeStdin": True}
    await _call(ws, 3, "process/start", {**cat, "env": PATH_ENV, "tty": False})
    peak = _record_queue_peak(_only_session_connection(server))

    reads = 200  # each reply carries all 48 KiB: about 64 KiB of JSON, the whole queue bound
    for request_id in range(100, 100 + reads):
        read = {"id": request_id, "method": "process/read", "params": {"processId": "big"}}
        await ws.send(json.dumps(read))
    write = {"processId": "cat", "chunk": base64.b64encode(b"marker\n").decode()}
    await ws.send(json.dumps({"id": 99, "method": "process/write", "params": write}))
    cat_log = _process(server, "cat").log

    # Without backpressure on requests every read is answered into the queue at once, and
    # the write behind them reaches cat. With it, neither happens while nobody reads.
    backed_up = await wait_until(
        lambda: peak["bytes"] > 2 * QUEUE_BYTES or cat_log.last_seq > 0, timeout=2
    )
    assert not backed_up
    assert peak["bytes"] <= QUEUE_BYTES + 2 * peak["largest"]
    assert cat_log.last_seq == 0

    # Reading again: every reply arrives, whole, and the write went through.
    answered: set[int] = set()
    marker_seen = False
    while len(answered) < reads + 1 or not marker_seen:
        message = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if "id" in message:
            answered.add(message["id"])
            if message["id"] != 99:
                chunks = message["result"]["chunks"]
                assert b"".join(base64.b64decode(c["chunk"]) for c in chunks) == bytes(49152)
        elif message["method"] == "process/output":
            assert base64.b64decode(message["params"]["chunk"]) == b"marker\n"
            marker_seen = True
    assert answered == {99, *range(100, 100 + reads)}


async def test_a_hundred_processes_at_once(client: Client) -> None:
    calls = [
        (
            "process/start",
            {
                "processId": f"p{i}",
                "argv": ["sh", "-c", f"echo {i}; echo e{i} >&2; exit {i % 7}"],
                "cwd": "/tmp",
                "env": PATH_ENV,
                "tty": i % 2 == 1,
            },
        )
        for i in range(100)
    ]
    replies = await fire(client, calls)
    assert all("result" in reply for reply in replies)
    for i in range(100):
        events = await client.wait_closed(f"p{i}")
        assert events.exited is not None and events.exited["exitCode"] == i % 7
        if i % 2:
            assert sorted(events.data().split(b"\r\n")) == sorted([b"", b"%d" % i, b"e%d" % i])
        else:
            assert (events.data("stdout"), events.data("stderr")) == (b"%d\n" % i, b"e%d\n" % i)
        assert [s for _, s in events.order] == list(range(1, len(events.order) + 1))
