"""Sessions end to end: detach on disconnect, resume, expiry (Part B §3.3, Part A §A2)."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import uuid
from pathlib import Path

import pytest

from exec_server.config import Limits
from exec_server.server import Server

from .support import Client, RpcFailure, pid_alive, running_server, wait_until

SHORT_GRACE = 0.2
"""Detach grace for expiry tests: short, so nothing waits long."""


@pytest.fixture
def limits() -> Limits:
    # Long enough that a detached session is never reaped while a test resumes it.
    return Limits(detach_grace_s=60.0)


async def start_sleeper(client: Client, process_id: str, script: str = "exec sleep 100") -> int:
    """Start ``sh -c 'echo $$; <script>'`` and return the shell's pid, printed by itself."""
    await client.start(process_id, ["sh", "-c", f"echo $$; {script}"])
    output = await client.wait_for(process_id, lambda e: b"\n" in e.data())
    return int(output.data().split(b"\n")[0])


async def read_all(client: Client, process_id: str) -> tuple[dict[str, bytes], dict[str, object]]:
    """Read every retained chunk until the process is closed; returns (bytes by stream, last
    result)."""
    data: dict[str, bytes] = {}
    after = 0
    while True:
        result = await client.read(process_id, afterSeq=after, waitMs=5000)
        for chunk in result["chunks"]:
            stream = chunk["stream"]
            data[stream] = data.get(stream, b"") + base64.b64decode(chunk["chunk"])
        after = result["nextSeq"] - 1
        if result["closed"] and not result["chunks"]:
            return data, result


async def test_session_ids_are_distinct_uuid4(server_url: str) -> None:
    ids = set()
    for _ in range(5):
        async with Client.connect(server_url) as client:
            session_id = (await client.initialize())["sessionId"]
            assert uuid.UUID(session_id).version == 4
            ids.add(session_id)
    assert len(ids) == 5


async def test_process_ids_are_scoped_to_the_session(server_url: str) -> None:
    async with Client.connect(server_url) as a, Client.connect(server_url) as b:
        await a.initialize()
        await b.initialize()
        first = await a.run("p1", ["sh", "-c", "echo from a"])
        second = await b.run("p1", ["sh", "-c", "echo from b"])
        assert first.data() == b"from a\n"
        assert second.data() == b"from b\n"
        assert b"from a" not in b"".join(
            base64.b64decode(c["chunk"]) for c in (await b.read("p1"))["chunks"]
        )
        # An id used in one session is unknown in another.
        await a.start("only-a", ["true"])
        reply = await b.request("process/read", {"processId": "only-a"})
        assert reply["error"] == {"code": -32600, "message": "unknown process id only-a"}
        assert (await b.call("process/terminate", {"processId": "only-a"})) == {"running": False}


async def test_disconnect_detaches_and_resume_finds_everything(
    server_url: str, tmp_path: Path
) -> None:
    flag = tmp_path / "go"
    script = (
        f"echo before; while [ ! -e {flag} ]; do sleep 0.02; done; echo after; echo err >&2; exit 5"
    )
    async with Client.connect(server_url) as first:
        session_id = (await first.initialize())["sessionId"]
        await first.start("p", ["sh", "-c", script])
        await first.wait_output("p", b"before\n")
        sleeper_pid = await start_sleeper(first, "sleeper")
    # Detached: the children keep running and their output is retained.
    flag.touch()
    assert pid_alive(sleeper_pid)
    async with Client.connect(server_url) as second:
        result = await second.initialize(resumeSessionId=session_id)
        assert result["sessionId"] == session_id
        data, last = await read_all(second, "p")
        assert data == {"stdout": b"before\nafter\n", "stderr": b"err\n"}
        assert last["exited"] is True and last["exitCode"] == 5
        # The sleeper is still there, and new notifications reach the new connection.
        assert (await second.call("process/terminate", {"processId": "sleeper"})) == {
            "running": True
        }
        events = await second.wait_closed("sleeper")
        assert events.exited is not None
        assert await wait_until(lambda: not pid_alive(sleeper_pid))


async def test_resume_routes_new_output_to_the_new_connection(server_url: str) -> None:
    async with Client.connect(server_url) as first:
        session_id = (await first.initialize())["sessionId"]
        await first.start("cat", ["cat"], pipeStdin=True)
        assert await first.write("cat", b"one\n") == "accepted"
        await first.wait_output("cat", b"one\n")
    async with Client.connect(server_url) as second:
        await second.initialize(resumeSessionId=session_id)
        assert await second.write("cat", b"two\n") == "accepted"
        assert b"two\n" in await second.wait_output("cat", b"two\n")
        await second.call("process/terminate", {"processId": "cat"})
        events = await second.wait_closed("cat")
        assert events.exited is not None and events.closed is not None
        # Seqs continue where the first connection left off.
        assert min(seq for _, seq in events.order) > 1


async def test_resuming_an_attached_session_is_refused(server_url: str) -> None:
    async with Client.connect(server_url) as owner, Client.connect(server_url) as thief:
        session_id = (await owner.initialize())["sessionId"]
        with pytest.raises(RpcFailure) as failure:
            await thief.call("initialize", {"clientName": "x", "resumeSessionId": session_id})
        assert (failure.value.code, failure.value.message) == (
            -32600,
            f"session {session_id} is already attached to another connection",
        )
        # The owner is unaffected; the thief may still start a session of its own.
        assert (await owner.run("p", ["sh", "-c", "echo mine"])).data() == b"mine\n"
        assert (await thief.initialize())["sessionId"] != session_id


async def test_only_one_of_two_resumers_wins(server_url: str) -> None:
    async with Client.connect(server_url) as first:
        session_id = (await first.initialize())["sessionId"]
        await first.start("p", ["sh", "-c", "echo kept"])
        await first.wait_closed("p")
    async with Client.connect(server_url) as b, Client.connect(server_url) as c:
        assert (await b.initialize(resumeSessionId=session_id))["sessionId"] == session_id
        reply = await c.request("initialize", {"clientName": "c", "resumeSessionId": session_id})
        assert reply["error"]["message"].endswith("is already attached to another connection")
        await b.ws.close()
        await b.closed.wait()
        # Once b is gone the session is detached again and c's retry succeeds.
        result = None
        for _ in range(200):
            reply = await c.request(
                "initialize", {"clientName": "c", "resumeSessionId": session_id}
            )
            if "result" in reply:
                result = reply["result"]
                break
            await asyncio.sleep(0.02)
        assert result is not None and result["sessionId"] == session_id
        await c.notify("initialized")
        assert base64.b64decode((await c.read("p"))["chunks"][0]["chunk"]) == b"kept\n"


async def test_resume_after_a_protocol_violation_close(server_url: str) -> None:
    async with Client.connect(server_url) as first:
        session_id = (await first.initialize())["sessionId"]
        await first.run("p", ["sh", "-c", "echo x"])
        await first.notify("bogus/notification")
        await first.closed.wait()
    async with Client.connect(server_url) as second:
        assert (await second.initialize(resumeSessionId=session_id))["sessionId"] == session_id
        assert (await second.read("p"))["closed"] is True


async def test_unknown_session_id(server_url: str) -> None:
    async with Client.connect(server_url) as client:
        for bogus in (str(uuid.uuid4()), "", "not-a-uuid"):
            reply = await client.request(
                "initialize", {"clientName": "x", "resumeSessionId": bogus}
            )
            assert reply["error"] == {"code": -32600, "message": f"unknown session id {bogus}"}


async def _expire(server: Server, url: str, script: str) -> tuple[str, list[int]]:
    """Start ``script`` (which prints pids, one per line) in a session, then disconnect."""
    async with Client.connect(url) as client:
        session_id = (await client.initialize())["sessionId"]
        await client.start("p", ["sh", "-c", script])
        output = await client.wait_for("p", lambda e: e.data().count(b"\n") >= 2)
        pids = [int(line) for line in output.data().split()]
        assert all(pid_alive(pid) for pid in pids)
    return session_id, pids


@pytest.mark.parametrize("grace", [SHORT_GRACE, 0.0])
async def test_expired_session_is_unknown_and_its_processes_are_killed(grace: float) -> None:
    async with running_server(Limits(detach_grace_s=grace)) as (server, url):
        # A background child in the same group must die too.
        session_id, pids = await _expire(server, url, "sleep 100 & echo $!; echo $$; wait")
        assert await wait_until(lambda: not any(pid_alive(pid) for pid in pids))
        # The direct child (the shell) is reaped, not left a zombie.
        assert await wait_until(lambda: not os.path.exists(f"/proc/{pids[1]}"))
        assert await wait_until(lambda: len(server.sessions) == 0)
        async with Client.connect(url) as client:
            reply = await client.request(
                "initialize", {"clientName": "x", "resumeSessionId": session_id}
            )
            assert reply["error"] == {
                "code": -32600,
                "message": f"unknown session id {session_id}",
            }


async def test_resume_cancels_the_expiry() -> None:
    # The grace is short, but the session is resumed before it runs out and then stays
    # attached: its process must survive well past the grace.
    async with running_server(Limits(detach_grace_s=0.3)) as (_, url):
        async with Client.connect(url) as first:
            session_id = (await first.initialize())["sessionId"]
            pid = await start_sleeper(first, "s")
        async with Client.connect(url) as second:
            await second.initialize(resumeSessionId=session_id)
            # Outlive the original grace several times over while attached.
            await wait_until(lambda: not pid_alive(pid), timeout=1.0)
            assert pid_alive(pid)
            assert (await second.call("process/terminate", {"processId": "s"})) == {"running": True}
        assert await wait_until(lambda: not pid_alive(pid))


async def test_server_shutdown_kills_processes_of_detached_sessions() -> None:
    async with running_server(Limits(detach_grace_s=60.0)) as (server, url):
        async with Client.connect(url) as client:
            await client.initialize()
            await client.start("s", ["sh", "-c", "echo $$; sleep 100 & echo $!; wait"])
            events = await client.wait_for("s", lambda e: e.data().count(b"\n") >= 2)
            pid, background = (int(line) for line in events.data().split())
        assert len(server.sessions) == 1
    assert await wait_until(lambda: not pid_alive(pid) and not pid_alive(background))


async def test_disconnect_during_a_long_poll_then_resume(
    server_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with Client.connect(server_url) as first:
        session_id = (await first.initialize())["sessionId"]
        await first.start("cat", ["cat"], pipeStdin=True)
        poll = asyncio.ensure_future(first.read("cat", afterSeq=0, waitMs=30_000))
        # A round trip after the poll was sent: the poll is in flight on the server.
        assert await first.call("environment/status") == {"status": "ready"}
        assert not poll.done()
    with pytest.raises(ConnectionError):
        await poll
    async with Client.connect(server_url) as second:
        await second.initialize(resumeSessionId=session_id)
        assert await second.write("cat", b"after\n") == "accepted"
        result = await second.read("cat", afterSeq=0, waitMs=10_000)
        assert base64.b64decode(result["chunks"][0]["chunk"]) == b"after\n"
        await second.call("process/terminate", {"processId": "cat"})
        await second.wait_closed("cat")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_sessions_past_the_limit_are_refused_with_the_reason() -> None:
    async with (
        running_server(Limits(max_sessions=2)) as (_, url),
        Client.connect(url) as a,
        Client.connect(url) as b,
        Client.connect(url) as c,
    ):
        await a.initialize()
        await b.initialize()
        with pytest.raises(RpcFailure) as info:
            await c.call("initialize", {"clientName": "third"})
        assert info.value.code == -32600 and "--max-sessions" in info.value.message


async def test_processes_past_the_per_session_limit_are_refused() -> None:
    limits = Limits(max_processes_per_session=2)
    async with running_server(limits) as (_, url), Client.connect(url) as client:
        await client.initialize()
        await client.start("a", ["sleep", "30"])
        await client.run("b", ["true"])  # closed: no longer counted
        await client.start("c", ["sleep", "30"])
        with pytest.raises(RpcFailure) as info:
            await client.start("d", ["sleep", "30"])
        assert info.value.code == -32600
        assert "--max-processes-per-session" in info.value.message
        await client.call("process/terminate", {"processId": "a"})
        await client.wait_closed("a")
        await client.start("d", ["sleep", "30"])  # room again
        for process_id in ("c", "d"):
            await client.call("process/terminate", {"processId": process_id})


def test_session_ids_are_random_uuids() -> None:
    from exec_server.sessions import _new_session_id

    ids = {_new_session_id() for _ in range(200)}
    assert len(ids) == 200
    for session_id in ids:
        parsed = uuid.UUID(session_id)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert str(parsed) == session_id
