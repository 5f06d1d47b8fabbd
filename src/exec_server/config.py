"""Every constant the protocol promises, in one place, as configuration.

Defaults equal the reference's where it has one (PROTOCOL.md Part A §A2); tests and the
CLI may shorten them without touching code.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds and timers of one server.

    Attributes:
        retained_output_bytes: output kept per process for ``process/read`` (reference: 1 MiB);
            oldest chunks are evicted whole past it.
        retained_output_chunks: a second bound on the same log, so a child that prints one
            byte at a time cannot make a million tiny chunks (ours; the reference has none).
        closed_retention_s: how long a closed process stays readable (reference: 30 s).
        detach_grace_s: how long a disconnected session can be resumed before its processes
            are killed (Part A: 30 s; 0 kills at once).
        read_chunk_bytes: the largest single read from a child's pipe or PTY. The reference
            reads 8 KiB; we read up to 64 KiB (a Linux pipe's capacity) so bulk output costs
            an eighth of the notifications. Chunk boundaries were never part of the contract.
        outbound_queue_bytes: the per-connection outbound buffer. Past it the server stops
            reading that connection's requests and its session's children until the client
            catches up (the reference bounds its queue at 128 messages; bytes are what cost
            memory).
        stdin_buffer_bytes: bytes queued for one child's stdin before ``process/write`` waits.
        write_id_memory: how many recent ``writeId`` values each process remembers for dedupe.
        max_message_bytes: the largest inbound JSON-RPC message.
        max_waiting_requests: requests of one connection that may wait at once (long polls,
            writes to a full stdin, file I/O). Past it the server reads no more of that
            connection's requests until one finishes: memory stays bounded, and a long poll
            still never delays the requests behind it below that count.
        fs_read_file_max_bytes: the largest file ``fs/readFile`` returns whole (reference:
            512 MiB); bigger files are read through handles in blocks.
        fs_block_max_bytes: the largest ``fs/readBlock`` / ``fs/writeBlock`` (reference: 1 MiB).
        fs_max_open_handles: file handles one session may hold open at once (reference: 128).
        http_response_max_bytes: the largest body a non-streaming ``http/request`` collects
            (ours; the reference has none). Bigger bodies need ``streamResponse``.
        spill_threshold_bytes: retained output one process keeps in the Python heap (ours).
            Past it, the rest of that process's output is retained in an unnamed temporary
            file used as a ring buffer: page cache the kernel can write back and reclaim,
            where the heap could not be (see ``process/output.py``). 0 spills from the first
            byte; a value at or above ``retained_output_bytes`` never spills.
        pty_thread_after_bytes: once a PTY has printed this much, its master is read by a
            native thread of its own (``process/_pump.c``) instead of the event loop, so the
            kernel's refill of the PTY's 4 KiB line buffer overlaps the sending of output
            (ours). Interactive PTYs never get that far; None never moves a PTY (nor does a
            server built without the C extension).
    """

    retained_output_bytes: int = MIB
    retained_output_chunks: int = 32768
    closed_retention_s: float = 30.0
    detach_grace_s: float = 30.0
    read_chunk_bytes: int = 64 * 1024
    outbound_queue_bytes: int = 4 * MIB
    stdin_buffer_bytes: int = 4 * MIB
    write_id_memory: int = 4096
    max_message_bytes: int = 64 * MIB
    max_waiting_requests: int = 1024
    fs_read_file_max_bytes: int = 512 * MIB
    fs_block_max_bytes: int = MIB
    fs_max_open_handles: int = 128
    http_response_max_bytes: int = 512 * MIB
    spill_threshold_bytes: int = 64 * 1024
    pty_thread_after_bytes: int | None = 256 * 1024
