"""Closed processes are forgotten after ``closed_retention_s``; exited-only ones never are."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from exec_server.config import Limits

from .support import Client, RpcFailure
from .test_process_helpers import error_of, no_stray_children

__all__ = ["no_stray_children"]


@pytest.fixture
def limits() -> Limits:
    return Limits(closed_retention_s=0.2)


async def _until_evicted(client: Client, process_id: str) -> dict[str, Any]:
    while True:
        try:
            await client.read(process_id)
        except RpcFailure as failure:
            return {"code": failure.code, "message": failure.message}
        await asyncio.sleep(0.02)


async def test_closed_process_is_evicted(client: Client) -> None:
    await client.run("e", ["sh", "-c", "echo first"])
    error = await asyncio.wait_for(_until_evicted(client, "e"), 10)
    assert error == {"code": -32600, "message": "unknown process id e"}
    assert await client.write("e", b"x") == "unknownProcess"
    assert await client.call("process/terminate", {"processId": "e"}) == {"running": False}
    error = await error_of(client, "process/signal", {"processId": "e", "signal": "TERM"})
    assert error["code"] == -32600
    # The id can be used again, and the new process starts its seqs afresh.
    del client.processes["e"]
    events = await client.run("e", ["sh", "-c", "echo second"])
    assert events.data() == b"second\n"
    assert events.output[0]["seq"] == 1


async def test_exited_but_not_closed_is_never_evicted(client: Client, tmp_path: Path) -> None:
    go = tmp_path / "go"
    script = f"(while [ ! -e {go} ]; do sleep 0.01; done) & exit 0"
    await client.start("held", ["sh", "-c", script])
    await client.wait_for("held", lambda e: e.exited is not None)
    # A process that closes after "held" exited, and is evicted after its own retention:
    # had "held" been given a timer at its exit, it would be gone by then.
    await client.run("later", ["true"])
    await asyncio.wait_for(_until_evicted(client, "later"), 10)
    read = await client.read("held")
    assert read["exited"] is True and read["closed"] is False
    go.touch()
    await client.wait_closed("held")
    await asyncio.wait_for(_until_evicted(client, "held"), 10)
