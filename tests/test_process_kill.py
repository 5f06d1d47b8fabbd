"""``process/terminate`` (SIGKILL to the whole group) and ``process/signal``; exit codes 128+N."""

from __future__ import annotations

import pytest

from .support import Client, pid_alive, running_server, wait_until
from .test_process_helpers import error_of, no_stray_children

__all__ = ["no_stray_children"]

MODES = [pytest.param(False, id="pipe"), pytest.param(True, id="pty")]


@pytest.mark.parametrize("tty", MODES)
async def test_terminate_kills_the_whole_group(client: Client, tty: bool) -> None:
    # The shell prints its background child's pid, then waits for it.
    await client.start("group", ["sh", "-c", "sleep 100 & echo $!; wait"], tty=tty)
    output = await client.wait_output("group", b"\n")
    background = int(output.split()[0])
    assert pid_alive(background)
    result = await client.call("process/terminate", {"processId": "group"})
    assert result == {"running": True}
    events = await client.wait_closed("group")
    assert events.exited is not None and events.exited["exitCode"] == 137  # 128 + SIGKILL
    assert await wait_until(lambda: not pid_alive(background))
    kinds = [kind for kind, _ in events.order]
    assert kinds[-2:] == ["process/exited", "process/closed"]


@pytest.mark.parametrize("tty", MODES)
async def test_terminate_reports_137(client: Client, tty: bool) -> None:
    await client.start("k", ["sleep", "100"], tty=tty)
    assert await client.call("process/terminate", {"processId": "k"}) == {"running": True}
    events = await client.wait_closed("k")
    assert events.exited is not None and events.exited["exitCode"] == 137
    read = await client.read("k")
    assert (read["exited"], read["exitCode"], read["closed"]) == (True, 137, True)


async def test_terminate_after_exit_or_of_unknown(client: Client) -> None:
    await client.run("done", ["true"])
    assert await client.call("process/terminate", {"processId": "done"}) == {"running": False}
    assert await client.call("process/terminate", {"processId": "ghost"}) == {"running": False}
    # The entry stays: its events and its output are still readable.
    assert (await client.read("done"))["exitCode"] == 0


async def test_terminate_twice(client: Client) -> None:
    await client.start("twice", ["sleep", "100"])
    assert await client.call("process/terminate", {"processId": "twice"}) == {"running": True}
    second = await client.call("process/terminate", {"processId": "twice"})
    events = await client.wait_closed("twice")
    # Killed but perhaps not yet reaped at the second call: either way one exit, one close.
    assert second["running"] in (True, False)
    assert [k for k, _ in events.order] == ["process/exited", "process/closed"]
    assert await client.call("process/terminate", {"processId": "twice"}) == {"running": False}


@pytest.mark.parametrize("tty", MODES)
@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("interrupt", 130),
        ("TERM", 143),
        ("SIGTERM", 143),
        ("term", 143),
        ("HUP", 129),
        ("KILL", 137),
        ("INT", 130),
        ("USR1", 138),
    ],
)
async def test_signal_exit_codes(client: Client, tty: bool, name: str, code: int) -> None:
    await client.start("s", ["sleep", "100"], tty=tty)
    assert await client.call("process/signal", {"processId": "s", "signal": name}) == {}
    events = await client.wait_closed("s")
    assert events.exited is not None and events.exited["exitCode"] == code


async def test_signal_reaches_the_group(client: Client) -> None:
    await client.start("sg", ["sh", "-c", "sleep 100 & echo $!; wait"])
    background = int((await client.wait_output("sg", b"\n")).split()[0])
    await client.call("process/signal", {"processId": "sg", "signal": "TERM"})
    await client.wait_closed("sg")
    assert await wait_until(lambda: not pid_alive(background))


async def test_stop_and_continue(client: Client) -> None:
    await client.start("sc", ["cat"], pipeStdin=True)
    assert await client.call("process/signal", {"processId": "sc", "signal": "STOP"}) == {}
    assert await client.write("sc", b"queued\n") == "accepted"
    assert await client.call("process/signal", {"processId": "sc", "signal": "CONT"}) == {}
    assert await client.wait_output("sc", b"queued\n") == b"queued\n"
    await client.call("process/terminate", {"processId": "sc"})
    assert (await client.wait_closed("sc")).exited == {
        "processId": "sc",
        "seq": 2,
        "exitCode": 137,
        "sandboxDenied": False,
        "terminatedBy": "client",
        "signal": "SIGKILL",
    }


@pytest.mark.parametrize("name", ["bogus", "", "SIGBOGUS", "999", "SIG", "-1"])
async def test_unknown_signal_is_invalid_params(client: Client, name: str) -> None:
    await client.start("u", ["sleep", "100"])
    error = await error_of(client, "process/signal", {"processId": "u", "signal": name})
    assert error["code"] == -32602
    assert "signal" in error["message"]
    read = await client.read("u")
    assert read["exited"] is False  # nothing was sent
    await client.call("process/terminate", {"processId": "u"})
    await client.wait_closed("u")


async def test_signal_to_unknown_or_exited_process(client: Client) -> None:
    error = await error_of(client, "process/signal", {"processId": "ghost", "signal": "TERM"})
    assert error == {"code": -32600, "message": "unknown process id ghost"}
    await client.run("gone", ["true"])
    assert await client.call("process/signal", {"processId": "gone", "signal": "TERM"}) == {}


@pytest.mark.parametrize(
    "script",
    [
        # exited, not closed: the job still holds stdout
        "sleep 100 & echo $!; exit 0",
        # closed: the job let go of every stream, but lives on in the group
        "sleep 100 </dev/null >/dev/null 2>&1 & echo $!; exit 0",
    ],
    ids=["exited", "closed"],
)
async def test_server_shutdown_kills_the_groups_of_finished_processes(script: str) -> None:
    async with running_server() as (_, url), Client.connect(url) as client:
        await client.initialize()
        await client.start("bg", ["sh", "-c", script])
        await client.wait_for("bg", lambda e: e.exited is not None)
        background = int((await client.wait_output("bg", b"\n")).split()[0])
        assert pid_alive(background)
    assert await wait_until(lambda: not pid_alive(background))
