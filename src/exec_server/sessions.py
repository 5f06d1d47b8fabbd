"""Sessions: a process table that outlives the connection that made it.

A session is created by ``initialize``, owned by at most one connection at a time, detached
when that connection ends, resumable with ``resumeSessionId`` for a grace period, and then
torn down (every process killed, every resource released). Events of a detached session are
not sent anywhere; the output stays retained for ``process/read`` after a resume
(PROTOCOL.md Part B §3.3).
"""

from __future__ import annotations

import asyncio
import enum
import os
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from .config import Limits
from .errors import invalid_request
from .memory import nothing
from .observability import Metrics
from .process.exits import ExitWatcher
from .process.manager import ExitInfo, ProcessManager, ProcessState, Spawner
from .process.signals import signal_name
from .protocol import ProcessNotifications
from .resources import Resources

if TYPE_CHECKING:
    from .connection import Connection


class SessionState(enum.Enum):
    ATTACHED = "attached"
    DETACHED = "detached"
    ENDED = "ended"


class Session:
    """One session: its id, its processes, its other resources, and the connection it is
    attached to.

    The session is the process manager's event sink: it turns events into notifications for
    the attached connection and drops them while detached. Backpressure travels the other
    way the same road: the connection tells the session it has room again
    (:meth:`resume_output`), and the session tells its processes.
    """

    def __init__(
        self,
        session_id: str,
        limits: Limits,
        spawner: Spawner,
        exits: ExitWatcher,
        notifications: ProcessNotifications,
        released: Callable[[], None] = nothing,
        metrics: Metrics | None = None,
    ) -> None:
        self.id = session_id
        self.metrics = metrics or Metrics()
        self.state = SessionState.DETACHED
        self.connection: Connection | None = None
        self.processes = ProcessManager(limits, self, spawner, exits, released)
        self.resources = Resources()
        self._notifications = notifications
        self._expiry: asyncio.TimerHandle | None = None

    # ---- EventSink ------------------------------------------------------------------------

    def output(self, process_id: str, seq: int, stream: str, data: bytes) -> bool:
        connection = self.connection
        if connection is None:
            return True
        return connection.send_notification(
            self._notifications.output(process_id, seq, stream, data)
        )

    def exited(self, process_id: str, seq: int, info: ExitInfo) -> None:
        self._count_exit(process_id, info)
        if self.connection is not None:
            self.connection.send_notification(
                self._notifications.exited(
                    process_id,
                    seq,
                    info.exit_code,
                    terminated_by=info.terminated_by.value,
                    signal=signal_name(info.signal),
                    sandbox_denied=info.sandbox_denied,
                )
            )

    def _count_exit(self, process_id: str, info: ExitInfo) -> None:
        record = self.processes.find(process_id)
        duration = 0.0
        if record is not None and record.exited_at is not None:
            duration = record.exited_at - record.started_at
        self.metrics.process_exited(
            self.id, process_id, info.exit_code, info.terminated_by.value, duration
        )

    def closed(self, process_id: str, seq: int, drained: bool) -> None:
        if self.connection is not None:
            self.connection.send_notification(self._notifications.closed(process_id, seq, drained))

    def resume_output(self) -> None:
        """The connection has room again (or is gone): let the processes go on."""
        self.processes.resume_output()

    # ---- lifecycle --------------------------------------------------------------------------

    def attach(self, connection: Connection) -> None:
        self._cancel_expiry()
        self.connection = connection
        self.state = SessionState.ATTACHED

    def detach(self, grace_s: float, on_expiry: Callable[[Session], None]) -> None:
        """The connection ended: nobody receives events now, so children are read on (their
        output is retained), and ``on_expiry`` runs unless the session is resumed in time."""
        self.connection = None
        self.state = SessionState.DETACHED
        self.resume_output()
        self._expiry = asyncio.get_running_loop().call_later(grace_s, on_expiry, self)

    def end(self) -> None:
        """Kill every process and release every resource; sends nothing. Idempotent."""
        if self.state is SessionState.ENDED:
            return
        self._cancel_expiry()
        self.state = SessionState.ENDED
        self.connection = None
        self.processes.kill_all()
        self.resources.release_all()

    def _cancel_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None


def _new_session_id() -> str:
    """A random (version 4) UUID, as the reference's session ids (without importing uuid,
    which pulls in more than a server started per session should load)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


class SessionRegistry:
    """Every live session of a server, with detach timers and resume rules."""

    def __init__(
        self,
        limits: Limits,
        spawner: Spawner,
        exits: ExitWatcher,
        make_notifications: Callable[[], ProcessNotifications],
        released: Callable[[], None] = nothing,
        metrics: Metrics | None = None,
    ) -> None:
        """``released``: called when processes are let go (see ``memory.py``); ``metrics``:
        where sessions and exits are counted."""
        self.limits = limits
        self.metrics = metrics or Metrics()
        self._spawner = spawner
        self._exits = exits
        self._make_notifications = make_notifications
        self._released = released
        self._sessions: dict[str, Session] = {}
        self.accepting = True
        """False once the server drains: no new session, though a detached one may be
        resumed (its client then learns how its processes ended)."""

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    def create(self, connection: Connection, client: str) -> Session:
        """A new session attached to ``connection`` (``client``: the name it gave, for the
        event), or -32600 past ``max_sessions`` or while the server drains."""
        if not self.accepting:
            raise invalid_request(
                "this exec-server is shutting down (draining after SIGTERM): it takes no new "
                "session; connect to another executor"
            )
        limit = self.limits.max_sessions
        if len(self._sessions) >= limit:
            self.metrics.limit_refused("max_sessions")
            raise invalid_request(
                f"this server already holds {limit} sessions (--max-sessions); end one, or "
                "wait for a disconnected one to expire"
            )
        session = Session(
            _new_session_id(),
            self.limits,
            self._spawner,
            self._exits,
            self._make_notifications(),
            self._released,
            self.metrics,
        )
        self._sessions[session.id] = session
        session.attach(connection)
        self.metrics.session_created(session.id, connection.number, client)
        return session

    def resume(self, session_id: str, connection: Connection, client: str) -> Session:
        """Reattach a detached session, or -32600 naming why not."""
        session = self._sessions.get(session_id)
        if session is None or session.state is SessionState.ENDED:
            raise invalid_request(f"unknown session id {session_id}")
        if session.state is SessionState.ATTACHED:
            raise invalid_request(f"session {session_id} is already attached to another connection")
        session.attach(connection)
        self.metrics.session_resumed(session.id, connection.number, client)
        return session

    def detach(self, session: Session, connection: Connection, grace_s: float | None = None) -> str:
        """The connection ended: keep the session for the grace period (the configured one
        unless ``grace_s`` is given), then end it. Returns what became of it, in words:
        ``detached``, ``ended``, or ``resumed elsewhere`` (another connection holds it)."""
        if session.state is SessionState.ENDED:
            return "ended"
        if session.connection is not connection or session.state is not SessionState.ATTACHED:
            return "resumed elsewhere"
        grace = self.limits.detach_grace_s if grace_s is None else grace_s
        if grace <= 0:
            self._end(session)
            return "ended"
        session.detach(grace, self._end)
        return "detached"

    def _end(self, session: Session) -> None:
        self._sessions.pop(session.id, None)
        if session.state is not SessionState.ENDED:
            self.metrics.session_ended(session.id)
        session.end()

    def process_states(self) -> dict[str, int]:
        """How many processes of all sessions are in each state (for a metrics scrape)."""
        counts: Counter[ProcessState] = Counter()
        for session in self._sessions.values():
            session.processes.count_states(counts)
        return {state.value: count for state, count in counts.items()}

    def sandbox_pids(self) -> list[int]:
        """The launcher pids of every session's running sandboxes (transport/peers.py)."""
        return [
            pid for session in self._sessions.values() for pid in session.processes.sandbox_pids()
        ]

    def live_processes(self) -> int:
        """Processes of all sessions that have not closed yet (a drain waits for none)."""
        return sum(session.processes.live for session in self._sessions.values())

    def shutdown(self) -> list[Session]:
        """End every session (server exit); returns them so the caller can await reaping."""
        sessions = list(self._sessions.values())
        for session in sessions:
            self._end(session)
        return sessions
