"""A client for exec-server (and the reference ``codex exec-server`` 0.128 and 0.169).

    async with connect("ws://127.0.0.1:PORT") as client:
        result = await client.run(["uname", "-a"], check=True)
        print(result.stdout.decode())

:func:`connect` (WebSocket) and :func:`connect_stdio` (a server command on stdin/stdout) do
the handshake and yield a :class:`Client` (:class:`Pool` spreads sessions over many servers): :meth:`Client.run` runs a command to its end,
:meth:`Client.start` gives a :class:`Process` to stream and steer, ``client.fs`` reaches
files. :mod:`exec_server.client.sync` is the same without ``await``.

This package does not import the server.
"""

from .client import Client, State, connect, connect_stdio
from .errors import (
    AuthenticationFailed,
    BadWorkingDirectory,
    ConnectionFailed,
    ConnectionLost,
    ExecServerError,
    ExecutorLost,
    NotSupported,
    OutputGap,
    ProcessError,
    ProcessLost,
    ProcessTimeout,
    ProgramNotExecutable,
    ProgramNotFound,
    RemoteFileExists,
    RemoteFileNotFound,
    RpcError,
    ServerShutdown,
    StdinClosed,
)
from .fs import DirEntry, FileStat, RemoteFile, RemoteFS
from .pool import Executor, Pool
from .process import Closed, CompletedProcess, Event, Exited, Output, Process, ProcessStream

__all__ = [
    "AuthenticationFailed",
    "BadWorkingDirectory",
    "Client",
    "Closed",
    "CompletedProcess",
    "ConnectionFailed",
    "ConnectionLost",
    "DirEntry",
    "Event",
    "ExecServerError",
    "Executor",
    "ExecutorLost",
    "Exited",
    "FileStat",
    "NotSupported",
    "Output",
    "OutputGap",
    "Pool",
    "Process",
    "ProcessError",
    "ProcessLost",
    "ProcessStream",
    "ProcessTimeout",
    "ProgramNotExecutable",
    "ProgramNotFound",
    "RemoteFS",
    "RemoteFile",
    "RemoteFileExists",
    "RemoteFileNotFound",
    "RpcError",
    "ServerShutdown",
    "State",
    "StdinClosed",
    "connect",
    "connect_stdio",
]
