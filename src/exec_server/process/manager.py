"""The process table of one session: start, read, write, signal, terminate, and eviction.

The manager owns every child it starts and composes the parts that look after one: an
:class:`~.reading.OutputReader` for its output, a :class:`~.stdin.StdinQueue` for its stdin,
the session's :class:`~.exits.ExitWatcher` for its exit, and an :class:`~.output.OutputLog`
for what it printed. Events leave through an :class:`EventSink` in seq order; the sink may
ask the manager to stop reading (backpressure) and calls :meth:`ProcessManager.resume_output`
when it can take more.

A process moves through explicit states: STARTING -> RUNNING -> EXITED -> CLOSED, where
CLOSED means the exit is known *and* every output stream has ended. Refusals are the domain
errors of :mod:`.errors`; the method layer words them for the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import signal
from collections.abc import Callable, Iterator
from typing import Protocol

from ..config import Limits
from ..errors import os_error_message
from .errors import (
    DuplicateProcess,
    InvalidSpawn,
    ProcessStarting,
    SpawnFailed,
    StdinBroken,
    TooManyProcesses,
    UnknownProcess,
)
from .exits import ExitWatcher
from .output import OutputLog, ReadSnapshot, is_ready
from .reading import OutputReader, Stream
from .spawn import Child, SpawnRequest, exit_code_from_status, signal_group
from .stdin import ByteBudget, StdinQueue


class ProcessState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    EXITED = "exited"
    CLOSED = "closed"


class WriteStatus(enum.Enum):
    """What became of a write to a process's stdin."""

    ACCEPTED = enum.auto()
    UNKNOWN_PROCESS = enum.auto()
    STDIN_CLOSED = enum.auto()
    """The process was started without a writable stdin."""
    STARTING = enum.auto()


class EventSink(Protocol):
    """Where a manager's events go. ``output`` returns False to ask the producer to pause."""

    def output(self, process_id: str, seq: int, stream: str, data: bytes) -> bool: ...

    def exited(self, process_id: str, seq: int, exit_code: int) -> None: ...

    def closed(self, process_id: str, seq: int) -> None: ...


Spawner = Callable[[SpawnRequest], Child]


class ManagedProcess:
    """One entry of the table: the child and the parts that look after it."""

    __slots__ = (
        "child",
        "eviction",
        "log",
        "process_id",
        "reader",
        "reaped",
        "state",
        "stdin",
        "terminated",
        "tty",
        "writable_stdin",
    )

    def __init__(self, process_id: str, request: SpawnRequest, log: OutputLog) -> None:
        self.process_id = process_id
        self.tty = request.tty
        self.writable_stdin = request.tty or request.pipe_stdin
        self.log = log
        self.state = ProcessState.STARTING
        self.child: Child | None = None
        self.reader: OutputReader | None = None
        self.stdin: StdinQueue | None = None
        self.terminated = False
        self.reaped = False
        self.eviction: asyncio.TimerHandle | None = None

    @property
    def paused(self) -> bool:
        """Whether reading its output waits for the client to catch up."""
        return self.reader is not None and self.reader.paused


class ProcessManager:
    """The process table of one session."""

    def __init__(
        self, limits: Limits, sink: EventSink, spawner: Spawner, exits: ExitWatcher
    ) -> None:
        self.limits = limits
        self.sink = sink
        self._spawn = spawner
        self._exits = exits
        self._loop = asyncio.get_running_loop()
        self._processes: dict[str, ManagedProcess] = {}
        self._paused: set[ManagedProcess] = set()
        self._unreaped: set[ManagedProcess] = set()
        self._reaped_event = asyncio.Event()
        self._stdin_budget = ByteBudget(limits.stdin_session_max_bytes)
        self._not_closed = 0  # processes counted against max_processes_per_session

    # ---- table ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._processes)

    def __iter__(self) -> Iterator[ManagedProcess]:
        return iter(list(self._processes.values()))

    def get(self, process_id: str) -> ManagedProcess:
        """The entry, or :class:`UnknownProcess` (never existed or evicted)."""
        process = self._processes.get(process_id)
        if process is None:
            raise UnknownProcess(process_id)
        return process

    def _started(self, process_id: str) -> ManagedProcess:
        """The entry of a process past STARTING, or the error that says why not."""
        process = self.get(process_id)
        if process.state is ProcessState.STARTING:
            raise ProcessStarting(process_id)
        return process

    # ---- start ----------------------------------------------------------------------------

    def start(self, process_id: str, request: SpawnRequest) -> None:
        """Spawn a child under ``process_id``; raises a :class:`~.errors.ProcessError`."""
        if not request.argv:
            raise InvalidSpawn(process_id, "argv must not be empty")
        if process_id in self._processes:
            raise DuplicateProcess(process_id)
        limits = self.limits
        if self._not_closed >= limits.max_processes_per_session:
            raise TooManyProcesses(process_id, str(limits.max_processes_per_session))
        log = OutputLog(
            limits.retained_output_bytes,
            limits.retained_output_chunks,
            spill_threshold_bytes=limits.spill_threshold_bytes,
        )
        process = ManagedProcess(process_id, request, log)
        self._processes[process_id] = process  # reserved while STARTING
        try:
            child = self._spawn(request)
        except OSError as exc:
            del self._processes[process_id]
            raise SpawnFailed(process_id, os_error_message(exc)) from None
        except (ValueError, TypeError) as exc:  # embedded NUL, '=' in an env name, ...
            del self._processes[process_id]
            raise InvalidSpawn(process_id, str(exc)) from None
        self._run(process, child)

    def _run(self, process: ManagedProcess, child: Child) -> None:
        process.child = child
        process.state = ProcessState.RUNNING
        self._not_closed += 1
        self._unreaped.add(process)
        self._exits.watch(child.pid, lambda status: self._on_exit(process, status))
        if child.stdin is not None:
            process.stdin = StdinQueue(
                process.process_id,
                child.stdin,
                owned=not child.tty,
                buffer_bytes=self.limits.stdin_buffer_bytes,
                max_bytes=self.limits.stdin_process_max_bytes,
                write_id_memory=self.limits.write_id_memory,
                budget=self._stdin_budget,
            )
        streams = [Stream(child.stdout, "pty" if child.tty else "stdout", owned=not child.tty)]
        if child.stderr is not None:
            streams.append(Stream(child.stderr, "stderr", owned=True))
        process.reader = OutputReader(
            streams,
            self.limits.read_chunk_bytes,
            lambda stream, data: self._emit_output(process, stream, data),
            lambda: self._maybe_close(process),
        )

    # ---- output ---------------------------------------------------------------------------

    def _emit_output(self, process: ManagedProcess, stream: str, data: bytes) -> None:
        seq = process.log.append(stream, data)
        if not self.sink.output(process.process_id, seq, stream, data):
            reader = process.reader
            if reader is not None and not reader.paused:
                reader.pause()
                self._paused.add(process)

    def resume_output(self) -> None:
        """Read every paused process again (the sink has room)."""
        paused, self._paused = self._paused, set()
        for process in paused:
            if process.reader is not None:
                process.reader.resume()

    # ---- exit and close -------------------------------------------------------------------

    def _on_exit(self, process: ManagedProcess, status: int) -> None:
        code = exit_code_from_status(status)
        child = process.child
        if child is not None and child.popen is not None:
            child.popen.returncode = code  # keeps subprocess from reaping or warning about it
        process.reaped = True
        self._unreaped.discard(process)
        if not self._unreaped:
            self._reaped_event.set()
        if process.state is ProcessState.CLOSED:
            return  # torn down with its session: reaped, and nobody is listening any more
        reader = process.reader
        if reader is not None:
            reader.drain()  # output written before it died comes before its exit
        process.state = ProcessState.EXITED
        seq = process.log.mark_exited(code)
        self.sink.exited(process.process_id, seq, code)
        self._maybe_close(process)

    def _maybe_close(self, process: ManagedProcess) -> None:
        reader = process.reader
        if process.state is not ProcessState.EXITED or (reader and reader.open_streams):
            return
        process.state = ProcessState.CLOSED
        self._not_closed -= 1
        self._release(process)
        seq = process.log.mark_closed()
        self.sink.closed(process.process_id, seq)
        process.eviction = self._loop.call_later(
            self.limits.closed_retention_s, self._evict, process
        )

    def _evict(self, process: ManagedProcess) -> None:
        if self._processes.get(process.process_id) is process:
            del self._processes[process.process_id]
        process.log.close()  # its spill file, if any

    def _release(self, process: ManagedProcess) -> None:
        """Close every fd of the process (its reader's, its stdin, a PTY master)."""
        if process.reader is not None:
            process.reader.close()
        if process.stdin is not None:
            process.stdin.drop()
        child = process.child
        if child is not None and child.tty and child.stdout >= 0:
            with contextlib.suppress(OSError):
                os.close(child.stdout)
            child.stdout = -1
        self._paused.discard(process)

    # ---- read -----------------------------------------------------------------------------

    def read(self, process_id: str, after_seq: int, max_bytes: int | None) -> ReadSnapshot:
        return self._started(process_id).log.read(after_seq, max_bytes)

    async def wait_read(
        self, process_id: str, after_seq: int, max_bytes: int | None, wait_ms: int
    ) -> ReadSnapshot:
        """Long-poll: return as soon as §7.4 says so, or at the deadline."""
        log = self._started(process_id).log
        loop = self._loop
        deadline = loop.time() + wait_ms / 1000
        while True:
            snapshot = log.read(after_seq, max_bytes)
            remaining = deadline - loop.time()
            if is_ready(snapshot, after_seq) or remaining <= 0:
                return snapshot
            waiter = log.waiter()
            timer = loop.call_later(min(remaining, 86400.0), _resolve, waiter)
            try:
                await waiter
            finally:
                timer.cancel()

    # ---- write ----------------------------------------------------------------------------

    def write(
        self, process_id: str, data: bytes, write_id: str | None
    ) -> WriteStatus | asyncio.Future[None]:
        """Queue bytes for the child's stdin; the status, or a future resolved once they are
        queued (the queue was full). Writes to one process keep their order either way."""
        process = self._processes.get(process_id)
        if process is None:
            return WriteStatus.UNKNOWN_PROCESS
        if process.state is ProcessState.STARTING:
            return WriteStatus.STARTING
        if not process.writable_stdin:
            return WriteStatus.STDIN_CLOSED
        if process.terminated:
            raise StdinBroken(process_id)
        stdin = process.stdin
        if stdin is None or (write_id is not None and stdin.seen(write_id)):
            return WriteStatus.ACCEPTED
        queued = stdin.write(data)
        return WriteStatus.ACCEPTED if queued is None else queued

    # ---- signals --------------------------------------------------------------------------

    def terminate(self, process_id: str) -> bool:
        """SIGKILL to the process group; True when the process was running."""
        process = self._processes.get(process_id)
        if process is None or process.state is not ProcessState.RUNNING:
            return False
        self._kill(process)
        return True

    def signal(self, process_id: str, signum: int) -> None:
        process = self._started(process_id)
        if process.state is ProcessState.RUNNING and process.child is not None:
            signal_group(process.child.pid, signum)

    def _kill(self, process: ManagedProcess) -> None:
        """The one place a process is killed: SIGKILL to its whole group, stdin dropped."""
        process.terminated = True
        child = process.child
        if child is not None and not process.reaped:
            signal_group(child.pid, signal.SIGKILL)
        if process.stdin is not None and not process.tty:
            process.stdin.drop()

    # ---- teardown -------------------------------------------------------------------------

    def kill_all(self) -> None:
        """Session teardown: kill every child, close every fd, send nothing more.

        Children are still reaped (their exits stay watched) so no zombie is left behind.
        """
        processes = list(self._processes.values())
        self._processes.clear()
        for process in processes:
            if process.eviction is not None:
                process.eviction.cancel()
            child = process.child
            if child is not None and not process.reaped:
                self._kill(process)
            elif child is not None and not _pid_in_use(child.pid):
                # The leader is reaped, but its group may live on: a background job holding
                # the output open (exited) or one that let go of it (closed). While any member
                # lives, nobody else can take the group id; once the pid itself is in use
                # again, a live group with that id belongs to the new process (only a process
                # can create a group with its own id), so it is left alone.
                signal_group(child.pid, signal.SIGKILL, include_leader=False)
            self._release(process)
            process.log.close()  # its spill file, if any
            process.state = ProcessState.CLOSED
        self._not_closed = 0

    async def wait_reaped(self, timeout: float) -> None:
        """Wait until every child has been reaped (after :meth:`kill_all`)."""
        if not self._unreaped:
            return
        self._reaped_event.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._reaped_event.wait(), timeout)


def _pid_in_use(pid: int) -> bool:
    """Whether some process (perhaps a zombie) has this pid right now."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
