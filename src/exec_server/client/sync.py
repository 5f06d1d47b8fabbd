"""The client without ``await``: ``with connect(url) as client: client.run([...])``.

Each connection runs an asyncio loop in a background thread; every call here hands a
coroutine to it and waits for the result, so the objects behave like their asyncio twins
(:class:`~exec_server.client.Client`, :class:`~exec_server.client.Process`,
:class:`~exec_server.client.RemoteFS`) and raise the same errors.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from types import TracebackType
from typing import Any, Literal, TypeVar

from . import client as aio
from . import pool as aio_pool
from . import process as aio_process
from .fs import DirEntry, FileStat, RemoteFile, RemotePath
from .process import CompletedProcess, Event, ProcessStream

__all__ = ["Client", "Pool", "Process", "RemoteFS", "connect", "connect_stdio"]

T = TypeVar("T")


class _Loop:
    """An event loop running in a daemon thread until :meth:`stop`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="exec-server-client", daemon=True
        )
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def iterate(self, iterator: AsyncIterator[T]) -> Iterator[T]:
        """An async iterator, one item per call into the loop."""

        async def next_item() -> tuple[bool, T | None]:
            try:
                return True, await anext(iterator)
            except StopAsyncIteration:
                return False, None

        while True:
            more, item = self.run(next_item())
            if not more:
                return
            yield item  # type: ignore[misc]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class Process:
    """A running process (see :class:`exec_server.client.Process`)."""

    def __init__(self, loop: _Loop, process: aio_process.Process) -> None:
        self._loop = loop
        self._process = process
        self.id = process.id
        self.argv = process.argv
        self.stdout = _Stream(loop, process.stdout)
        self.stderr = _Stream(loop, process.stderr)

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    def events(self) -> Iterator[Event]:
        """Every event in seq order, ending with ``Closed``."""
        return self._loop.iterate(self._process.events())

    def read(self) -> bytes:
        """The next output bytes of any stream; ``b""`` once closed."""
        return self._loop.run(self._process.read())

    def write(self, data: bytes) -> None:
        """Write to stdin."""
        self._loop.run(self._process.write(data))

    def close_stdin(self) -> None:
        """Send end-of-file."""
        self._loop.run(self._process.close_stdin())

    def signal(self, name: str) -> None:
        """Send a signal by name."""
        self._loop.run(self._process.signal(name))

    def resize(self, rows: int, cols: int) -> None:
        """Set the PTY's window size."""
        self._loop.run(self._process.resize(rows, cols))

    def terminate(self) -> bool:
        """Kill the process group; True if it was still running."""
        return self._loop.run(self._process.terminate())

    def wait(self) -> int:
        """Wait for the exit and return its code."""
        return self._loop.run(self._process.wait())


class _Stream:
    """``for chunk in process.stdout`` or ``process.stdout.read()``."""

    def __init__(self, loop: _Loop, stream: ProcessStream) -> None:
        self._loop = loop
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        return self._loop.iterate(aiter(self._stream))

    def read(self) -> bytes:
        """Everything until the process closes."""
        return self._loop.run(self._stream.read())


class RemoteFS:
    """The server's file system: the same methods as :class:`exec_server.client.RemoteFS`,
    blocking."""

    def __init__(self, loop: _Loop, client: aio.Client) -> None:
        self._loop = loop
        self._fs = client.fs

    def read_bytes(self, path: RemotePath) -> bytes:
        return self._loop.run(self._fs.read_bytes(path))

    def read_text(self, path: RemotePath, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self._loop.run(self._fs.read_text(path, encoding, errors))

    def write_bytes(self, path: RemotePath, data: bytes) -> None:
        self._loop.run(self._fs.write_bytes(path, data))

    def write_text(
        self, path: RemotePath, text: str, encoding: str = "utf-8", errors: str = "strict"
    ) -> None:
        self._loop.run(self._fs.write_text(path, text, encoding, errors))

    def stat(self, path: RemotePath) -> FileStat:
        return self._loop.run(self._fs.stat(path))

    def exists(self, path: RemotePath) -> bool:
        return self._loop.run(self._fs.exists(path))

    def is_dir(self, path: RemotePath) -> bool:
        return self._loop.run(self._fs.is_dir(path))

    def iterdir(self, path: RemotePath) -> list[DirEntry]:
        return self._loop.run(self._fs.iterdir(path))

    def mkdir(self, path: RemotePath, *, parents: bool = False, exist_ok: bool = False) -> None:
        self._loop.run(self._fs.mkdir(path, parents=parents, exist_ok=exist_ok))

    def remove(
        self, path: RemotePath, *, recursive: bool = False, missing_ok: bool = False
    ) -> None:
        self._loop.run(self._fs.remove(path, recursive=recursive, missing_ok=missing_ok))

    def copy(self, source: RemotePath, destination: RemotePath, *, recursive: bool = False) -> None:
        self._loop.run(self._fs.copy(source, destination, recursive=recursive))

    def open(self, path: RemotePath, mode: Literal["rb", "wb"] = "rb") -> File:
        """A remote file for streaming, used with ``with``."""
        return File(self._loop, self._fs.open(path, mode))


class File:
    """A remote file opened with :meth:`RemoteFS.open`: the methods of
    :class:`exec_server.client.RemoteFile`, blocking, and ``with``."""

    def __init__(self, loop: _Loop, file: RemoteFile) -> None:
        self._loop = loop
        self._file = file

    def __enter__(self) -> File:
        self._loop.run(self._file.__aenter__())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[bytes]:
        return self._loop.iterate(aiter(self._file))

    def read(self, size: int = -1) -> bytes:
        return self._loop.run(self._file.read(size))

    def write(self, data: bytes) -> int:
        return self._loop.run(self._file.write(data))

    def seek(self, offset: int) -> int:
        return self._file.seek(offset)

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        self._loop.run(self._file.close())


class _Starts:
    """``run`` and ``start``, blocking, for a :class:`Client` and a :class:`Pool` alike: each
    hands the call to its asyncio twin (``_target``) on its loop and wraps the process."""

    _loop: _Loop
    _target: aio.Client | aio_pool.Pool

    def run(
        self,
        argv: Sequence[str],
        *,
        cwd: RemotePath | None = None,
        env: Mapping[str, str] | None = None,
        inherit_env: bool = True,
        input: bytes | None = None,
        timeout: float | None = None,
        tty: bool = False,
        check: bool = False,
    ) -> CompletedProcess:
        """Run a process to its end (see :meth:`exec_server.client.Client.run`); a pool runs it
        on the least busy ready executor."""
        return self._loop.run(
            self._target.run(
                argv,
                cwd=cwd,
                env=env,
                inherit_env=inherit_env,
                input=input,
                timeout=timeout,
                tty=tty,
                check=check,
            )
        )

    def start(
        self,
        argv: Sequence[str],
        *,
        cwd: RemotePath | None = None,
        env: Mapping[str, str] | None = None,
        inherit_env: bool = True,
        tty: bool = False,
        stdin: bool = False,
        size: tuple[int, int] | None = None,
    ) -> Process:
        """Start a process (see :meth:`exec_server.client.Client.start`); a pool starts it on
        the least busy ready executor."""
        process = self._loop.run(
            self._target.start(
                argv, cwd=cwd, env=env, inherit_env=inherit_env, tty=tty, stdin=stdin, size=size
            )
        )
        return Process(self._loop, process)


class Client(_Starts):
    """A connection (see :class:`exec_server.client.Client`)."""

    def __init__(self, loop: _Loop, client: aio.Client) -> None:
        self._loop = loop
        self._client = self._target = client
        self.fs = RemoteFS(loop, client)
        self.session_id = client.session_id
        self.environment_info = client.environment_info
        self.extensions = client.extensions

    def supports(self, extension: str) -> bool:
        return self._client.supports(extension)

    def create_connection(self, address: tuple[str, int]) -> socket.socket:
        """A TCP connection to ``(host, port)`` made from the server's machine, as a plain
        blocking socket (:func:`socket.create_connection`'s twin; the bytes travel as in
        :meth:`exec_server.client.Client.open_connection`). Close it when done."""
        from .forward import open_socket

        return self._loop.run(open_socket(self._client, *address))

    def request(self, method: str, params: Any = None) -> Any:
        """Call any method; returns the decoded JSON result."""
        return self._loop.run(self._client.request(method, params))


@contextmanager
def _session(loop: _Loop, connector: AbstractAsyncContextManager[aio.Client]) -> Iterator[Client]:
    """A blocking :class:`Client` for the session ``connector`` opens on ``loop``."""
    client = loop.run(connector.__aenter__())
    try:
        yield Client(loop, client)
    finally:
        loop.run(connector.__aexit__(None, None, None))


@contextmanager
def _connected(connector: aio._Connector) -> Iterator[Client]:
    loop = _Loop()
    try:
        with _session(loop, connector) as client:
            yield client
    finally:
        loop.stop()


@contextmanager
def connect(url: str, *, token: str | None = None, **options: Any) -> Iterator[Client]:
    """``with connect("ws://127.0.0.1:PORT") as client:`` (options as
    :func:`exec_server.client.connect`)."""
    with _connected(aio.connect(url, token=token, **options)) as client:
        yield client


@contextmanager
def connect_stdio(argv: Sequence[str], **options: Any) -> Iterator[Client]:
    """``with connect_stdio(["exec-server", "--listen", "stdio"]) as client:``."""
    with _connected(aio.connect_stdio(argv, **options)) as client:
        yield client


class Pool(_Starts):
    """Executors as one, blocking (see :class:`exec_server.client.Pool`):
    ``with Pool(urls, token=...) as pool: pool.run([...])``."""

    def __init__(self, targets: str | Sequence[str], **options: Any) -> None:
        self._loop = _Loop()
        self._pool = self._target = aio_pool.Pool(targets, **options)

    def executor_of(self, process: Process) -> str | None:
        """The URL of the executor a process of this pool runs on."""
        return self._pool.executor_of(process._process)

    @contextmanager
    def session(self) -> Iterator[Client]:
        """A session of its own on the ready executor with the fewest of the pool's sessions."""
        with _session(self._loop, self._pool.session()) as client:
            yield client

    def close(self) -> None:
        """Close every session of the pool, then its thread."""
        try:
            self._loop.run(self._pool.close())
        finally:
            self._loop.stop()

    def __enter__(self) -> Pool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
