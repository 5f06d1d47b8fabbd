"""Nothing leaks: after connections come and go with every kind of process, the server
process has the fds it started with and every child is gone."""

from __future__ import annotations

import asyncio
import gc
import os

import pytest

from exec_server.config import Limits, Runtime

from .support import Client, RpcFailure, open_fds, pid_alive, running_server, wait_until


def _threads() -> set[int]:
    return {int(task) for task in os.listdir("/proc/self/task")}


@pytest.mark.parametrize(
    ("spill", "pidfd"),
    [(False, True), (True, True), (False, False)],
    ids=["in-memory", "spilled", "no-pidfd"],
)
async def test_connections_and_processes_leave_no_fd_and_no_child(spill: bool, pidfd: bool) -> None:
    limits = Limits(
        detach_grace_s=0,
        closed_retention_s=0.05,
        spill_threshold_bytes=0 if spill else 1 << 30,
    )
    async with running_server(limits, runtime=Runtime(pidfd=pidfd)) as (server, url):
        await asyncio.sleep(0)  # the listener's own fds are open by now
        before = open_fds()
        threads = _threads()
        pids: list[int] = []
        for round_ in range(3):
            async with Client.connect(url) as client:
                await client.initialize()
                await client.run(
                    f"out{round_}", ["sh", "-c", "head -c 200000 /dev/zero; echo done >&2"]
                )
                await client.run(f"pty{round_}", ["sh", "-c", "tty; echo hi"], tty=True)
                await client.start(f"cat{round_}", ["cat"], pipeStdin=True)
                await client.write(f"cat{round_}", b"hello\n")
                await client.wait_output(f"cat{round_}", b"hello\n")
                await client.start(f"sleep{round_}", ["sh", "-c", "sleep 100 & echo $!; wait"])
                out = await client.wait_output(f"sleep{round_}", b"\n")
                pids.append(int(out.split()[0]))
                await client.start(f"ptysleep{round_}", ["sleep", "100"], tty=True)
                await client.start(f"ptyyes{round_}", ["yes"], tty=True)
                await client.wait_output(f"ptyyes{round_}", b"y\r\ny\r\n")
                await client.call("process/terminate", {"processId": f"cat{round_}"})
                await client.wait_closed(f"cat{round_}")
                # Leave the sleeps running: the disconnect (grace 0) must kill them.
        assert await wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=15)
        assert await wait_until(lambda: len(server.sessions) == 0, timeout=15)
        # Every fd opened for children, PTYs, pidfds and spill files is closed again.
        assert await wait_until(lambda: open_fds() <= before, timeout=15), open_fds() - before
        # Without pidfds a thread waits for each child; every one is gone with its child.
        assert await wait_until(lambda: not _threads() - threads, timeout=15), _threads() - threads


def test_a_process_is_named_by_pid_and_start_time() -> None:
    """Trees are killed by pid and start time, so a pid in use again by another process is
    never signalled in the name of one that is gone."""
    import subprocess

    from exec_server.process.tree import Pid

    child = subprocess.Popen(["sleep", "30"])
    named = Pid.of(child.pid)
    assert named is not None and named.alive()
    assert not Pid(child.pid, named.start + 1).alive()  # same pid, another process
    child.kill()
    child.wait()
    assert not named.alive() and Pid.of(child.pid) is None
    me = Pid.of(os.getpid())
    assert me is not None and me.alive()


async def test_an_evicted_process_is_freed_by_reference_counting() -> None:
    """Nothing of a closed process waits for the cyclic collector once it is evicted: the
    server makes full collections rare (cli.py), and the cycles through its reader's
    callbacks and its eviction timer held ~3 KiB per process until one (10,000 `true` in a
    row left the server ~33 MiB bigger; bench/soak.py found it)."""
    from exec_server.process.manager import ManagedProcess
    from exec_server.process.reading import OutputReader

    def left() -> list[object]:
        return [o for o in gc.get_objects() if isinstance(o, ManagedProcess | OutputReader)]

    async with (
        running_server(Limits(closed_retention_s=0.05)) as (_server, url),
        Client.connect(url) as client,
    ):
        await client.initialize()
        gc.collect()
        gc.disable()  # a collection would hide a cycle
        try:
            for i in range(3):
                await client.run(f"p{i}", ["sh", "-c", "echo out; echo err >&2"])
                await client.run(f"t{i}", ["sh", "-c", "echo tty"], tty=True)
            for i in range(3):
                for pid in (f"p{i}", f"t{i}"):
                    while True:
                        try:
                            await client.read(pid)
                        except RpcFailure:
                            break  # evicted
                        await asyncio.sleep(0.02)
            assert left() == []
        finally:
            gc.enable()


def test_a_closed_process_leaves_the_id_cache() -> None:
    """The notification encoder caches the JSON of live process ids only: ids of closed ones
    kept the allocator's arenas of a burst of processes from being given back."""
    from exec_server.protocol import ProcessNotifications, msgspec_base64

    notifications = ProcessNotifications(msgspec_base64)
    assert b'"processId":"a"' in notifications.output("a", 1, "stdout", b"x")
    assert b'"processId":"a"' in notifications.closed("a", 2)
    assert notifications._ids == {}
    assert (
        notifications.closed("b", 1)
        == b'{"method":"process/closed","params":{"processId":"b","seq":1}}'
    )
