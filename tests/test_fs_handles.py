"""fs/open, fs/readBlock, fs/writeBlock, fs/close end to end (Part B §14.2)."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from typing import Any

import pytest

from exec_server.config import Limits
from exec_server.errors import RpcError
from exec_server.fs.handles import HandleBudget, HandleTable, open_regular_file
from exec_server.paths import to_file_uri

from .support import Client, RpcFailure, running_server

MIB = 1024 * 1024


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def fails(client: Client, method: str, params: dict[str, Any]) -> RpcFailure:
    with pytest.raises(RpcFailure) as info:
        await client.call(method, params)
    return info.value


async def read_block(client: Client, handle: str, offset: int, length: int) -> tuple[bytes, bool]:
    result = await client.call(
        "fs/readBlock", {"handleId": handle, "offset": offset, "len": length}
    )
    return base64.b64decode(result["chunk"]), result["eof"]


def open_fds_to(path: Path) -> int:
    """How many of this process's descriptors (the in-process server's) point at ``path``."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                count += 1
        except OSError:
            pass
    return count


async def test_read_in_blocks(client: Client, tmp_path: Path) -> None:
    f = tmp_path / "six"
    f.write_bytes(b"hello!")
    result = await client.call("fs/open", {"handleId": "r", "path": to_file_uri(str(f))})
    assert result == {"handleId": "r"}
    assert await read_block(client, "r", 0, 3) == (b"hel", False)
    # Exactly up to the end is not yet eof (the reference's rule: eof = a short read).
    assert await read_block(client, "r", 3, 3) == (b"lo!", False)
    assert await read_block(client, "r", 6, 3) == (b"", True)
    assert await read_block(client, "r", 4, 100) == (b"o!", True)
    assert await read_block(client, "r", 1000, 1) == (b"", True)
    assert await client.call("fs/close", {"handleId": "r"}) == {}
    error = await fails(client, "fs/readBlock", {"handleId": "r", "offset": 0, "len": 1})
    assert (error.code, error.message) == (-32004, "unknown file handle `r`")
    # Closing again, or a handle that never existed, succeeds as in the reference.
    assert await client.call("fs/close", {"handleId": "r"}) == {}
    assert await client.call("fs/close", {"handleId": "never"}) == {}


async def test_replace_truncates_then_writes_at_offsets(client: Client, tmp_path: Path) -> None:
    f = tmp_path / "out"
    f.write_bytes(b"old contents")
    await client.call("fs/open", {"handleId": "w", "path": str(f), "mode": "replace"})
    assert f.read_bytes() == b""  # truncated when opened
    write = {"handleId": "w", "offset": 0, "chunk": b64(b"hello")}
    assert await client.call("fs/writeBlock", write) == {}
    await client.call("fs/writeBlock", {**write, "offset": 10, "chunk": b64(b"end")})
    await client.call("fs/writeBlock", {**write, "offset": 5, "chunk": b64(b" ")})
    await client.call("fs/close", {"handleId": "w"})
    assert f.read_bytes() == b"hello \0\0\0\0end"
    # replace creates missing files too.
    await client.call(
        "fs/open", {"handleId": "n", "path": str(tmp_path / "new"), "mode": "replace"}
    )
    await client.call("fs/close", {"handleId": "n"})
    assert (tmp_path / "new").read_bytes() == b""
    error = await fails(client, "fs/writeBlock", write)
    assert (error.code, error.message) == (-32004, "unknown file handle `w`")


async def test_pipelined_blocks_then_close(client: Client, tmp_path: Path) -> None:
    """Blocks sent without waiting, then close: every accepted block lands before the close."""
    f = tmp_path / "big"
    data = os.urandom(3 * MIB + 123)
    await client.call("fs/open", {"handleId": "w", "path": str(f), "mode": "replace"})
    writes = [
        client.call(
            "fs/writeBlock", {"handleId": "w", "offset": at, "chunk": b64(data[at : at + MIB])}
        )
        for at in range(0, len(data), MIB)
    ]
    results = await asyncio.gather(*writes, client.call("fs/close", {"handleId": "w"}))
    assert all(r == {} for r in results)
    assert f.read_bytes() == data
    await client.call("fs/open", {"handleId": "r", "path": str(f)})
    blocks = await asyncio.gather(
        *(read_block(client, "r", at, MIB) for at in range(0, len(data), MIB))
    )
    assert b"".join(chunk for chunk, _ in blocks) == data
    assert [eof for _, eof in blocks] == [False, False, False, True]
    await client.call("fs/close", {"handleId": "r"})
    assert open_fds_to(f) == 0


async def test_open_errors(client: Client, tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    os.mkfifo(tmp_path / "fifo")
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"path": str(tmp_path / "missing")}, -32004, "No such file or directory (os error 2)"),
        ({"path": str(tmp_path / "no" / "f"), "mode": "replace"}, -32004, "No such file"),
        ({"path": str(tmp_path)}, -32600, f"path `{tmp_path}` is not a file"),
        ({"path": str(tmp_path / "fifo")}, -32600, "is not a file"),  # and does not hang
        ({"path": str(tmp_path), "mode": "replace"}, -32603, "Is a directory (os error 21)"),
        ({"path": str(tmp_path / "file" / "x")}, -32603, "Not a directory (os error 20)"),
    ]
    for params, code, text in cases:
        error = await fails(client, "fs/open", {"handleId": "h", **params})
        assert (error.code, text in error.message) == (code, True), (params, error)
    # A failed open leaves the id free.
    await client.call("fs/open", {"handleId": "h", "path": str(tmp_path / "file")})
    error = await fails(client, "fs/open", {"handleId": "h", "path": str(tmp_path / "file")})
    assert (error.code, error.message) == (-32600, "file handle `h` already exists")
    error = await fails(client, "fs/open", {"handleId": "x" * 33, "path": str(tmp_path / "file")})
    assert (error.code, error.message) == (-32600, "file handle ID must not exceed 32 bytes")
    error = await fails(
        client, "fs/open", {"handleId": "m", "path": str(tmp_path), "mode": "write"}
    )
    assert error.code == -32602


async def test_block_bounds_and_wrong_direction(client: Client, tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    await client.call("fs/open", {"handleId": "r", "path": str(f)})
    await client.call("fs/open", {"handleId": "w", "path": str(tmp_path / "g"), "mode": "replace"})
    for length in (0, MIB + 1):
        error = await fails(client, "fs/readBlock", {"handleId": "r", "offset": 0, "len": length})
        assert error.code == -32600
        assert error.message == f"file read block length must be between 1 and {MIB}"
    error = await fails(client, "fs/writeBlock", {"handleId": "w", "offset": 0, "chunk": ""})
    assert (error.code, error.message) == (
        -32600,
        f"file write block length must be between 1 and {MIB}",
    )
    error = await fails(client, "fs/readBlock", {"handleId": "r", "offset": -1, "len": 1})
    assert error.code == -32602
    # A read handle does not write and a replace handle does not read: the OS says so.
    error = await fails(client, "fs/writeBlock", {"handleId": "r", "offset": 0, "chunk": b64(b"x")})
    assert (error.code, "Bad file descriptor (os error 9)" in error.message) == (-32603, True)
    error = await fails(client, "fs/readBlock", {"handleId": "w", "offset": 0, "len": 1})
    assert (error.code, "Bad file descriptor (os error 9)" in error.message) == (-32603, True)
    assert f.read_bytes() == b"abc"
    # As in the reference, an I/O error drops the handle.
    for handle in ("r", "w"):
        error = await fails(client, "fs/readBlock", {"handleId": handle, "offset": 0, "len": 1})
        assert (error.code, error.message) == (-32004, f"unknown file handle `{handle}`")
    assert open_fds_to(f) == 0 and open_fds_to(tmp_path / "g") == 0


async def test_handle_limit_per_session(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    async with (
        running_server(Limits(fs_max_open_handles=3)) as (_, url),
        Client.connect(url) as one,
        Client.connect(url) as two,
    ):
        await one.initialize()
        await two.initialize()
        for n in range(3):
            await one.call("fs/open", {"handleId": f"h{n}", "path": str(f)})
        error = await fails(one, "fs/open", {"handleId": "h3", "path": str(f)})
        assert error.code == -32600
        assert error.message.startswith("at most 3 file handles may be open per session")
        # Another session has its own budget, and cannot see these handles.
        await two.call("fs/open", {"handleId": "h3", "path": str(f)})
        error = await fails(two, "fs/readBlock", {"handleId": "h0", "offset": 0, "len": 1})
        assert error.code == -32004
        await one.call("fs/close", {"handleId": "h0"})
        await one.call("fs/open", {"handleId": "h3", "path": str(f)})


async def test_handles_close_with_their_session(tmp_path: Path) -> None:
    f = tmp_path / "held"
    f.write_bytes(b"data")
    async with running_server(Limits(detach_grace_s=0)) as (server, url):
        async with Client.connect(url) as client:
            await client.initialize()
            await client.call("fs/open", {"handleId": "a", "path": str(f)})
            await client.call(
                "fs/open", {"handleId": "b", "path": str(tmp_path / "w"), "mode": "replace"}
            )
            assert open_fds_to(f) == 1
        # Disconnected with no grace: the session ends and its descriptors are closed.
        for _ in range(500):
            if len(server.sessions) == 0:
                break
            await asyncio.sleep(0.01)
        assert len(server.sessions) == 0
        assert open_fds_to(f) == 0
        assert open_fds_to(tmp_path / "w") == 0


async def test_handles_survive_a_resume(tmp_path: Path) -> None:
    f = tmp_path / "held"
    f.write_bytes(b"data")
    async with running_server(Limits(detach_grace_s=30)) as (_, url):
        async with Client.connect(url) as client:
            session = (await client.initialize())["sessionId"]
            await client.call("fs/open", {"handleId": "a", "path": str(f)})
        async with Client.connect(url) as client:
            for _ in range(500):  # the old connection's close may still be on its way
                reply = await client.request(
                    "initialize", {"clientName": "tests", "resumeSessionId": session}
                )
                if "result" in reply:
                    break
                await asyncio.sleep(0.01)
            await client.notify("initialized", {})
            assert await read_block(client, "a", 0, 10) == (b"data", True)


def test_a_descriptor_counts_against_the_server_bound_until_it_is_really_closed(
    tmp_path: Path,
) -> None:
    """A handle closed (or dropped, or its session ended) while a block transfer still uses
    its descriptor keeps that descriptor counted until the transfer closes it: the server's
    count is the number of descriptors really open, so --max-open-files holds."""
    f = tmp_path / "f"
    f.write_bytes(b"data")
    budget = HandleBudget(5)
    table = HandleTable(16, budget)

    def opened(table: HandleTable, handle_id: str) -> None:
        table.reserve(handle_id)
        table.install(handle_id, open_regular_file(str(f), "read"), "read")

    for n in range(5):
        opened(table, f"h{n}")
    in_flight = table.begin_use("h0")
    table.close("h0")  # the transfer still reads through it
    assert open_fds_to(f) == budget.used == 5
    with pytest.raises(RpcError, match="its bound"):
        table.reserve("h5")  # past the guaranteed 4, and the server is at its bound
    table.finish_use(in_flight)
    assert open_fds_to(f) == budget.used == 4
    opened(table, "h5")
    table.close("h5")

    failed = table.begin_use("h1")
    table.discard(failed)  # an I/O error dropped it; the transfer has not returned yet
    assert open_fds_to(f) == budget.used == 4
    table.finish_use(failed)
    assert open_fds_to(f) == budget.used == 3

    in_flight = table.begin_use("h2")
    other = HandleTable(16, budget)
    other.reserve("opening")  # its open is still running on a worker thread
    table.release()
    other.release()
    assert open_fds_to(f) == 1 and budget.used == 2
    other.install("opening", open_regular_file(str(f), "read"), "read")  # closed at once
    table.finish_use(in_flight)
    assert open_fds_to(f) == budget.used == 0
