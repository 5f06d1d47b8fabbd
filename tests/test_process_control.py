"""Process control beyond the reference (issue 14), end to end with real processes: signals
by name and number to a terminal's foreground job, end of input, window sizes, the process
list, timeouts, graceful termination, whole trees, and the drain timeout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

import pytest

from exec_server.methods.environment import EXTENSIONS

from .support import REPO, Client, pid_alive, server_command, wait_until
from .test_cli import cli_server
from .test_process_helpers import error_of, no_stray_children

__all__ = ["no_stray_children"]


def _exit(client: Client, process_id: str) -> dict[str, Any]:
    exited = client.processes[process_id].exited
    assert exited is not None
    return exited


async def test_the_extensions_are_announced(client: Client, server_url: str) -> None:
    async with Client.connect(server_url) as other:
        result = await other.initialize()
    assert result["extensions"] == EXTENSIONS
    assert all(result["extensions"].values())


# ---- signals ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["TERM", "sigterm", "SIGTERM", 15, "15", {"term": None}])
async def test_signals_by_name_number_or_map(client: Client, value: Any) -> None:
    await client.start("s", ["sleep", "100"])
    assert await client.call("process/signal", {"processId": "s", "signal": value}) == {}
    await client.wait_closed("s")
    exited = _exit(client, "s")
    assert exited["exitCode"] == 128 + 15
    assert exited["terminatedBy"] == "signal" and exited["signal"] == "SIGTERM"


async def test_interrupt_in_a_terminal_reaches_the_foreground_job(client: Client) -> None:
    """As Ctrl-C would: the job the shell runs in the foreground (its own process group,
    with job control on) gets the signal; the shell itself does not, and carries on."""
    job = "trap 'echo job-got-INT; exit 5' INT; echo ready; while :; do sleep 0.05; done"
    script = f'set -m; sh -c "{job}"; echo after $?'
    await client.start("fg", ["sh", "-c", script], tty=True)
    await client.wait_output("fg", b"ready")
    await client.call("process/signal", {"processId": "fg", "signal": "interrupt"})
    events = await client.wait_closed("fg")
    assert b"job-got-INT" in events.data() and b"after 5" in events.data()
    assert _exit(client, "fg")["exitCode"] == 0


# ---- end of input -------------------------------------------------------------------------


@pytest.mark.parametrize("tty", [False, True], ids=["pipe", "pty"])
async def test_close_stdin_ends_input_after_what_was_written(client: Client, tty: bool) -> None:
    await client.start("cat", ["cat"], pipeStdin=True, tty=tty)
    assert await client.write("cat", b"line one\n") == "accepted"
    result = await client.call("process/closeStdin", {"processId": "cat"})
    assert result == {"status": "accepted"}
    events = await client.wait_closed("cat")
    assert b"line one" in events.data()
    assert _exit(client, "cat")["exitCode"] == 0
    assert _exit(client, "cat")["terminatedBy"] == "exit"


async def test_close_stdin_statuses(client: Client) -> None:
    status = await client.call("process/closeStdin", {"processId": "nope"})
    assert status == {"status": "unknownProcess"}
    await client.start("ro", ["sleep", "100"])
    assert await client.call("process/closeStdin", {"processId": "ro"}) == {"status": "stdinClosed"}
    await client.call("process/terminate", {"processId": "ro"})


# ---- terminal size ------------------------------------------------------------------------


async def test_size_at_start_and_resize_send_sigwinch(client: Client) -> None:
    events = await client.run("size", ["stty", "size"], tty=True, size={"rows": 40, "cols": 100})
    assert events.data().strip() == b"40 100"
    script = 'trap "stty size; exit 0" WINCH; echo ready; while :; do sleep 0.05; done'
    await client.start("winch", ["sh", "-c", script], tty=True)
    await client.wait_output("winch", b"ready")
    reply = {"processId": "winch", "rows": 50, "cols": 132}
    assert await client.call("process/resize", reply) == {}
    await client.wait_closed("winch")
    assert b"50 132" in client.processes["winch"].data()


async def test_resize_needs_a_terminal(client: Client) -> None:
    await client.start("pipe", ["sleep", "100"])
    error = await error_of(client, "process/resize", {"processId": "pipe", "rows": 5, "cols": 5})
    assert error["code"] == -32600 and "no terminal" in error["message"]
    error = await error_of(client, "process/resize", {"processId": "pipe", "rows": 0, "cols": 5})
    assert error["code"] == -32602
    await client.call("process/terminate", {"processId": "pipe"})


# ---- the list -----------------------------------------------------------------------------


async def test_list_shows_every_process_with_its_record(client: Client) -> None:
    await client.run("done", ["sh", "-c", "printf abc; exit 4"])
    await client.start("live", ["sleep", "100"], tty=True)
    listing = (await client.call("process/list", {}))["processes"]
    by_id = {row["processId"]: row for row in listing}
    done, live = by_id["done"], by_id["live"]
    assert done["state"] == "closed" and done["exitCode"] == 4
    assert done["terminatedBy"] == "exit" and done["outputBytes"] == 3
    assert done["argv"] == ["sh", "-c", "printf abc; exit 4"] and done["cwd"] == "/tmp"
    assert done["exitedAtMs"] >= done["startedAtMs"] > 0
    assert live["state"] == "running" and live["tty"] is True and pid_alive(live["pid"])
    assert live["exitCode"] is None and live["exitedAtMs"] is None
    await client.call("process/terminate", {"processId": "live"})


# ---- timeouts -----------------------------------------------------------------------------


async def test_wall_clock_timeout(client: Client) -> None:
    await client.run("slow", ["sleep", "100"], timeoutMs=200)
    exited = _exit(client, "slow")
    assert exited["terminatedBy"] == "timeout"
    assert exited["exitCode"] == 137 and exited["signal"] == "SIGKILL"


async def test_idle_timeout_kills_the_quiet_and_spares_the_chatty(client: Client) -> None:
    await client.run("quiet", ["sh", "-c", "echo hi; sleep 100"], idleTimeoutMs=300)
    assert _exit(client, "quiet")["terminatedBy"] == "idle"
    chatty = "for i in 1 2 3 4 5 6; do echo $i; sleep 0.1; done"
    await client.run("chatty", ["sh", "-c", chatty], idleTimeoutMs=1500)
    assert _exit(client, "chatty") == {
        **_exit(client, "chatty"),
        "exitCode": 0,
        "terminatedBy": "exit",
        "signal": None,
    }


# ---- terminate with a grace ---------------------------------------------------------------


async def test_terminate_with_grace_lets_a_trap_finish(client: Client) -> None:
    script = 'trap "echo got TERM; exit 7" TERM; echo ready; while :; do sleep 0.05; done'
    await client.start("trap", ["sh", "-c", script])
    await client.wait_output("trap", b"ready")
    reply = await client.call("process/terminate", {"processId": "trap", "graceMs": 5000})
    assert reply == {"running": True}
    events = await client.wait_closed("trap")
    assert b"got TERM" in events.data()
    assert _exit(client, "trap")["exitCode"] == 7
    assert _exit(client, "trap")["terminatedBy"] == "client"


async def test_terminate_with_grace_kills_what_ignores_sigterm(client: Client) -> None:
    script = 'trap "" TERM; echo ready; sleep 100'
    await client.start("stubborn", ["sh", "-c", script])
    await client.wait_output("stubborn", b"ready")
    await client.call("process/terminate", {"processId": "stubborn", "graceMs": 200})
    await client.wait_closed("stubborn")
    exited = _exit(client, "stubborn")
    assert exited["exitCode"] == 137 and exited["terminatedBy"] == "client"


async def test_what_outlives_the_grace_is_killed_after_the_process_exited(
    client: Client,
) -> None:
    """SIGTERM ends the shell at once, but a job of it ignores SIGTERM: the SIGKILL at the
    end of the grace still finds it, though its process has exited meanwhile."""
    script = "sh -c 'trap \"\" TERM; sleep 100' & echo $!; wait"
    await client.start("parent", ["sh", "-c", script])
    job = int((await client.wait_output("parent", b"\n")).split()[0])
    await client.call("process/terminate", {"processId": "parent", "graceMs": 300})
    assert await wait_until(lambda: client.processes["parent"].exited is not None)
    assert _exit(client, "parent")["terminatedBy"] == "client"
    assert await wait_until(lambda: not pid_alive(job), timeout=10)


# ---- whole trees --------------------------------------------------------------------------

SETSID_CHILD = "setsid sleep 1000 & echo $!; wait"


@pytest.mark.parametrize("how", ["terminate", "grace", "timeout"])
async def test_setsid_descendants_die_with_their_process(client: Client, how: str) -> None:
    extra = {"timeoutMs": 500} if how == "timeout" else {}
    await client.start("tree", ["sh", "-c", SETSID_CHILD], **extra)
    escaped = int((await client.wait_output("tree", b"\n")).split()[0])
    assert await wait_until(lambda: os.getsid(escaped) == escaped)  # in its own session now
    if how == "terminate":
        await client.call("process/terminate", {"processId": "tree"})
    elif how == "grace":
        await client.call("process/terminate", {"processId": "tree", "graceMs": 5000})
    await client.wait_closed("tree")
    assert await wait_until(lambda: not pid_alive(escaped), timeout=10)


async def test_a_session_ending_kills_escaped_trees() -> None:
    """Through the command, which adopts orphans: a descendant that escaped with setsid is
    killed when its session ends, both while its process runs and after it exited."""
    async with cli_server("--detach-grace", "0") as server:
        async with Client.connect(server.url) as client:
            await client.initialize()
            await client.start("tree", ["sh", "-c", SETSID_CHILD], tty=True)
            escaped = int((await client.wait_output("tree", b"\n")).split()[0])
            script = "setsid sleep 1000 >/dev/null 2>&1 & echo $!"
            await client.run("done", ["sh", "-c", script])
            left = int(client.processes["done"].data().split()[0])
            assert await wait_until(lambda: os.getsid(escaped) == escaped)
            assert await wait_until(lambda: os.getsid(left) == left)
            assert pid_alive(escaped) and pid_alive(left)
        assert await wait_until(lambda: not pid_alive(escaped) and not pid_alive(left))


# ---- drain timeout ------------------------------------------------------------------------


async def test_drain_timeout_closes_streams_a_background_job_holds(client: Client) -> None:
    await client.start("bg", ["sh", "-c", "sleep 100 & echo started"], drainTimeoutMs=300)
    events = await client.wait_closed("bg")
    assert events.closed is not None and events.closed["drained"] is True
    assert _exit(client, "bg")["exitCode"] == 0
    await client.start("plain", ["true"], drainTimeoutMs=300)
    plain = await client.wait_closed("plain")
    assert plain.closed is not None and "drained" not in plain.closed


# ---- PID 1 --------------------------------------------------------------------------------


def _as_pid_one(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", *server_command("--listen", "stdio"), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )


def test_as_pid_one_every_orphan_is_reaped() -> None:
    """In a container the server is PID 1: orphans of every kind come to it, and none may
    stay a zombie."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot make a PID namespace here: {probe.stderr.decode().strip()}")
    proc = _as_pid_one()
    assert proc.stdin is not None and proc.stdout is not None
    requests = [
        {"id": 1, "method": "initialize", "params": {"clientName": "pid1"}},
        {"method": "initialized"},
        # The shell exits at once; its background child is orphaned, exits, and must be reaped.
        _start(2, "orphan", "(sleep 0.2; exit 3) & exit 0"),
        _start(3, "check", "sleep 3; ps -eo stat=,pid=,comm= | grep -c '^Z' || true"),
    ]
    try:
        proc.stdin.write(b"".join(json.dumps(r).encode() + b"\n" for r in requests))
        proc.stdin.flush()
        zombies = _output_of(proc, "check")
    finally:
        proc.kill()
        proc.wait()
    assert zombies.strip() == b"0", zombies


def _start(request_id: int, process_id: str, script: str) -> dict[str, Any]:
    return {
        "id": request_id,
        "method": "process/start",
        "params": {
            "processId": process_id,
            "argv": ["sh", "-c", script],
            "cwd": "/",
            "env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            "tty": False,
        },
    }


def _output_of(proc: subprocess.Popen[bytes], process_id: str) -> bytes:
    import base64

    assert proc.stdout is not None
    output = b""
    for line in proc.stdout:
        message = json.loads(line)
        params = message.get("params") or {}
        if params.get("processId") != process_id:
            continue
        if message.get("method") == "process/output":
            output += base64.b64decode(params["chunk"])
        elif message.get("method") == "process/closed":
            return output
    raise AssertionError(
        f"the server ended; stderr: {proc.stderr.read() if proc.stderr else b''!r}"
    )
