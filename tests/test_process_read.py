"""Seq rules, retention and ``process/read`` (afterSeq/maxBytes/waitMs) exactly as §7.4."""

from __future__ import annotations

import asyncio
import random
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from exec_server.config import Limits

from .support import Client, ProcessEvents
from .test_process_helpers import error_of, fire, no_stray_children, seqs, unb64

__all__ = ["no_stray_children"]

RETAINED = 8192


@pytest.fixture
def limits() -> Limits:
    return Limits(retained_output_bytes=RETAINED, read_chunk_bytes=1024)


MODES = [pytest.param(False, id="pipe"), pytest.param(True, id="pty")]


def _chunks(read: dict[str, Any]) -> list[tuple[int, bytes]]:
    return [(c["seq"], unb64(c["chunk"])) for c in read["chunks"]]


# ---- seq rules -------------------------------------------------------------------------------


@pytest.mark.parametrize("tty", MODES)
async def test_seq_is_dense_and_notifications_leave_in_seq_order(client: Client, tty: bool) -> None:
    script = "for i in $(seq 300); do echo out$i; echo err$i >&2; done; exit 7"
    events = await client.run("dense", ["sh", "-c", script], tty=tty)
    order = events.order
    assert seqs(order) == list(range(1, len(order) + 1))
    kinds = [kind for kind, _ in order]
    assert kinds.count("process/exited") == 1 and kinds.count("process/closed") == 1
    assert kinds[-1] == "process/closed"
    assert kinds.index("process/exited") < kinds.index("process/closed")
    assert events.exited is not None and events.exited["exitCode"] == 7
    outs = "".join(f"out{i}\n" for i in range(1, 301))
    errs = "".join(f"err{i}\n" for i in range(1, 301))
    if tty:  # one stream: lines interleave, each stays whole
        lines = events.data("pty").decode().split("\r\n")
        assert sorted(lines) == sorted([*outs.split(), *errs.split(), ""])
    else:
        assert events.data("stdout").decode() == outs
        assert events.data("stderr").decode() == errs


@pytest.mark.parametrize("tty", MODES)
async def test_closed_waits_for_output_after_exit(
    client: Client, tmp_path: Path, tty: bool
) -> None:
    go = tmp_path / "go"
    # SIGHUP ignored (inherited by the job): in a PTY the kernel sends it to the foreground
    # group when the session leader exits.
    wait = f"while [ ! -e {go} ]; do sleep 0.01; done"
    script = f"trap '' HUP; echo early; ({wait}; echo late) & exit 0"
    await client.start("late", ["sh", "-c", script], tty=tty)
    await client.wait_for("late", lambda e: e.exited is not None)
    assert client.processes["late"].closed is None  # the background job holds the output open
    go.touch()
    events = await client.wait_closed("late")
    kinds = [kind for kind, _ in events.order]
    exited_at = kinds.index("process/exited")
    late_at = next(i for i, o in enumerate(events.output) if b"late" in unb64(o["chunk"]))
    late_seq = events.output[late_at]["seq"]
    assert events.exited is not None and events.closed is not None
    assert events.exited["seq"] < late_seq < events.closed["seq"]
    assert kinds[exited_at:] == ["process/exited", "process/output", "process/closed"]
    assert seqs(events.order) == list(range(1, len(events.order) + 1))


# ---- retention -------------------------------------------------------------------------------


async def test_retention_drops_oldest_chunks_whole_and_readers_see_the_gap(
    client: Client,
) -> None:
    script = "import sys, random; sys.stdout.buffer.write(random.Random(5).randbytes(200_000))"
    events = await client.run("ret", [sys.executable, "-c", script])
    notified = {o["seq"]: unb64(o["chunk"]) for o in events.output}
    assert events.data() == random.Random(5).randbytes(200_000)

    read = await client.read("ret")
    chunks = _chunks(read)
    first, last = chunks[0][0], chunks[-1][0]
    assert first > 1  # a gap: the reader sees that output was dropped
    assert [seq for seq, _ in chunks] == list(range(first, last + 1))
    assert last == max(notified)
    for seq, data in chunks:
        assert data == notified[seq]  # whole chunks, never a partial one
    retained = sum(len(data) for _, data in chunks)
    assert retained <= RETAINED
    assert retained + len(notified[first - 1]) > RETAINED  # nothing dropped needlessly
    assert read["nextSeq"] == last + 1

    # Reading from before the gap returns the same retained chunks.
    assert _chunks(await client.read("ret", afterSeq=1)) == chunks
    # Reading from inside the retained window is exact.
    assert _chunks(await client.read("ret", afterSeq=first))[0][0] == first + 1


# ---- process/read ----------------------------------------------------------------------------


def _has_chunks(count: int, events: ProcessEvents) -> bool:
    return len(events.output) >= count


LINES = [b"abcd\n", b"123456789\n", b"x" * 19 + b"\n"]  # 5, 10 and 20 bytes


async def _three_chunks_then_exit(client: Client, process_id: str) -> None:
    """A child that echoes three lines, one output chunk each, then exits 3."""
    script = 'for i in 1 2 3; do read line; echo "$line"; done; exit 3'
    await client.start(process_id, ["sh", "-c", script], pipeStdin=True)
    for count, line in enumerate(LINES, start=1):
        await client.write(process_id, line)
        await client.wait_for(process_id, partial(_has_chunks, count))
    await client.wait_closed(process_id)
    assert [unb64(o["chunk"]) for o in client.processes[process_id].output] == LINES
    assert seqs(client.processes[process_id].order) == [1, 2, 3, 4, 5]


async def test_read_everything_after_close(client: Client) -> None:
    await _three_chunks_then_exit(client, "r")
    read = await client.read("r")
    assert read == {
        "chunks": [
            {"seq": 1, "stream": "stdout", "chunk": "YWJjZAo="},
            {"seq": 2, "stream": "stdout", "chunk": "MTIzNDU2Nzg5Cg=="},
            {"seq": 3, "stream": "stdout", "chunk": "eHh4eHh4eHh4eHh4eHh4eHh4eAo="},
        ],
        "nextSeq": 4,  # last returned + 1, even though exited/closed took 4 and 5
        "exited": True,
        "exitCode": 3,
        "closed": True,
        "failure": None,
        "sandboxDenied": False,
    }


@pytest.mark.parametrize(
    ("params", "expected_seqs", "next_seq"),
    [
        ({"afterSeq": None, "maxBytes": None}, [1, 2, 3], 4),
        ({"maxBytes": 0}, [1], 2),  # exactly one chunk
        ({"maxBytes": 3}, [1], 2),  # the first chunk even though larger than max
        ({"maxBytes": 5}, [1], 2),  # stop once total >= max
        ({"maxBytes": 14}, [1], 2),  # 5 + 10 would exceed 14
        ({"maxBytes": 15}, [1, 2], 3),
        ({"maxBytes": 35}, [1, 2, 3], 4),
        ({"maxBytes": 10**12}, [1, 2, 3], 4),
        ({"afterSeq": 0}, [1, 2, 3], 4),
        ({"afterSeq": 1, "maxBytes": 0}, [2], 3),
        ({"afterSeq": 1, "maxBytes": 29}, [2], 3),
        ({"afterSeq": 1, "maxBytes": 30}, [2, 3], 4),
        ({"afterSeq": 2}, [3], 4),
        ({"afterSeq": 3}, [], 6),  # no chunk: the process's next unassigned seq
        ({"afterSeq": 4}, [], 6),
        ({"afterSeq": 5}, [], 6),
        ({"afterSeq": 1000}, [], 6),
        ({"afterSeq": 3, "waitMs": 600_000}, [], 6),  # closed: never waits
        ({"afterSeq": 0, "maxBytes": 0, "waitMs": 0}, [1], 2),
    ],
)
async def test_read_after_seq_and_max_bytes(
    client: Client, params: dict[str, Any], expected_seqs: list[int], next_seq: int
) -> None:
    await _three_chunks_then_exit(client, "r")
    read = await client.read("r", **params)
    assert [c["seq"] for c in read["chunks"]] == expected_seqs
    assert read["nextSeq"] == next_seq
    assert (read["exited"], read["exitCode"], read["closed"]) == (True, 3, True)
    for seq, data in _chunks(read):
        assert data == LINES[seq - 1]


async def test_long_poll_returns_on_new_output(client: Client) -> None:
    await client.start("lp", ["cat"], pipeStdin=True)
    # The read is taken first, finds nothing after seq 0 and waits; the write comes next.
    read_reply, write_reply = await fire(
        client,
        [
            ("process/read", {"processId": "lp", "afterSeq": 0, "waitMs": 600_000}),
            ("process/write", {"processId": "lp", "chunk": "bmV3Cg=="}),  # "new\n"
        ],
    )
    assert write_reply["result"] == {"status": "accepted"}
    read = read_reply["result"]
    assert _chunks(read) == [(1, b"new\n")]
    assert read["nextSeq"] == 2 and read["exited"] is False and read["closed"] is False
    await client.call("process/terminate", {"processId": "lp"})
    await client.wait_closed("lp")


async def test_long_poll_returns_at_the_deadline_with_nothing(client: Client) -> None:
    await client.start("quiet", ["sleep", "100"])
    read = await client.read("quiet", afterSeq=0, waitMs=50)
    assert read["chunks"] == [] and read["nextSeq"] == 1
    assert read["exited"] is False and read["closed"] is False
    await client.call("process/terminate", {"processId": "quiet"})
    await client.wait_closed("quiet")


async def test_long_poll_after_exit(client: Client, tmp_path: Path) -> None:
    go = tmp_path / "go"
    # seq 1 "a\n", seq 2 exited; a background job holds stdout open so the process stays
    # exited-but-not-closed until the test creates `go`.
    script = f"echo a; (while [ ! -e {go} ]; do sleep 0.01; done; echo late) & exit 4"
    await client.start("ex", ["sh", "-c", script])
    await client.wait_for("ex", lambda e: e.exited is not None)
    assert client.processes["ex"].order == [("process/output", 1), ("process/exited", 2)]

    # An event the caller has not seen (the exit): return at once, however long waitMs is.
    # Were it to wait, nothing could wake it: `go` is created only after this reply.
    read = await client.read("ex", afterSeq=1, waitMs=600_000)
    assert read["chunks"] == [] and read["nextSeq"] == 3
    assert (read["exited"], read["exitCode"], read["closed"]) == (True, 4, False)

    # Everything seen (afterSeq = the exit's seq): wait for what comes next.
    waiting = asyncio.ensure_future(client.read("ex", afterSeq=2, waitMs=600_000))
    probe = await client.read("ex", afterSeq=0)  # requests start in order: the poll is waiting
    assert _chunks(probe) == [(1, b"a\n")] and not waiting.done()
    go.touch()
    read = await asyncio.wait_for(waiting, 15)
    assert _chunks(read) == [(3, b"late\n")]
    await client.wait_closed("ex")
    read = await client.read("ex", afterSeq=3, waitMs=600_000)
    assert read["chunks"] == [] and read["nextSeq"] == 5 and read["closed"] is True


async def test_long_poll_wakes_on_close(client: Client, tmp_path: Path) -> None:
    go = tmp_path / "go"
    script = f"(while [ ! -e {go} ]; do sleep 0.01; done) & exit 0"
    await client.start("cl", ["sh", "-c", script])
    await client.wait_for("cl", lambda e: e.exited is not None)
    waiting = asyncio.ensure_future(client.read("cl", afterSeq=1, waitMs=600_000))
    await client.read("cl")
    assert not waiting.done()
    go.touch()
    read = await asyncio.wait_for(waiting, 15)
    assert read == {
        "chunks": [],
        "nextSeq": 3,
        "exited": True,
        "exitCode": 0,
        "closed": True,
        "failure": None,
        "sandboxDenied": False,
    }


@pytest.mark.parametrize("params", [{}, {"afterSeq": 0, "waitMs": 600_000}])
async def test_read_unknown_process(client: Client, params: dict[str, Any]) -> None:
    error = await error_of(client, "process/read", {"processId": "ghost", **params})
    assert error == {"code": -32600, "message": "unknown process id ghost"}
