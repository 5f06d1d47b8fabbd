"""Retained output past the spill threshold lives in a spill file: read back byte-exact through
``process/read``, and the file is released when the process is evicted or its session ends."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from exec_server.config import MIB, Limits

from .support import Client, RpcFailure, wait_until
from .test_process_helpers import no_stray_children, unb64

__all__ = ["no_stray_children"]

RETAINED = 2 * MIB


@pytest.fixture
def limits() -> Limits:
    return Limits(
        retained_output_bytes=RETAINED,
        read_chunk_bytes=16 * 1024,
        spill_threshold_bytes=4096,
        closed_retention_s=0.2,
        detach_grace_s=0,
    )


def _spill_files() -> set[str]:
    """The unnamed temporary files this process (the in-process server) holds open."""
    prefix = tempfile.gettempdir() + "/"
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith(prefix) and target.endswith(" (deleted)"):
            found.add(target)
    return found


def _writer(size: int, seed: int, go: Path) -> list[str]:
    """A child that writes ``size`` pseudo-random bytes, then stays until ``go`` exists."""
    script = (
        "import os, random, sys, time\n"
        f"sys.stdout.buffer.write(random.Random({seed}).randbytes({size}))\n"
        "sys.stdout.flush()\n"
        f"while not os.path.exists({str(go)!r}):\n"
        "    time.sleep(0.01)\n"
    )
    return [sys.executable, "-c", script]


def _received(output: list[dict[str, Any]]) -> int:
    return sum(len(o["chunk"]) * 3 // 4 - o["chunk"][-2:].count("=") for o in output)


async def _read_all(client: Client, process_id: str) -> list[tuple[int, bytes]]:
    """Every retained chunk, paged through ``process/read`` with a small ``maxBytes``."""
    chunks: list[tuple[int, bytes]] = []
    after = 0
    while True:
        read = await client.read(process_id, afterSeq=after, maxBytes=100_000)
        if not read["chunks"]:
            return chunks
        chunks += [(c["seq"], unb64(c["chunk"])) for c in read["chunks"]]
        after = read["nextSeq"] - 1


async def _until_evicted(client: Client, process_id: str) -> RpcFailure:
    while True:
        try:
            await client.read(process_id)
        except RpcFailure as failure:
            return failure
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    "size",
    [pytest.param(RETAINED - 300_000, id="all-retained"), pytest.param(5 * MIB, id="ring-wraps")],
)
async def test_spilled_output_reads_back_byte_exact_and_is_released_on_eviction(
    client: Client, tmp_path: Path, size: int
) -> None:
    before = _spill_files()
    go = tmp_path / "go"
    await client.start("big", _writer(size, 5, go))
    events = await client.wait_for("big", lambda e: _received(e.output) >= size, timeout=60)
    expected = random.Random(5).randbytes(size)
    assert events.data() == expected
    notified = {o["seq"]: base64.b64decode(o["chunk"]) for o in events.output}

    chunks = await _read_all(client, "big")
    retained = b"".join(data for _, data in chunks)
    assert retained == expected[len(expected) - len(retained) :]
    assert all(data == notified[seq] for seq, data in chunks)
    assert [seq for seq, _ in chunks] == sorted(notified)[len(notified) - len(chunks) :]
    if size > RETAINED:
        assert chunks[0][0] > 1 and len(retained) > RETAINED - 16 * 1024  # evicted: a gap
    else:
        assert retained == expected and chunks[0][0] == 1
    assert len(_spill_files() - before) == 1

    go.touch()
    await client.wait_closed("big")
    error = await asyncio.wait_for(_until_evicted(client, "big"), 10)
    assert error.code == -32600
    assert _spill_files() - before == set()


async def test_the_spill_file_is_released_when_the_session_ends(
    server_url: str, tmp_path: Path
) -> None:
    before = _spill_files()
    go = tmp_path / "go"
    async with Client.connect(server_url) as client:
        await client.initialize()
        await client.start("held", _writer(MIB, 6, go))
        await client.wait_for("held", lambda e: _received(e.output) >= MIB)
        assert len(_spill_files() - before) == 1
    # detach_grace_s=0: the disconnect ends the session, which kills the child and closes
    # its log.
    assert await wait_until(lambda: _spill_files() - before == set())
    go.touch()


async def test_no_spill_file_for_small_output(client: Client) -> None:
    before = _spill_files()
    await client.start("small", ["sh", "-c", "echo hello; sleep 5"])
    await client.wait_output("small", b"hello\n")
    assert _spill_files() - before == set()
    await client.call("process/terminate", {"processId": "small"})
    await client.wait_closed("small")
