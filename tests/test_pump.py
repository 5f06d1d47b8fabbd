"""The PTY reader thread (``process/_pump.c``): on real PTYs, then through the server.

The pump owns no fd but reads one from a thread of its own, so what matters is that every
byte arrives once and in order (also across the hand-back to the loop at stop()), that a
full buffer holds the child back, and that no thread or fd is left behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pty
import select
import termios
import threading
import time
import tty
from collections.abc import Iterator

import pytest

from exec_server.config import Limits
from exec_server.process.reading import PUMP, gather

from .support import (
    Client,
    open_fds,
    pid_alive,
    proc_state,
    pump_threads,
    running_server,
    wait_until,
)

if PUMP is None:  # pragma: no cover - built wherever a C compiler is
    pytest.skip("the PTY reader thread is not built here, or turned off", allow_module_level=True)
Pump = PUMP

PAYLOAD = bytes(i % 251 for i in range(1 << 20))


@pytest.fixture
def raw_pty() -> Iterator[tuple[int, int]]:
    """(master, slave): the master non-blocking as the server keeps it, the slave raw."""
    master, slave = pty.openpty()
    os.set_blocking(master, False)
    tty.setraw(slave, termios.TCSANOW)
    yield master, slave
    for fd in (master, slave):
        with contextlib.suppress(OSError):
            os.close(fd)


def write_then_close(fd: int, payload: bytes) -> threading.Thread:
    def run() -> None:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        os.close(fd)

    writer = threading.Thread(target=run)
    writer.start()
    return writer


def take_until_end(pump: object, limit: int = 65536) -> bytes:
    """Everything the pump delivers up to end of file."""
    assert isinstance(pump, Pump)
    received = bytearray()
    while True:
        ready, _, _ = select.select([pump.fileno()], [], [], 10.0)
        assert ready, "the pump said nothing for 10 s"
        data = pump.take(limit)
        if data is None:
            continue  # a wake-up whose news an earlier take already handed over
        if not data:
            return bytes(received)
        assert len(data) <= limit
        received += data


def test_every_byte_in_order_then_end_of_file(raw_pty: tuple[int, int]) -> None:
    master, slave = raw_pty
    pump = Pump(master, 128 * 1024)
    writer = write_then_close(slave, PAYLOAD)
    try:
        received = take_until_end(pump)
        assert received == PAYLOAD
        assert pump.ended
        assert pump.take(65536) == b""  # the end stays the end
    finally:
        writer.join()
        pump.close()


def test_take_respects_its_limit(raw_pty: tuple[int, int]) -> None:
    master, slave = raw_pty
    pump = Pump(master, 64 * 1024)
    writer = write_then_close(slave, PAYLOAD[:200_000])
    try:
        received = take_until_end(pump, limit=1000)
        assert received == PAYLOAD[:200_000]
    finally:
        writer.join()
        pump.close()


def test_a_full_buffer_holds_the_writer_back(raw_pty: tuple[int, int]) -> None:
    master, slave = raw_pty
    capacity = 8192
    pump = Pump(master, capacity)
    os.set_blocking(slave, False)
    try:
        written = 0
        # Write while the PTY takes more; nobody takes from the pump, so this must stop.
        while select.select([], [slave], [], 0.5)[1] and written < len(PAYLOAD):
            with contextlib.suppress(BlockingIOError):
                written += os.write(slave, PAYLOAD[written : written + 65536])
        assert written < len(PAYLOAD), "the writer was never held back"
        held = pump.take(1 << 20)
        assert held is not None and 0 < len(held) <= capacity
        # Taking makes room: the rest flows, byte-exact.
        received = bytearray(held)
        deadline = time.monotonic() + 30
        while len(received) < len(PAYLOAD):
            assert time.monotonic() < deadline, "no progress"
            if written < len(PAYLOAD) and select.select([], [slave], [], 0)[1]:
                with contextlib.suppress(BlockingIOError):
                    written += os.write(slave, PAYLOAD[written : written + 65536])
            if select.select([pump.fileno()], [], [], 0.01)[0]:
                data = pump.take(65536)
                if data:
                    received += data
        assert bytes(received) == PAYLOAD
    finally:
        pump.close()


def test_stop_keeps_what_was_read_and_hands_the_fd_back(raw_pty: tuple[int, int]) -> None:
    """What the thread read before stop() is still taken, then the loop reads the fd itself:
    together they are the payload, with no byte lost, doubled or reordered."""
    master, slave = raw_pty
    pump = Pump(master, 32 * 1024)
    writer = write_then_close(slave, PAYLOAD)
    try:
        received = bytearray()
        while len(received) < 300_000:
            select.select([pump.fileno()], [], [], 10.0)
            received += pump.take(65536) or b""
        pump.stop()
        pump.stop()  # idempotent
        while (data := pump.take(65536)) is not None:
            assert data, "the thread could not have seen the end yet"
            received += data
        while True:
            select.select([master], [], [], 10.0)
            data = gather(master, 65536)
            if data == b"":
                break
            received += data or b""
        assert bytes(received) == PAYLOAD
    finally:
        writer.join()
        pump.close()


def test_nothing_yet_is_none_and_a_failed_read_is_an_error() -> None:
    master, slave = pty.openpty()
    os.set_blocking(master, False)
    try:
        pump = Pump(master, 4096)
        assert pump.take(100) is None
        pump.close()
        pump.close()
        assert pump.take(100) is None  # closed, with nothing left
        with pytest.raises(ValueError):
            pump.fileno()
    finally:
        os.close(master)
        os.close(slave)
    directory = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK)
    try:
        pump = Pump(directory, 4096)
        with pytest.raises(OSError) as info:
            take_until_end(pump)
        assert info.value.errno == errno.EISDIR
        assert pump.ended
        pump.close()
    finally:
        os.close(directory)


def test_bad_arguments_are_value_errors(raw_pty: tuple[int, int]) -> None:
    master, slave = raw_pty
    with pytest.raises(ValueError):
        Pump(-1, 4096)
    with pytest.raises(ValueError):
        Pump(master, 0)
    with pytest.raises(ValueError, match="non-blocking"):
        Pump(slave, 4096)  # a blocking read could keep stop() waiting forever
    pump = Pump(master, 4096)
    try:
        with pytest.raises(ValueError):
            pump.take(0)
    finally:
        pump.close()


async def test_no_thread_or_fd_is_left_behind() -> None:
    before_fds, before_threads = open_fds(), pump_threads()
    for round_ in range(20):
        master, slave = pty.openpty()
        os.set_blocking(master, False)
        os.write(slave, b"x" * 10_000)
        pump = Pump(master, 4096)  # fills up and waits for room
        if round_ % 3 == 0:
            pump.close()
        elif round_ % 3 == 1:
            pump.stop()
            del pump  # the eventfds go with the object
        else:
            del pump  # never stopped: dealloc stops and joins the thread
        os.close(master)
        os.close(slave)
    # A joined thread can linger in /proc/self/task for a moment while the kernel reaps it.
    assert await wait_until(lambda: not pump_threads() - before_threads, timeout=5), {
        tid: proc_state(tid) for tid in pump_threads() - before_threads
    }
    assert open_fds() <= before_fds, open_fds() - before_fds


# ---- through the server: the pump takes over from the first byte -----------------------------


@pytest.fixture
def limits() -> Limits:
    return Limits(pty_thread_after_bytes=1, detach_grace_s=0, closed_retention_s=0.05)


async def test_pumped_output_is_byte_exact_and_precedes_the_exit(client: Client) -> None:
    script = "yes 0123456789abcdef | tr -d '\\n' | head -c 3000000"
    events = await client.run("big", ["sh", "-c", script], tty=True)
    assert events.data() == (b"0123456789abcdef" * 187500)
    kinds = [method for method, _ in events.order]
    assert kinds[-2:] == ["process/exited", "process/closed"]
    assert "process/output" not in kinds[kinds.index("process/exited") :]
    assert events.exited is not None and events.exited["exitCode"] == 0


async def test_a_pumped_pty_stays_interactive(client: Client) -> None:
    await client.start("cat", ["cat"], tty=True)
    for word in (b"first", b"second", b"third"):
        await client.write("cat", word + b"\n")
        await client.wait_output("cat", word + b"\r\n" + word + b"\r\n")  # echo, then cat
    await client.call("process/terminate", {"processId": "cat"})
    events = await client.wait_closed("cat")
    assert events.exited is not None


async def test_streaming_pumps_are_stopped_by_terminate_and_by_disconnect() -> None:
    limits = Limits(pty_thread_after_bytes=1, detach_grace_s=0, closed_retention_s=0.05)
    async with running_server(limits) as (server, url):
        before_threads = pump_threads()
        async with Client.connect(url) as client:
            await client.initialize()
            await client.start("yes1", ["yes"], tty=True)
            await client.start("yes2", ["sh", "-c", "echo $$; exec yes"], tty=True)
            out = await client.wait_output("yes2", b"\ny")
            pid = int(out.split()[0])
            assert await wait_until(lambda: len(pump_threads() - before_threads) == 2)
            await client.call("process/terminate", {"processId": "yes1"})
            await client.wait_closed("yes1")
            assert await wait_until(lambda: len(pump_threads() - before_threads) == 1)
            # yes2 is still streaming when the connection goes (grace 0: killed at once).
        assert await wait_until(lambda: not pid_alive(pid), timeout=15)
        assert await wait_until(lambda: len(server.sessions) == 0, timeout=15)
        assert await wait_until(lambda: not pump_threads() - before_threads)
