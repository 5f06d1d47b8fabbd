"""Sandboxes through the server (issue 10): codex's workspace-write profile on process/start
and fs/*, the operator's --confine, and never a silent downgrade. Real bubblewrap, real
children, real sockets; the escapes below must all fail."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from exec_server.sandbox import enforce
from exec_server.sandbox.bwrap import BwrapSupport, support

from .sandbox_support import confined_by_operator, home_places, workspace_confinement
from .sandbox_support import local_workspace_write as workspace_write
from .support import PATH_ENV, Client, RpcFailure, running_server

pytestmark = pytest.mark.skipif(
    not support().usable, reason=f"bubblewrap cannot run here: {support().reason}"
)


@pytest.fixture
def places() -> Iterator[tuple[Path, Path]]:
    """A workspace and an outside directory, neither under /tmp (which the profile opens)."""
    with home_places("exec-server-tests") as made:
        yield made


async def _run(client: Client, process_id: str, script: str, work: Path, **extra: Any) -> str:
    result = await client.start(
        process_id,
        ["bash", "-c", script],
        cwd=str(work),
        env=PATH_ENV,
        sandbox=workspace_write(work),
        **extra,
    )
    assert result["sandboxType"] == "linuxSeccomp"
    events = await client.wait_closed(process_id)
    return events.data().decode(errors="replace")


async def test_writes_inside_work_and_everything_else_is_read_only(
    client: Client, places: tuple[Path, Path]
) -> None:
    work, outside = places
    (outside / "target").write_text("original")
    (work / "link").symlink_to(outside / "target")
    os.link(outside / "target", outside / "hardlink-source")  # outside stays outside
    (work / ".git").mkdir()
    script = f"""
echo in > inside.txt && echo wrote-inside
echo x 2>/dev/null > {outside}/direct && echo ESCAPED-direct
(echo x > {outside}/grandchild) 2>/dev/null && echo ESCAPED-grandchild
setsid bash -c 'echo x > {outside}/setsid' 2>/dev/null; sleep 0.2; [ -e {outside}/setsid ] && echo ESCAPED-setsid
echo x 2>/dev/null > link && echo ESCAPED-symlink
echo x 2>/dev/null > ../outside/dotdot && echo ESCAPED-dotdot
echo x 2>/dev/null > /proc/self/root{outside}/procroot && echo ESCAPED-procroot
ln {outside}/target hard 2>/dev/null && echo ESCAPED-hardlink-made
echo x 2>/dev/null > .git/config && echo ESCAPED-git
cat {outside}/target; echo
echo done
"""
    output = await _run(client, "escapes", script, work)
    assert "wrote-inside" in output and "done" in output, output
    assert "ESCAPED" not in output, output
    assert "original" in output  # reading outside is allowed
    assert (work / "inside.txt").read_text() == "in\n"
    assert sorted(p.name for p in outside.iterdir()) == ["hardlink-source", "target"]
    assert (outside / "target").read_text() == "original"
    assert not (work / ".git" / "config").exists()


@pytest.mark.parametrize(
    ("family", "address"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
)
async def test_network_is_closed_tcp_and_udp_loopback_too(
    client: Client, places: tuple[Path, Path], family: int, address: str
) -> None:
    work, _ = places
    with (
        socket.socket(family, socket.SOCK_STREAM) as listener,
        socket.socket(family, socket.SOCK_DGRAM) as udp,
    ):
        listener.bind((address, 0))
        listener.listen()
        port = listener.getsockname()[1]
        udp.bind((address, 0))
        udp.setblocking(False)
        udp_port = udp.getsockname()[1]
        host = f"[{address}]" if ":" in address else address
        script = f"""
(exec 3<>/dev/tcp/{address}/{port}) 2>/dev/null && echo TCP-OPEN || echo tcp-denied
for i in 1 2 3; do echo hi > /dev/udp/{address}/{udp_port}; done 2>/dev/null
python3 -c 'import urllib.request; urllib.request.urlopen("http://{host}:{port}", timeout=2)' 2>/dev/null && echo HTTP-OPEN || echo http-denied
"""
        output = await _run(client, "net", script, work)
        # A datagram may leave (it meets the sandbox's own empty loopback), but none arrives
        with pytest.raises(BlockingIOError):
            udp.recv(100)
    assert "tcp-denied" in output and "http-denied" in output, output
    assert "OPEN" not in output


async def test_what_is_allowed_still_works(client: Client, places: tuple[Path, Path]) -> None:
    """Pipes, /tmp, git in the workspace, and a PTY with job control."""
    work, _ = places
    await asyncio.to_thread(subprocess.run, ["git", "init", "-q", str(work)], check=True)
    script = "echo t > /tmp/$$.t && cat /tmp/$$.t && rm /tmp/$$.t; git status --short; echo ok"
    output = await _run(client, "allowed", script, work)
    assert output.startswith("t\n") and output.rstrip().endswith("ok"), output
    job = "set -m; sleep 30 & jobs; kill %1; wait; tty >/dev/null && echo has-tty; echo jc-ok"
    output = await _run(client, "pty", job, work, tty=True)
    assert "jc-ok" in output and "has-tty" in output and "Running" in output, output


async def test_a_denial_is_flagged_on_exit_and_in_reads(
    client: Client, places: tuple[Path, Path]
) -> None:
    work, outside = places
    output = await _run(client, "denied", f"echo x > {outside}/f", work)
    assert "Read-only file system" in output
    exited = client.processes["denied"].exited
    assert exited is not None and exited["exitCode"] == 1 and exited["sandboxDenied"] is True
    assert (await client.read("denied"))["sandboxDenied"] is True
    await _run(client, "fine", "exit 3", work)
    fine = client.processes["fine"].exited
    assert fine is not None and fine["sandboxDenied"] is False


async def test_nothing_restricted_is_sandbox_type_none(client: Client, tmp_path: Path) -> None:
    profile = {"permissions": {"type": "disabled"}, "windowsSandboxLevel": "disabled"}
    result = await client.start("free", ["true"], sandbox=profile)
    assert result["sandboxType"] == "none"
    await client.wait_closed("free")


async def test_bad_profiles_and_missing_programs_are_errors(
    client: Client, places: tuple[Path, Path]
) -> None:
    work, _ = places
    with pytest.raises(RpcFailure) as info:
        await client.start("bad", ["true"], sandbox={"permissions": {"type": "mystery"}})
    assert info.value.code == -32602 and "unknown variant" in info.value.message
    with pytest.raises(RpcFailure) as info:
        await client.start("nope", ["no-such-program-xyz"], sandbox=workspace_write(work))
    assert info.value.code == -32603 and "No such file or directory" in info.value.message
    await client.run("bad", ["true"])  # neither id stayed reserved
    await client.run("nope", ["true"])


async def test_a_program_named_relative_to_the_cwd_runs_sandboxed_as_unsandboxed(
    client: Client, places: tuple[Path, Path]
) -> None:
    """``./run.sh`` and a relative ``PATH`` entry are found from the request's cwd, as the
    child's exec finds them, not from the server's own working directory."""
    work, _ = places
    (work / "bin").mkdir()
    for script in (work / "run.sh", work / "bin" / "tool"):
        script.write_text("#!/bin/sh\necho found\n")
        script.chmod(0o755)
    env = {"PATH": f"bin:{PATH_ENV['PATH']}"}
    for process_id, argv in (("dot", ["./run.sh"]), ("path", ["tool"])):
        result = await client.start(
            process_id, argv, cwd=str(work), env=env, sandbox=workspace_write(work)
        )
        assert result["sandboxType"] == "linuxSeccomp"
        assert (await client.wait_closed(process_id)).data() == b"found\n"
        assert (await client.run(f"free-{process_id}", argv, cwd=str(work), env=env)).data() == (
            b"found\n"
        )


async def test_no_bubblewrap_means_refused_never_unconfined(
    client: Client, places: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worst bug this project can have is a sandbox asked for and not applied."""
    work, outside = places
    missing = BwrapSupport(None, "bubblewrap (bwrap) is not installed: install bubblewrap")
    monkeypatch.setattr(enforce, "support", lambda: missing)
    with pytest.raises(RpcFailure) as info:
        await client.start(
            "unconfined",
            ["bash", "-c", f"echo x > {outside}/escaped"],
            cwd=str(work),
            sandbox=workspace_write(work),
        )
    assert info.value.code == -32602
    assert "sandbox intent cannot be enforced" in info.value.message
    assert "install bubblewrap" in info.value.message
    await asyncio.sleep(0.2)
    assert not (outside / "escaped").exists()


# ---- fs/* under the profile -----------------------------------------------------------------


async def test_fs_mutations_honour_the_profile(client: Client, places: tuple[Path, Path]) -> None:
    work, outside = places
    (outside / "target").write_text("original")
    (work / "link").symlink_to(outside / "target")
    (work / "dirlink").symlink_to(outside)
    os.link(outside / "target", work / "hard")  # made before, by someone unconfined
    (work / ".git").mkdir()
    profile = workspace_write(work)

    async def write(path: str) -> dict[str, Any]:
        data = base64.b64encode(b"new").decode()
        return await client.request(
            "fs/writeFile", {"path": path, "dataBase64": data, "sandbox": profile}
        )

    assert "result" in await write(str(work / "ok.txt"))
    for escape in (
        str(outside / "direct"),
        str(work / "link"),
        str(work / "dirlink" / "via-dir"),
        str(work / ".." / "outside" / "dotdot"),
        f"/proc/self/root{outside}/procroot",
        str(work / ".git" / "config"),
    ):
        reply = await write(escape)
        assert reply["error"]["code"] == -32603, (escape, reply)
        # /proc/self/root is a magic link, which the guard refuses to follow at all (ELOOP)
        expected = "symbolic links" if "/proc/self/root" in escape else "Read-only file system"
        assert expected in reply["error"]["message"], (escape, reply)
    assert "result" in await write(str(work / "hard"))  # replaced, not written through
    assert (outside / "target").read_text() == "original"
    assert (work / "hard").read_bytes() == b"new"
    assert sorted(p.name for p in outside.iterdir()) == ["target"]
    for method, params in (
        ("fs/createDirectory", {"path": str(outside / "d"), "recursive": True}),
        ("fs/remove", {"path": str(outside / "target"), "recursive": False, "force": False}),
        ("fs/copy", {"sourcePath": str(work / "ok.txt"), "destinationPath": str(outside / "c"), "recursive": False}),
    ):  # fmt: skip
        reply = await client.request(method, {**params, "sandbox": profile})
        assert reply["error"]["code"] == -32603, (method, reply)
    assert sorted(p.name for p in outside.iterdir()) == ["target"]


# ---- the operator's confinement -------------------------------------------------------------


@pytest.fixture
async def confined(places: tuple[Path, Path], tmp_path: Path) -> AsyncIterator[Client]:
    work, _ = places
    async with confined_by_operator(workspace_confinement(work), tmp_path) as client:
        yield client


async def test_confinement_applies_without_a_client_profile_and_cannot_be_loosened(
    confined: Client, places: tuple[Path, Path]
) -> None:
    work, outside = places
    script = f"echo x > {outside}/a 2>/dev/null || echo denied-a; echo ok > {work}/inside"
    loose = {"permissions": {"type": "disabled"}, "windowsSandboxLevel": "disabled"}
    for process_id, extra in (("plain", {}), ("loose", {"sandbox": loose})):
        result = await confined.start(process_id, ["bash", "-c", script], cwd=str(work), **extra)
        assert result["sandboxType"] == "linuxSeccomp"
        events = await confined.wait_closed(process_id)
        assert b"denied-a" in events.data()
    assert not (outside / "a").exists() and (work / "inside").read_text() == "ok\n"
    reply = await confined.request(
        "fs/writeFile", {"path": str(outside / "b"), "dataBase64": "eA=="}
    )
    assert reply["error"]["code"] == -32603
    reply = await confined.request(
        "http/request", {"method": "GET", "url": "http://127.0.0.1:9/", "requestId": "r"}
    )
    assert reply["error"]["code"] == -32600 and "--confine" in reply["error"]["message"]


@pytest.mark.parametrize("native", [True, False])
async def test_a_signal_reaches_the_sandboxed_command_through_either_spawner(
    places: tuple[Path, Path], native: bool
) -> None:
    """bwrap is spawned with the catchable signals ignored (by the vfork helper, or the
    Popen path's preexec), the command with them at their defaults: its trap runs."""
    from exec_server.config import Runtime

    work, _ = places
    script = "trap 'echo got-int; exit 5' INT; echo ready; sleep 30 & wait"
    runtime = Runtime(native_spawn=native)
    async with running_server(runtime=runtime) as (_, url), Client.connect(url) as client:
        await client.initialize()
        result = await client.start(
            "trap", ["bash", "-c", script], cwd=str(work), sandbox=workspace_write(work)
        )
        assert result["sandboxType"] == "linuxSeccomp"
        await client.wait_output("trap", b"ready")
        await client.call("process/signal", {"processId": "trap", "signal": "interrupt"})
        events = await client.wait_closed("trap")
    assert events.exited is not None and events.exited["exitCode"] == 5, events.data()
    assert b"got-int" in events.data()
