"""Issue 17, the server's side: what a client or a sandboxed child must never get from the
server itself (its token, its control sockets, its descriptors). Real servers, real sockets,
real children; each test fails without the closure it names (docs/sandbox.md, "Server-side
closures (issue 17)")."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from websockets.asyncio.client import unix_connect
from websockets.exceptions import InvalidStatus

from exec_server.client import AuthenticationFailed
from exec_server.client import connect as client_connect
from exec_server.config import Guards, Limits
from exec_server.paths import to_file_uri
from exec_server.sandbox.bwrap import support
from exec_server.transport.websocket import serve_unix, serve_websocket

from .sandbox_support import confinement, workspace_confinement
from .sandbox_support import workspace_write as codex_workspace_write
from .support import (
    PATH_ENV,
    REPO,
    Client,
    running_server,
    self_signed,
    server_command,
    wait_until,
)

needs_bwrap = pytest.mark.skipif(
    not support().usable, reason=f"bubblewrap cannot run here: {support().reason}"
)

INHERIT_ALL = {
    "inherit": "all",
    "ignoreDefaultExcludes": True,
    "exclude": [],
    "set": {},
    "includeOnly": [],
}


@dataclass
class Cli:
    proc: asyncio.subprocess.Process
    url: str


@contextlib.asynccontextmanager
async def cli(
    *args: str, env: dict[str, str] | None = None, nofile: tuple[int, int] | None = None
) -> AsyncIterator[Cli]:
    """The real command with ``env`` added to the test's environment and ``nofile`` as its
    (soft, hard) open-file limits."""

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

    proc = await asyncio.create_subprocess_exec(
        *server_command(*args),
        stdin=subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        preexec_fn=limit,
    )
    try:
        assert proc.stdout is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().rstrip("\n")
        yield Cli(proc, url)
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)


# ---- item 2: the token leaves the server's environment ----------------------------------------


async def test_the_token_variable_never_reaches_a_child() -> None:
    token = "tok-" + os.urandom(8).hex()
    async with (
        cli(env={"EXEC_SERVER_TOKEN": token}) as server,
        Client.connect(
            server.url, additional_headers={"Authorization": f"Bearer {token}"}
        ) as client,
    ):
        await client.initialize()
        events = await client.run("env", ["env"], env={}, envPolicy=INHERIT_ALL)
        shown = events.data().decode()
        assert "PATH=" in shown  # the policy did inherit the server's environment
        assert "EXEC_SERVER_TOKEN" not in shown and token not in shown


# ---- item 1c: a Unix listener takes and requires the token ------------------------------------


async def test_a_unix_listener_requires_the_token(tmp_path: Path) -> None:
    path = tmp_path / "exec.sock"
    token = "tok-" + os.urandom(8).hex()
    async with cli("--listen", f"unix://{path}", env={"EXEC_SERVER_TOKEN": token}) as server:
        url = server.url
        assert url == f"unix://{path}"
        with pytest.raises(InvalidStatus) as refused:
            async with unix_connect(str(path)):
                pass
        assert refused.value.response.status_code == 401
        with pytest.raises(AuthenticationFailed):
            async with client_connect(url, token="wrong", reconnect=False):
                pass
        async with client_connect(url, token=token, reconnect=False) as client:
            result = await client.run(["echo", "over unix"])
            assert result.stdout == b"over unix\n"


# ---- items 7 and 8: descriptors before authentication --------------------------------------


async def test_the_open_file_soft_limit_is_raised_to_the_hard_one() -> None:
    hard = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 4096)
    if hard <= 256:
        pytest.skip(f"the hard open-file limit here is {hard}: nothing to raise to")
    async with cli(nofile=(256, hard)) as server:
        limits = (
            await asyncio.to_thread(Path(f"/proc/{server.proc.pid}/limits").read_text)
        ).splitlines()
        line = next(row for row in limits if row.startswith("Max open files"))
        assert line.split()[3:5] == [str(hard), str(hard)], line


@contextlib.asynccontextmanager
async def _idle_sockets(url: str, count: int) -> AsyncIterator[list[socket.socket]]:
    """``count`` non-blocking sockets connected to the server that never send a byte; closed
    when the block ends."""
    host, port = url.removeprefix("ws://").rsplit(":", 1)
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sockets.append(sock)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def _dropped(idle: list[socket.socket]) -> int:
    """How many of ``idle`` the server has closed (or reset) by now."""
    dropped = 0
    for sock in idle:
        try:
            dropped += sock.recv(1) == b""  # the server closed it
        except ConnectionResetError:
            dropped += 1
        except BlockingIOError:
            pass
    return dropped


async def test_idle_sockets_cannot_lock_out_a_client_with_the_token() -> None:
    """300 sockets that never send a byte, against a server that may hold 256 descriptors:
    past 40 pending the oldest are dropped, so a client with the token still gets in."""
    token = "tok-" + os.urandom(8).hex()
    async with (
        cli(
            "--max-pending-connections",
            "40",
            env={"EXEC_SERVER_TOKEN": token},
            nofile=(256, 256),
        ) as server,
        _idle_sockets(server.url, 300) as idle,
    ):
        headers = {"Authorization": f"Bearer {token}"}
        async with Client.connect(server.url, additional_headers=headers, open_timeout=8) as c:
            assert "sessionId" in await c.initialize()
        dropped = _dropped(idle)
        assert dropped >= 300 - 40 - 5, dropped


async def test_a_peer_that_never_starts_tls_is_dropped_after_the_handshake_timeout(
    tmp_path: Path,
) -> None:
    cert, key = self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    async with running_server(Limits(handshake_timeout_s=0.3), tls=tls) as (_, url):
        host, port = url.removeprefix("ws://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            # The reference holds such a peer 60 s; the test's own timeout is far below that.
            assert await asyncio.wait_for(reader.read(1), 20) == b""
        finally:
            writer.close()


# ---- item 5: fs/* reads act on what they checked ---------------------------------------------

SWAPPER = """
import os, sys
link, first, second = sys.argv[1:4]
fresh = link + ".new"
while True:
    for target in (first, second):
        try:
            os.unlink(fresh)
        except FileNotFoundError:
            pass
        os.symlink(target, fresh)
        os.rename(fresh, link)
"""


@pytest.fixture
def places() -> Iterator[tuple[Path, Path]]:
    """A workspace and a denied directory beside it, neither under /tmp (which codex's
    workspace-write profile opens)."""
    base = Path.home() / ".cache" / "exec-server-tests" / os.urandom(4).hex()
    work, secret = base / "work", base / "secret"
    (work / "harmless").mkdir(parents=True)
    (work / "harmless" / "harmless-name").write_text("fine")
    (secret / "secret-name").mkdir(parents=True)
    yield work, secret
    subprocess.run(["rm", "-rf", str(base)], check=False)


def confinement_denying(work: Path, secret: Path, tmp_path: Path) -> Guards:
    profile = workspace_confinement(work)
    entries = profile["permissions"]["file_system"]["entries"]
    entries.append({"path": {"type": "path", "path": str(secret)}, "access": "deny"})
    return confinement(profile, tmp_path)


@needs_bwrap
async def test_reads_never_follow_a_swapped_symlink_into_a_denied_folder(
    places: tuple[Path, Path], tmp_path: Path
) -> None:
    work, secret = places
    link = work / "lnk"
    link.symlink_to(work / "harmless")
    swapper = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SWAPPER, str(link), str(work / "harmless"), str(secret)
    )
    guards = confinement_denying(work, secret, tmp_path)
    leaks: list[Any] = []
    listed = 0
    try:
        async with running_server(guards=guards) as (_, url), Client.connect(url) as client:
            await client.initialize()
            for _ in range(60):
                replies = await asyncio.gather(
                    *(client.request("fs/readDirectory", {"path": str(link)}) for _ in range(10)),
                    *(
                        client.request("fs/getMetadata", {"path": f"{link}/secret-name"})
                        for _ in range(10)
                    ),
                    *(client.request("fs/canonicalize", {"path": str(link)}) for _ in range(5)),
                )
                for reply in replies[:10]:
                    names = [e["fileName"] for e in reply.get("result", {}).get("entries", [])]
                    listed += names == ["harmless-name"]
                    if "secret-name" in names:
                        leaks.append(reply)
                leaks += [reply for reply in replies[10:20] if "result" in reply]
                leaks += [
                    r for r in replies[20:] if str(secret) in r.get("result", {}).get("path", "")
                ]
    finally:
        swapper.kill()
        await swapper.wait()
    assert leaks == []
    assert listed > 0  # the harmless side was listed: the race really ran


# ---- item 1b/2: the server's own files are hidden from fs/* under a profile -----------------


async def _refusal(client: Client, method: str, params: dict[str, Any]) -> int:
    reply = await client.request(method, params)
    assert "error" in reply, (method, params, reply)
    return int(reply["error"]["code"])


@needs_bwrap
async def test_the_socket_and_token_file_are_hidden_under_the_confinement(
    places: tuple[Path, Path], tmp_path: Path
) -> None:
    work, _ = places
    token = "tok-" + os.urandom(8).hex()
    (tmp_path / "token").write_text(token)
    profile = tmp_path / "confine.json"
    workspace = codex_workspace_write(to_file_uri(str(work)))
    profile.write_text(json.dumps({**workspace, "workspaceRoots": [str(work)]}))
    sock = tmp_path / "exec.sock"
    args = ["--listen", f"unix://{sock}", "--auth-token-file", str(tmp_path / "token")]
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        cli(*args, "--confine", str(profile)),
        unix_connect(str(sock), additional_headers=headers) as ws,
    ):
        client = Client(ws)
        await client.initialize()
        for method, params in (
            ("fs/readFile", {"path": str(tmp_path / "token")}),
            ("fs/getMetadata", {"path": str(tmp_path / "token")}),
            ("fs/getMetadata", {"path": str(sock)}),
            ("fs/canonicalize", {"path": str(sock)}),
            ("fs/open", {"path": str(tmp_path / "token"), "handleId": "h", "mode": "read"}),
            (
                "fs/copy",
                {
                    "sourcePath": str(tmp_path / "token"),
                    "destinationPath": str(work / "t"),
                    "recursive": False,
                },
            ),
        ):
            assert await _refusal(client, method, params) == -32600, (method, params)
        listed = await client.call("fs/readDirectory", {"path": str(tmp_path)})
        assert "confine.json" in [e["fileName"] for e in listed["entries"]]
        start = {"processId": "p", "argv": [str(tmp_path / "token")], "cwd": str(work)}
        reply = await client.request("process/start", {**start, "env": PATH_ENV, "tty": False})
        assert "No such file or directory" in reply["error"]["message"], reply  # as missing


async def test_the_tls_key_and_certificate_are_hidden_under_a_client_profile(
    places: tuple[Path, Path], tmp_path: Path
) -> None:
    work, _ = places
    cert, key = self_signed(tmp_path)
    trust = ssl.create_default_context(cafile=str(cert))
    profile = codex_workspace_write(to_file_uri(str(work)))
    args = ["--listen", "wss://127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key)]
    async with cli(*args) as server, Client.connect(server.url, ssl=trust) as client:
        await client.initialize()
        for path in (key, cert):
            params = {"path": str(path), "sandbox": profile}
            assert await _refusal(client, "fs/readFile", params) == -32600, path
        # Without a profile the client is trusted with the whole machine, as before.
        assert "dataBase64" in await client.call("fs/readFile", {"path": str(cert)})


# ---- existence oracles under --confine --------------------------------------------------------


@needs_bwrap
async def test_hidden_paths_look_absent_to_watches_and_program_checks(
    places: tuple[Path, Path], tmp_path: Path
) -> None:
    work, secret = places
    program = secret / "prog"
    program.write_text("#!/bin/sh\necho ran\n")
    program.chmod(0o755)
    guards = confinement_denying(work, secret, tmp_path)
    async with running_server(guards=guards) as (_, url), Client.connect(url) as client:
        await client.initialize()
        watch_id = 0

        async def watching(**params: Any) -> bool:
            nonlocal watch_id
            watch_id += 1
            result = await client.call("fs/watchMissing", {"watchId": watch_id, **params})
            return bool(result["watching"])

        there, absent = str(secret / "secret-name"), str(secret / "never-made")
        assert await watching(missing=[there]) == await watching(missing=[absent]) is True
        assert await watching(missing=[], present=there) is False
        assert await watching(missing=[str(work / "x")], present=there) is False
        assert await watching(missing=[str(work / "x")], present=str(work)) is True
        (work / "x").write_text("")  # watched through the checked descriptor: it fires
        assert await wait_until(
            lambda: any(
                n["method"] == "fs/missingChanged" and n["params"]["watchId"] == watch_id
                for n in client.notifications
            )
        )

        async def start_error(name: str, program: Path, cwd: Path, hidden: Path) -> Any:
            params = {"processId": name, "argv": [str(program)], "cwd": str(cwd)}
            reply = await client.request("process/start", {**params, "env": PATH_ENV, "tty": False})
            error = reply["error"]
            return error["code"], error["message"].replace(str(hidden), "HIDDEN")

        missing, there = secret / "none", secret / "secret-name"
        assert await start_error("p1", program, work, program) == await start_error(
            "p2", missing, work, missing
        )
        assert await start_error("c1", Path("/bin/true"), there, there) == await start_error(
            "c2", Path("/bin/true"), missing, missing
        )


# ---- inotify exhaustion -----------------------------------------------------------------------


def inotify_instances() -> int:
    """inotify instances this process holds (the in-process server's among them)."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{name}") == "anon_inode:inotify"
    return count


async def test_two_hundred_watching_sessions_share_one_inotify_instance(tmp_path: Path) -> None:
    before = inotify_instances()
    limits = Limits(fs_max_watched_paths=3, detach_grace_s=0)
    async with running_server(limits) as (_, url):
        async with contextlib.AsyncExitStack() as stack:

            async def session(index: int) -> bool:
                client = await stack.enter_async_context(Client.connect(url))
                await client.initialize()
                missing = [str(tmp_path / f"never-{index}")]
                result = await client.call("fs/watchMissing", {"watchId": 1, "missing": missing})
                return bool(result["watching"])

            watching = []
            for start in range(0, 200, 50):
                watching += await asyncio.gather(*(session(i) for i in range(start, start + 50)))
            assert all(watching)
            assert inotify_instances() - before == 1
            client = await stack.enter_async_context(Client.connect(url))
            await client.initialize()
            too_many = [str(tmp_path / f"a{i}") for i in range(4)]  # past the bound of 3
            result = await client.call("fs/watchMissing", {"watchId": 1, "missing": too_many})
            assert result["watching"] is False
        assert await wait_until(lambda: inotify_instances() == before)


# ---- handle exhaustion ------------------------------------------------------------------------


async def test_eight_sessions_cannot_take_every_handle_and_another_still_opens_one(
    tmp_path: Path,
) -> None:
    """Per session 16, server-wide 40: eight greedy sessions stop at the server's bound
    (plus the few each is guaranteed), and a ninth session still opens a handle."""
    target = tmp_path / "file"
    target.write_bytes(b"data")
    limits = Limits(fs_max_open_handles=16, fs_max_open_handles_total=40)
    fds_before = len(os.listdir("/proc/self/fd"))
    async with running_server(limits) as (_, url), contextlib.AsyncExitStack() as stack:

        async def greedy(index: int) -> list[dict[str, Any]]:
            client = await stack.enter_async_context(Client.connect(url))
            await client.initialize()
            replies = []
            for n in range(16):
                params = {"path": str(target), "handleId": f"h{n}", "mode": "read"}
                replies.append(await client.request("fs/open", params))
            return replies

        replies = [r for rs in await asyncio.gather(*(greedy(i) for i in range(8))) for r in rs]
        opened = sum("result" in r for r in replies)
        refusals = {r["error"]["message"] for r in replies if "error" in r}
        assert 40 <= opened <= 40 + 8 * 4, opened
        assert any("its bound" in message for message in refusals), refusals
        held = len(os.listdir("/proc/self/fd")) - fds_before
        assert held < 40 + 8 * 4 + 8 * 2, held  # handles, plus a socket pair per session
        other = await stack.enter_async_context(Client.connect(url))
        await other.initialize()
        params = {"path": str(target), "handleId": "mine", "mode": "read"}
        await other.call("fs/open", params)
        block = await other.call("fs/readBlock", {"handleId": "mine", "offset": 0, "len": 4})
        assert block["chunk"] == "ZGF0YQ=="


# ---- a network-enabled sandbox reaches a token-less loopback server ---------------------------

KNOCK = """
import socket, sys
kind, where = sys.argv[1], sys.argv[2]
try:
    if kind == "tcp":
        host, port = where.rsplit(":", 1)
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=5)
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(5)
        sock.connect(where)
    sock.sendall(
        b"GET / HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nUpgrade: websocket\\r\\n"
        b"Connection: Upgrade\\r\\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\n"
        b"Sec-WebSocket-Version: 13\\r\\n\\r\\n"
    )
    print("answer:", sock.recv(12).decode() or "closed")
except OSError as exc:  # dropped by the server, or refused by the sandbox itself
    print("answer: dropped", exc)
"""


@needs_bwrap
async def test_our_own_sandboxed_processes_are_never_served(
    places: tuple[Path, Path], tmp_path: Path
) -> None:
    work, _ = places
    profile = codex_workspace_write(to_file_uri(str(work)), network="enabled")
    sock = tmp_path / "exec.sock"
    async with running_server() as (server, url), Client.connect(url) as client:
        unix_listener = await serve_unix(server, str(sock))
        bound: list[tuple[str, int]] = []
        v6_listener = await serve_websocket(
            server, "::1", 0, on_bound=lambda host, port: bound.append((host, port))
        )
        try:
            await client.initialize()
            tcp, tcp6 = url.removeprefix("ws://"), f"[::1]:{bound[0][1]}"
            knocks = (("tcp", tcp), ("tcp", tcp6), ("unix", str(sock)))
            for n, (kind, where) in enumerate(knocks):
                argv = [sys.executable, "-c", KNOCK, kind, where]
                plain = await client.run(f"plain{n}", argv, cwd=str(work))
                assert b"answer: HTTP/1.1 101" in plain.data(), plain.data()
                boxed = await client.run(f"boxed{n}", argv, cwd=str(work), sandbox=profile)
                assert boxed.exited is not None and boxed.exited["exitCode"] == 0, boxed.data()
                assert b"answer:" in boxed.data() and b"101" not in boxed.data(), boxed.data()
        finally:
            for listener in (unix_listener, v6_listener):
                listener.close()
                await listener.wait_closed()


async def test_idle_sockets_that_never_start_tls_count_as_pending(tmp_path: Path) -> None:
    """Over wss:// too: a socket that never sends its ClientHello is pending from its first
    moment, so past the bound the oldest go and a TLS client still gets in."""
    cert, key = self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    trust = ssl.create_default_context(cafile=str(cert))
    limits = Limits(max_pending_connections=20)
    async with running_server(limits, tls=tls) as (_, url), _idle_sockets(url, 100) as idle:
        wss = url.replace("ws://", "wss://")
        async with Client.connect(wss, ssl=trust, open_timeout=8) as client:
            assert "sessionId" in await client.initialize()
        await asyncio.sleep(0)
        dropped = _dropped(idle)
        assert dropped >= 100 - 20 - 5, dropped


async def test_the_server_process_is_not_readable_through_proc(
    places: tuple[Path, Path], tmp_path: Path
) -> None:
    """fs/* runs in the server's process: under a confinement /proc/self is the server
    (its environment, its memory with the token and keys). Process directories are hidden,
    the rest of /proc is not."""
    work, secret = places
    guards = confinement_denying(work, secret, tmp_path)
    release = threading.Event()
    waiter = threading.Thread(target=release.wait, daemon=True)
    waiter.start()
    thread = waiter.native_id
    async with running_server(guards=guards) as (_, url), Client.connect(url) as client:
        await client.initialize()
        for method, params in (
            ("fs/readFile", {"path": "/proc/self/environ"}),
            ("fs/readFile", {"path": f"/proc/{os.getpid()}/cmdline"}),
            ("fs/readFile", {"path": "/proc/thread-self/environ"}),
            ("fs/getMetadata", {"path": f"/proc/{thread}/mem"}),
            ("fs/readDirectory", {"path": "/proc/self/fd"}),
            ("fs/open", {"path": "/proc/self/mem", "handleId": "m", "mode": "read"}),
            ("fs/open", {"path": "/proc/kcore", "handleId": "k", "mode": "read"}),
            ("fs/readFile", {"path": "/proc/1/environ"}),
        ):
            assert await _refusal(client, method, params) == -32600, (method, params)
        assert "dataBase64" in await client.call("fs/readFile", {"path": "/proc/cpuinfo"})
    release.set()


@needs_bwrap
async def test_capability_discovery_hides_the_servers_own_files_too(
    places: tuple[Path, Path], tmp_path: Path
) -> None:
    """capabilityRoots/discoverV1 reads in the server's process like fs/*: a plugin manifest
    that is a symlink to the token file (a confined child can make one) or to the server's
    /proc/self/environ is not read under the confinement."""
    work, secret = places
    token = tmp_path / "token"
    token.write_text("tok-" + os.urandom(8).hex())
    guards = msgspec.structs.replace(
        confinement_denying(work, secret, tmp_path), private_paths=(str(token),)
    )
    roots = []
    for name, target in (("via-token", token), ("via-proc", Path("/proc/self/environ"))):
        (work / name / ".codex-plugin").mkdir(parents=True)
        (work / name / ".codex-plugin" / "plugin.json").symlink_to(target)
        roots.append({"id": name, "path": str(work / name)})
    async with running_server(guards=guards) as (_, url), Client.connect(url) as client:
        await client.initialize()
        manifest = str(work / "via-token" / ".codex-plugin" / "plugin.json")
        assert await _refusal(client, "fs/readFile", {"path": manifest}) == -32600
        found = await client.call("capabilityRoots/discoverV1", {"roots": roots})
    assert [root["plugin"] for root in found["roots"]] == [None, None], found
    assert token.read_text() not in json.dumps(found)


@needs_bwrap
async def test_a_sandboxed_start_cut_short_by_its_client_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    """A client that sends a sandboxed process/start and goes away at once cancels the
    start while its sandbox is being built on a worker thread: what that build made (the
    seccomp descriptor, the pids cgroup and its descriptor, placeholders) is released when
    it is done, not left to the server."""
    from websockets.asyncio.client import connect as ws_connect

    from exec_server.sandbox.cgroup import pids_cgroups

    group = pids_cgroups().group

    def launch_fds() -> int:
        """The server's seccomp programs and cgroup descriptors (what a launch holds)."""
        links = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                links.append(os.readlink(f"/proc/self/fd/{fd}"))
        ours = ("/memfd:exec-server-seccomp", *((group,) if group else ()))
        return sum(link.startswith(ours) for link in links)

    def held() -> tuple[int, int]:
        cgroups = len([e for e in os.scandir(group) if e.is_dir()]) if group else 0
        return launch_fds(), cgroups

    profile = codex_workspace_write(to_file_uri(str(tmp_path)))
    start = {
        "processId": "p",
        "argv": ["true"],
        "cwd": str(tmp_path),
        "env": PATH_ENV,
        "tty": False,
        "sandbox": profile,
    }
    messages = [
        json.dumps({"id": 1, "method": "initialize", "params": {"clientName": "t"}}),
        json.dumps({"method": "initialized", "params": {}}),
    ]
    # Sessions end with their connection, so a start that did complete goes too.
    async with running_server(Limits(detach_grace_s=0.0)) as (_, url):
        async with ws_connect(url) as ws:  # one whole start first: lazy imports, caches
            for message in messages:
                await ws.send(message)
            await ws.send(json.dumps({"id": 2, "method": "process/start", "params": start}))
            while json.loads(await ws.recv()).get("id") != 2:
                pass
        await asyncio.sleep(0.5)
        before = held()
        for attempt in range(10):
            ws = await ws_connect(url)
            for message in messages:
                await ws.send(message)
            request = {
                "id": 2,
                "method": "process/start",
                "params": {**start, "processId": f"c{attempt}"},
            }
            await ws.send(json.dumps(request))
            ws.transport.abort()  # gone before the sandbox is ready
            await ws.wait_closed()
        assert await wait_until(lambda: held() <= before, timeout=10), (held(), before)
