"""Unit tests of OutputLog: seq numbering, retention, read (§7.4 steps 1-3) and readiness (step 4)."""

from __future__ import annotations

import asyncio

import pytest

from exec_server.process.output import Chunk, OutputLog


def _log(*sizes: int, max_bytes: int = 1 << 20, max_chunks: int = 1 << 15) -> OutputLog:
    log = OutputLog(max_bytes, max_chunks)
    for index, size in enumerate(sizes):
        log.append("stdout", bytes([index % 256]) * size)
    return log


def _seqs(chunks: list[Chunk]) -> list[int]:
    return [chunk.seq for chunk in chunks]


def test_one_counter_for_output_exit_and_close() -> None:
    log = OutputLog(100, 100)
    assert log.next_seq == 1
    assert log.append("stdout", b"a") == 1
    assert log.append("stderr", b"b") == 2
    assert log.mark_exited(3) == 3
    assert log.append("stdout", b"late") == 4
    assert log.mark_closed() == 5
    assert (log.exited, log.exit_code, log.closed, log.last_seq) == (True, 3, True, 5)
    snapshot = log.read(0, None)
    assert snapshot.chunks == [
        Chunk(1, "stdout", b"a"),
        Chunk(2, "stderr", b"b"),
        Chunk(4, "stdout", b"late"),
    ]
    assert snapshot.next_seq == 5  # last returned + 1, not the close's seq + 1
    assert log.read(4, None).next_seq == 6
    assert log.read(2, None).chunks == [Chunk(4, "stdout", b"late")]


def test_retention_by_bytes_drops_oldest_whole() -> None:
    log = _log(40, 30, 20, 10, max_bytes=60)
    # 40+30+20+10 = 100 > 60: drop 40 (60 left, not over), keep the rest.
    assert _seqs(log.read(0, None).chunks) == [2, 3, 4]
    assert log.retained_bytes == 60
    log.append("stdout", b"x")  # 61 > 60: drop the 30-byte chunk
    assert _seqs(log.read(0, None).chunks) == [3, 4, 5]
    assert log.retained_bytes == 31


def test_a_chunk_larger_than_the_bound_is_not_kept() -> None:
    log = _log(10, max_bytes=16)
    assert log.append("stdout", b"z" * 17) == 2
    assert log.read(0, None).chunks == []
    assert log.read(0, None).next_seq == 3
    assert log.retained_bytes == 0


def test_retention_by_chunk_count() -> None:
    log = _log(*([1] * 10), max_chunks=4)
    assert _seqs(log.read(0, None).chunks) == [7, 8, 9, 10]
    assert log.retained_bytes == 4


def test_eviction_leaves_a_visible_gap() -> None:
    log = _log(50, 50, 50, max_bytes=100)
    snapshot = log.read(0, None)
    assert _seqs(snapshot.chunks) == [2, 3]  # first seq > afterSeq + 1
    assert _seqs(log.read(1, None).chunks) == [2, 3]
    assert _seqs(log.read(2, None).chunks) == [3]


@pytest.mark.parametrize(
    ("after", "max_bytes", "expected", "next_seq"),
    [
        (0, None, [1, 2, 3], 4),
        (0, 0, [1], 2),
        (0, 1, [1], 2),
        (0, 5, [1], 2),
        (0, 14, [1], 2),
        (0, 15, [1, 2], 3),
        (0, 34, [1, 2], 3),
        (0, 35, [1, 2, 3], 4),
        (0, 36, [1, 2, 3], 4),
        (1, 0, [2], 3),
        (1, 29, [2], 3),
        (1, 30, [2, 3], 4),
        (2, None, [3], 4),
        (2, 0, [3], 4),
        (3, None, [], 4),
        (3, 0, [], 4),
        (10, None, [], 4),
    ],
)
def test_read_window(after: int, max_bytes: int | None, expected: list[int], next_seq: int) -> None:
    log = _log(5, 10, 20)
    snapshot = log.read(after, max_bytes)
    assert _seqs(snapshot.chunks) == expected
    assert snapshot.next_seq == next_seq
    assert (snapshot.exited, snapshot.exit_code, snapshot.closed) == (False, None, False)


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        (0, [901, 902]),
        (899, [901, 902]),
        (900, [901, 902]),
        (901, [902, 903]),
        (950, [951, 952]),
        (998, [999, 1000]),
        (999, [1000]),
        (1000, []),
    ],
)
def test_read_finds_its_place_in_a_long_log(after: int, expected: list[int]) -> None:
    log = _log(*([3] * 1000), max_bytes=300)  # seqs 901..1000 retained
    assert _seqs(log.read(after, 6).chunks) == expected


def test_empty_log() -> None:
    log = OutputLog(10, 10)
    snapshot = log.read(0, 0)
    assert snapshot.chunks == [] and snapshot.next_seq == 1
    assert not log.ready(0, snapshot)


@pytest.mark.parametrize(
    ("events", "after", "ready"),
    [
        (["out"], 0, True),  # a chunk to return
        (["out"], 1, False),  # nothing new, still running
        (["out", "exit"], 1, True),  # the exit is unseen
        (["out", "exit"], 2, False),  # everything seen, not closed: wait
        (["out", "exit", "close"], 3, True),  # closed: never wait
        (["exit", "close"], 100, True),
        (["exit"], 0, True),
        (["exit"], 1, False),
    ],
)
def test_ready(events: list[str], after: int, ready: bool) -> None:
    log = OutputLog(100, 100)
    for event in events:
        if event == "out":
            log.append("stdout", b"x")
        elif event == "exit":
            log.mark_exited(0)
        else:
            log.mark_closed()
    assert log.ready(after, log.read(after, None)) is ready


@pytest.mark.parametrize("event", ["out", "exit", "close"])
async def test_every_event_wakes_waiters(event: str) -> None:
    log = OutputLog(100, 100)
    first, second = log.waiter(), log.waiter()
    assert not first.done()
    if event == "out":
        log.append("stdout", b"x")
    elif event == "exit":
        log.mark_exited(1)
    else:
        log.mark_closed()
    await asyncio.wait_for(asyncio.gather(first, second), 1)
    later = log.waiter()
    assert not later.done()  # a waiter only sees events after it was made


async def test_a_cancelled_waiter_does_not_break_waking() -> None:
    log = OutputLog(100, 100)
    cancelled, live = log.waiter(), log.waiter()
    cancelled.cancel()
    log.append("stdout", b"x")
    await asyncio.wait_for(live, 1)
