"""The errors the client raises, each with a message a person can act on.

Every one derives from :class:`ExecServerError`, so ``except ExecServerError`` catches all
failures that come from the server or the connection to it (and nothing else).
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import ClassVar

METHOD_NOT_FOUND = -32601
INVALID_REQUEST = -32600
NOT_FOUND = -32004


class ExecServerError(Exception):
    """Base of every error of :mod:`exec_server.client`."""


class ConnectionFailed(ExecServerError):
    """The server could not be reached, or the connection was not accepted."""


class AuthenticationFailed(ConnectionFailed):
    """The server refused the connection at the handshake (HTTP 401): a missing or wrong token."""


class ConnectionLost(ExecServerError):
    """The connection dropped and could not be resumed (or reconnection is turned off)."""


class ExecutorLost(ConnectionLost):
    """The executor (server) at ``executor`` went away while this client's work ran there:
    it died, or could not be reached again in time. What it was running may or may not have
    finished, and is not started again anywhere: the caller decides."""

    def __init__(self, message: str, executor: str) -> None:
        super().__init__(message)
        self.executor = executor
        """The executor's URL."""


class ServerShutdown(ExecutorLost):
    """The server closed the connection because it is shutting down (SIGTERM, after its drain:
    WebSocket close 1001); ``reason`` is what it said, e.g. that its drain timeout passed and
    running processes were killed."""

    def __init__(self, message: str, executor: str, reason: str) -> None:
        super().__init__(message, executor)
        self.reason = reason


class NotSupported(ExecServerError):
    """The server does not offer what was asked (an extension, or a method of a later release)."""


class RpcError(ExecServerError):
    """The server answered a request with a JSON-RPC error.

    ``code`` is the JSON-RPC code (-32600 invalid request, -32601 method not found, -32602
    invalid params, -32603 internal error, -32004 not found) and ``message`` the server's text.
    """

    def __init__(self, method: str, code: int, message: str, subject: str | None = None) -> None:
        what = method if subject is None else f"{method} {subject}"
        super().__init__(f"{what} failed: {message} (error {code})")
        self.method = method
        self.code = code
        self.message = message
        self.subject = subject
        """What the request was about (a remote path, a process id), when known."""


class _RemoteOSError(RpcError, OSError):
    """An error reply that is also an :class:`OSError` of the kind a local call would
    raise: ``errno`` (the class's ``os_errno``), ``strerror`` and ``filename`` set as
    OSError sets them, the text as :class:`RpcError` words it."""

    os_errno: ClassVar[int]

    def __init__(self, method: str, code: int, message: str, subject: str | None = None) -> None:
        super().__init__(method, code, message, subject)
        self.errno = self.os_errno
        self.strerror = message
        self.filename = subject

    def __str__(self) -> str:
        return RpcError.__str__(self)


class RemoteFileNotFound(_RemoteOSError, FileNotFoundError):
    """A remote path does not exist (error -32004); also a :class:`FileNotFoundError`."""

    os_errno = errno.ENOENT


class StdinClosed(ExecServerError, BrokenPipeError):
    """The process has no writable stdin (it was not started with ``stdin=True``), or the
    server closed it."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "stdin is closed"


class RemoteFileExists(_RemoteOSError, FileExistsError):
    """A remote path that must not exist does (``File exists (os error 17)``); also a
    :class:`FileExistsError`."""

    os_errno = errno.EEXIST


class ProgramNotFound(_RemoteOSError, FileNotFoundError):
    """``process/start`` failed because the program does not exist (on the server's PATH, or
    at the path given); also a :class:`FileNotFoundError`. The shell's exit code for it is 127."""

    os_errno = errno.ENOENT


class ProgramNotExecutable(_RemoteOSError, PermissionError):
    """``process/start`` failed because the program exists but cannot be run (no execute
    permission, a directory, not an executable format); also a :class:`PermissionError`.
    The shell's exit code for it is 126."""

    os_errno = errno.EACCES


class BadWorkingDirectory(_RemoteOSError, NotADirectoryError):
    """``process/start`` failed because its working directory does not exist or is not a
    directory; also a :class:`NotADirectoryError`. ``subject`` is the directory."""

    os_errno = errno.ENOTDIR


_MISSING = ("(os error 2)",)
_NOT_RUNNABLE = ("(os error 13)", "(os error 8)", "(os error 21)")
_NOT_A_DIRECTORY = ("(os error 20)",)


def start_error(error: RpcError, program: str, cwd: str | None) -> RpcError:
    """The typed error for a failed ``process/start``: the OS reason in the server's message
    (``... (os error N): PATH``) and the path it names tell a missing program from an
    unusable one or a bad working directory. Any other error comes back as it was."""
    message = error.message
    named = message.rpartition(": ")[2] if ": " in message else None
    about_cwd = cwd is not None and named is not None and named == cwd and named != program
    if cwd is not None and named is None and any(mark in message for mark in _NOT_A_DIRECTORY):
        about_cwd = True  # the reference names no path; a program path rarely runs into it
    if about_cwd and any(mark in message for mark in _MISSING + _NOT_A_DIRECTORY):
        return BadWorkingDirectory(error.method, error.code, message, cwd)
    if about_cwd:
        return error
    if any(mark in message for mark in _MISSING):
        return ProgramNotFound(error.method, error.code, message, program)
    if any(mark in message for mark in _NOT_RUNNABLE):
        return ProgramNotExecutable(error.method, error.code, message, program)
    return error


def rpc_error(method: str, code: int, message: str, subject: str | None = None) -> RpcError:
    """The error for a JSON-RPC error reply: file-not-found and file-exists are also the
    matching :class:`OSError` subclasses."""
    if code == NOT_FOUND:
        return RemoteFileNotFound(method, code, message, subject)
    if "(os error 17)" in message:
        return RemoteFileExists(method, code, message, subject)
    return RpcError(method, code, message, subject)


class ProcessError(ExecServerError):
    """A process run with ``check=True`` exited with a non-zero code.

    Carries ``argv``, ``returncode``, ``stdout`` and ``stderr`` (bytes), like
    :class:`subprocess.CalledProcessError`.
    """

    def __init__(self, argv: Sequence[str], returncode: int, stdout: bytes, stderr: bytes) -> None:
        super().__init__(f"command {list(argv)!r} exited with code {returncode}")
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


class ProcessTimeout(ExecServerError):
    """A process run with ``timeout=`` did not finish in time; it was terminated.

    Carries ``argv``, ``timeout`` and the ``stdout``/``stderr`` collected until then.
    """

    def __init__(self, argv: Sequence[str], timeout: float, stdout: bytes, stderr: bytes) -> None:
        super().__init__(f"command {list(argv)!r} did not finish within {timeout:g} s")
        self.argv = list(argv)
        self.timeout = timeout
        self.stdout = stdout
        self.stderr = stderr


class OutputGap(ExecServerError):
    """Output of a process was lost: the server dropped it (retention) before the client,
    reconnecting, could read it. ``first_seq``..``last_seq`` is the missing range; events
    before it were delivered, and iterating again continues after it."""

    def __init__(self, process_id: str, first_seq: int, last_seq: int) -> None:
        span = f"seq {first_seq}" if first_seq == last_seq else f"seqs {first_seq}..{last_seq}"
        super().__init__(
            f"output of process {process_id} was lost ({span}): the server discarded it "
            "while the connection was down"
        )
        self.process_id = process_id
        self.first_seq = first_seq
        self.last_seq = last_seq


class ProcessLost(ExecServerError):
    """The server no longer knows a process this client started (it was forgotten while the
    connection was down), so its remaining output and exit code cannot be learned."""
