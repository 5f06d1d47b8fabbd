"""The client across dropped connections: a TCP proxy in front of a real server is cut
mid-stream, the client resumes its session and catches up with process/read, and the
consumer sees every byte once, in order; what the server already dropped is an explicit
OutputGap, never a silent hole."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

from exec_server.client import (
    Closed,
    ConnectionLost,
    Exited,
    Output,
    OutputGap,
    ProcessLost,
    connect,
)
from exec_server.config import Limits

from .client_support import SERVER_KINDS, CuttableProxy, any_server
from .support import running_server, wait_until

if TYPE_CHECKING:
    from exec_server.client import Client
    from exec_server.server import Server


@contextlib.asynccontextmanager
async def through_proxy(
    limits: Limits | None = None, **options: Any
) -> AsyncIterator[tuple[Server, CuttableProxy, Client]]:
    """Our server in-process, a cuttable proxy before it, and a client connected through it."""
    async with (
        running_server(limits) as (server, url),
        CuttableProxy(url) as proxy,
        connect(proxy.url, **options) as client,
    ):
        yield server, proxy, client


# Three rounds of numbered lines; the child waits for a line on stdin between rounds, so
# output flows before, between and after the cuts, and stdin writes cross them too.
ROUNDS = "seq 1 20000; read a; seq 20001 40000; read b; seq 40001 60000"
EXPECTED = "".join(f"{i}\n" for i in range(1, 60001)).encode()


@pytest.mark.parametrize("kind", SERVER_KINDS)
async def test_every_byte_arrives_once_across_cuts(kind: str) -> None:
    async with any_server(kind) as url, CuttableProxy(url) as proxy:
        # In wire bytes from the server; the output alone is ~465 KB of base64.
        proxy.cut_after = [30_000, 150_000, 300_000]
        async with connect(proxy.url, reconnect_timeout=30) as client:
            process = await client.start(["sh", "-c", ROUNDS], stdin=True)
            seen = bytearray()
            seqs: list[int] = []
            kinds: list[type] = []
            prompted = 0
            async for event in process.events():
                seqs.append(event.seq)
                kinds.append(type(event))
                if isinstance(event, Output):
                    assert event.stream == "stdout"
                    seen += event.data
                for marker in (b"\n20000\n", b"\n40000\n")[prompted:]:
                    if marker in seen:
                        await process.write(b"go\n")
                        prompted += 1
            assert proxy.cuts == 3  # (a resume can take more than one try: the server
            assert proxy.connections >= 4  # may not have seen the old connection end yet)
            assert bytes(seen) == EXPECTED
            assert seqs == list(range(1, len(seqs) + 1)), "each seq once, in order"
            assert kinds.count(Exited) == 1 and kinds[-1] is Closed
            assert await process.wait() == 0


async def test_output_dropped_while_disconnected_is_an_explicit_gap(tmp_path) -> None:  # type: ignore[no-untyped-def]
    trigger, done = tmp_path / "go", tmp_path / "done"
    script = (
        f"echo first; while [ ! -e {trigger} ]; do sleep 0.01; done; "
        f"head -c 300000 /dev/zero; echo; echo last; touch {done}"
    )
    async with through_proxy(Limits(retained_output_bytes=64 * 1024)) as (_, proxy, client):
        process = await client.start(["sh", "-c", script])
        events = process.events()
        assert await anext(events) == Output(1, "stdout", b"first\n")
        proxy.refusing = True
        proxy.cut()
        trigger.touch()  # the child now prints 300 KB the server can keep only 64 KiB of
        assert await wait_until(done.exists, timeout=30)
        proxy.refusing = False
        with pytest.raises(OutputGap) as gap:
            async for _ in events:
                pass
        assert gap.value.first_seq == 2 and gap.value.last_seq >= 2
        assert "was lost" in str(gap.value)
        rest = [event async for event in process.events()]  # it goes on after the gap
        data = b"".join(e.data for e in rest if isinstance(e, Output))
        assert data.endswith(b"\nlast\n") and len(data) < 300_000
        assert set(data[: -len(b"\nlast\n")]) <= {0}  # what is left of the zeros, if any
        assert rest[0].seq == gap.value.last_seq + 1
        assert isinstance(rest[-1], Closed) and await process.wait() == 0


async def test_a_session_that_expired_is_a_clear_connection_lost() -> None:
    async with through_proxy(Limits(detach_grace_s=0)) as (_, proxy, client):
        process = await client.start(["sleep", "30"])
        proxy.cut()
        with pytest.raises(ConnectionLost, match="could not resume session"):
            await process.wait()
        with pytest.raises(ConnectionLost, match="could not resume session"):
            await client.run(["true"])


async def test_a_process_forgotten_while_disconnected_is_process_lost(tmp_path) -> None:  # type: ignore[no-untyped-def]
    trigger = tmp_path / "go"
    script = f"echo hi; while [ ! -e {trigger} ]; do sleep 0.01; done"
    async with through_proxy(Limits(closed_retention_s=0)) as (server, proxy, client):
        process = await client.start(["sh", "-c", script])
        assert await process.read() == b"hi\n"
        proxy.refusing = True
        proxy.cut()
        trigger.touch()
        (session,) = [s for s in server.sessions if s.id == client.session_id]
        assert await wait_until(lambda: len(session.processes) == 0, timeout=30)
        proxy.refusing = False
        with pytest.raises(ProcessLost, match="forgot process"):
            await process.wait()


async def test_without_reconnect_a_cut_is_connection_lost() -> None:
    async with through_proxy(reconnect=False) as (_, proxy, client):
        process = await client.start(["sleep", "30"])
        proxy.cut()
        with pytest.raises(ConnectionLost, match="was lost"):
            await process.wait()


async def test_a_late_answer_to_the_servers_request_stays_with_its_connection() -> None:
    """The server asked on a connection that was cut before the client's hook answered: the
    answer belongs to that connection, so it is not sent on the resumed one (where the id
    means nothing, or another question, and the server drops the connection for it)."""
    from exec_server.server_requests import ServerRequestError

    async with through_proxy() as (server, proxy, client):
        reached, release, answered = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def hook(method: str, params: Any) -> Any:
            reached.set()
            await release.wait()
            answered.set()
            return {"late": True}

        client.on_server_request = hook
        [session] = list(server.sessions)
        first = session.connection
        assert first is not None
        asked = asyncio.ensure_future(first.server_request("test/ask", {}))
        await reached.wait()
        proxy.cut()
        with pytest.raises(ServerRequestError):
            await asked  # the server gives up on it with its connection
        await client.request("process/list")  # sent again once resumed
        resumed = session.connection
        assert resumed is not None and resumed is not first
        release.set()
        await answered.wait()
        await client.request("process/list")  # after the late answer, on the same socket
        assert session.connection is resumed and resumed.is_open
        assert proxy.connections == 2
