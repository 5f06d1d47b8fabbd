"""``Connection`` driven through a fake transport, as websockets and uvicorn test theirs: bytes
in, replies and notifications out, no socket. Processes are real."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from exec_server.config import Limits
from exec_server.connection import Connection, HandshakeState
from exec_server.process.spawn import SpawnRequest
from exec_server.sandbox.bwrap import Launch
from exec_server.server import Server

from .support import PATH_ENV, wait_until


class FakeTransport:
    """Records what the connection sends; its room is switched by the test."""

    description = "fake"
    malformed_prefix = "failed to parse fake message"
    resumable = True

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.writable = True
        self.aborted = False
        self.resumed_inbound = 0

    def send(self, message: bytes) -> None:
        self.sent.append(json.loads(message))

    def abort(self) -> None:
        self.aborted = True

    def resume_inbound(self) -> None:
        self.resumed_inbound += 1

    def replies(self) -> dict[Any, dict[str, Any]]:
        return {m["id"]: m for m in self.sent if "id" in m}

    def notifications(self, method: str) -> list[dict[str, Any]]:
        return [m["params"] for m in self.sent if m.get("method") == method]


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    server = Server(Limits(detach_grace_s=0, max_waiting_requests=2))
    yield server
    await server.shutdown()


def _request(request_id: Any, method: str, params: Any = None) -> bytes:
    return json.dumps({"id": request_id, "method": method, "params": params}).encode()


def _ready(server: Server) -> tuple[Connection, FakeTransport]:
    transport = FakeTransport()
    connection = Connection(server, transport)
    assert connection.receive(_request(1, "initialize", {"clientName": "fake"}))
    assert connection.receive(b'{"method":"initialized"}')
    assert connection.state is HandshakeState.READY
    return connection, transport


async def test_the_handshake_is_a_state_machine(server: Server) -> None:
    transport = FakeTransport()
    connection = Connection(server, transport)
    assert connection.receive(_request(1, "process/read", {"processId": "x"}))
    assert transport.replies()[1]["error"]["code"] == -32600
    assert connection.receive(_request(2, "initialize", {"clientName": "fake"}))
    assert connection.state is HandshakeState.INITIALIZING
    assert "sessionId" in transport.replies()[2]["result"]
    assert connection.receive(_request(3, "initialize", {"clientName": "fake"}))
    assert "only be sent once" in transport.replies()[3]["error"]["message"]
    assert connection.receive(b'{"method":"initialized"}')
    assert connection.state is HandshakeState.READY
    connection.close()
    assert connection.state is HandshakeState.CLOSED
    assert not connection.receive(_request(4, "environment/info"))


async def test_invalid_utf8_inside_params_is_an_error_reply_and_the_connection_stays(
    server: Server,
) -> None:
    connection, transport = _ready(server)
    raw = b'{"id":"u1","method":"fs/readFile","params":{"path":"/tmp/\xff"}}'
    assert connection.receive(raw)
    reply = transport.replies()["u1"]
    assert reply["error"]["code"] == -32602
    assert connection.receive(_request(2, "environment/status"))
    assert transport.replies()[2]["result"] == {"status": "ready"}


async def test_a_failing_handler_is_an_internal_error_reply(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    connection, transport = _ready(server)
    from exec_server.methods import METHODS

    def broken(connection: Connection, params: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(METHODS["environment/status"], "handler", broken)
    assert connection.receive(_request(7, "environment/status"))
    assert transport.replies()[7]["error"] == {"code": -32603, "message": "internal error: boom"}


async def test_notifications_report_when_the_transport_is_full_and_resume_on_room(
    server: Server,
) -> None:
    connection, transport = _ready(server)
    start = {
        "processId": "yes",
        "argv": [sys.executable, "-c", "import sys\nwhile True: sys.stdout.write('y' * 4096)"],
        "cwd": "/",
        "env": PATH_ENV,
        "tty": False,
    }
    transport.writable = False  # the outbox is past its bound from now on
    assert connection.receive(_request(2, "process/start", start))
    session = connection.require_session()
    process = session.processes.get("yes")
    # The first chunk found the transport full: reading the child stopped right there.
    assert await wait_until(lambda: process.paused)
    count = len(transport.notifications("process/output"))
    await asyncio.sleep(0.1)
    assert len(transport.notifications("process/output")) == count
    # Room again: the transport tells the connection, which tells the session's processes.
    transport.writable = True
    connection.on_writable()
    assert await wait_until(lambda: len(transport.notifications("process/output")) > count)
    connection.receive(_request(3, "process/terminate", {"processId": "yes"}))
    assert await wait_until(lambda: bool(transport.notifications("process/closed")))


async def test_waiting_requests_are_bounded_and_one_finishing_lets_the_next_in(
    server: Server,
) -> None:
    connection, transport = _ready(server)
    start = {"processId": "s", "argv": ["sleep", "5"], "cwd": "/", "env": PATH_ENV, "tty": False}
    connection.receive(_request(2, "process/start", start))
    for request_id in (3, 4):  # long polls: each waits as a task of the connection
        connection.receive(_request(request_id, "process/read", {"processId": "s", "waitMs": 50}))
    assert not connection.accepting  # max_waiting_requests=2: the transport holds the rest
    assert await wait_until(lambda: connection.accepting)
    assert transport.resumed_inbound >= 1
    assert {3, 4} <= set(transport.replies())


async def test_closing_cancels_waiting_requests_and_releases_resources(server: Server) -> None:
    connection, transport = _ready(server)
    released: list[str] = []

    class Marker:
        def release(self) -> None:
            released.append("marker")

    connection.resources.get(Marker, Marker)
    start = {"processId": "s", "argv": ["sleep", "5"], "cwd": "/", "env": PATH_ENV, "tty": False}
    connection.receive(_request(2, "process/start", start))
    connection.receive(_request(3, "process/read", {"processId": "s", "waitMs": 60000}))
    connection.close()
    assert released == ["marker"]
    await asyncio.sleep(0)
    assert 3 not in transport.replies()  # cancelled, never answered
    assert len(server.sessions) == 0  # not resumable within a grace of 0: ended, child killed


async def test_a_cancelled_off_loop_spawn_returns_only_once_its_thread_is_done(
    server: Server,
) -> None:
    """The spawn thread uses the launch's descriptors (the seccomp program, the cgroup's
    ``cgroup.procs``) until the child executes; the caller closes them once the start
    returns, cancelled or not. So a cancelled start returns only once that thread is done
    (here it waits on a full pipe standing for the cgroup file), and its child is killed."""
    connection, _ = _ready(server)
    processes = connection.require_session().processes
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        for chunk in (b"x" * 65536, b"x"):
            with contextlib.suppress(BlockingIOError):
                while True:
                    os.write(write_end, chunk)
        os.set_blocking(write_end, True)
        request = SpawnRequest(["true"], "/", PATH_ENV, tty=False, pipe_stdin=False)
        processes.reserve("p", request)
        spawn_as = msgspec.structs.replace(request, cgroup_fd=write_end)
        launch = Launch(["true"], sandboxed=True)
        spawning = asyncio.ensure_future(processes.spawn_reserved_off_loop("p", spawn_as, launch))
        await asyncio.sleep(0)
        spawning.cancel()
        for _ in range(10):
            await asyncio.sleep(0)
        assert not spawning.done()  # the thread is still in the spawn: so is the start
    finally:
        with contextlib.suppress(BlockingIOError):  # room again: the child joins, then runs
            while os.read(read_end, 65536):
                pass
    with pytest.raises(asyncio.CancelledError):
        await spawning
    processes.abandon("p")
    os.close(read_end)
    os.close(write_end)
