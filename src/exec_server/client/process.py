"""A remote process as the client sees it: its events in seq order, its output streams, its
stdin, and its exit.

The server numbers every event of a process (output chunks, the exit, the close) from one
counter. :class:`_Sequencer` releases them to the consumer strictly in that order, once each,
whatever order they arrive in (notifications, or ``process/read`` after a reconnect), and turns
a hole the server can no longer fill into an explicit :class:`OutputGap`.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from .errors import OutputGap

if TYPE_CHECKING:
    from .client import Client

StreamName = Literal["stdout", "stderr", "pty"]


@dataclass(frozen=True, slots=True)
class Output:
    """A chunk of output: ``stream`` is ``stdout``, ``stderr``, or ``pty`` (a PTY process)."""

    seq: int
    stream: StreamName
    data: bytes


@dataclass(frozen=True, slots=True)
class Exited:
    """The process exited with ``exit_code`` (128+N for a death by signal N on servers that
    report it so: ours and 0.169; the 0.128 reference reports -1 in pipe mode, 1 in a PTY)."""

    seq: int
    exit_code: int


@dataclass(frozen=True, slots=True)
class Closed:
    """The last event of a process: it exited and all its output was delivered."""

    seq: int


Event = Output | Exited | Closed


@dataclass(frozen=True, slots=True)
class _Gap:
    """Seqs the server no longer has; raised as :class:`OutputGap` where it stands."""

    first_seq: int
    last_seq: int


_Item = Output | Exited | Closed | _Gap


def _first(item: _Item) -> int:
    return item.first_seq if isinstance(item, _Gap) else item.seq


def _last(item: _Item) -> int:
    return item.last_seq if isinstance(item, _Gap) else item.seq


@dataclass
class _Sequencer:
    """Releases items in seq order, each seq once; later copies of an item are dropped."""

    delivered: int = 0
    """The last seq released."""
    pending: dict[int, _Item] = field(default_factory=dict)
    """Items that arrived ahead of their turn, by first seq."""
    saw_exit: bool = False
    saw_closed: bool = False

    def add(self, item: _Item) -> list[_Item]:
        """Take one item; return those now released, in order."""
        first = _first(item)
        if first <= self.delivered or first in self.pending or self._inside_gap(first):
            return []
        self.pending[first] = item
        self.saw_exit |= isinstance(item, Exited)
        self.saw_closed |= isinstance(item, Closed)
        released = []
        while (ready := self.pending.pop(self.delivered + 1, None)) is not None:
            released.append(ready)
            self.delivered = _last(ready)
        return released

    def _inside_gap(self, seq: int) -> bool:
        return any(
            isinstance(item, _Gap) and item.first_seq <= seq <= item.last_seq
            for item in self.pending.values()
        )

    def settle(
        self, last_seq: int, exited: bool, exit_code: int | None, closed: bool
    ) -> list[_Item]:
        """What fills the holes up to ``last_seq``, the server's latest seq, given what a
        ``process/read`` that returned no more output said: the close (always the last
        seq), the exit (the one hole left, when only one is), and gaps for the rest."""
        holes = self.holes(last_seq)
        filled: list[_Item] = []
        if closed and not self.saw_closed and holes and holes[-1][1] == last_seq:
            filled.append(Closed(_take_highest(holes)))
        if exited and exit_code is not None and not self.saw_exit and holes:
            filled.append(Exited(_take_highest(holes), exit_code))
        filled.extend(_Gap(first, last) for first, last in holes)
        return filled

    def holes(self, last_seq: int) -> list[tuple[int, int]]:
        """The runs of seqs up to ``last_seq`` neither released nor pending, lowest first."""
        holes = []
        expected = self.delivered + 1
        starts = sorted(self.pending)
        for start in starts[: bisect.bisect_right(starts, last_seq)]:
            if start > expected:
                holes.append((expected, start - 1))
            expected = _last(self.pending[start]) + 1
        if expected <= last_seq:
            holes.append((expected, last_seq))
        return holes


def _take_highest(holes: list[tuple[int, int]]) -> int:
    """Remove and return the highest seq of ``holes``."""
    first, last = holes.pop()
    if first < last:
        holes.append((first, last - 1))
    return last


class Inbox:
    """One process's events as its client receives them.

    The client puts in what the server says (:meth:`add`, :meth:`settle`, :meth:`fail`), in
    any order and possibly more than once; the :class:`Process` takes the events out in seq
    order (:meth:`take`, :meth:`changed`). The futures say where the process stands.
    """

    def __init__(self, process_id: str, *, on_closed: Callable[[Inbox], None]) -> None:
        loop = asyncio.get_running_loop()
        self.process_id = process_id
        self.started: asyncio.Future[None] = loop.create_future()
        """Done once the server accepted the start (or, for a process followed, at once)."""
        self.exit: asyncio.Future[int] = loop.create_future()
        """The exit code, once the exit was released."""
        self.closed: asyncio.Future[None] = loop.create_future()
        """Done once the close was released: nothing more will come."""
        for future in (self.started, self.exit, self.closed):
            future.add_done_callback(_observe)
        self._on_closed = on_closed
        self._sequencer = _Sequencer()
        self._queue: deque[_Item] = deque()
        self._changed: asyncio.Future[None] | None = None
        self._failure: BaseException | None = None

    # ---- the client's side -----------------------------------------------------------------

    @property
    def delivered(self) -> int:
        """The last seq released to the process (where a catch-up read starts)."""
        return self._sequencer.delivered

    def mark_started(self) -> None:
        """The server accepted the start."""
        if not self.started.done():
            self.started.set_result(None)

    def add(self, item: _Item) -> None:
        """Take one event from the server; release what is now in order."""
        for ready in self._sequencer.add(item):
            self._queue.append(ready)
            if isinstance(ready, Exited) and not self.exit.done():
                self.exit.set_result(ready.exit_code)
            elif isinstance(ready, Closed) and not self.closed.done():
                self.closed.set_result(None)
                self._on_closed(self)
        self._wake()

    def settle(self, last_seq: int, exited: bool, exit_code: int | None, closed: bool) -> None:
        """A catch-up read reached the end: fill the holes it leaves (see
        :meth:`_Sequencer.settle`)."""
        for item in self._sequencer.settle(last_seq, exited, exit_code, closed):
            self.add(item)

    def fail(self, error: BaseException) -> None:
        """The process can no longer be followed: consumers and waiters get ``error``."""
        if self._failure is not None or self.closed.done():
            return
        self._failure = error
        for future in (self.started, self.exit, self.closed):
            if not future.done():
                future.set_exception(error)
        self._wake()

    # ---- the process's side ----------------------------------------------------------------

    def take(self) -> _Item | None:
        """The next released item, or None when none is waiting."""
        return self._queue.popleft() if self._queue else None

    def take_output(self) -> Output | None:
        """The next released item if it is output, else None (it stays)."""
        if self._queue and isinstance(self._queue[0], Output):
            return self._queue.popleft()  # type: ignore[return-value]
        return None

    async def changed(self) -> None:
        """Wait until something more is released; raise the failure once there is one."""
        if self._failure is not None:
            raise self._failure
        if self._changed is None:
            self._changed = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._changed)

    def _wake(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
        self._changed = None


class ProcessPort(Protocol):
    """What a :class:`Process` asks of the session that started it (one port per process)."""

    @property
    def client(self) -> Client:
        """The client (the session) the process belongs to."""
        ...

    async def write(self, data: bytes) -> None:
        """Write to the process's stdin."""
        ...

    async def close_stdin(self) -> None:
        """Send end-of-file."""
        ...

    async def signal(self, name: str) -> None:
        """Send a signal by name to the process group."""
        ...

    async def resize(self, rows: int, cols: int) -> None:
        """Set the PTY's window size."""
        ...

    async def terminate(self) -> bool:
        """Kill the process tree; True if it was still running."""
        ...


class Process:
    """A process started on the server by :meth:`Client.start`.

    Consume its output one way: :meth:`events` (every event) or :meth:`read` (output bytes),
    or the :attr:`stdout` and :attr:`stderr` streams. Output not yet consumed is buffered in
    memory; :meth:`wait` does not consume it.
    """

    def __init__(
        self, port: ProcessPort, inbox: Inbox, argv: Sequence[str], *, tty: bool, stdin: bool
    ) -> None:
        self._port = port
        self._inbox = inbox
        self.id = inbox.process_id
        """The process id on the server (unique within the session)."""
        self.argv = list(argv)
        self.tty = tty
        self.stdin_enabled = stdin or tty
        """Whether :meth:`write` can reach the process (``stdin=True``, or a PTY)."""
        self._ended = False  # the consumer took the Closed event
        self._stashed: dict[str, deque[bytes]] = {"stdout": deque(), "stderr": deque()}
        self.stdout = ProcessStream(self, "stdout")
        """Standard output (everything, for a PTY process), usable with ``async for``."""
        self.stderr = ProcessStream(self, "stderr")
        """Standard error (empty for a PTY process), usable with ``async for``."""

    @property
    def client(self) -> Client:
        """The client (the session) this process belongs to."""
        return self._port.client

    @property
    def returncode(self) -> int | None:
        """The exit code once the exit was delivered, else None."""
        exit = self._inbox.exit
        return exit.result() if exit.done() and exit.exception() is None else None

    def __repr__(self) -> str:
        return f"<Process {self.id} {self.argv!r} returncode={self.returncode}>"

    # ---- consuming ------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[Event]:
        """Every event in seq order, ending with :class:`Closed`.

        Raises :class:`OutputGap` where output was lost (iterating again goes on after the
        gap), and :class:`ConnectionLost` or :class:`ProcessLost` if the process can no
        longer be followed.
        """
        while not self._ended:
            item = await self._next_item()
            yield item
            if isinstance(item, Closed):
                return

    async def read(self) -> bytes:
        """The next output bytes of any stream (all that is buffered); ``b""`` once closed."""
        while not self._ended:
            item = await self._next_item()
            if isinstance(item, Output):
                pieces = [item.data]
                while (more := self._inbox.take_output()) is not None:
                    pieces.append(more.data)
                return b"".join(pieces)
        return b""

    async def wait(self) -> int:
        """Wait for the exit and return its code. Does not consume output."""
        return await asyncio.shield(self._inbox.exit)

    async def wait_closed(self) -> None:
        """Wait until the process exited and all its output was delivered (not consumed)."""
        await asyncio.shield(self._inbox.closed)

    # ---- acting on it ---------------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        """Write to the process's stdin (a PTY: as if typed). Raises :class:`StdinClosed`
        if it has none."""
        await self._port.write(data)

    async def close_stdin(self) -> None:
        """Send end-of-file: ``process/closeStdin`` when the server has it; for a PTY, the
        EOF character (Ctrl-D). Raises :class:`NotSupported` for a pipe otherwise."""
        await self._port.close_stdin()

    async def signal(self, name: str) -> None:
        """Send a signal by name (``"INT"``, ``"TERM"``, ``"SIGHUP"``...) to the process group.

        Servers without the ``signal`` extension can only interrupt (``"INT"``); the 0.128
        reference cannot signal at all, so an interrupt becomes Ctrl-C typed into a PTY.
        Raises :class:`NotSupported` otherwise.
        """
        await self._port.signal(name)

    async def resize(self, rows: int, cols: int) -> None:
        """Set the PTY's window size (needs the server's ``resize`` extension)."""
        await self._port.resize(rows, cols)

    async def terminate(self) -> bool:
        """Kill the process and its process group (SIGKILL); True if it was still running."""
        return await self._port.terminate()

    # ---- internals ------------------------------------------------------------------------

    async def _next_item(self) -> Event:
        while True:
            item = self._inbox.take()
            if item is None:
                await self._inbox.changed()
                continue
            if isinstance(item, _Gap):
                raise OutputGap(self.id, item.first_seq, item.last_seq)
            if isinstance(item, Closed):
                self._ended = True
            return item

    async def _next_chunk(self, stream: str) -> bytes:
        """The next chunk of one stream (``b""`` once closed); chunks of the other are kept
        for it."""
        while True:
            if self._stashed[stream]:
                return self._stashed[stream].popleft()
            if self._ended:
                return b""
            item = await self._next_item()
            if isinstance(item, Output):
                name = "stderr" if item.stream == "stderr" else "stdout"
                if name == stream:
                    return item.data
                self._stashed[name].append(item.data)


class ProcessStream:
    """One output stream of a :class:`Process`: ``async for chunk in stream``, or
    ``await stream.read()`` for everything until the process closes."""

    def __init__(self, process: Process, name: str) -> None:
        self._process = process
        self.name = name

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        while chunk := await self._process._next_chunk(self.name):
            yield chunk

    async def read(self) -> bytes:
        """Everything the stream has until the process closes."""
        return b"".join([chunk async for chunk in self])


@dataclass(frozen=True, slots=True)
class CompletedProcess:
    """The result of :meth:`Client.run`, like :class:`subprocess.CompletedProcess`."""

    argv: list[str]
    returncode: int
    stdout: bytes
    stderr: bytes

    def check_returncode(self) -> None:
        """Raise :class:`ProcessError` if the exit code is not zero."""
        if self.returncode != 0:
            from .errors import ProcessError

            raise ProcessError(self.argv, self.returncode, self.stdout, self.stderr)


def _observe(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # a failure nobody waited for is not worth a warning
