"""The process table of one session: start, read, write, signal, terminate, and eviction.

The manager owns every child it starts and composes the parts that look after one: an
:class:`~.reading.OutputReader` for its output, a :class:`~.stdin.StdinQueue` for its stdin,
the server's :class:`~.exits.ExitWatcher` for its exit, an :class:`~.output.OutputLog` for
what it printed, and :mod:`.tree` to kill all it started. Events leave through an
:class:`EventSink` in seq order; the sink may ask the manager to stop reading (backpressure)
and calls :meth:`ProcessManager.resume_output` when it can take more.

A process moves through explicit states: STARTING -> RUNNING -> EXITED -> CLOSED, where
CLOSED means the exit is known *and* every output stream has ended (or was cut off after
``drain_timeout``). Refusals are the domain errors of :mod:`.errors`; the method layer
words them for the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import operator
import os
import signal
import termios
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

import msgspec

from ..config import Limits
from ..errors import os_error_message
from ..memory import nothing
from .errors import (
    DuplicateProcess,
    InvalidSpawn,
    NoTerminal,
    ProcessStarting,
    SpawnFailed,
    StdinBroken,
    TooManyProcesses,
    UnknownProcess,
)
from .exits import ExitWatcher
from .output import OutputLog, ReadSnapshot, is_ready
from .reading import OutputReader, Stream
from .spawn import (
    Child,
    SpawnRequest,
    check_request,
    exit_code_from_status,
    set_window_size,
    signal_group,
)
from .stdin import ByteBudget, StdinQueue
from .tree import Pid, kill_trees, members, with_living_members

if TYPE_CHECKING:
    from ..sandbox.bwrap import Launch

LEFTOVERS_PRUNE_MIN = 64
"""Evicted trees kept before the first look at which still have a living process."""


class ProcessState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    EXITED = "exited"
    CLOSED = "closed"


_STATE = operator.attrgetter("state")


class WriteStatus(enum.Enum):
    """What became of a write to a process's stdin."""

    ACCEPTED = enum.auto()
    UNKNOWN_PROCESS = enum.auto()
    STDIN_CLOSED = enum.auto()
    """The process was started without a writable stdin."""
    STARTING = enum.auto()


class TerminatedBy(enum.Enum):
    """Why a process ended."""

    EXIT = "exit"
    """It exited by itself."""
    SIGNAL = "signal"
    """A signal the server did not send killed it."""
    CLIENT = "client"
    TIMEOUT = "timeout"
    IDLE = "idle"
    DISCONNECT = "disconnect"
    """Its session ended."""


class ExitInfo(msgspec.Struct, frozen=True):
    """What ``process/exited`` reports."""

    exit_code: int
    terminated_by: TerminatedBy
    signal: int | None
    """The signal that killed it, if one did."""
    sandbox_denied: bool = False
    """It ran sandboxed and its failure looks like a denial (the reference's rule)."""


class Deadlines(msgspec.Struct, frozen=True):
    """Per-process timers, in seconds; None for none."""

    timeout_s: float | None = None
    """Wall clock from the start, after which the process is killed."""
    idle_s: float | None = None
    """Time without output after which the process is killed."""
    drain_s: float | None = None
    """After the exit, how long output streams still held open by descendants are waited
    for before they are closed anyway."""


class ProcessInfo(msgspec.Struct, frozen=True):
    """One row of ``process/list``."""

    process_id: str
    pid: int | None
    argv: list[str]
    cwd: str
    tty: bool
    state: ProcessState
    exit_code: int | None
    terminated_by: TerminatedBy | None
    signal: int | None
    output_bytes: int
    started_at_ms: int
    exited_at_ms: int | None


class EventSink(Protocol):
    """Where a manager's events go. ``output`` returns False to ask the producer to pause."""

    def output(self, process_id: str, seq: int, stream: str, data: bytes) -> bool: ...

    def exited(self, process_id: str, seq: int, info: ExitInfo) -> None: ...

    def closed(self, process_id: str, seq: int, drained: bool) -> None: ...


Spawner = Callable[[SpawnRequest], Child]


class ManagedProcess:
    """One entry of the table: the child, the parts that look after it, and its record."""

    __slots__ = (
        "child",
        "deadlines",
        "drained",
        "eviction",
        "exit",
        "exited_at",
        "grace",
        "last_output",
        "launch",
        "log",
        "orphans",
        "process_id",
        "reader",
        "reaped",
        "request",
        "root",
        "started_at",
        "state",
        "stdin",
        "terminated_by",
        "timers",
        "tty",
        "writable_stdin",
    )

    def __init__(
        self, process_id: str, request: SpawnRequest, log: OutputLog, deadlines: Deadlines
    ) -> None:
        self.process_id = process_id
        self.request = request
        self.tty = request.tty
        self.writable_stdin = request.tty or request.pipe_stdin
        self.log = log
        self.deadlines = deadlines
        self.state = ProcessState.STARTING
        self.child: Child | None = None
        self.root: Pid | None = None
        self.reader: OutputReader | None = None
        self.stdin: StdinQueue | None = None
        self.terminated_by: TerminatedBy | None = None
        """Set by the server when it ends the process (first cause wins)."""
        self.exit: ExitInfo | None = None
        self.reaped = False
        self.drained = False
        self.orphans: list[Pid] = []
        self.timers: list[asyncio.TimerHandle] = []
        """Deadlines that end with the exit (timeouts, the drain)."""
        self.grace: asyncio.TimerHandle | None = None
        """A graceful terminate's SIGKILL: it outlives the exit, for what is left of the tree."""
        self.eviction: asyncio.TimerHandle | None = None
        self.started_at = time.time()
        self.exited_at: float | None = None
        self.last_output = 0.0
        self.launch: Launch | None = None
        """The sandbox it runs in, released once it has exited."""

    @property
    def paused(self) -> bool:
        """Whether reading its output waits for the client to catch up."""
        return self.reader is not None and self.reader.paused

    def cancel_timers(self, *, grace: bool = False) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()
        if grace and self.grace is not None:
            self.grace.cancel()
            self.grace = None


class ProcessManager:
    """The process table of one session."""

    def __init__(
        self,
        limits: Limits,
        sink: EventSink,
        spawner: Spawner,
        exits: ExitWatcher,
        released: Callable[[], None] = nothing,
    ) -> None:
        """``released``: called when records are let go (eviction, teardown): the server may
        give memory back then (``memory.py``)."""
        self.limits = limits
        self.sink = sink
        self._spawn = spawner
        self._exits = exits
        self._released = released
        self._loop = asyncio.get_running_loop()
        self._processes: dict[str, ManagedProcess] = {}
        self._paused: set[ManagedProcess] = set()
        self._unreaped: set[ManagedProcess] = set()
        self._reaped_event = asyncio.Event()
        self._stdin_budget = ByteBudget(limits.stdin_session_max_bytes)
        self._not_closed = 0  # reserved or running or exited: max_processes_per_session
        self._leftovers: list[Pid] = []  # trees of evicted processes that may live on
        self._leftovers_pruned_at = LEFTOVERS_PRUNE_MIN

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

    def find(self, process_id: str) -> ManagedProcess | None:
        """The entry, or None."""
        return self._processes.get(process_id)

    def count_states(self, counts: Counter[ProcessState]) -> None:
        """Add the number of processes in each state to ``counts`` (for metrics). Counted
        with ``list.count``, which compares by identity first: an enum's hash is Python code."""
        states = list(map(_STATE, self._processes.values()))
        for state in ProcessState:
            counts[state] += states.count(state)

    def sandbox_pids(self) -> Iterator[int]:
        """The launcher pids of this session's sandboxed processes still running: below each
        is a sandbox (bubblewrap's namespaces end with it)."""
        for process in self._processes.values():
            launch, child = process.launch, process.child
            if launch is not None and launch.sandboxed and child is not None and not process.reaped:
                yield child.pid

    @property
    def live(self) -> int:
        """Processes reserved, running or exited but not closed yet."""
        return self._not_closed

    def _started(self, process_id: str) -> ManagedProcess:
        """The entry of a process past STARTING, or the error that says why not."""
        process = self.get(process_id)
        if process.state is ProcessState.STARTING:
            raise ProcessStarting(process_id)
        return process

    def describe(self) -> list[ProcessInfo]:
        """Every process of the session, in start order."""
        return [_info(process) for process in self._processes.values()]

    # ---- start ----------------------------------------------------------------------------

    def start(
        self, process_id: str, request: SpawnRequest, deadlines: Deadlines | None = None
    ) -> None:
        """Spawn a child under ``process_id``; raises a :class:`~.errors.ProcessError`."""
        self.reserve(process_id, request, deadlines)
        self.spawn_reserved(process_id)

    def reserve(
        self, process_id: str, request: SpawnRequest, deadlines: Deadlines | None = None
    ) -> None:
        """Take ``process_id`` (STARTING) while the start is prepared elsewhere (a sandbox
        is built on a worker thread); :meth:`spawn_reserved` or :meth:`abandon` follows."""
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
        self._processes[process_id] = ManagedProcess(
            process_id, request, log, deadlines or Deadlines()
        )
        self._not_closed += 1

    def spawn_reserved(
        self, process_id: str, spawn_as: SpawnRequest | None = None, launch: Launch | None = None
    ) -> None:
        """Spawn the reserved process: as reserved, or as ``spawn_as`` (the sandboxed form
        of the same request, whose ``launch`` is released when the child has exited)."""
        process = self._processes.get(process_id)
        if process is None or process.state is not ProcessState.STARTING:
            raise UnknownProcess(process_id)  # the session ended while it was prepared
        try:
            check_request(process.request)  # a sandbox's form carries the env in its argv
            child = self._spawn(spawn_as or process.request)
        except OSError as exc:
            self.abandon(process_id)
            raise SpawnFailed(process_id, os_error_message(exc)) from None
        except (ValueError, TypeError) as exc:  # embedded NUL, '=' in an env name, ...
            self.abandon(process_id)
            raise InvalidSpawn(process_id, str(exc)) from None
        process.launch = launch
        self._run(process, child)

    async def spawn_reserved_off_loop(
        self, process_id: str, spawn_as: SpawnRequest, launch: Launch
    ) -> None:
        """:meth:`spawn_reserved` with the spawn itself on a worker thread, for a sandbox's
        launcher: joining its pids cgroup before it executes can wait for a kernel grace
        period, which must not stall every other session's loop. The worker threads live as
        long as the loop, so the child's parent-death signal (tied to the spawning thread)
        fires only when the server goes."""
        process = self._processes.get(process_id)
        if process is None or process.state is not ProcessState.STARTING:
            raise UnknownProcess(process_id)
        try:
            check_request(process.request)  # a sandbox's form carries the env in its argv
        except ValueError as exc:
            self.abandon(process_id)
            raise InvalidSpawn(process_id, str(exc)) from None
        started = asyncio.ensure_future(asyncio.to_thread(self._spawn, spawn_as))
        try:
            child = await asyncio.shield(started)
        except asyncio.CancelledError:
            # The thread still spawns with the launch's descriptors (its seccomp program, its
            # cgroup), which the caller closes once this returns: return after it, and kill
            # what it started.
            await _settled(started)
            self._discard_started(started)
            raise
        except OSError as exc:
            self.abandon(process_id)
            raise SpawnFailed(process_id, os_error_message(exc)) from None
        except (ValueError, TypeError) as exc:
            self.abandon(process_id)
            raise InvalidSpawn(process_id, str(exc)) from None
        if self._processes.get(process_id) is not process:  # the session ended meanwhile
            self._discard(child)
            raise UnknownProcess(process_id)
        process.launch = launch
        self._run(process, child)

    def _discard_started(self, started: asyncio.Future[Child]) -> None:
        if not started.cancelled() and started.exception() is None:
            self._discard(started.result())

    def _discard(self, child: Child) -> None:
        """A child started for a process nobody wants any more: killed, its fds closed,
        its exit still watched so it is reaped."""
        signal_group(child.pid, signal.SIGKILL)
        self._exits.watch(child.pid, lambda _status: None)
        for fd in {fd for fd in (child.stdout, child.stderr, child.stdin) if fd is not None}:
            with contextlib.suppress(OSError):
                os.close(fd)

    def abandon(self, process_id: str) -> None:
        """Give back a reservation whose start could not be prepared."""
        process = self._processes.get(process_id)
        if process is not None and process.state is ProcessState.STARTING:
            del self._processes[process_id]
            self._not_closed -= 1

    def _run(self, process: ManagedProcess, child: Child) -> None:
        process.child = child
        process.root = Pid.of(child.pid)
        process.state = ProcessState.RUNNING
        process.last_output = self._loop.time()
        self._unreaped.add(process)
        self._exits.watch(child.pid, lambda status: self._on_exit(process, status))
        if process.root is not None and self._exits.keeper is not None:
            self._exits.keeper.started(process.root)
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
        self._arm(process)

    def _arm(self, process: ManagedProcess) -> None:
        """Start the process's wall-clock and idle timers."""
        deadlines = process.deadlines
        if deadlines.timeout_s is not None:
            process.timers.append(
                self._loop.call_later(
                    deadlines.timeout_s, self._kill, process, TerminatedBy.TIMEOUT
                )
            )
        if deadlines.idle_s is not None:
            process.timers.append(
                self._loop.call_later(deadlines.idle_s, self._idle_check, process)
            )

    def _idle_check(self, process: ManagedProcess) -> None:
        idle_s = process.deadlines.idle_s
        assert idle_s is not None
        quiet = self._loop.time() - process.last_output
        if quiet >= idle_s:
            self._kill(process, TerminatedBy.IDLE)
        elif process.state is ProcessState.RUNNING:
            process.timers.append(self._loop.call_later(idle_s - quiet, self._idle_check, process))

    # ---- output ---------------------------------------------------------------------------

    def _emit_output(self, process: ManagedProcess, stream: str, data: bytes) -> None:
        process.last_output = self._loop.time()
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
        process.exited_at = time.time()
        process.orphans += self._exits.claim_orphans()
        if process.launch is not None:
            process.launch.release()
        self._unreaped.discard(process)
        if not self._unreaped:
            self._reaped_event.set()
        if process.state is ProcessState.CLOSED:
            return  # torn down with its session: reaped, and nobody is listening any more
        signum = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        cause = process.terminated_by or (TerminatedBy.SIGNAL if signum else TerminatedBy.EXIT)
        process.cancel_timers()
        reader = process.reader
        if reader is not None:
            reader.drain()  # output written before it died comes before its exit
        denied = process.launch is not None and _looks_denied(process.log, code)
        process.exit = ExitInfo(code, cause, signum, denied)
        process.state = ProcessState.EXITED
        seq = process.log.mark_exited(code, denied)
        self.sink.exited(process.process_id, seq, process.exit)
        drain_s = process.deadlines.drain_s
        if drain_s is not None and reader is not None and reader.open_streams:
            process.timers.append(self._loop.call_later(drain_s, self._cut_off, process))
        self._maybe_close(process)

    def _cut_off(self, process: ManagedProcess) -> None:
        """The drain timeout passed with streams still held open (by descendants): close
        them, so the process closes; the descendants write into a closed pipe from now."""
        if process.state is not ProcessState.EXITED or process.reader is None:
            return
        process.reader.drain()
        process.drained = True
        process.reader.close()
        self._maybe_close(process)

    def _maybe_close(self, process: ManagedProcess) -> None:
        reader = process.reader
        if process.state is not ProcessState.EXITED or (reader and reader.open_streams):
            return
        process.state = ProcessState.CLOSED
        process.cancel_timers()
        self._not_closed -= 1
        self._release(process)
        seq = process.log.mark_closed()
        self.sink.closed(process.process_id, seq, process.drained)
        process.eviction = self._loop.call_later(
            self.limits.closed_retention_s, self._evict, process
        )

    def _evict(self, process: ManagedProcess) -> None:
        # The timer that called us holds the process, which holds the timer: let go, so the
        # record is freed now by reference counting, not by a full garbage collection.
        process.eviction = None
        process.cancel_timers(grace=True)
        if self._processes.get(process.process_id) is process:
            del self._processes[process.process_id]
        process.log.close()  # its spill file, if any
        # Descendants may outlive the record (a background job, a daemon): they are still
        # this session's, and die with it. Trees with nobody left are dropped now and then,
        # so a long session's list stays as long as what still lives (amortized: one reading
        # of /proc each time the list has doubled).
        self._leftovers += self._roots(process)
        if len(self._leftovers) >= self._leftovers_pruned_at:
            self._leftovers = with_living_members(self._leftovers)
            self._leftovers_pruned_at = max(LEFTOVERS_PRUNE_MIN, 2 * len(self._leftovers))
        self._released()

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

    # ---- stdin ----------------------------------------------------------------------------

    def _stdin_of(self, process_id: str) -> ManagedProcess | WriteStatus:
        """The process whose stdin a request may use, or the status that says why not."""
        process = self._processes.get(process_id)
        if process is None:
            return WriteStatus.UNKNOWN_PROCESS
        if process.state is ProcessState.STARTING:
            return WriteStatus.STARTING
        if not process.writable_stdin:
            return WriteStatus.STDIN_CLOSED
        if process.terminated_by is not None:
            raise StdinBroken(process_id)
        return process

    def write(
        self, process_id: str, data: bytes, write_id: str | None
    ) -> WriteStatus | asyncio.Future[None]:
        """Queue bytes for the child's stdin; the status, or a future resolved once they are
        queued (the queue was full). Writes to one process keep their order either way."""
        process = self._stdin_of(process_id)
        if isinstance(process, WriteStatus):
            return process
        stdin = process.stdin
        if stdin is None or (write_id is not None and stdin.seen(write_id)):
            return WriteStatus.ACCEPTED
        queued = stdin.write(data)
        return WriteStatus.ACCEPTED if queued is None else queued

    def close_stdin(self, process_id: str) -> WriteStatus | asyncio.Future[None]:
        """End of input, after what is queued: a pipe is closed; a terminal gets its EOF
        character (as a user typing Ctrl-D at the start of a line)."""
        process = self._stdin_of(process_id)
        if isinstance(process, WriteStatus):
            return process
        stdin = process.stdin
        if stdin is None or not stdin.open:
            return WriteStatus.ACCEPTED
        if process.tty:
            queued = stdin.write(_eof_character(process))
            return WriteStatus.ACCEPTED if queued is None else queued
        stdin.close_when_written()
        return WriteStatus.ACCEPTED

    # ---- signals, size ------------------------------------------------------------------------

    def signal(self, process_id: str, signum: int) -> None:
        """Send ``signum`` to the process's group; for a terminal, to its foreground group
        (what a key like Ctrl-C reaches), which may be a job the shell started."""
        process = self._started(process_id)
        child = process.child
        if process.state is not ProcessState.RUNNING or child is None:
            return
        group = _foreground_group(child) if child.tty else None
        if group is not None and group > 0:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signum)
        else:
            signal_group(child.pid, signum)

    def resize(self, process_id: str, rows: int, columns: int) -> None:
        """Size the process's terminal; its foreground group gets SIGWINCH."""
        process = self._started(process_id)
        child = process.child
        if not process.tty or child is None:
            raise NoTerminal(process_id)
        if child.stdout >= 0:
            with contextlib.suppress(OSError):  # the terminal is gone: nothing to size
                set_window_size(child.stdout, rows, columns)

    def terminate(self, process_id: str, grace_s: float | None = None) -> bool:
        """End the process and its whole tree: SIGKILL now, or SIGTERM first and SIGKILL
        after ``grace_s`` to whatever is left. True when the process was running."""
        process = self._processes.get(process_id)
        if process is None or process.state is not ProcessState.RUNNING:
            return False
        if grace_s is None:
            self._kill(process, TerminatedBy.CLIENT)
            return True
        process.terminated_by = process.terminated_by or TerminatedBy.CLIENT
        # Who is in the tree now, before SIGTERM ends anyone: whoever outlives the grace is
        # killed then, even if what tied it to the tree (its parent) ended meanwhile.
        process.orphans += [p for p in members(self._roots(process)) if p != process.root]
        for member in [*members(self._roots(process))]:
            member.signal(signal.SIGTERM)
        if process.grace is None:
            process.grace = self._loop.call_later(grace_s, self._kill, process, TerminatedBy.CLIENT)
        return True

    @staticmethod
    def _roots(process: ManagedProcess) -> list[Pid]:
        """The process and the orphans it left to the server: where its tree starts."""
        return [p for p in (process.root, *process.orphans) if p is not None]

    def _kill(self, process: ManagedProcess, cause: TerminatedBy) -> None:
        """The one place a process is killed: SIGKILL to its whole tree, stdin dropped."""
        process.grace = None
        process.terminated_by = process.terminated_by or cause
        kill_trees(self._roots(process))  # the tree is read before anyone in it dies
        child = process.child
        if child is not None and not process.reaped:
            signal_group(child.pid, signal.SIGKILL)  # and whatever the reading missed
        if process.stdin is not None and not process.tty:
            process.stdin.drop()

    # ---- teardown -------------------------------------------------------------------------

    def kill_all(self) -> None:
        """Session teardown: kill every child and all it started, close every fd, send
        nothing more. Children are still reaped (their exits stay watched): no zombie."""
        processes = list(self._processes.values())
        self._processes.clear()
        roots = list(self._leftovers)
        for process in processes:
            process.cancel_timers(grace=True)
            if process.eviction is not None:
                process.eviction.cancel()
            process.terminated_by = process.terminated_by or TerminatedBy.DISCONNECT
            if process.stdin is not None:
                process.stdin.drop()
            roots += self._roots(process)
        kill_trees(roots)  # the trees are read before anyone in them dies
        for process in processes:
            child = process.child
            if child is not None and not process.reaped:
                signal_group(child.pid, signal.SIGKILL)
        keeper = self._exits.keeper
        for process in processes:
            self._release(process)
            process.log.close()  # its spill file, if any
            process.state = ProcessState.CLOSED
            if process.launch is not None and process.reaped:
                process.launch.release()
        if keeper is not None:
            for root in roots:
                keeper.finished(root)
        self._leftovers.clear()
        self._not_closed = 0
        self._released()

    async def wait_reaped(self, timeout: float) -> None:
        """Wait until every child has been reaped (after :meth:`kill_all`)."""
        if not self._unreaped:
            return
        self._reaped_event.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._reaped_event.wait(), timeout)


def _looks_denied(log: OutputLog, exit_code: int) -> bool:
    """The reference's ``sandboxDenied`` rule over what the process printed."""
    if exit_code == 0:
        return False
    from ..sandbox.denial import is_sandbox_denied  # sandboxed processes only

    return is_sandbox_denied(True, exit_code, (c.data for c in log.read(0, None).chunks))


def _info(process: ManagedProcess) -> ProcessInfo:
    child = process.child
    exit = process.exit
    return ProcessInfo(
        process_id=process.process_id,
        pid=child.pid if child is not None else None,
        argv=list(process.request.argv),
        cwd=process.request.cwd,
        tty=process.tty,
        state=process.state,
        exit_code=exit.exit_code if exit else None,
        terminated_by=exit.terminated_by if exit else process.terminated_by,
        signal=exit.signal if exit else None,
        output_bytes=process.log.produced_bytes,
        started_at_ms=int(process.started_at * 1000),
        exited_at_ms=int(process.exited_at * 1000) if process.exited_at else None,
    )


def _foreground_group(child: Child) -> int | None:
    """The terminal's foreground process group, read through the PTY master."""
    if child.stdout < 0:
        return None
    try:
        return os.tcgetpgrp(child.stdout)
    except OSError:
        return None


def _eof_character(process: ManagedProcess) -> bytes:
    """The terminal's EOF character (VEOF, usually Ctrl-D)."""
    child = process.child
    try:
        assert child is not None
        eof = termios.tcgetattr(child.stdout)[6][termios.VEOF]
    except (AssertionError, OSError, termios.error):
        return b"\x04"
    return eof if isinstance(eof, bytes) else bytes([eof])


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _settled(future: asyncio.Future[Child]) -> None:
    """Wait until ``future`` is done, through any cancellation (a spawn thread is done within
    milliseconds); the caller re-raises the cancellation it got."""
    while not future.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([future])
