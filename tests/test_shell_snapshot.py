"""Shell snapshots (codex 0.169 ``shellSnapshotV2``): a login profile sourced once per scope,
its exported variables and functions kept for every later ``bash -lc`` (not its aliases or
umask: the reference does not restore those either);
the request's own ``env`` wins; the reference's -32602 texts. Each scenario runs on ours and on
the reference, with the same answers."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from exec_server.process import shell_snapshot

from .codex.reference import reference_client
from .support import Client, RpcFailure, wait_until

PROFILE = """echo sourced >> "$HOME/count"
export FOO=bar
f() { echo fn; }
alias ll=ls
umask 0027
echo noisy
"""
SCRIPT = "echo $FOO; f; type ll; umask"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / ".bash_profile").write_text(PROFILE)
    return tmp_path


def snapshot(scope: str, name: str = "bash", path: str = "/bin/bash") -> dict[str, Any]:
    return {"scopeId": scope, "shell": {"name": name, "path": path}}


async def scenario(client: Client, home: Path, prefix: str) -> dict[str, Any]:
    (home / "count").unlink(missing_ok=True)
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    found: dict[str, Any] = {}
    for index in range(3):
        process_id = f"{prefix}-{index}"
        await client.start(
            process_id,
            ["/bin/bash", "-lc", SCRIPT],
            cwd=f"file://{home}",
            env=env,
            shellSnapshot=snapshot("thread-1:e2e"),
        )
        events = await client.wait_closed(process_id)
        found[f"run{index}"] = [events.data(stream).decode() for stream in ("stdout", "stderr")]
    found["sourced"] = (home / "count").read_text().count("sourced")
    await client.start(
        f"{prefix}-mine",
        ["/bin/bash", "-lc", "echo $FOO"],
        cwd=f"file://{home}",
        env={**env, "FOO": "mine"},
        shellSnapshot=snapshot("thread-2:e2e"),
    )
    found["explicit"] = (await client.wait_closed(f"{prefix}-mine")).data().decode()
    for name, bad in {
        "empty_scope": snapshot(""),
        "long_scope": snapshot("s" * 257),
        "fish": snapshot("s", name="fish"),
    }.items():
        try:
            await client.start(
                f"{prefix}-{name}",
                ["/bin/bash", "-lc", "true"],
                cwd=f"file://{home}",
                env=env,
                shellSnapshot=bad,
            )
            found[name] = "started"
        except RpcFailure as failure:
            found[name] = [failure.code, failure.message]
    return found


async def test_a_profile_is_sourced_once_per_scope(client: Client, home: Path) -> None:
    ours = await scenario(client, home, "ours")
    async with reference_client() as reference:
        theirs = await scenario(reference, home, "ref")
    assert ours == theirs
    assert ours["run0"] == ours["run1"] == ours["run2"]
    assert ours["run0"] == ["bar\nfn\n0022\n", "/bin/bash: line 3: type: ll: not found\n"]
    assert ours["sourced"] == 1  # the capture, then never again
    assert ours["explicit"] == "mine\n"
    assert (
        ours["empty_scope"]
        == ours["long_scope"]
        == [
            -32602,
            "shell snapshot scope must be non-empty and at most 256 bytes",
        ]
    )
    assert ours["fish"] == [-32602, "shell snapshots are unsupported for shell `fish`"]


async def test_the_capture_runs_under_the_commands_sandbox(client: Client, home: Path) -> None:
    """The profile is sourced inside the same sandbox as the command: a write it attempts
    outside the writable roots fails there too (ours only: bubblewrap must run here)."""
    from exec_server.sandbox.bwrap import support

    from .sandbox_support import workspace_write

    if not support().usable:
        pytest.skip(f"bubblewrap cannot run here: {support().reason}")
    outside = Path.home() / ".cache" / "exec-server-tests" / f"snapshot-{home.name}"
    outside.mkdir(parents=True, exist_ok=True)
    (home / ".bash_profile").write_text(PROFILE + f"echo escaped > {outside}/escaped\n")
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    for index in range(2):
        started = await client.start(
            f"s{index}",
            ["/bin/bash", "-lc", "echo $FOO; f"],
            cwd=f"file://{home}",
            env=env,
            sandbox=workspace_write(f"file://{home}"),
            shellSnapshot=snapshot("sandboxed"),
        )
        assert started["sandboxType"] == "linuxSeccomp"
        events = await client.wait_closed(f"s{index}")
        assert events.data("stdout") == b"bar\nfn\n"
    assert (home / "count").read_text().count("sourced") == 1
    assert not (outside / "escaped").exists()
    outside.rmdir()


SHELLS = {
    "zsh": (".zprofile", "f() { echo fn; }\n"),
    "sh": (".profile", ""),
}


@pytest.mark.parametrize("name", sorted(SHELLS))
async def test_zsh_and_sh_as_the_reference(client: Client, tmp_path: Path, name: str) -> None:
    """zsh keeps variables and functions; sh (dash) variables (it cannot print functions)."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (make test installs it)")
    profile_file, functions = SHELLS[name]
    (tmp_path / profile_file).write_text(
        'echo sourced >> "$HOME/count"\nexport FOO=bar\n' + functions + "echo noisy\n"
    )
    script = "echo $FOO; f 2>/dev/null || echo no-f"

    async def runs(client: Client, prefix: str) -> list[Any]:
        (tmp_path / "count").unlink(missing_ok=True)
        found: list[Any] = []
        for index in range(2):
            await client.start(
                f"{prefix}{index}",
                [path, "-lc", script],
                cwd=f"file://{tmp_path}",
                env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
                shellSnapshot=snapshot(f"{name}-scope", name=name, path=path),
            )
            found.append((await client.wait_closed(f"{prefix}{index}")).data("stdout").decode())
        return [*found, (tmp_path / "count").read_text().count("sourced")]

    ours = await runs(client, "ours")
    async with reference_client() as reference:
        theirs = await runs(reference, "ref")
    assert ours == theirs
    assert ours[-1] == 1


async def test_a_failed_capture_is_not_tried_again(client: Client, home: Path) -> None:
    """A profile that exits: the capture fails once, each command then runs as sent (the
    profile runs once more per command), as on the reference."""
    (home / ".bash_profile").write_text('echo x >> "$HOME/count"\nexit 3\n')

    async def runs(client: Client, prefix: str) -> int:
        (home / "count").unlink(missing_ok=True)
        for index in range(2):
            await client.start(
                f"{prefix}{index}",
                ["/bin/bash", "-lc", "echo hi"],
                cwd=f"file://{home}",
                env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
                shellSnapshot=snapshot("failing"),
            )
            assert (await client.wait_closed(f"{prefix}{index}")).data() == b""
        return (home / "count").read_text().count("x")

    ours = await runs(client, "ours")
    async with reference_client() as reference:
        assert ours == await runs(reference, "ref") == 3


def test_a_capture_that_prints_without_end_is_cut_off_at_the_bound(tmp_path: Path) -> None:
    """A profile (the client's, through ``HOME``) printing far more than a snapshot may hold:
    the capture stops reading past :data:`MAX_SNAPSHOT_BYTES` and kills it, instead of
    holding all it prints in the server's memory until it ends (it never gets to the end)."""
    marker = tmp_path / "finished"
    size = 64 * 1024 * 1024
    script = f"head -c {size} /dev/zero; touch {marker}"
    argv = ["sh", "-c", script]
    assert shell_snapshot.run_capture(argv, str(tmp_path), {"PATH": "/usr/bin:/bin"}, {}) is None
    assert not marker.exists()


def waiting_pids(home: Path) -> list[int]:
    """The shells that reached the profile's wait (each leaves ``waiting-PID``)."""
    return [
        int(name[len("waiting-") :]) for name in os.listdir(home) if name.startswith("waiting-")
    ]


async def test_captures_waiting_on_a_profile_do_not_hold_the_threads_fs_calls_need(
    client: Client, home: Path
) -> None:
    """Each capture may wait up to its 10 s for a login profile (the client's, through
    ``HOME``): more of them than the server has worker threads, all stuck, and an
    ``fs/readFile`` is still answered while they wait."""
    gate = home / "gate"
    profile = (
        f'touch "$HOME/waiting-$$"\nuntil [ -e {gate} ]; do sleep 0.05; done\nexport FOO=bar\n'
    )
    (home / ".bash_profile").write_text(profile)
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    count = min(32, (os.cpu_count() or 1) + 4) + 1  # past asyncio's default worker threads
    starts = [
        asyncio.ensure_future(
            client.start(
                f"stuck-{index}",
                ["/bin/bash", "-lc", "echo $FOO"],
                cwd=f"file://{home}",
                env=env,
                shellSnapshot=snapshot(f"scope-{index}"),
            )
        )
        for index in range(count)
    ]
    try:
        running = min(count, shell_snapshot.CAPTURE_WORKERS)  # the others wait their turn
        assert await wait_until(lambda: len(waiting_pids(home)) == running)
        waiting = waiting_pids(home)
        answer = await client.call("fs/readFile", {"path": str(home / ".bash_profile")})
        assert answer["dataBase64"]
        for pid in waiting:  # answered while they wait: not after their timeout killed them
            os.kill(pid, 0)
    finally:
        gate.touch()  # every capture, running or still queued, goes on
        await asyncio.gather(*starts)


async def test_a_profiles_background_job_ends_with_the_capture(client: Client, home: Path) -> None:
    """A ``cmd &`` in the profile runs in the capture's process group; the capture takes the
    group with it instead of leaving an orphan behind the session's back."""
    (home / ".bash_profile").write_text('sleep 123 >/dev/null 2>&1 &\necho $! > "$HOME/bg.pid"\n')
    await client.start(
        "bg",
        ["/bin/bash", "-lc", "echo ran"],
        cwd=f"file://{home}",
        env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
        shellSnapshot=snapshot("background"),
    )
    assert (await client.wait_closed("bg")).data() == b"ran\n"
    pid = int((home / "bg.pid").read_text())
    for _ in range(100):
        if not _alive(pid):
            break
        await asyncio.sleep(0.05)
    assert not _alive(pid), f"the profile's background job {pid} outlived the capture"


def _alive(pid: int) -> bool:
    """Running, not only a zombie waiting for its adoptive parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
