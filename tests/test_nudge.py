"""The nudge thread (``transport/_nudge.c``): one per process, asleep until a reply goes out.

What it is for (keeping a waiting client on our CPU) is a scheduling effect measured in
``bench/``; here we hold it to its contract: one thread, no signals, woken by ``nudge()``,
woken by the replies to what one read from the peer brought, and gone with the escape hatch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from exec_server.transport import flow

from .support import REPO, Client, proc_state, running_server, threads_named, wait_until

if flow.NUDGE is None:  # pragma: no cover - built wherever a C compiler is
    pytest.skip("the nudge thread is not built here, or turned off", allow_module_level=True)

from exec_server.transport import _nudge


def wake_ups(tid: int) -> int:
    """How often the thread has gone to sleep and been woken since it started."""
    with open(f"/proc/self/task/{tid}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches line")


def the_thread() -> int:
    (tid,) = threads_named("cpu-nudge")
    return tid


async def asleep(tid: int) -> int:
    """Once the thread sleeps (its last wake-up counted), how often it has been woken."""
    assert await wait_until(lambda: proc_state(tid) == "S", timeout=5)
    return wake_ups(tid)


def test_one_thread_however_often_it_is_started() -> None:
    for _ in range(3):
        _nudge.start()
    assert len(threads_named("cpu-nudge")) == 1


def test_the_thread_takes_no_signal() -> None:
    with open(f"/proc/self/task/{the_thread()}/status") as f:
        blocked = next(int(line.split()[1], 16) for line in f if line.startswith("SigBlk:"))
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE, signal.SIGWINCH):
        assert blocked & (1 << (sig - 1)), sig.name


async def test_a_nudge_wakes_it_and_it_sleeps_again() -> None:
    tid = the_thread()
    before = await asleep(tid)
    _nudge.nudge()
    assert await wait_until(lambda: wake_ups(tid) > before, timeout=5)
    assert await wait_until(lambda: proc_state(tid) == "S", timeout=5)


async def test_replies_to_requests_wake_it() -> None:
    tid = the_thread()
    async with running_server() as (_, url), Client.connect(url) as client:
        await client.initialize()
        before = await asleep(tid)
        for _ in range(5):  # error replies are replies too
            reply = await client.request("process/read", {"processId": "nobody"})
            assert "error" in reply
        assert await wait_until(lambda: wake_ups(tid) > before, timeout=5)


def test_the_escape_hatch_turns_it_off() -> None:
    probe = (
        "import os; from exec_server.transport import flow;"
        "names = [open(f'/proc/self/task/{t}/comm').read().strip()"
        " for t in os.listdir('/proc/self/task')];"
        "print(flow.NUDGE, 'cpu-nudge' in names)"
    )
    env = {**os.environ, "EXEC_SERVER_NO_NUDGE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["None", "False"]
