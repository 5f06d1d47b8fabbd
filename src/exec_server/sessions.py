"""Sessions: a process table that outlives the connection that made it.

A session is created by ``initialize``, owned by at most one connection at a time, detached
when that connection ends, resumable with ``resumeSessionId`` for a grace period, and then
torn down (every process killed). Events of a detached session are not sent anywhere; the
output stays retained for ``process/read`` after a resume (PROTOCOL.md Part B §3.3).
"""

from __future__ import annotations

import asyncio
import enum
import uuid
from typing import TYPE_CHECKING

from . import protocol
from .config import Limits
from .errors import invalid_request
from .process.manager import ProcessManager

if TYPE_CHECKING:
    from .connection import Connection


class SessionState(enum.Enum):
    ATTACHED = "attached"
    DETACHED = "detached"
    ENDED = "ended"


class Session:
    """One session: its id, its process table and the connection it is attached to.

    The session is the process manager's event sink: it turns events into notifications for
    the attached connection, and drops them while detached.
    """

    def __init__(self, session_id: str, limits: Limits) -> None:
        self.id = session_id
        self.state = SessionState.DETACHED
        self.connection: Connection | None = None
        self.processes = ProcessManager(limits, self)
        self._expiry: asyncio.TimerHandle | None = None
        self._encoded_ids: dict[str, bytes] = {}
        self.resources: list[SessionResource] = []

    # ---- EventSink ------------------------------------------------------------------------

    def _id_json(self, process_id: str) -> bytes:
        encoded = self._encoded_ids.get(process_id)
        if encoded is None:
            if len(self._encoded_ids) > 4096:
                self._encoded_ids.clear()
            encoded = self._encoded_ids[process_id] = protocol.encode(process_id)
        return encoded

    def output(self, process_id: str, seq: int, stream: str, data: bytes) -> bool:
        connection = self.connection
        if connection is None:
            return True
        message = protocol.output_notification(
            self._id_json(process_id), seq, _STREAM_BYTES[stream], data
        )
        return connection.send_notification(message)

    def exited(self, process_id: str, seq: int, exit_code: int) -> None:
        if self.connection is not None:
            self.connection.send_notification(
                protocol.exited_notification(self._id_json(process_id), seq, exit_code)
            )

    def closed(self, process_id: str, seq: int) -> None:
        if self.connection is not None:
            self.connection.send_notification(
                protocol.closed_notification(self._id_json(process_id), seq)
            )

    # ---- lifecycle --------------------------------------------------------------------------

    def attach(self, connection: Connection) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self.connection = connection
        self.state = SessionState.ATTACHED

    def end(self) -> None:
        """Kill every process and release every resource; sends nothing."""
        if self.state is SessionState.ENDED:
            return
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self.state = SessionState.ENDED
        self.connection = None
        self.processes.kill_all()
        for resource in self.resources:
            resource.release()
        self.resources.clear()


class SessionResource:
    """Something a session owns besides processes (file handles, ...), released at its end."""

    def release(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


_STREAM_BYTES = {"stdout": b"stdout", "stderr": b"stderr", "pty": b"pty"}


class SessionRegistry:
    """Every live session of a server, with detach timers and resume rules."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, connection: Connection) -> Session:
        session = Session(str(uuid.uuid4()), self.limits)
        self._sessions[session.id] = session
        session.attach(connection)
        return session

    def resume(self, session_id: str, connection: Connection) -> Session:
        """Reattach a detached session, or -32600 naming why not."""
        session = self._sessions.get(session_id)
        if session is None or session.state is SessionState.ENDED:
            raise invalid_request(f"unknown session id {session_id}")
        if session.state is SessionState.ATTACHED:
            raise invalid_request(f"session {session_id} is already attached to another connection")
        session.attach(connection)
        return session

    def detach(
        self, session: Session, connection: Connection, grace_s: float | None = None
    ) -> None:
        """The connection ended: keep the session for the grace period (the configured one
        unless ``grace_s`` is given), then end it."""
        if session.connection is not connection or session.state is not SessionState.ATTACHED:
            return
        session.connection = None
        session.state = SessionState.DETACHED
        session.processes.resume_output()  # nobody to wait for now: keep reading children
        grace = self.limits.detach_grace_s if grace_s is None else grace_s
        if grace <= 0:
            self._end(session)
        else:
            session._expiry = asyncio.get_running_loop().call_later(grace, self._end, session)

    def _end(self, session: Session) -> None:
        self._sessions.pop(session.id, None)
        session.end()

    def shutdown(self) -> list[Session]:
        """End every session (server exit); returns them so the caller can await reaping."""
        sessions = list(self._sessions.values())
        for session in sessions:
            self._end(session)
        return sessions
