"""Unit tests of OutputLog: seq numbering, retention, read (§7.4 steps 1-3) and readiness (step 4),
and the spill file that holds retained output past the in-memory threshold."""

from __future__ import annotations

import asyncio
import errno
import os
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exec_server.process import output
from exec_server.process.output import NEVER_SPILL, Chunk, OutputLog, is_ready


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
    assert not is_ready(snapshot, 0)


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
    assert is_ready(log.read(after, None), after) is ready


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


# ---- spilling ------------------------------------------------------------------------------


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _pattern(index: int, size: int) -> bytes:
    """Bytes that differ from chunk to chunk and from offset to offset."""
    return random.Random(index).randbytes(size)


def _fill(log: OutputLog, *sizes: int) -> list[bytes]:
    chunks = [_pattern(index, size) for index, size in enumerate(sizes)]
    for data in chunks:
        log.append("stdout", data)
    return chunks


def test_no_spill_by_default_nor_below_the_threshold() -> None:
    log = OutputLog(1 << 20, 1 << 15)
    _fill(log, *([60_000] * 40))
    assert log.spill_fd == -1 and log.spilled_bytes == 0
    small = OutputLog(1 << 20, 1 << 15, spill_threshold_bytes=64 * 1024)
    _fill(small, *([1000] * 65))  # 65,000 bytes: all within the threshold
    assert small.spill_fd == -1 and small.retained_bytes == 65_000
    # A threshold at the retention bound can never be passed.
    bounded = OutputLog(1000, 100, spill_threshold_bytes=1000)
    _fill(bounded, *([300] * 20))
    assert bounded.spill_fd == -1 and bounded.retained_bytes == 900


def test_spill_from_the_first_byte() -> None:
    before = _fd_count()
    log = OutputLog(1000, 100, spill_threshold_bytes=0)
    chunks = _fill(log, 100, 200, 300)
    assert log.spill_fd >= 0 and _fd_count() == before + 1
    assert log.spilled_bytes == log.retained_bytes == 600
    assert log.read(0, None).chunks == [
        Chunk(1, "stdout", chunks[0]),
        Chunk(2, "stdout", chunks[1]),
        Chunk(3, "stdout", chunks[2]),
    ]
    log.close()


def test_memory_first_then_file_and_the_file_stays() -> None:
    log = OutputLog(1000, 100, spill_threshold_bytes=250)
    chunks = _fill(log, 100, 100, 100)  # 300 > 250: the third chunk spills
    assert (log.retained_bytes, log.spilled_bytes) == (300, 100)
    chunks += _fill(log, *([10] * 3))  # once spilling, always spilling
    assert (log.retained_bytes, log.spilled_bytes) == (330, 130)
    assert [chunk.data for chunk in log.read(0, None).chunks] == chunks
    log.close()


def test_eviction_across_the_memory_file_boundary() -> None:
    log = OutputLog(500, 100, spill_threshold_bytes=200)
    chunks = _fill(log, 100, 100, 150, 150)  # 100+100 in memory; 150+150 spilled
    assert (log.retained_bytes, log.spilled_bytes) == (500, 300)
    chunks.append(_pattern(99, 120))
    log.append("stderr", chunks[-1])  # 620 > 500: both memory chunks go, oldest first
    snapshot = log.read(0, None)
    assert _seqs(snapshot.chunks) == [3, 4, 5]
    assert [chunk.data for chunk in snapshot.chunks] == chunks[2:]
    assert snapshot.chunks[-1].stream == "stderr"
    assert (log.retained_bytes, log.spilled_bytes) == (420, 420)
    _fill(log, 400)  # evicts spilled chunks too, and the ring wraps
    assert _seqs(log.read(0, None).chunks) == [6]
    assert (log.retained_bytes, log.spilled_bytes) == (400, 400)
    log.close()


def test_the_ring_wraps_and_reads_back_byte_exact() -> None:
    log = OutputLog(1000, 1000, spill_threshold_bytes=0)  # a ring of 1000 bytes
    chunks = _fill(log, 300, 300, 300)  # at 0, 300, 600
    chunks += _fill(log, 300)  # the first goes; this one is split: 900..1000 and 0..200
    assert [c.data for c in log.read(0, None).chunks] == chunks[1:]
    chunks += _fill(log, 100)  # at 200..300: the ring is exactly full
    assert log.retained_bytes == log.spilled_bytes == 1000
    assert [c.data for c in log.read(0, None).chunks] == chunks[1:]
    chunks += _fill(log, 700)  # three go; at 300..1000, ending exactly at the ring's end
    chunks += _fill(log, 200)  # at 0..200
    snapshot = log.read(0, None)
    assert _seqs(snapshot.chunks) == [5, 6, 7]
    assert [c.data for c in snapshot.chunks] == chunks[4:]
    # Many laps of odd sizes: every retained chunk reads back as written.
    for index in range(200):
        data = _pattern(1000 + index, 1 + index * 37 % 450)
        chunks.append(data)
        log.append("stdout", data)
        retained = log.read(0, None).chunks
        assert [c.data for c in retained] == chunks[len(chunks) - len(retained) :]
    log.close()


def test_reads_with_max_bytes_across_memory_and_file() -> None:
    log = OutputLog(10_000, 100, spill_threshold_bytes=15)
    chunks = _fill(log, 5, 10, 20)  # 5 and 10 in memory, 20 spilled
    assert log.spilled_bytes == 20
    assert [c.data for c in log.read(0, 14).chunks] == chunks[:1]
    assert [c.data for c in log.read(0, 15).chunks] == chunks[:2]
    assert [c.data for c in log.read(0, 35).chunks] == chunks
    assert [c.data for c in log.read(1, 0).chunks] == chunks[1:2]
    assert [c.data for c in log.read(2, 0).chunks] == chunks[2:]
    assert log.read(2, 1).next_seq == 4
    log.close()


def test_a_chunk_larger_than_the_bound_is_not_kept_when_spilling() -> None:
    log = OutputLog(100, 100, spill_threshold_bytes=0)
    _fill(log, 60, 30)
    assert log.append("stdout", b"z" * 101) == 3
    assert log.read(0, None).chunks == [] and log.retained_bytes == 0
    chunks = _fill(log, 100)  # exactly the bound: kept, from ring offset 90 around to 90
    assert [c.data for c in log.read(0, None).chunks] == chunks
    log.close()


def test_chunk_count_bound_applies_to_spilled_chunks() -> None:
    log = OutputLog(1 << 20, 3, spill_threshold_bytes=2)
    chunks = _fill(log, *([1] * 10))
    assert _seqs(log.read(0, None).chunks) == [8, 9, 10]
    assert [c.data for c in log.read(0, None).chunks] == chunks[-3:]
    assert log.spilled_bytes == 3
    log.close()


def test_close_releases_the_file_and_is_idempotent() -> None:
    before = _fd_count()
    log = OutputLog(1 << 20, 1 << 15, spill_threshold_bytes=1024)
    _fill(log, *([4096] * 8))
    assert log.spill_fd >= 0 and _fd_count() == before + 1
    log.close()
    assert log.spill_fd == -1 and _fd_count() == before
    log.close()
    assert _fd_count() == before
    snapshot = log.read(0, None)  # a closed log has forgotten its output
    assert snapshot.chunks == [] and snapshot.next_seq == 9
    assert log.retained_bytes == 0


def test_the_spill_file_is_unnamed_and_not_inherited(tmp_path: Path) -> None:
    log = OutputLog(1000, 100, spill_threshold_bytes=0, spill_dir=str(tmp_path))
    _fill(log, 10)
    assert list(tmp_path.iterdir()) == []
    assert os.readlink(f"/proc/self/fd/{log.spill_fd}").endswith("(deleted)")
    assert not os.get_inheritable(log.spill_fd)
    log.close()


def test_without_o_tmpfile_a_temporary_file_is_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real_open = os.open

    def no_tmpfile(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", no_tmpfile)
    log = OutputLog(1000, 100, spill_threshold_bytes=0, spill_dir=str(tmp_path))
    chunks = _fill(log, 700, 700)
    assert log.spill_fd >= 0 and list(tmp_path.iterdir()) == []
    assert [c.data for c in log.read(0, None).chunks] == chunks[1:]
    log.close()


def test_no_spill_file_means_memory(tmp_path: Path) -> None:
    before = _fd_count()
    log = OutputLog(1000, 100, spill_threshold_bytes=0, spill_dir=str(tmp_path / "missing"))
    chunks = _fill(log, 300, 300, 300, 300)
    assert log.spill_fd == -1 and log.spilled_bytes == 0 and _fd_count() == before
    assert [c.data for c in log.read(0, None).chunks] == chunks[1:]


def test_a_failing_write_falls_back_to_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    log = OutputLog(1000, 100, spill_threshold_bytes=0)
    chunks = _fill(log, 100, 100)
    real_pwrite = os.pwrite

    def full_disk(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(output.os, "pwrite", full_disk)
    chunks += _fill(log, 100)
    monkeypatch.setattr(output.os, "pwrite", real_pwrite)
    chunks += _fill(log, 100)  # it does not try again
    assert (log.retained_bytes, log.spilled_bytes) == (400, 200)
    assert [c.data for c in log.read(0, None).chunks] == chunks
    log.close()


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    sizes=st.lists(st.integers(0, 300), max_size=40),
    max_bytes=st.integers(1, 600),
    max_chunks=st.integers(1, 8),
    threshold=st.sampled_from([0, 1, 50, 299, 600, NEVER_SPILL]),
    after=st.integers(0, 45),
    max_read=st.one_of(st.none(), st.integers(0, 700)),
)
def test_spilling_never_changes_what_is_read(
    sizes: list[int],
    max_bytes: int,
    max_chunks: int,
    threshold: int,
    after: int,
    max_read: int | None,
) -> None:
    """The log with a spill file behaves exactly as the all-in-memory log."""
    plain = OutputLog(max_bytes, max_chunks)
    spilling = OutputLog(max_bytes, max_chunks, spill_threshold_bytes=threshold)
    try:
        for index, size in enumerate(sizes):
            data = _pattern(index, size)
            assert plain.append("stdout", data) == spilling.append("stdout", data)
            assert plain.retained_bytes == spilling.retained_bytes
            assert spilling.read(0, None) == plain.read(0, None)
        assert spilling.read(after, max_read) == plain.read(after, max_read)
    finally:
        spilling.close()
