"""The retained-output log of one process: seq numbers, the retention bound, long-poll waiters.

One counter orders everything a process emits: each output chunk, the exit and the close
take the next seq (PROTOCOL.md Part B §7.2). Only chunks are retained; past the byte (or
chunk-count) bound the oldest chunks are dropped whole, and a reader sees the gap as a first
seq greater than ``after_seq + 1``.

Where the retained bytes live. Most processes print little: their output stays in the Python
heap as the ``bytes`` objects read from the child. Once a log would hold more than its spill
threshold in memory, every later chunk is written instead to a per-process *spill file*: an
unnamed temporary file (``O_TMPFILE`` in :func:`tempfile.gettempdir`) used as a ring buffer
the size of the retention bound, with only ``(seq, stream, offset, length)`` kept in memory.

This is a real saving, not an accounting trick. Heap memory of a server process can only be
given back by the server, so chatty children would pin their retained output as anonymous
memory (unswappable where there is no swap) for as long as it stays readable. The spill
file's bytes are page cache of a real file (when the temporary directory is on disk, not
tmpfs): the kernel may write those pages back and reclaim them under memory pressure, and a
later read simply faults them back in. The file has no name, so nothing is left behind if the
server dies, and closing it (process evicted, session ended) frees its pages without writing
them anywhere.

The hot path stays cheap: a spilled chunk costs one ``pwrite`` (two when it straddles the end
of the ring) and no other copy; the ``bytes`` object read from the child is released as soon
as its notification is encoded. Reads ``pread`` each chunk they return. If the file cannot be
created or written (no ``/tmp``, disk full), the log quietly keeps chunks in memory, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from bisect import bisect_right
from collections import deque

import msgspec

# Plain records, built several times per chunk and per read: msgspec Structs are made in C
# (a NamedTuple's constructor is a Python function). Nothing here is a wire type.


class Chunk(msgspec.Struct, frozen=True, gc=False):
    seq: int
    stream: str
    data: bytes


class ReadSnapshot(msgspec.Struct, frozen=True, gc=False):
    chunks: list[Chunk]
    next_seq: int
    exited: bool
    exit_code: int | None
    closed: bool
    sandbox_denied: bool = False


class _Entry(msgspec.Struct, frozen=True, gc=False):
    """One retained chunk: its bytes in memory (``offset`` -1), or ``size`` bytes at
    ``offset`` in the spill ring (``data`` None)."""

    seq: int
    stream: str
    size: int
    offset: int
    data: bytes | None


NEVER_SPILL = sys.maxsize
"""A spill threshold no log reaches: everything stays in memory."""


class OutputLog:
    """Retained chunks and lifecycle facts of one process, plus waiters for new events.

    Args:
        max_bytes: the retention bound in bytes; the oldest chunks are dropped whole past it.
        max_chunks: the retention bound in chunks.
        spill_threshold_bytes: how many bytes of output stay in memory. The first chunk that
            would take the in-memory bytes past it, and every chunk after it, go to the spill
            file (0: spill from the first chunk; :data:`NEVER_SPILL`, the default: never).
        spill_dir: where the unnamed spill file is made (default :func:`tempfile.gettempdir`).

    :meth:`close` releases the spill file and forgets the retained output; the process
    manager calls it when the process is evicted or its session ends.
    """

    __slots__ = (
        "_entries",
        "_fd",
        "_max_bytes",
        "_max_chunks",
        "_memory_bytes",
        "_spill_dir",
        "_spill_threshold",
        "_spilling",
        "_tail",
        "_waiters",
        "closed",
        "exit_code",
        "last_seq",
        "produced_bytes",
        "retained_bytes",
        "sandbox_denied",
    )

    def __init__(
        self,
        max_bytes: int,
        max_chunks: int,
        *,
        spill_threshold_bytes: int = NEVER_SPILL,
        spill_dir: str | None = None,
    ) -> None:
        self._entries: deque[_Entry] = deque()
        self._max_bytes = max_bytes
        self._max_chunks = max_chunks
        self._waiters: list[asyncio.Future[None]] = []
        self.retained_bytes = 0
        self.produced_bytes = 0  # every byte ever appended, retained or not
        self.last_seq = 0
        self.exit_code: int | None = None
        self.sandbox_denied = False
        self.closed = False
        # Spilling. The ring's capacity is ``max_bytes``: a chunk is written only after the
        # chunks it displaces are evicted, so the live part of the ring (the file-backed
        # entries, contiguous from the oldest one's offset up to ``_tail``) plus the new chunk
        # never exceeds it, and a write never lands on a retained chunk.
        self._spill_threshold = spill_threshold_bytes
        self._spill_dir = spill_dir
        self._spilling = False  # new chunks go to the file
        self._fd = -1  # the spill file, once made
        self._tail = 0  # where the next spilled chunk starts in the ring
        self._memory_bytes = 0  # the part of retained_bytes held in memory

    def __del__(self) -> None:
        # A backstop only: the manager closes every log it drops.
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)

    @property
    def exited(self) -> bool:
        return self.exit_code is not None

    @property
    def next_seq(self) -> int:
        return self.last_seq + 1

    @property
    def spill_fd(self) -> int:
        """The spill file's descriptor, or -1 while there is none (for tests and diagnostics)."""
        return self._fd

    @property
    def spilled_bytes(self) -> int:
        """The part of :attr:`retained_bytes` that lives in the spill file."""
        return self.retained_bytes - self._memory_bytes

    def append(self, stream: str, data: bytes) -> int:
        """Retain one chunk, evicting the oldest past the bounds; returns its seq.

        Eviction happens before the chunk is stored, with the chunk counted in: the outcome is
        the same as storing first and then dropping the oldest while over a bound (a chunk
        bigger than the whole bound is not kept, and everything older goes too).
        """
        self.last_seq = seq = self.last_seq + 1
        size = len(data)
        self.produced_bytes += size
        entries = self._entries
        if size > self._max_bytes or self._max_chunks < 1:
            while entries:
                self._evict_oldest()
        else:
            room = self._max_bytes - size
            count = self._max_chunks - 1
            while self.retained_bytes > room or len(entries) > count:
                self._evict_oldest()
            offset = -1
            if self._spilling or (
                self._memory_bytes + size > self._spill_threshold and self._start_spilling()
            ):
                offset = self._spill(data, size)
            if offset < 0:
                entries.append(_Entry(seq, stream, size, -1, data))
                self._memory_bytes += size
            else:
                entries.append(_Entry(seq, stream, size, offset, None))
            self.retained_bytes += size
        self._wake()
        return seq

    def mark_exited(self, exit_code: int, sandbox_denied: bool = False) -> int:
        self.last_seq = seq = self.last_seq + 1
        self.exit_code = exit_code
        self.sandbox_denied = sandbox_denied
        self._wake()
        return seq

    def mark_closed(self) -> int:
        self.last_seq = seq = self.last_seq + 1
        self.closed = True
        self._wake()
        return seq

    def read(self, after_seq: int, max_bytes: int | None) -> ReadSnapshot:
        """Chunks after ``after_seq`` within ``max_bytes`` (PROTOCOL.md §7.4 step 1-3).

        The first chunk is always taken, however large; later chunks only while they fit.
        """
        entries = self._entries
        taken: list[Chunk] = []
        next_seq = self.last_seq + 1
        if entries and entries[-1].seq > after_seq:
            start = (
                0 if entries[0].seq > after_seq else bisect_right(entries, after_seq, key=_seq_of)
            )
            total = 0
            for index in range(start, len(entries)):
                entry = entries[index]
                size = entry.size
                if taken and max_bytes is not None and total + size > max_bytes:
                    break
                data = entry.data
                if data is None:
                    data = self._load(entry.offset, size)
                taken.append(Chunk(entry.seq, entry.stream, data))
                total += size
                next_seq = entry.seq + 1
                if max_bytes is not None and total >= max_bytes:
                    break
        return ReadSnapshot(
            taken,
            next_seq,
            self.exit_code is not None,
            self.exit_code,
            self.closed,
            self.sandbox_denied,
        )

    def waiter(self) -> asyncio.Future[None]:
        """A future resolved at the next event (output, exit or close)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        return future

    def close(self) -> None:
        """Release the spill file and forget the retained output (the process is gone).

        Idempotent. Seqs and lifecycle facts stay; a later :meth:`append` (none is expected)
        would be kept in memory.
        """
        self._entries.clear()
        self.retained_bytes = self._memory_bytes = 0
        self._spilling = False
        self._spill_threshold = NEVER_SPILL
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    # ---- internals ----------------------------------------------------------------------------

    def _wake(self) -> None:
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for future in waiters:
                if not future.done():
                    future.set_result(None)

    def _evict_oldest(self) -> None:
        entry = self._entries.popleft()
        self.retained_bytes -= entry.size
        if entry.data is not None:
            self._memory_bytes -= entry.size

    def _start_spilling(self) -> bool:
        """Make the spill file; on failure stay in memory for good (never fail the process)."""
        fd = _open_unnamed(self._spill_dir)
        if fd < 0:
            self._spill_threshold = NEVER_SPILL
            return False
        self._fd = fd
        self._spilling = True
        return True

    def _spill(self, data: bytes, size: int) -> int:
        """Write ``data`` at the ring's tail; its offset, or -1 if the write failed (then
        this chunk and every later one stay in memory; spilled chunks stay readable)."""
        fd = self._fd
        capacity = self._max_bytes
        offset = self._tail
        end = offset + size
        try:
            if end <= capacity:
                if os.pwrite(fd, data, offset) != size:
                    _pwrite_all(fd, memoryview(data), offset)
            else:  # wraps: the head of the chunk ends the ring, the rest starts it again
                view = memoryview(data)
                first = capacity - offset
                _pwrite_all(fd, view[:first], offset)
                _pwrite_all(fd, view[first:], 0)
                end -= capacity
        except OSError:
            self._spilling = False
            self._spill_threshold = NEVER_SPILL
            return -1
        self._tail = 0 if end == capacity else end
        return offset

    def _load(self, offset: int, size: int) -> bytes:
        """The ``size`` bytes of a spilled chunk at ``offset`` (wrapping past the ring's end)."""
        fd = self._fd
        end = offset + size
        capacity = self._max_bytes
        if end <= capacity:
            data = os.pread(fd, size, offset)
        else:
            data = os.pread(fd, capacity - offset, offset) + os.pread(fd, end - capacity, 0)
        if len(data) != size:  # pragma: no cover - the bytes were written; only damage does this
            raise OSError(f"spill file: read {len(data)} of {size} bytes at {offset}")
        return data


def is_ready(snapshot: ReadSnapshot, after_seq: int) -> bool:
    """Whether a long-poll should return ``snapshot`` now rather than wait (§7.4 step 4)."""
    return bool(
        snapshot.chunks
        or snapshot.closed
        or (snapshot.exited and after_seq < snapshot.next_seq - 1)
    )


def _seq_of(entry: _Entry) -> int:
    return entry.seq


def _open_unnamed(directory: str | None) -> int:
    """A new unnamed read-write file (close-on-exec) in ``directory``, or -1 if none can be
    made. ``O_TMPFILE`` gives a file that never has a name; where the file system lacks it,
    :func:`tempfile.TemporaryFile` makes a named one and unlinks it at once."""
    import tempfile  # on first use: few processes print enough to spill

    directory = directory or tempfile.gettempdir()
    flag = getattr(os, "O_TMPFILE", 0)
    if flag:
        try:
            return os.open(directory, flag | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError:
            pass
    try:
        with tempfile.TemporaryFile(buffering=0, dir=directory) as file:
            return os.dup(file.fileno())  # non-inheritable, like every fd Python makes
    except OSError:
        return -1


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    """``pwrite`` until all of ``view`` is written (a short write means the disk is full; the
    next call then raises)."""
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:  # pragma: no cover - a regular file reports errors by raising
            raise OSError("spill file: pwrite wrote nothing")
        view = view[written:]
        offset += written
