"""The client's Pool on loopback: placement, skipping executors that are down or draining,
processes of a dead executor reported lost (tests/test_pool_netns.py: across namespaces)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
from collections.abc import AsyncIterator

import pytest

from exec_server.client import ExecutorLost, Pool
from exec_server.client import sync as sync_client
from exec_server.server import Server

from .support import running_server, start_cli, stop_cli


@contextlib.asynccontextmanager
async def servers(count: int) -> AsyncIterator[list[tuple[Server, str]]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(running_server()) for _ in range(count)]


def free_port_url() -> str:
    """A loopback URL where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"ws://127.0.0.1:{probe.getsockname()[1]}"


async def test_each_new_session_goes_where_the_pool_has_the_fewest() -> None:
    async with servers(3) as running, Pool([url for _, url in running]) as pool:
        async with pool.session() as a, pool.session() as b, pool.session() as c:
            assert [len(server.sessions) for server, _ in running] == [1, 1, 1]
            results = await asyncio.gather(*(x.run(["echo", "ok"]) for x in (a, b, c)))
            assert [r.stdout for r in results] == [b"ok\n"] * 3
        assert sorted(e.sessions for e in pool.executors) == [0, 0, 0]


async def test_runs_spread_over_executors_by_running_processes() -> None:
    async with servers(3) as running, Pool([url for _, url in running]) as pool:
        held = [await pool.start(["sleep", "100"]) for _ in range(6)]
        placed = sorted(pool.executor_of(p) or "" for p in held)
        assert placed == sorted([url for _, url in running] * 2)


async def test_an_executor_down_before_the_start_is_skipped() -> None:
    dead = free_port_url()
    async with running_server() as (_, live), Pool([dead, live]) as pool:
        for _ in range(3):
            assert (await pool.run(["echo", "hi"])).stdout == b"hi\n"
        problems = {e.url: e.problem for e in pool.executors}
        assert "unreachable" in (problems[dead] or "") and problems[live] is None


async def test_a_draining_executor_is_skipped_and_a_refused_start_goes_elsewhere() -> None:
    async with servers(2) as running:
        (first, first_url), (second, second_url) = running
        # Readiness is judged once a minute here: the drain is seen by the refused start.
        async with Pool([first_url, second_url], probe_interval=60) as pool:
            await pool.run(["true"])  # equal loads: the first executor, in target order
            assert (len(first.sessions), len(second.sessions)) == (1, 0)
            first.draining = True  # as after SIGTERM: /readyz 503, starts refused
            process = await pool.start(["true"])
            assert pool.executor_of(process) == second_url  # refused by the first, not run
            assert await process.wait() == 0
            assert "shutting down" in (pool.executors[0].problem or "")
            assert first.metrics.start_failures == {"draining": 1}


async def test_a_process_on_an_executor_killed_mid_run_ends_with_executor_lost() -> None:
    child = await start_cli("--listen", "ws://127.0.0.1:0", stdin=subprocess.DEVNULL)
    try:
        assert child.stdout is not None
        url = (await child.stdout.readline()).decode().strip()
        async with Pool([url], reconnect_timeout=0.5) as pool:
            process = await pool.start(["sleep", "100"])
            child.send_signal(signal.SIGKILL)  # its keeper kills the sleep
            with pytest.raises(ExecutorLost) as lost:
                await asyncio.wait_for(process.wait(), 30)
            assert lost.value.executor == url and url in str(lost.value)
    finally:
        await stop_cli(child, ())


async def test_a_dns_name_stands_for_each_address_it_resolves_to() -> None:
    async with running_server() as (_, url):
        port = url.rsplit(":", 1)[1]
        async with Pool(f"ws://localhost:{port}") as pool:
            assert (await pool.run(["echo", "by name"])).stdout == b"by name\n"
            assert f"ws://127.0.0.1:{port}" in [e.url for e in pool.executors]


async def test_the_sync_pool_runs_and_places_like_the_async_one() -> None:
    async with servers(2) as running:
        urls = [url for _, url in running]

        def use() -> list[bytes]:
            with sync_client.Pool(urls) as pool:
                with pool.session() as client:
                    first = client.run(["echo", "one"]).stdout
                process = pool.start(["sh", "-c", "echo two"])
                assert pool.executor_of(process) in urls
                return [first, process.stdout.read(), pool.run(["echo", "three"]).stdout]

        assert await asyncio.to_thread(use) == [b"one\n", b"two\n", b"three\n"]
