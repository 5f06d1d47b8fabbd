"""Memory given back after processes are let go (memory.py), with the server's own parts."""

from __future__ import annotations

import asyncio
import gc
import weakref

from exec_server.config import Limits, Runtime
from exec_server.memory import MemoryReturn

from .support import Client, running_server, wait_until


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


async def test_a_release_collects_cycles_once_a_while_later() -> None:
    memory = MemoryReturn(delay_s=0.05)
    gc.disable()
    try:
        node = _Node()
        node.other = node  # a cycle: only a collection frees it
        gone = weakref.ref(node)
        del node
        memory.soon()
        memory.soon()  # however many releases: one return
        assert gone() is not None
        assert await wait_until(lambda: gone() is None, timeout=10)
    finally:
        gc.enable()
        memory.close()


async def test_the_server_gives_memory_back_after_an_eviction() -> None:
    limits = Limits(closed_retention_s=0.05)
    runtime = Runtime(return_memory=True)
    async with running_server(limits, runtime=runtime) as (server, url):
        assert server.memory is not None
        returns: list[None] = []
        original = server.memory.now

        def counted() -> None:
            returns.append(None)
            original()

        server.memory.now = counted  # type: ignore[method-assign]
        async with Client.connect(url) as client:
            await client.initialize()
            await client.run("p", ["true"])
            # eviction after 0.05 s, the return RETURN_DELAY_S later
            assert await wait_until(lambda: len(returns) == 1, timeout=15)
        await asyncio.sleep(0)


async def test_a_server_embedded_in_a_program_leaves_memory_alone() -> None:
    async with running_server() as (server, _):
        assert server.memory is None
