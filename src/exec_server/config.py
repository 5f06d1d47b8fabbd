"""Every constant the protocol promises, in one place, as configuration.

Defaults equal the reference's where it has one (PROTOCOL.md Part A §A2); tests and the
CLI may shorten them without touching code.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from .sandbox.policy import Confinement

MIB = 1024 * 1024


class Limits(msgspec.Struct, frozen=True):
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
        stdin_buffer_bytes: bytes queued for one child's stdin before ``process/write`` waits
            (the request stays pending until the child has read enough: backpressure).
        stdin_process_max_bytes: bytes held for one child's stdin, queued or waiting, past
            which ``process/write`` is refused with an error saying so.
        stdin_session_max_bytes: the same bound for all the children of one session.
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
        max_sessions: sessions one server holds at once, attached or waiting to be resumed;
            past it ``initialize`` is refused.
        max_processes_per_session: processes of one session that have not closed yet; past
            it ``process/start`` is refused.
        http_response_max_bytes: the largest body a non-streaming ``http/request`` collects
            (ours; the reference has none). Bigger bodies need ``streamResponse``.
        spill_threshold_bytes: retained output one process keeps in the Python heap (ours).
            Past it, the rest of that process's output is retained in an unnamed temporary
            file used as a ring buffer: page cache the kernel can write back and reclaim,
            where the heap could not be (see ``process/output.py``). 0 spills from the first
            byte; a value at or above ``retained_output_bytes`` never spills.
        fs_max_open_handles_total: file handles all sessions together may hold (ours; at
            most half the open-file limit): past it a session still opens its first few
            (``fs.handles.GUARANTEED_PER_SESSION``), no more.
        fs_max_watched_paths: paths one session's ``fs/watchMissing`` may watch at once
            (a missing path counts once, ``present`` once); past it the watch is refused
            (``watching: false``). All sessions share one inotify instance (ours).
        handshake_timeout_s: how long a connection may take to become a WebSocket (TLS
            included, for ``wss://``) before it is dropped (the reference: 10 s for the
            upgrade; its TLS handshake waits 60 s, ours the same 10 s).
        max_pending_connections: connections of one listener still in that handshake; a
            new one past it drops the oldest, so idle sockets cannot hold every descriptor
            while a client with the token waits (ours).
        forward_window_bytes: per forwarded TCP stream, the bytes a client may send before
            the server grants more (ours; ``docs/forwarding.md``): the most of a client's
            bytes one stream holds while its destination does not read.
        forward_read_bytes: the largest single read from a forwarded socket, and so the
            largest ``forward/data`` notification.
        forward_max_streams: forwarded streams one connection may have open at once; with
            ``forward_window_bytes`` it bounds what one session's streams can hold.
        forward_connect_timeout_s: how long ``forward/open`` tries to connect.
        http_max_streams: ``http/request`` response bodies one connection may stream at
            once (ours; the reference has none): each holds a socket to its origin.
    """

    retained_output_bytes: int = MIB
    retained_output_chunks: int = 32768
    closed_retention_s: float = 30.0
    detach_grace_s: float = 30.0
    read_chunk_bytes: int = 64 * 1024
    outbound_queue_bytes: int = 4 * MIB
    stdin_buffer_bytes: int = 4 * MIB
    stdin_process_max_bytes: int = 16 * MIB
    stdin_session_max_bytes: int = 64 * MIB
    write_id_memory: int = 4096
    max_message_bytes: int = 64 * MIB
    max_waiting_requests: int = 1024
    fs_read_file_max_bytes: int = 512 * MIB
    fs_block_max_bytes: int = MIB
    fs_max_open_handles: int = 128
    max_sessions: int = 256
    max_processes_per_session: int = 1024
    http_response_max_bytes: int = 512 * MIB
    spill_threshold_bytes: int = 64 * 1024
    fs_max_open_handles_total: int = 1024
    fs_max_watched_paths: int = 256
    handshake_timeout_s: float = 10.0
    max_pending_connections: int = 256
    forward_window_bytes: int = 2 * MIB
    forward_read_bytes: int = 256 * 1024
    forward_max_streams: int = 128
    forward_connect_timeout_s: float = 10.0
    http_max_streams: int = 128


class Runtime(msgspec.Struct, frozen=True):
    """The native and event-loop choices of one server, resolved once when it is built.

    Each choice is a faster way to do what a pure-Python twin also does, with the same
    results (the tests run both): nothing is chosen at import time, and nothing starts a
    thread. Ask for what you want; :meth:`resolve` keeps what this machine can do.

    Attributes:
        native_spawn: start children through the vfork extension ``process/_spawn.c``
            instead of ``subprocess.Popen`` (which must run a Python ``preexec_fn`` in a
            fully forked child).
        uvloop: run on uvloop rather than the standard asyncio loop (the command takes it
            for WebSocket listeners, not for stdio: see ``--loop``).
        pybase64: encode output chunks with pybase64 (SIMD, chosen at run time) rather
            than msgspec's encoder.
        pidfd: watch each child's exit through a pidfd on the event loop; without one (a
            kernel before 5.3) a thread per child waits for it.
        subreaper: the server adopts descendants orphaned by its children's exits (a child
            subreaper), reaps them, and kills them with the child they came from. The
            ``exec-server`` command turns it on (as it does when it runs as PID 1); a program
            embedding the server, which may have children of its own, leaves it off.
        return_memory: a while after processes or sessions are let go, run a full garbage
            collection and give free heap back to the system (``memory.py``). The command
            turns it on; a program embedding the server keeps its own memory policy.
    """

    native_spawn: bool = True
    uvloop: bool = True
    pybase64: bool = True
    pidfd: bool = True
    subreaper: bool = False
    return_memory: bool = False

    def resolve(self) -> Runtime:
        """This runtime, less what is not installed or not supported here."""
        return msgspec.structs.replace(
            self,
            native_spawn=self.native_spawn and _importable("exec_server.process._spawn"),
            uvloop=self.uvloop and _importable("uvloop"),
            pybase64=self.pybase64 and _importable("pybase64"),
            pidfd=self.pidfd and hasattr(os, "pidfd_open"),
            subreaper=self.subreaper or os.getpid() == 1,
        )


def _importable(name: str) -> bool:
    """Whether ``name`` imports (it is then used, so importing it now costs nothing extra)."""
    try:
        __import__(name)
    except ImportError:
        return False
    return True


class Guards(msgspec.Struct, frozen=True):
    """What the operator imposes on every client, whatever the client asks.

    Attributes:
        env_exclude: glob patterns (as in ``envPolicy``) of environment variable names never
            passed to a child: not inherited, not set by ``envPolicy.set``, not passed in
            ``env``.
        http_deny: IP networks (CIDR text) that ``http/request`` may not connect to,
            checked after DNS resolution and on every redirect.
        confinement: a sandbox profile every process and every ``fs/*`` call is held to,
            narrowing whatever the client asks (``--confine``); with its network restricted,
            ``http/request`` is refused.
        private_paths: the server's own files (its Unix socket, token file, TLS certificate
            and key, runtime directory), absolute and canonical: hidden inside every
            sandbox, whatever the profile, so no sandboxed child reaches the control channel.
        pids_limit: the most processes one sandboxed command may have at once (a pids
            cgroup per sandbox, where the server can create one; 0: none).
    """

    env_exclude: tuple[str, ...] = ()
    http_deny: tuple[str, ...] = ()
    confinement: Confinement | None = None
    private_paths: tuple[str, ...] = ()
    pids_limit: int = 1024
