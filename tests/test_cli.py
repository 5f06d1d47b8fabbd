"""The real ``exec-server`` command: options, listen URLs, HTTP endpoints, signals."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import re
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from exec_server import __version__
from exec_server.cli import build_parser, limits_from_args

from .support import REPO, Client, pid_alive, server_command, start_cli, stop_cli, wait_until

URL_LINE = re.compile(r"^ws://127\.0\.0\.1:(\d+)$")


@dataclass
class CliServer:
    proc: asyncio.subprocess.Process
    url: str
    children: set[int] = field(default_factory=set)
    """Pids this test saw under the server, killed at the end whatever happens."""

    def descendants(self, name: str | None = None) -> list[psutil.Process]:
        try:
            found = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        found = [p for p in found if name is None or _name(p) == name]
        self.children.update(p.pid for p in found)
        return found

    async def wait_exit(self) -> tuple[int, str]:
        assert self.proc.stderr is not None
        stderr, rc = await asyncio.wait_for(
            asyncio.gather(self.proc.stderr.read(), self.proc.wait()), 30
        )
        return rc, stderr.decode(errors="replace")


def _name(process: psutil.Process) -> str:
    try:
        return str(process.name())
    except psutil.NoSuchProcess:
        return ""


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        server_command(*args), capture_output=True, text=True, timeout=30, cwd=REPO, check=False
    )


@contextlib.asynccontextmanager
async def cli_server(*args: str) -> AsyncIterator[CliServer]:
    proc = await start_cli(*args, stdin=subprocess.DEVNULL)
    server = CliServer(proc, "")
    try:
        assert proc.stdout is not None
        server.url = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().rstrip("\n")
        yield server
    finally:
        await stop_cli(proc, server.children)


async def wait_for_descendants(server: CliServer, name: str, count: int) -> list[int]:
    assert await wait_until(lambda: len(server.descendants(name)) >= count)
    return [p.pid for p in server.descendants(name)]


async def test_first_stdout_line_is_the_bound_url_and_it_serves() -> None:
    async with cli_server() as server:
        match = URL_LINE.match(server.url)
        assert match is not None, server.url
        assert 0 < int(match.group(1)) < 65536
        async with Client.connect(server.url) as client:
            await client.initialize()
            events = await client.run("p", ["sh", "-c", "echo via cli"])
            assert events.data() == b"via cli\n"
        server.proc.terminate()
        rc, stderr = await server.wait_exit()
        assert rc == 0, stderr


async def test_explicit_port_is_used() -> None:
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with cli_server("--listen", f"ws://127.0.0.1:{port}") as server:
        assert server.url == f"ws://127.0.0.1:{port}"


def test_help_mentions_every_option() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    options = [
        option
        for action in build_parser()._actions
        for option in action.option_strings
        if option.startswith("--")
    ]
    assert "--listen" in options and "--detach-grace" in options
    for option in options:
        assert option in result.stdout, option
    for words in ("ws://IP:PORT", "stdio", "0 kills"):
        assert words in result.stdout


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"exec-server {__version__}"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:0", "unsupported --listen URL `http://127.0.0.1:0`; expected `ws://IP:PORT` or `stdio`"),
        ("wss://127.0.0.1:0", "a wss:// --listen URL needs both --tls-cert and --tls-key"),
        ("unix://relative.sock", "expected `unix:///ABSOLUTE/PATH`"),
        ("127.0.0.1:0", "unsupported --listen URL `127.0.0.1:0`; expected `ws://IP:PORT` or `stdio`"),
        ("stdio:", "unsupported --listen URL `stdio:`; expected `ws://IP:PORT` or `stdio`"),
        ("ws://localhost:1234", "invalid websocket --listen URL `ws://localhost:1234`; expected `ws://IP:PORT`"),
        ("ws://127.0.0.1", "invalid websocket --listen URL `ws://127.0.0.1`; expected `ws://IP:PORT`"),
        ("ws://127.0.0.1:", "invalid websocket --listen URL `ws://127.0.0.1:`; expected `ws://IP:PORT`"),
        ("ws://127.0.0.1:65536", "invalid websocket --listen URL `ws://127.0.0.1:65536`; expected `ws://IP:PORT`"),
        ("ws://127.0.0.1:-1", "invalid websocket --listen URL `ws://127.0.0.1:-1`; expected `ws://IP:PORT`"),
        ("ws://127.0.0.1:0/", "invalid websocket --listen URL `ws://127.0.0.1:0/`; expected `ws://IP:PORT`"),
        ("ws://::1:0", "invalid websocket --listen URL `ws://::1:0`; expected `ws://IP:PORT`"),
        ("ws://[127.0.0.1]:0", "invalid websocket --listen URL `ws://[127.0.0.1]:0`; expected `ws://IP:PORT`"),
        ("ws://127.0.0.1:\u0668\u0660", "invalid websocket --listen URL `ws://127.0.0.1:\u0668\u0660`; expected `ws://IP:PORT`"),
        ("ws://", "invalid websocket --listen URL `ws://`; expected `ws://IP:PORT`"),
    ],
)  # fmt: skip
def test_bad_listen_urls_give_the_reference_messages(url: str, message: str) -> None:
    result = run_cli("--listen", url)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args",
    [
        ["--detach-grace", "-1"],
        ["--detach-grace", "nan"],
        ["--closed-retention", "inf"],
        ["--retained-output-bytes", "0"],
        ["--spill-threshold-bytes", "-1"],
        ["--read-chunk-bytes", "x"],
        ["--log-level", "bogus"],
        ["--no-such-option"],
    ],
)
def test_bad_options_fail_cleanly(args: list[str]) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert "error:" in result.stderr
    assert "Traceback" not in result.stderr


def test_spill_threshold_reaches_the_limits() -> None:
    parser = build_parser()
    assert limits_from_args(parser.parse_args([])).spill_threshold_bytes == 64 * 1024
    args = parser.parse_args(["--spill-threshold-bytes", "0"])
    assert limits_from_args(args).spill_threshold_bytes == 0


@pytest.mark.parametrize("address", ["0.0.0.0", "[::]"])
def test_non_loopback_bind_is_refused_without_the_flag(address: str) -> None:
    result = run_cli("--listen", f"ws://{address}:0")
    assert result.returncode != 0
    assert "--insecure-allow-remote-without-auth" in result.stderr
    assert result.stdout == ""


async def test_non_loopback_bind_with_a_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("  tok-123\n")
    async with cli_server("--listen", "ws://0.0.0.0:0", "--auth-token-file", str(token_file)) as s:
        port = s.url.rsplit(":", 1)[1]
        headers = {"Authorization": "Bearer tok-123"}
        async with Client.connect(f"ws://127.0.0.1:{port}", additional_headers=headers) as client:
            assert "sessionId" in await client.call("initialize", {"clientName": "x"})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--auth-token-file", "/no/such/token"], "cannot read --auth-token-file"),
        (["--tls-cert", "/x.pem"], "--tls-cert and --tls-key are for a wss:// --listen URL"),
        (["--max-sessions", "0"], "--max-sessions must be positive"),
        (["--stdin-max-bytes-per-process", "-1"], "--stdin-max-bytes-per-process must be positive"),
        (["--max-forward-streams", "0"], "--max-forward-streams must be positive"),
        (["--max-http-streams", "0"], "--max-http-streams must be positive"),
    ],
)
def test_bad_security_and_limit_options_are_named(args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_every_limit_error_names_an_option_that_exists() -> None:
    """The option a limit's error names is one --help lists (a renamed flag once left the
    error naming one that did not exist)."""
    from exec_server.cli import _OTHER_LIMITS, _POSITIVE, _flag

    listed = set(re.findall(r"--[a-z0-9-]+", run_cli("--help").stdout))
    assert {_flag(name) for name in (*_POSITIVE, *_OTHER_LIMITS)} <= listed


async def test_non_loopback_bind_with_the_explicit_flag() -> None:
    async with cli_server(
        "--listen", "ws://0.0.0.0:0", "--insecure-allow-remote-without-auth"
    ) as s:
        assert re.fullmatch(r"ws://0\.0\.0\.0:\d+", s.url), s.url
        port = s.url.rsplit(":", 1)[1]
        async with Client.connect(f"ws://127.0.0.1:{port}") as client:
            assert "sessionId" in await client.call("initialize", {"clientName": "x"})


def _http_get(url: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    host, port = url.removeprefix("ws://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


async def test_readyz_is_plain_http_200() -> None:
    async with cli_server() as server:
        status, _ = await asyncio.to_thread(_http_get, server.url, "/readyz")
        assert status == 200
        # A plain GET that is not an upgrade is not served as a WebSocket.
        status, _ = await asyncio.to_thread(_http_get, server.url, "/")
        assert status == 404


async def test_websocket_handshake_with_an_origin_is_refused() -> None:
    async with cli_server("--allow-origin", "http://good.example") as server:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(server.url, origin="http://evil.example"):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 403
        async with connect(server.url, origin="http://good.example") as ws:  # type: ignore[arg-type]
            await ws.send('{"id":1,"method":"environment/status"}')
            assert await asyncio.wait_for(ws.recv(), 10) == '{"id":1,"result":{"status":"ready"}}'
        # No Origin at all (a non-browser client) is fine.
        async with Client.connect(server.url) as client:
            assert await client.call("environment/status") == {"status": "ready"}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_kills_every_child_group_and_exits_zero(signum: signal.Signals) -> None:
    # SIGTERM drains first: 0.5 s, which these sleeps outlast.
    async with cli_server("--detach-grace", "60", "--drain-timeout", "0.5") as server:
        async with Client.connect(server.url) as attached, Client.connect(server.url) as other:
            await attached.initialize()
            await other.initialize()
            await attached.start("a", ["sh", "-c", "sleep 100 & sleep 100"])
            await other.start("b", ["sh", "-c", "sleep 100 & sleep 100"])
            sleeps = await wait_for_descendants(server, "sleep", 4)
        # `other` is now detached (grace 60 s), `attached` too: the signal must kill both.
        assert all(pid_alive(pid) for pid in sleeps)
        server.proc.send_signal(signum)
        rc, stderr = await server.wait_exit()
        assert rc == 0, stderr
        assert "Traceback" not in stderr
        assert await wait_until(lambda: not any(pid_alive(pid) for pid in sleeps))


async def test_signal_with_a_connection_still_open_exits_zero() -> None:
    async with cli_server("--drain-timeout", "0.5") as server, Client.connect(server.url) as client:
        await client.initialize()
        await client.start("p", ["sh", "-c", "sleep 100 & sleep 100"])
        sleeps = await wait_for_descendants(server, "sleep", 2)
        server.proc.terminate()
        rc, stderr = await server.wait_exit()
        assert rc == 0, stderr
        assert await wait_until(lambda: not any(pid_alive(pid) for pid in sleeps))
        await asyncio.wait_for(client.closed.wait(), 10)
        assert client.ws.close_code == 1001  # going away, with the reason
        assert "drain timeout (0.5 s) passed" in (client.ws.close_reason or "")


async def test_sigkill_of_the_server_leaves_no_running_direct_child() -> None:
    async with cli_server() as server:
        async with Client.connect(server.url) as client:
            await client.initialize()
            await client.start("pipe", ["sleep", "100"])
            await client.start("pty", ["sleep", "100"], tty=True)
            assert await wait_until(lambda: len([p for p in server.descendants("sleep")]) >= 2)
            children = psutil.Process(server.proc.pid).children()
            direct = [p.pid for p in children if p.name() != "exec-keeper"]
            assert len(direct) == 2
            server.proc.kill()
            assert await asyncio.wait_for(server.proc.wait(), 10) == -signal.SIGKILL
        assert await wait_until(lambda: not any(pid_alive(pid) for pid in direct))


@pytest.mark.parametrize("tty", [False, True], ids=["pipe", "pty"])
async def test_sigkill_of_the_server_leaves_no_grandchild(tty: bool) -> None:
    """Issue 11: the direct child dies of its parent-death signal, and the keeper kills what
    it left in its session (`sleep` was started by the shell, not by the server)."""
    async with cli_server() as server:
        async with Client.connect(server.url) as client:
            await client.initialize()
            script = "sleep 1000 & echo $!; wait"
            await client.start("bg", ["sh", "-c", script], tty=tty)
            out = await client.wait_output("bg", b"\n")
            grandchild = int(out.split()[0])
            assert pid_alive(grandchild)
            server.proc.kill()
            assert await asyncio.wait_for(server.proc.wait(), 10) == -signal.SIGKILL
        assert await wait_until(lambda: not pid_alive(grandchild), timeout=15)


async def test_the_keeper_outlives_a_session_that_ended() -> None:
    """The keeper is the server's child but nobody's orphan: a session that ended (and
    killed its processes' trees) must not take it along, so a later SIGKILL of the server
    still leaves no grandchild of another session."""
    async with cli_server("--detach-grace", "0") as server:
        keepers = [
            p for p in psutil.Process(server.proc.pid).children() if _name(p) == "exec-keeper"
        ]
        assert len(keepers) == 1
        async with Client.connect(server.url) as first:
            await first.initialize()
            await first.run("done", ["true"])  # an exit: the orphans are claimed then
        async with Client.connect(server.url) as second:
            await second.initialize()
            await second.start("bg", ["sh", "-c", "sleep 1000 & echo $!; wait"])
            grandchild = int((await second.wait_output("bg", b"\n")).split()[0])
            await asyncio.sleep(0.5)  # the first session is torn down (grace 0) meanwhile
            assert keepers[0].is_running() and keepers[0].status() != psutil.STATUS_ZOMBIE
            server.proc.kill()
            assert await asyncio.wait_for(server.proc.wait(), 10) == -signal.SIGKILL
        assert await wait_until(lambda: not pid_alive(grandchild), timeout=15)


async def test_ipv6_loopback_url_is_printed_with_brackets() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    async with cli_server("--listen", "ws://[::1]:0") as server:
        assert re.fullmatch(r"ws://\[::1\]:\d+", server.url), server.url
        async with Client.connect(server.url) as client:
            assert await client.call("environment/status") == {"status": "ready"}
