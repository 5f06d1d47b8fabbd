"""Moving bytes between non-blocking sockets on the event loop; the copy is ``splice(2)``
through a pipe, so a proxied body never passes through Python."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import socket

SPLICE_CHUNK = 1 << 20
"""Bytes asked of one splice (the pipe is grown to this where the kernel lets it)."""

_F_SETPIPE_SZ = 1031
_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK


async def readable(fd: int) -> None:
    """Wait until ``fd`` has something to read (or its end)."""
    await _ready(fd, writing=False)


async def writable(fd: int) -> None:
    """Wait until ``fd`` can take more."""
    await _ready(fd, writing=True)


async def _ready(fd: int, *, writing: bool) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    if writing:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        if writing:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def recv(sock: socket.socket, size: int) -> bytes:
    """Up to ``size`` bytes; ``b""`` at the end of the stream."""
    while True:
        try:
            return sock.recv(size)
        except BlockingIOError:
            await readable(sock.fileno())


async def recv_exactly(sock: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes; :class:`EOFError` if the stream ends first."""
    data = b""
    while len(data) < size:
        more = await recv(sock, size - len(data))
        if not more:
            raise EOFError("the connection ended early")
        data += more
    return data


async def send(sock: socket.socket, data: bytes) -> None:
    """All of ``data`` (written at once when the socket has room, as it nearly always has)."""
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view) :]
        except BlockingIOError:
            await writable(sock.fileno())


async def splice(source: socket.socket, sink: socket.socket) -> None:
    """Copy ``source`` to ``sink`` until ``source`` ends, then end ``sink``'s sending side."""
    pipe_out, pipe_in = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):
            fcntl.fcntl(pipe_in, _F_SETPIPE_SZ, SPLICE_CHUNK)
        src, dst = source.fileno(), sink.fileno()
        while True:
            try:
                moved = os.splice(src, pipe_in, SPLICE_CHUNK, flags=_FLAGS)
            except BlockingIOError:
                await readable(src)
                continue
            if moved == 0:
                break
            while moved:
                try:
                    moved -= os.splice(pipe_out, dst, moved, flags=_FLAGS)
                except BlockingIOError:
                    await writable(dst)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
    finally:
        os.close(pipe_out)
        os.close(pipe_in)


async def connect(
    addresses: tuple[str, ...] | list[str], port: int, timeout: float
) -> socket.socket | None:
    """A connection to the first of ``addresses`` that answers (in order; never a lookup)."""
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await _connect(sock, (address, port), timeout)
        except (OSError, TimeoutError):
            sock.close()
            continue
        except BaseException:
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    return None


async def _connect(sock: socket.socket, address: tuple[str, int], timeout: float) -> None:
    """A non-blocking connect: at once on loopback, else when the socket becomes writable."""
    code = sock.connect_ex(address)
    if code == 0:
        return
    if code not in (errno.EINPROGRESS, errno.EAGAIN):
        raise OSError(code, os.strerror(code))
    async with asyncio.timeout(timeout):
        await writable(sock.fileno())
    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code:
        raise OSError(code, os.strerror(code))
