"""Issue 17, the launcher side: no way out of a sandbox. Each test is an escape that worked
before its fix (real server, real bubblewrap, real sockets, real children):

* a sandboxed child with the network restricted reaches no Unix socket outside, the
  server's own listener included (seccomp, EPERM as the reference);
* the server's socket, token file and TLS files are hidden in every sandbox;
* no variable of the client's reaches the launchers that run outside the sandbox;
* the operator's confinement resolves from the server's environment, not the request's;
* terminal injection (TIOCSTI) from a sandboxed PTY child is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import unix_connect

from exec_server.cli import build_parser, options_from_args
from exec_server.config import Guards
from exec_server.paths import to_file_uri
from exec_server.sandbox import cgroup
from exec_server.sandbox.bwrap import support
from exec_server.sandbox.cgroup import pids_cgroups
from exec_server.server import Server
from exec_server.transport.websocket import serve_unix

from .sandbox_support import (
    confined_by_operator,
    confinement,
    home_places,
    special,
    workspace_confinement,
)
from .sandbox_support import local_workspace_write as workspace_write
from .support import (
    PATH_ENV,
    Client,
    running_server,
    self_signed,
    start_cli,
    stop_cli,
    wait_until,
)

pytestmark = pytest.mark.skipif(
    not support().usable, reason=f"bubblewrap cannot run here: {support().reason}"
)
needs_seccomp = pytest.mark.skipif(
    not support().seccomp, reason="no seccomp filter for this machine (environment/info says so)"
)


def read_only_root(root: Path) -> dict[str, Any]:
    """``root: read`` and nothing else, network enabled: only the hiding protects secrets."""
    profile = workspace_write(root, network="enabled")
    profile["permissions"]["file_system"]["entries"] = [{"path": special("root"), "access": "read"}]
    return profile


@pytest.fixture
def places() -> Iterator[tuple[Path, Path]]:
    """A workspace and an outside directory, neither under /tmp (which the profile opens),
    with paths short enough for a Unix socket."""
    with home_places("es-t") as made:
        yield made


async def _output(
    client: Client, process_id: str, argv: list[str], work: Path, **extra: Any
) -> str:
    extra.setdefault("sandbox", workspace_write(work))
    result = await client.start(process_id, argv, cwd=str(work), **extra)
    assert result["sandboxType"] == "linuxSeccomp"
    events = await client.wait_closed(process_id)
    return events.data().decode(errors="replace")


CONNECT = """
import errno, socket, sys
for path in sys.argv[1:]:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        print("CONNECTED", end=" ", flush=True)
        if path.endswith("exec.sock"):  # the server's: ask for a WebSocket session
            s.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\nUpgrade: websocket\\r\\n"
                      b"Connection: Upgrade\\r\\nSec-WebSocket-Version: 13\\r\\n"
                      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\n\\r\\n")
            s.settimeout(5)
            print(s.recv(12).decode(errors="replace"), end="")
        print()
    except OSError as exc:
        print(errno.errorcode.get(exc.errno, exc.errno))
"""


@pytest.fixture
async def server_on_unix(places: tuple[Path, Path]) -> AsyncIterator[tuple[Server, Client, Path]]:
    """A server listening on a Unix socket outside the workspace (as ``--listen unix://``),
    driven by a client on its WebSocket port; the socket is not among the private paths, so
    only the seccomp filter stands between a child and it."""
    _, outside = places
    path = outside / "exec.sock"
    async with running_server() as (server, url), Client.connect(url) as client:
        listener = await serve_unix(server, str(path))
        await client.initialize()
        try:
            yield server, client, path
        finally:
            listener.close()


@needs_seccomp
async def test_restricted_network_reaches_no_unix_socket_outside(
    server_on_unix: tuple[Server, Client, Path], places: tuple[Path, Path]
) -> None:
    """Item 1a and "foreign Unix sockets": the server's own listener and any other host
    socket (an ssh-agent, docker.sock) answer EPERM, as the reference's seccomp does."""
    _, client, server_socket = server_on_unix
    work, outside = places
    with socket.socket(socket.AF_UNIX) as agent:
        agent.bind(str(outside / "agent.sock"))
        agent.listen()
        argv = ["python3", "-c", CONNECT, str(server_socket), str(outside / "agent.sock")]
        output = await _output(client, "connect", argv, work, env=PATH_ENV)
        # An unsandboxed start reaches both: the sockets were there to be reached.
        events = await client.run("free", argv, env=PATH_ENV)
    assert output.split() == ["EPERM", "EPERM"], output
    assert events.data().count(b"CONNECTED") == 2, events.data()
    assert b"HTTP/1.1 101" in events.data()


DATAGRAM = """
import errno, socket, sys
def attempt(make):
    try:
        s = make()
        s.sendmsg([b"escaped"], [], 0, sys.argv[1])
        print("SENT")
    except OSError as exc:
        print(errno.errorcode.get(exc.errno, exc.errno))
attempt(lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
attempt(lambda: socket.socket(socket.AF_UNIX, socket.SOCK_RAW))  # the kernel makes it a DGRAM
attempt(lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_RAW)[0])
"""


@needs_seccomp
async def test_restricted_network_sends_no_datagram_to_a_unix_socket_outside(
    server_on_unix: tuple[Server, Client, Path], places: tuple[Path, Path]
) -> None:
    """A datagram socket reaches any datagram socket by path (journald, ``NOTIFY_SOCKET``):
    none can be made, not even as ``SOCK_RAW``, which Linux turns into ``SOCK_DGRAM`` for
    ``AF_UNIX`` (a socket, or a socket pair whose ``sendmsg`` names another address)."""
    _, client, _ = server_on_unix
    work, outside = places
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(outside / "dgram.sock"))
        receiver.setblocking(False)
        argv = ["python3", "-c", DATAGRAM, str(outside / "dgram.sock")]
        output = await _output(client, "dgram", argv, work, env=PATH_ENV)
        received = []
        with contextlib.suppress(BlockingIOError):
            while True:
                received.append(receiver.recv(64))
        # An unsandboxed start delivers all three: the socket was there to be reached.
        events = await client.run("free", argv, env=PATH_ENV)
        assert events.data().split() == [b"SENT"] * 3, events.data()
    assert output.split() == ["EPERM"] * 3, output
    assert received == []


@needs_seccomp
async def test_pipes_and_socket_pairs_still_work(
    server_on_unix: tuple[Server, Client, Path], places: tuple[Path, Path]
) -> None:
    _, client, _ = server_on_unix
    work, _ = places
    script = """
import multiprocessing as mp, socket, subprocess
a, b = socket.socketpair()
a.sendall(b"pair"); print(b.recv(4).decode())
def child(conn): conn.send(conn.recv() + 1)
if __name__ == "__main__":
    parent, there = mp.Pipe()
    p = mp.Process(target=child, args=(there,)); p.start(); parent.send(41)
    print(parent.recv()); p.join()
print(subprocess.run("echo piped | tr a-z A-Z", shell=True, capture_output=True, text=True).stdout)
"""
    output = await _output(client, "ipc", ["python3", "-c", script], work, env=PATH_ENV)
    assert output.split() == ["pair", "42", "PIPED"], output


async def test_the_servers_own_files_are_hidden_in_every_sandbox(places: tuple[Path, Path]) -> None:
    """Items 1b, 2 and 9: under ``root: read`` with the network enabled (no seccomp rule in
    the way), the token file, TLS key and socket of the server cannot be read or reached."""
    work, outside = places
    secrets = outside / "secrets"
    secrets.mkdir()
    token, key = secrets / "token", secrets / "tls.key"
    token.write_text("s3cret-token\n")
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    sock = outside / "exec.sock"
    runtime = outside / "run"
    runtime.mkdir()
    (runtime / "state").write_text("runtime-state\n")
    private = (str(token), str(key), str(sock), str(runtime))
    guards = Guards(private_paths=private)
    async with running_server(guards=guards) as (server, url), Client.connect(url) as client:
        listener = await serve_unix(server, str(sock))
        try:
            await client.initialize()
            script = (
                f"cat {token} {key} {runtime}/state 2>&1; ls -A {runtime} 2>&1; "
                f'python3 -c "$1" {sock}'
            )
            argv = ["bash", "-c", script, "connect", CONNECT]
            profile = read_only_root(work)
            output = await _output(client, "peek", argv, work, env=PATH_ENV, sandbox=profile)
        finally:
            listener.close()
    assert "s3cret" not in output and "PRIVATE" not in output, output
    assert "runtime-state" not in output and "CONNECTED" not in output, output
    assert "ECONNREFUSED" in output, output


def test_the_command_line_names_the_servers_private_files(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t\n")
    args = build_parser().parse_args(
        ["--listen", f"unix://{tmp_path}/s.sock", "--auth-token-file", str(token)]
    )
    assert set(options_from_args(args).guards.private_paths) == {
        str(token),
        f"{tmp_path}/s.sock",
    }
    cert, key = self_signed(tmp_path)
    args = build_parser().parse_args(
        ["--listen", "wss://127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key)]
    )
    assert set(options_from_args(args).guards.private_paths) == {str(cert), str(key)}


async def test_the_real_cli_hides_its_socket_and_token(places: tuple[Path, Path]) -> None:
    """The same through the command a user runs: ``--listen unix://`` with
    ``--auth-token-file``, a client on that socket, a sandboxed child under ``root: read``
    with the network enabled: neither the token nor the socket can be reached."""
    work, outside = places
    token, sock = outside / "token", outside / "exec.sock"
    token.write_text("cli-s3cret\n")
    proc = await start_cli(
        "--listen", f"unix://{sock}", "--auth-token-file", str(token), stdin=subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.decode().strip() == f"unix://{sock}"
        headers = {"Authorization": "Bearer cli-s3cret"}
        async with unix_connect(str(sock), additional_headers=headers, max_size=None) as ws:
            client = Client(ws)
            await client.initialize()
            script = f'cat {token} 2>&1; python3 -c "$1" {sock}'
            argv = ["bash", "-c", script, "connect", CONNECT]
            profile = read_only_root(work)
            output = await _output(client, "peek", argv, work, env=PATH_ENV, sandbox=profile)
    finally:
        await stop_cli(proc, [])
    assert "cli-s3cret" not in output and "CONNECTED" not in output, output
    assert "ECONNREFUSED" in output, output


# ---- item 3: the client's environment stays inside -----------------------------------------

PLANTED = r"""
#include <fcntl.h>
#include <unistd.h>
__attribute__((constructor)) static void planted(void) {
    int fd = open(MARKER, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) { write(fd, "ran\n", 4); close(fd); }
}
"""


def _planted_library(work: Path, marker: Path) -> Path:
    """A library 'an earlier sandboxed command built in the workspace', whose constructor
    writes ``marker`` (outside every writable root: only an unsandboxed process can)."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler to build the planted library")
    source = work / "planted.c"
    source.write_text(PLANTED)
    library = work / "libplanted.so"
    subprocess.run(
        [gcc, "-shared", "-fPIC", f'-DMARKER="{marker}"', "-o", str(library), str(source)],
        check=True,
    )
    return library


@pytest.fixture
async def confined_client(places: tuple[Path, Path], tmp_path: Path) -> AsyncIterator[Client]:
    """A server whose operator confines every process to codex's workspace-write profile."""
    work, _ = places
    async with confined_by_operator(workspace_confinement(work), tmp_path) as client:
        yield client


@pytest.mark.parametrize("who", ["client profile", "operator confinement"])
async def test_the_clients_environment_never_runs_outside(
    who: str, client: Client, confined_client: Client, places: tuple[Path, Path]
) -> None:
    """Item 3 and "a library planted by an earlier sandboxed command": LD_PRELOAD and
    LD_DEBUG_OUTPUT reach the command inside the sandbox, never bwrap or env outside it."""
    work, outside = places
    library = _planted_library(work, outside / "ran-outside")
    env = {
        **PATH_ENV,
        "LD_PRELOAD": str(library),
        "LD_DEBUG": "files",
        "LD_DEBUG_OUTPUT": str(outside / "ld-debug"),
        "LD_LIBRARY_PATH": ":/usr/lib",  # an empty element: the cwd (the workspace)
        "MARK": "seen-inside",
    }
    target = client if who == "client profile" else confined_client
    profile = workspace_write(work) if who == "client profile" else None
    argv = ["bash", "-c", 'echo "$MARK $LD_PRELOAD"; exec sleep 1']
    result = await target.start("env", argv, cwd=str(work), env=env, sandbox=profile)
    assert result["sandboxType"] == "linuxSeccomp"
    launcher = await asyncio.to_thread(_launcher_environ, str(work))
    events = await target.wait_closed("env")
    assert f"seen-inside {library}" in events.data().decode(), events.data()
    assert sorted(p.name for p in outside.iterdir()) == [], "the planted library ran outside"
    assert launcher == b"", launcher  # bwrap (and env before it) started with nothing


def _launcher_environ(cwd: str) -> bytes | None:
    """The environment the sandbox launcher (bwrap, outside the sandbox) was started with:
    the process running bwrap with ``--chdir cwd``, read from /proc while it runs."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                if argv[0].endswith(b"bwrap") and cwd.encode() in argv:
                    return Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                continue
        time.sleep(0.01)
    return None


# ---- item 4: the confinement's special paths are the operator's ----------------------------


async def test_the_confinements_tmpdir_ignores_the_clients(
    places: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``{"special": "tmpdir"}: write`` in ``--confine`` means the server's $TMPDIR; a
    request with ``TMPDIR=/`` made the whole disk writable."""
    work, outside = places
    server_tmp = tmp_path / "server-tmp"
    server_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(server_tmp))
    entries = [
        {"path": special("root"), "access": "read"},
        {"path": special("tmpdir"), "access": "write"},
    ]
    confine = {"type": "managed", "file_system": {"type": "restricted", "entries": entries}}
    guards = confinement({"permissions": {**confine, "network": "restricted"}}, tmp_path)
    monkeypatch.setenv("TMPDIR", "/")  # later changes of the server's own env do not count
    async with running_server(guards=guards) as (_, url), Client.connect(url) as client:
        await client.initialize()
        script = f"echo x > {outside}/escaped 2>/dev/null; echo y > {server_tmp}/ok; echo done"
        env = {**PATH_ENV, "TMPDIR": "/"}
        result = await client.start("t", ["bash", "-c", script], cwd=str(work), env=env)
        assert result["sandboxType"] == "linuxSeccomp"
        events = await client.wait_closed("t")
    assert b"done" in events.data()
    assert not (outside / "escaped").exists()
    assert (server_tmp / "ok").read_text() == "y\n"


# ---- "Also": terminal injection --------------------------------------------------------------


@needs_seccomp
async def test_terminal_injection_is_refused(client: Client, places: tuple[Path, Path]) -> None:
    work, _ = places
    script = """
import errno, fcntl, termios
for name, request in (("TIOCSTI", termios.TIOCSTI), ("TIOCLINUX", 0x541C)):
    try:
        fcntl.ioctl(0, request, b"\\x0c")
        print(name, "ALLOWED")
    except OSError as exc:
        print(name, errno.errorcode.get(exc.errno, exc.errno))
"""
    output = await _output(client, "pty", ["python3", "-c", script], work, tty=True)
    assert "TIOCSTI EPERM" in output and "TIOCLINUX EPERM" in output, output


# ---- "Nested workspace rename" ---------------------------------------------------------------


async def test_a_nested_roots_git_cannot_be_replaced_by_renaming_its_parent(
    client: Client, places: tuple[Path, Path]
) -> None:
    """Two workspace roots, one inside the other: renaming the inner root's parent used to
    take its read-only ``.git`` mount along and leave the old place free for a planted
    ``.git`` (``core.fsmonitor`` runs outside when the user next runs git there)."""
    work, _ = places
    inner = work / "a" / "inner"
    inner.mkdir(parents=True)
    await asyncio.to_thread(subprocess.run, ["git", "init", "-q", str(inner)], check=True)
    config = (inner / ".git" / "config").read_text()
    profile = workspace_write(work)
    profile["workspaceRoots"] = [to_file_uri(str(work)), to_file_uri(str(inner))]
    script = """
mv a b 2>/dev/null && echo MOVED-PARENT
mv a/inner a/moved 2>/dev/null && echo MOVED-ROOT
rm -rf a 2>/dev/null; [ -d a/inner/.git ] || echo REMOVED
mkdir -p a/inner/.git 2>/dev/null; echo planted > a/inner/.git/config 2>/dev/null && echo PLANTED
echo x > a/inner/file && echo inner-writable
echo x > a/file && echo parent-writable
"""
    output = await _output(client, "rename", ["bash", "-c", script], work, sandbox=profile)
    assert "inner-writable" in output and "parent-writable" in output, output
    assert "MOVED" not in output and "PLANTED" not in output and "REMOVED" not in output, output
    assert (inner / ".git" / "config").read_text() == config
    assert sorted(p.name for p in work.iterdir()) == ["a"]


# ---- item 8: a process cap per sandbox -----------------------------------------------------

FORK_LOOP = """
import os, signal, time
started = 0
for _ in range(60):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        signal.pause()
        os._exit(0)
    started += 1
print("started", started, flush=True)
"""


@pytest.mark.skipif(not pids_cgroups().usable, reason=f"no pids cgroup: {pids_cgroups().reason}")
async def test_a_fork_loop_in_a_sandbox_stops_at_the_pids_limit(places: tuple[Path, Path]) -> None:
    work, _ = places
    async with running_server(guards=Guards(pids_limit=16)) as (_, url), Client.connect(url) as c:
        await c.initialize()
        info = (await c.call("environment/info"))["sandbox"]
        assert (info["pidsCgroup"], info["pidsLimit"]) == (True, 16)
        output = await _output(c, "bomb", ["python3", "-c", FORK_LOOP], work, env=PATH_ENV)
    started = int(output.split()[-1])
    assert 0 < started < 16, output  # bwrap and the interpreter count too
    # Nothing is left in any sandbox cgroup once the sandbox has exited
    group = Path(str(pids_cgroups().group))
    assert await wait_until(
        lambda: all(not (d / "cgroup.procs").read_text() for d in group.iterdir() if d.is_dir())
    )


async def test_without_a_pids_cgroup_environment_info_says_so(
    client: Client, places: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No silent claim: where no pids cgroup can be made, the sandbox block says so and what
    to configure, and sandboxes still run (under the rest of their confinement)."""
    work, _ = places
    info = (await client.call("environment/info"))["sandbox"]
    assert info["seccomp"] is support().seccomp
    assert info["pidsCgroup"] is pids_cgroups().usable
    nowhere = cgroup.PidsCgroups(None, reason=f"no pids cgroup controller: {cgroup.HOW_TO_ENABLE}")
    monkeypatch.setattr(cgroup, "pids_cgroups", lambda: nowhere)
    info = (await client.call("environment/info"))["sandbox"]
    assert (info["pidsCgroup"], info["pidsLimit"]) == (False, None)
    assert "TasksMax" in info["pidsCgroupReason"], info
    output = await _output(client, "still", ["bash", "-c", "grep pids /proc/self/cgroup"], work)
    assert "exec-server-" not in output, output
