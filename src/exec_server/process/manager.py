"""The process table of one session: start, read, write, signal, terminate, and eviction.

The manager owns every child it starts: the fds are read with event-loop callbacks (no task
per stream; a streaming PTY by a native reader thread that wakes the loop, see
``reading.PUMP``), the exit is watched through a pidfd, and the real status is always reaped.
Events leave through an :class:`EventSink` in seq order; the sink may ask the manager to stop
reading (backpressure), and calls :meth:`ProcessManager.resume_output` when it can take more.

A process moves through explicit states: STARTING -> RUNNING -> EXITED -> CLOSED, where
CLOSED means the exit is known *and* every output stream has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import signal
from collections import OrderedDict, deque
from collections.abc import Awaitable, Iterator
from typing import TYPE_CHECKING, Protocol

from ..config import Limits
from ..errors import internal_error, invalid_params, invalid_request, os_error_message
from .output import OutputLog, ReadSnapshot
from .reading import PUMP, gather
from .spawn import Child, SpawnRequest, exit_code_from_status, signal_group, spawn

if TYPE_CHECKING:
    from ._pump import Pump


class ProcessState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    EXITED = "exited"
    CLOSED = "closed"


class EventSink(Protocol):
    """Where a manager's events go. ``output`` returns False to ask the producer to pause."""

    def output(self, process_id: str, seq: int, stream: str, data: bytes) -> bool: ...

    def exited(self, process_id: str, seq: int, exit_code: int) -> None: ...

    def closed(self, process_id: str, seq: int) -> None: ...


SIGNALS_BY_NAME: dict[str, signal.Signals] = {
    "interrupt": signal.SIGINT,
    **{
        name: getattr(signal, "SIG" + name)
        for name in ("TERM", "HUP", "KILL", "INT", "QUIT", "USR1", "USR2", "STOP", "CONT", "WINCH")
    },
}
"""``process/signal`` values: the reference's ``interrupt`` plus plain signal names (Part A §A1)."""


def parse_signal(name: str) -> signal.Signals:
    key = name.upper().removeprefix("SIG") if name != "interrupt" else name
    try:
        return SIGNALS_BY_NAME[key]
    except KeyError:
        allowed = ", ".join(f"`{n}`" for n in SIGNALS_BY_NAME)
        raise invalid_params(f"unknown signal `{name}`, expected one of {allowed}") from None


class ManagedProcess:
    """One entry of the table: the child, its output log, its stdin queue and its state."""

    __slots__ = (
        "_eviction",
        "_stdin_bytes",
        "_stdin_pending",
        "_stdin_waiters",
        "_write_ids",
        "child",
        "log",
        "open_streams",
        "paused",
        "pidfd",
        "pipe_stdin",
        "process_id",
        "pump",
        "pump_countdown",
        "reaped",
        "state",
        "terminated",
        "tty",
    )

    def __init__(self, process_id: str, tty: bool, pipe_stdin: bool, log: OutputLog) -> None:
        self.process_id = process_id
        self.tty = tty
        self.pipe_stdin = pipe_stdin
        self.log = log
        self.state = ProcessState.STARTING
        self.child: Child | None = None
        self.pidfd = -1
        self.open_streams = 0
        self.paused = False
        self.terminated = False
        self.reaped = False
        self.pump: Pump | None = None
        self.pump_countdown = 0  # PTY bytes to go before a pump takes over; 0: never
        self._stdin_pending: deque[memoryview] = deque()
        self._stdin_bytes = 0
        self._stdin_waiters: deque[tuple[bytes, asyncio.Future[None]]] = deque()
        self._write_ids: OrderedDict[str, None] = OrderedDict()
        self._eviction: asyncio.TimerHandle | None = None


class ProcessManager:
    """The process table of one session."""

    def __init__(self, limits: Limits, sink: EventSink) -> None:
        self.limits = limits
        self.sink = sink
        self._loop = asyncio.get_running_loop()
        self._processes: dict[str, ManagedProcess] = {}
        self._paused: set[ManagedProcess] = set()
        self._unreaped: set[ManagedProcess] = set()
        self._reaped_event = asyncio.Event()

    # ---- table ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._processes)

    def __iter__(self) -> Iterator[ManagedProcess]:
        return iter(list(self._processes.values()))

    def get(self, process_id: str) -> ManagedProcess:
        """The entry, or -32600 ``unknown process id`` (never existed or evicted)."""
        process = self._processes.get(process_id)
        if process is None:
            raise invalid_request(f"unknown process id {process_id}")
        return process

    # ---- start ----------------------------------------------------------------------------

    def start(self, process_id: str, request: SpawnRequest) -> None:
        """Spawn a child under ``process_id``; raises :class:`RpcError` on failure."""
        if not request.argv:
            raise invalid_params("argv must not be empty")
        if process_id in self._processes:
            raise invalid_request(f"process {process_id} already exists")
        limits = self.limits
        process = ManagedProcess(
            process_id,
            request.tty,
            request.pipe_stdin,
            OutputLog(
                limits.retained_output_bytes,
                limits.retained_output_chunks,
                spill_threshold_bytes=limits.spill_threshold_bytes,
            ),
        )
        self._processes[process_id] = process  # reserved while STARTING
        try:
            child = spawn(request)
        except OSError as exc:
            del self._processes[process_id]
            raise internal_error(os_error_message(exc)) from None
        except (ValueError, TypeError) as exc:  # embedded NUL, '=' in an env name, ...
            del self._processes[process_id]
            raise invalid_params(f"cannot start process: {exc}") from None
        process.child = child
        process.state = ProcessState.RUNNING
        if child.tty and PUMP is not None and limits.pty_thread_after_bytes is not None:
            process.pump_countdown = max(limits.pty_thread_after_bytes, 1)
        try:
            process.pidfd = os.pidfd_open(child.pid)
        except OSError:  # pragma: no cover - the pid is our unreaped child, so this cannot fail
            process.pidfd = -1
        self._unreaped.add(process)
        loop = self._loop
        if process.pidfd >= 0:
            loop.add_reader(process.pidfd, self._on_exit, process)
        loop.add_reader(child.stdout, self._on_readable, process, child.stdout, _STDOUT[child.tty])
        process.open_streams = 1
        if child.stderr is not None:
            loop.add_reader(child.stderr, self._on_readable, process, child.stderr, "stderr")
            process.open_streams = 2

    # ---- output ---------------------------------------------------------------------------

    def _on_readable(self, process: ManagedProcess, fd: int, stream: str) -> bool:
        """Take what the child wrote on ``fd``; True when a chunk was taken (more may wait)."""
        data = gather(fd, self.limits.read_chunk_bytes)
        if data is None:
            return False
        if not data:
            self._end_stream(process, fd)
            return False
        self._emit_output(process, stream, data)
        if process.pump_countdown > 0:
            process.pump_countdown -= len(data)
            if process.pump_countdown <= 0:
                return self._start_pump(process, fd)
        return True

    # A streaming PTY is read by a native thread (a "pump", see reading.PUMP) while its child
    # runs; the loop watches the pump's eventfd instead of the master. At the exit the loop
    # takes the master back (the pump is stopped and emptied first, so no byte is reordered),
    # which keeps "output before exit" exactly as for every other stream.

    def _start_pump(self, process: ManagedProcess, fd: int) -> bool:
        """Move the reading of PTY master ``fd`` to a pump; False when the loop stops reading."""
        if process.paused:
            process.pump_countdown = 1  # the first chunk after the pause moves it
            return False
        if PUMP is None or process.reaped:
            return True
        try:
            pump = PUMP(fd, 2 * self.limits.read_chunk_bytes)
        except OSError:  # no thread to be had: the loop keeps reading, as before
            return True
        self._loop.remove_reader(fd)
        process.pump = pump
        self._loop.add_reader(pump.fileno(), self._on_pumped, process)
        return False

    def _take(self, pump: Pump) -> bytes | None:
        """What the pump has read, up to a chunk; b"" at the end, which a failed read is too."""
        try:
            return pump.take(self.limits.read_chunk_bytes)
        except OSError:  # ends the stream, as a hung-up PTY does
            return b""

    def _on_pumped(self, process: ManagedProcess) -> None:
        pump = process.pump
        assert pump is not None
        data = self._take(pump)
        if data is None:
            return
        if data:
            self._emit_output(process, "pty", data)
            return
        child = process.child
        assert child is not None
        self._stop_pump(process)
        self._end_stream(process, child.stdout)

    def _stop_pump(self, process: ManagedProcess) -> bool:
        """Stop the pump and emit what it still holds; True when it had seen the end."""
        pump = process.pump
        assert pump is not None
        pump.stop()
        while data := self._take(pump):
            self._emit_output(process, "pty", data)
        ended = pump.ended
        self._drop_pump(process)
        return ended

    def _drop_pump(self, process: ManagedProcess) -> None:
        """Stop watching the pump and close it; whatever it still holds is dropped."""
        pump = process.pump
        assert pump is not None
        self._loop.remove_reader(pump.fileno())
        pump.close()
        process.pump = None

    def _emit_output(self, process: ManagedProcess, stream: str, data: bytes) -> None:
        seq = process.log.append(stream, data)
        if not self.sink.output(process.process_id, seq, stream, data) and not process.paused:
            self._pause(process)

    def _streams(self, process: ManagedProcess) -> list[tuple[int, str]]:
        child = process.child
        if child is None or process.open_streams == 0:
            return []
        streams = [(child.stdout, _STDOUT[child.tty])]
        if child.stderr is not None:
            streams.append((child.stderr, "stderr"))
        return [(fd, name) for fd, name in streams if fd >= 0]

    def _pause(self, process: ManagedProcess) -> None:
        process.paused = True
        self._paused.add(process)
        for fd, _ in self._streams(process):
            self._loop.remove_reader(fd)
        if process.pump is not None:
            self._loop.remove_reader(process.pump.fileno())

    def resume_output(self) -> None:
        """Start reading every paused process again (the sink has room)."""
        paused, self._paused = self._paused, set()
        for process in paused:
            process.paused = False
            pump = process.pump
            for fd, stream in self._streams(process):
                if pump is not None and stream == "pty":
                    self._loop.add_reader(pump.fileno(), self._on_pumped, process)
                else:
                    self._loop.add_reader(fd, self._on_readable, process, fd, stream)

    def _end_stream(self, process: ManagedProcess, fd: int) -> None:
        self._loop.remove_reader(fd)
        child = process.child
        assert child is not None
        if fd == child.stdout:
            if child.tty:
                # The master stays open for writes until close; mark the read side done.
                process.open_streams = 0
            else:
                os.close(fd)
                child.stdout = -1
                process.open_streams -= 1
        elif fd == child.stderr:
            os.close(fd)
            child.stderr = None
            process.open_streams -= 1
        self._maybe_close(process)

    # ---- exit and close -------------------------------------------------------------------

    def _on_exit(self, process: ManagedProcess) -> None:
        child = process.child
        assert child is not None
        try:
            pid, status = os.waitpid(child.pid, os.WNOHANG)
        except ChildProcessError:  # pragma: no cover - someone else reaped it
            pid, status = child.pid, 0
        if pid == 0:
            return
        self._loop.remove_reader(process.pidfd)
        os.close(process.pidfd)
        process.pidfd = -1
        code = exit_code_from_status(status)
        if child.popen is not None:
            child.popen.returncode = code  # keeps subprocess from reaping or warning about it
        process.reaped = True
        self._unreaped.discard(process)
        if not self._unreaped:
            self._reaped_event.set()
        if process.state is ProcessState.CLOSED:
            return  # torn down with its session: reaped, and nobody is listening any more
        # Output the child wrote before it died comes before its exit, when we can take it.
        if process.pump is not None and not process.paused:
            # While paused the pump stays: it stops when full, and delivers the end later.
            if self._stop_pump(process):
                self._end_stream(process, child.stdout)
            elif not process.paused:
                self._loop.add_reader(child.stdout, self._on_readable, process, child.stdout, "pty")
        if not process.paused:
            for fd, stream in self._streams(process):
                self._drain(process, fd, stream)
        process.state = ProcessState.EXITED
        seq = process.log.mark_exited(code)
        self.sink.exited(process.process_id, seq, code)
        self._maybe_close(process)

    def _drain(self, process: ManagedProcess, fd: int, stream: str) -> None:
        for _ in range(64):  # bounded: a grandchild may keep writing forever
            if process.paused or process.open_streams == 0:
                return
            try:
                if not self._on_readable(process, fd, stream):
                    return
            except OSError:
                return  # the exit is still reported; the reader callback sees the error

    def _maybe_close(self, process: ManagedProcess) -> None:
        if process.state is not ProcessState.EXITED or process.open_streams > 0:
            return
        process.state = ProcessState.CLOSED
        self._close_fds(process)
        seq = process.log.mark_closed()
        self.sink.closed(process.process_id, seq)
        process._eviction = self._loop.call_later(
            self.limits.closed_retention_s, self._evict, process
        )

    def _evict(self, process: ManagedProcess) -> None:
        if self._processes.get(process.process_id) is process:
            del self._processes[process.process_id]
        process.log.close()  # its spill file, if any

    def _close_fds(self, process: ManagedProcess) -> None:
        child = process.child
        if child is None:
            return
        if process.pump is not None:  # stopped before its fd is closed under it
            self._drop_pump(process)
        for fd in {child.stdout, child.stderr, child.stdin} - {None, -1}:
            assert fd is not None
            with contextlib.suppress(OSError):
                self._loop.remove_reader(fd)
                self._loop.remove_writer(fd)
                os.close(fd)
        child.stdout, child.stderr, child.stdin = -1, None, None
        process.open_streams = 0
        self._fail_stdin_waiters(process)
        self._paused.discard(process)

    # ---- read -----------------------------------------------------------------------------

    def read(self, process_id: str, after_seq: int, max_bytes: int | None) -> ReadSnapshot:
        process = self._processes.get(process_id)
        if process is None or process.state is ProcessState.STARTING:
            process = self._readable(process_id)  # raises the right error
        return process.log.read(after_seq, max_bytes)

    def _readable(self, process_id: str) -> ManagedProcess:
        process = self.get(process_id)
        if process.state is ProcessState.STARTING:
            raise invalid_request(f"process id {process_id} is starting")
        return process

    async def wait_read(
        self, process_id: str, after_seq: int, max_bytes: int | None, wait_ms: int
    ) -> ReadSnapshot:
        """Long-poll: return as soon as §7.4 says so, or at the deadline."""
        process = self._readable(process_id)
        log = process.log
        loop = self._loop
        deadline = loop.time() + wait_ms / 1000
        while True:
            snapshot = log.read(after_seq, max_bytes)
            remaining = deadline - loop.time()
            if log.ready(after_seq, snapshot) or remaining <= 0:
                return snapshot
            waiter = log.waiter()
            timer = loop.call_later(min(remaining, 86400.0), _resolve, waiter)
            try:
                await waiter
            finally:
                timer.cancel()

    # ---- write ----------------------------------------------------------------------------

    def write(self, process_id: str, data: bytes, write_id: str | None) -> str | Awaitable[str]:
        """Queue bytes for the child's stdin; returns the status, or an awaitable of it when
        the stdin queue is full (writes to one process keep their order either way)."""
        process = self._processes.get(process_id)
        if process is None:
            return "unknownProcess"
        if process.state is ProcessState.STARTING:
            return "starting"
        if not process.tty and not process.pipe_stdin:
            return "stdinClosed"
        if process.terminated:
            raise internal_error("failed to write to process stdin")
        if write_id is not None:
            ids = process._write_ids
            if write_id in ids:
                return "accepted"
            ids[write_id] = None
            if len(ids) > self.limits.write_id_memory:
                ids.popitem(last=False)
        child = process.child
        if child is None or child.stdin is None:
            return "accepted"  # closed: the bytes are lost, as with the reference
        queue_full = process._stdin_bytes + len(data) > self.limits.stdin_buffer_bytes
        if process._stdin_waiters or (queue_full and process._stdin_bytes > 0):
            future: asyncio.Future[None] = self._loop.create_future()
            process._stdin_waiters.append((data, future))
            return _accepted_when(future)
        self._stdin_enqueue(process, data)
        return "accepted"

    def _stdin_enqueue(self, process: ManagedProcess, data: bytes) -> None:
        child = process.child
        assert child is not None and child.stdin is not None
        view = memoryview(data)
        if not process._stdin_pending:
            written = self._write_some(process, view)
            if written < 0 or written == len(view):
                return
            view = view[written:]
            self._loop.add_writer(child.stdin, self._on_writable, process)
        process._stdin_pending.append(view)
        process._stdin_bytes += len(view)

    def _write_some(self, process: ManagedProcess, view: memoryview) -> int:
        """Write what the fd takes now; -1 when stdin is gone (the bytes are dropped)."""
        child = process.child
        assert child is not None and child.stdin is not None
        try:
            return os.write(child.stdin, view)
        except BlockingIOError:
            return 0
        except OSError:  # EPIPE (the child closed stdin or died), EIO (PTY gone)
            self._drop_stdin(process)
            return -1

    def _on_writable(self, process: ManagedProcess) -> None:
        pending = process._stdin_pending
        while pending:
            view = pending[0]
            written = self._write_some(process, view)
            if written < 0:
                return
            process._stdin_bytes -= written
            if written < len(view):
                pending[0] = view[written:]
                return
            pending.popleft()
            self._admit_stdin_waiters(process)
        child = process.child
        if child is not None and child.stdin is not None:
            self._loop.remove_writer(child.stdin)
        self._admit_stdin_waiters(process)

    def _admit_stdin_waiters(self, process: ManagedProcess) -> None:
        waiters = process._stdin_waiters
        while waiters:
            data, future = waiters[0]
            if (
                process._stdin_bytes
                and process._stdin_bytes + len(data) > self.limits.stdin_buffer_bytes
            ):
                return
            waiters.popleft()
            process._stdin_pending.append(memoryview(data))
            process._stdin_bytes += len(data)
            child = process.child
            if child is not None and child.stdin is not None:
                self._loop.add_writer(child.stdin, self._on_writable, process)
            if not future.done():
                future.set_result(None)

    def _drop_stdin(self, process: ManagedProcess) -> None:
        """Stdin is unusable: forget queued bytes, accept (and lose) waiting writes."""
        child = process.child
        if child is not None and child.stdin is not None:
            with contextlib.suppress(OSError):
                self._loop.remove_writer(child.stdin)
            if child.stdin not in (child.stdout, child.stderr):
                os.close(child.stdin)
            child.stdin = None
        process._stdin_pending.clear()
        process._stdin_bytes = 0
        self._fail_stdin_waiters(process)

    def _fail_stdin_waiters(self, process: ManagedProcess) -> None:
        while process._stdin_waiters:
            _, future = process._stdin_waiters.popleft()
            if not future.done():
                future.set_result(None)

    # ---- signals --------------------------------------------------------------------------

    def terminate(self, process_id: str) -> bool:
        """SIGKILL to the process group; True when the process was running."""
        process = self._processes.get(process_id)
        if process is None or process.state is not ProcessState.RUNNING:
            return False
        self._kill(process)
        return True

    def signal(self, process_id: str, signum: int) -> None:
        process = self.get(process_id)
        if process.state is ProcessState.STARTING:
            raise invalid_request(f"process id {process_id} is starting")
        if process.state is ProcessState.RUNNING and process.child is not None:
            signal_group(process.child.pid, signum)

    def _kill(self, process: ManagedProcess) -> None:
        """The one place a process is killed: SIGKILL to its whole group, stdin closed."""
        process.terminated = True
        child = process.child
        if child is not None and not process.reaped:
            signal_group(child.pid, signal.SIGKILL)
        if child is not None and child.stdin is not None and not child.tty:
            self._drop_stdin(process)

    # ---- teardown -------------------------------------------------------------------------

    def kill_all(self) -> None:
        """Session teardown: kill every child, close every fd, send nothing more.

        Children are still reaped (their pidfd readers stay) so no zombie is left behind.
        """
        processes = list(self._processes.values())
        self._processes.clear()
        for process in processes:
            if process._eviction is not None:
                process._eviction.cancel()
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
            self._close_fds(process)
            process.log.close()  # its spill file, if any
            process.state = ProcessState.CLOSED

    async def wait_reaped(self, timeout: float) -> None:
        """Wait until every child has been reaped (after :meth:`kill_all`)."""
        if not self._unreaped:
            return
        self._reaped_event.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._reaped_event.wait(), timeout)


_STDOUT = {False: "stdout", True: "pty"}


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


async def _accepted_when(future: asyncio.Future[None]) -> str:
    await future
    return "accepted"
