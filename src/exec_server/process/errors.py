"""What the process layer refuses, as domain errors; ``methods/process.py`` words them for the wire."""

from __future__ import annotations


class ProcessError(Exception):
    """A request about a session's processes that cannot be done."""

    def __init__(self, process_id: str, reason: str = "") -> None:
        super().__init__(reason or process_id)
        self.process_id = process_id
        self.reason = reason


class UnknownProcess(ProcessError):
    """No process by that id: it never existed, or it was evicted."""


class ProcessStarting(ProcessError):
    """The process is still being started."""


class DuplicateProcess(ProcessError):
    """A process by that id exists already."""


class InvalidSpawn(ProcessError):
    """The request cannot describe a process (empty argv, a NUL byte, ``=`` in a name...);
    ``reason`` says what is wrong."""


class SpawnFailed(ProcessError):
    """The OS refused to start it (missing program, bad cwd, ...); ``reason`` is the OS's."""


class TooManyProcesses(ProcessError):
    """The session already has as many processes as it may (``reason`` says how many)."""


class NoTerminal(ProcessError):
    """The process has no terminal (it was started without ``tty``)."""


class StdinBroken(ProcessError):
    """The process was terminated: its stdin takes nothing more."""
