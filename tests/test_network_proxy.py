"""The managed network (issue 18 A): process/start.networkProxy runs the child behind its own
egress proxy, in a network namespace where nothing else is reachable. Real bubblewrap, real
children (curl, python), real origins on loopback; the escapes must fail."""

from __future__ import annotations

import asyncio
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from exec_server.config import Guards
from exec_server.network import managed, own_ports
from exec_server.paths import to_file_uri
from exec_server.sandbox.bwrap import support
from exec_server.sandbox.policy import load_confinement

from .sandbox_support import workspace_write
from .support import PATH_ENV, Client, RpcFailure, python_server, running_server, wait_until

pytestmark = pytest.mark.skipif(
    not support().usable, reason=f"bubblewrap cannot run here: {support().reason}"
)
needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")

POLICY_FIELDS = [
    "processId",
    "timestamp",
    "scope",
    "decision",
    "source",
    "reason",
    "protocol",
    "host",
    "port",
    "method",
    "client",
    "policyOverride",
]

ORIGIN = Path(__file__).with_name("origin.py")
"""An HTTP origin (see its docstring)."""


@pytest.fixture
def origin() -> Iterator[int]:
    """An HTTP origin on 127.0.0.1 (outside the child's namespace); yields its port."""
    with python_server(ORIGIN) as port:
        yield port


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    async with running_server() as (_, url), Client.connect(url) as connected:
        await connected.initialize()
        yield connected


def network_proxy(
    domains: dict[str, str] | None, *, mode: str = "full", socks5: bool = True, **extra: Any
) -> dict[str, Any]:
    """``process/start.networkProxy`` as codex 0.169 sends it."""
    proxy = {
        "enabled": True,
        "enableSocks5": socks5,
        "enableSocks5Udp": socks5,
        "allowUpstreamProxy": True,
        "dangerouslyAllowAllUnixSockets": False,
        "allowLocalBinding": False,
        "mode": mode,
        "domains": domains,
        "unixSockets": None,
        **extra,
    }
    return {"proxy": proxy, "environmentId": "tests", "executionId": "x1"}


async def run_proxied(
    client: Client, process_id: str, script: str, domains: dict[str, str] | None, **kw: Any
) -> str:
    params = {"networkProxy": network_proxy(domains, **kw), "enforceManagedNetwork": True}
    result = await client.start(process_id, ["sh", "-c", script], env=PATH_ENV, **params)
    assert result["sandboxType"] == "linuxSeccomp"
    events = await client.wait_closed(process_id)
    return events.data().decode(errors="replace")


def decisions(client: Client, process_id: str) -> list[dict[str, Any]]:
    return [
        n["params"]
        for n in client.notifications
        if n["method"] == "network/policyDecision" and n["params"]["processId"] == process_id
    ]


@needs_curl
async def test_allowed_fetch_goes_through_and_is_audited(client: Client, origin: int) -> None:
    out = await run_proxied(
        client, "p1", f"curl -s http://127.0.0.1:{origin}/", {"127.0.0.1": "allow"}
    )
    assert out == "hello-origin\n"
    [audit] = decisions(client, "p1")
    assert list(audit) == POLICY_FIELDS
    assert audit["decision"] == "allow" and audit["reason"] == "allow"
    assert (audit["scope"], audit["source"], audit["protocol"]) == (
        "domain",
        "baseline_policy",
        "http",
    )
    assert (audit["host"], audit["port"], audit["method"]) == ("127.0.0.1", origin, "GET")
    assert audit["client"].startswith("127.0.0.1:") and audit["policyOverride"] is False


@needs_curl
async def test_unlisted_host_gets_the_reference_403(client: Client, origin: int) -> None:
    out = await run_proxied(client, "p1", "curl -s -i http://example.test/", {"127.0.0.1": "allow"})
    head, _, body = out.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 403 Forbidden")
    assert "x-proxy-error: blocked-by-allowlist" in head
    assert "content-type: application/json" in head
    assert json.loads(body) == {
        "status": "blocked",
        "host": "example.test",
        "reason": "not_allowed",
        "decision": "deny",
        "source": "baseline_policy",
        "protocol": "http",
        "port": 80,
        "message": "Domain not in allowlist.",
    }
    [audit] = decisions(client, "p1")
    assert (audit["decision"], audit["reason"], audit["host"]) == (
        "deny",
        "not_allowed",
        "example.test",
    )


REFERENCE_ENV_KEYS = sorted(
    [
        "ALL_PROXY",
        "BUNDLE_HTTPS_PROXY",
        "BUNDLE_HTTP_PROXY",
        "BUNDLE_NO_PROXY",
        "CODEX_NETWORK_ALLOW_LOCAL_BINDING",
        "CODEX_NETWORK_PROXY_ACTIVE",
        "DOCKER_HTTPS_PROXY",
        "DOCKER_HTTP_PROXY",
        "ELECTRON_GET_USE_PROXY",
        "FTP_PROXY",
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "NODE_USE_ENV_PROXY",
        "NO_PROXY",
        "NPM_CONFIG_HTTPS_PROXY",
        "NPM_CONFIG_HTTP_PROXY",
        "NPM_CONFIG_NOPROXY",
        "NPM_CONFIG_PROXY",
        "PATH",
        "PIP_PROXY",
        "PWD",
        "WSS_PROXY",
        "WS_PROXY",
        "YARN_HTTPS_PROXY",
        "YARN_HTTP_PROXY",
        "all_proxy",
        "ftp_proxy",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "npm_config_http_proxy",
        "npm_config_https_proxy",
        "npm_config_noproxy",
        "npm_config_proxy",
        "ws_proxy",
        "wss_proxy",
    ]
)
"""What ``env`` printed under the 0.169 reference for a PATH-only request with SOCKS5 on
(probed; ``PWD`` comes from the shell)."""


async def test_child_environment_is_the_references(client: Client) -> None:
    out = await run_proxied(client, "p1", "env", {"127.0.0.1": "allow"})
    env = dict(line.split("=", 1) for line in out.splitlines())
    assert sorted(env) == REFERENCE_ENV_KEYS
    http, socks = env["HTTP_PROXY"], env["ALL_PROXY"]
    assert http.startswith("http://127.0.0.1:") and socks.startswith("socks5h://127.0.0.1:")
    assert env["https_proxy"] == env["PIP_PROXY"] == env["npm_config_proxy"] == http
    assert env["FTP_PROXY"] == env["all_proxy"] == socks
    assert env["NO_PROXY"] == env["no_proxy"] == env["NPM_CONFIG_NOPROXY"] == ""
    assert env["CODEX_NETWORK_PROXY_ACTIVE"] == "1"
    assert env["CODEX_NETWORK_ALLOW_LOCAL_BINDING"] == "0"
    assert env["NODE_USE_ENV_PROXY"] == "1" and env["ELECTRON_GET_USE_PROXY"] == "true"


async def test_without_socks5_there_is_no_socks_variable(client: Client) -> None:
    out = await run_proxied(client, "p1", "env", {"127.0.0.1": "allow"}, socks5=False)
    env = dict(line.split("=", 1) for line in out.splitlines())
    assert "ALL_PROXY" not in env and "ftp_proxy" not in env
    assert env["HTTP_PROXY"].startswith("http://127.0.0.1:")


@needs_curl
async def test_direct_connections_bypassing_the_proxy_fail(client: Client, origin: int) -> None:
    """The origin is allowed, yet nothing but the proxy is reachable: curl told to ignore the
    proxy, a raw TCP connect, UDP and IPv6 all fail inside the child's namespace."""
    script = f"""
curl -s -m 5 --noproxy '*' http://127.0.0.1:{origin}/ ; echo "curl=$?"
python3 - <<'PY'
import socket
for family, address in ((socket.AF_INET, ("127.0.0.1", {origin})), (socket.AF_INET6, ("::1", {origin}))):
    try:
        socket.create_connection(address, timeout=5).close()
        print("tcp=connected")
    except OSError as error:
        print("tcp=refused", type(error).__name__)
try:
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("192.0.2.1", 53))
    print("udp=sent")
except OSError as error:
    print("udp=failed", type(error).__name__)
try:
    socket.create_connection(("192.0.2.1", 80), timeout=5)
    print("tcp-out=connected")
except OSError as error:
    print("tcp-out=failed", type(error).__name__)
PY
"""
    out = await run_proxied(client, "p1", script, {"127.0.0.1": "allow"})
    assert "curl=7" in out  # couldn't connect
    assert "tcp=connected" not in out and out.count("tcp=refused") == 2
    assert "udp=failed" in out and "tcp-out=failed" in out
    assert decisions(client, "p1") == []  # nothing went through the proxy


@needs_curl
async def test_connect_tunnel_allowed_and_denied(client: Client, origin: int) -> None:
    script = f"""
curl -s -p http://127.0.0.1:{origin}/ ; echo "allowed=$?"
python3 - <<'PY'
import os, socket
port = int(os.environ["HTTP_PROXY"].rsplit(":", 1)[1])
with socket.create_connection(("127.0.0.1", port)) as s:
    s.sendall(b"CONNECT evil.test:443 HTTP/1.1\\r\\nHost: evil.test:443\\r\\n\\r\\n")
    print(repr(s.recv(4096)))
PY
"""
    domains = {"127.0.0.1": "allow", "evil.test": "deny"}
    out = await run_proxied(client, "p1", script, domains)
    assert "hello-origin\nallowed=0" in out
    assert "HTTP/1.1 403 Forbidden" in out and "x-proxy-error: blocked-by-denylist" in out
    assert "Domain denied by the sandbox policy." in out
    allowed, denied = decisions(client, "p1")
    assert (allowed["protocol"], allowed["method"], allowed["decision"]) == (
        "https_connect",
        "CONNECT",
        "allow",
    )
    assert (denied["host"], denied["port"], denied["reason"]) == ("evil.test", 443, "denied")


@needs_curl
async def test_limited_mode_blocks_post_and_lets_get_through(client: Client, origin: int) -> None:
    url = f"http://127.0.0.1:{origin}/"
    script = f"curl -s {url}; curl -s -i -d data {url}"
    out = await run_proxied(client, "p1", script, {"127.0.0.1": "allow"}, mode="limited")
    assert out.startswith("hello-origin\n")
    assert "x-proxy-error: blocked-by-method-policy" in out
    assert '"message":"Method not allowed in limited mode."' in out and "posted:" not in out
    get, post_domain, post_mode = decisions(client, "p1")
    assert (get["method"], get["decision"]) == ("GET", "allow")
    assert (post_domain["method"], post_domain["decision"]) == ("POST", "allow")
    assert (post_mode["scope"], post_mode["source"], post_mode["reason"]) == (
        "non_domain",
        "mode_guard",
        "method_not_allowed",
    )


@needs_curl
async def test_post_body_reaches_the_origin_in_full_mode(client: Client, origin: int) -> None:
    out = await run_proxied(
        client, "p1", f"curl -s -d hello http://127.0.0.1:{origin}/", {"127.0.0.1": "allow"}
    )
    assert out == "posted:hello"


@needs_curl
async def test_socks5_allowed_and_denied(client: Client, origin: int) -> None:
    script = f"""
curl -s --socks5-hostname "${{ALL_PROXY#socks5h://}}" http://127.0.0.1:{origin}/ ; echo "ok=$?"
curl -s --socks5-hostname "${{ALL_PROXY#socks5h://}}" http://other.test/ ; echo "denied=$?"
"""
    out = await run_proxied(client, "p1", script, {"127.0.0.1": "allow"})
    assert "hello-origin\nok=0" in out
    assert "denied=97" in out  # curl: the SOCKS5 proxy refused the connection
    allowed, denied = decisions(client, "p1")
    assert allowed["protocol"] == "socks5_tcp" and "method" not in allowed
    assert list(denied) == [f for f in POLICY_FIELDS if f != "method"]
    assert (denied["host"], denied["reason"]) == ("other.test", "not_allowed")


@needs_curl
async def test_local_names_need_an_exact_entry(client: Client, origin: int) -> None:
    script = f"curl -s http://localhost:{origin}/; echo; curl -s http://127.0.0.1:{origin}/"
    out = await run_proxied(client, "p1", script, {"*": "allow"})
    assert out.count('"reason":"not_allowed_local"') == 2
    assert "Sandbox policy blocks local/private network addresses." in out
    out = await run_proxied(
        client, "p2", f"curl -s http://localhost:{origin}/", {"localhost": "allow"}
    )
    assert out == "hello-origin\n"


async def test_proxied_start_refusals(client: Client) -> None:
    argv = ["true"]

    async def refused(**params: Any) -> str:
        with pytest.raises(RpcFailure) as caught:
            await client.start("bad", argv, **params)
        assert caught.value.code == -32602
        return caught.value.message

    proxy = network_proxy({"127.0.0.1": "allow"})
    message = await refused(networkProxy=proxy, managedNetwork={"loopbackPorts": [1]})
    assert "mutually exclusive" in message
    off = network_proxy(None, enabled=False)
    assert "requires an enabled proxy" in await refused(networkProxy=off)
    zero = {**proxy, "policyDecisionTimeoutMs": 0}
    assert await refused(networkProxy=zero) == (
        "network policy decision callback timeout must be nonzero"
    )
    url = network_proxy({"http://x.test": "allow"})
    assert await refused(networkProxy=url) == (
        "invalid network proxy config: unsupported domain pattern syntax: http://x.test"
    )
    empty = network_proxy({"": "allow"})
    assert (
        await refused(networkProxy=empty) == "invalid network proxy config: domain pattern is empty"
    )
    assert "not supported" in await refused(enforceManagedNetwork=True)
    custom = network_proxy({}, credentialMasking=True, credentialProviders={"x": {}})
    assert await refused(networkProxy=custom) == (
        "invalid network proxy config: credential provider `x` has no environment keys"
    )


async def test_proxy_ends_with_the_process(client: Client) -> None:
    """The hand-over directory is gone once the child has exited, and so are the proxy's
    sockets: the server holds no more fds than before."""
    pattern = f"{tempfile.gettempdir()}/exec-server-net-*"
    before_dirs = set(glob.glob(pattern))
    before_fds = len(os.listdir("/proc/self/fd"))
    await run_proxied(client, "p1", "sleep 0.2", {"127.0.0.1": "allow"})
    assert set(glob.glob(pattern)) == before_dirs
    await asyncio.sleep(0.1)
    assert len(os.listdir("/proc/self/fd")) <= before_fds


async def test_refused_start_leaves_no_proxy_behind(client: Client) -> None:
    """A start refused after its proxy was set up (here, a bad shell snapshot) closes that
    proxy: a client repeating it cannot pile up hand-over directories and sockets."""
    pattern = f"{tempfile.gettempdir()}/exec-server-net-*"
    before_dirs = set(glob.glob(pattern))
    before_fds = len(os.listdir("/proc/self/fd"))
    bad_snapshot = {"scopeId": "", "shell": {"name": "bash", "path": "/bin/bash"}}
    for attempt in range(5):
        with pytest.raises(RpcFailure) as caught:
            await client.start(
                f"p{attempt}",
                ["/bin/bash", "-lc", "true"],
                networkProxy=network_proxy({"127.0.0.1": "allow"}),
                shellSnapshot=bad_snapshot,
            )
        assert caught.value.code == -32602
    assert set(glob.glob(pattern)) == before_dirs
    assert len(os.listdir("/proc/self/fd")) <= before_fds


def test_a_start_cut_off_before_it_ran_leaves_no_proxy_behind(tmp_path: Path) -> None:
    """stdio input that ends right after a proxied start: the connection closes in the same
    turn that dispatched the start, before its task ran once; the cleanup of what the
    start's synchronous part set up (the proxy's hand-over directory) still runs."""
    start = {
        "id": 2,
        "method": "process/start",
        "params": {
            "processId": "cut",
            "argv": ["sleep", "5"],
            "cwd": to_file_uri(str(tmp_path)),
            "env": PATH_ENV,
            "tty": False,
            "networkProxy": network_proxy({"127.0.0.1": "allow"}),
        },
    }
    requests = [
        {"id": 1, "method": "initialize", "params": {"clientName": "cut"}},
        {"method": "initialized"},
        start,
    ]
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "exec_server", "--listen", "stdio"],
        input=b"".join(json.dumps(r).encode() + b"\n" for r in requests),
        capture_output=True,
        env={**os.environ, "TMPDIR": str(scratch)},
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert b'"id":1' in done.stdout
    assert sorted(p.name for p in scratch.glob("exec-server-net-*")) == []


async def test_confinement_without_network_refuses_a_proxy() -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".json") as profile:
        permissions = {"type": "managed", "file_system": {"type": "unrestricted"}}
        json.dump({"permissions": {**permissions, "network": "restricted"}}, profile)
        profile.flush()
        confinement = load_confinement(profile.name)
    assert not confinement.allows_network
    async with (
        running_server(guards=Guards(confinement=confinement)) as (_, url),
        Client.connect(url) as connected,
    ):
        await connected.initialize()
        with pytest.raises(RpcFailure) as caught:
            await connected.start("p1", ["true"], networkProxy=network_proxy({"x.test": "allow"}))
        assert "allows no network" in caught.value.message


@needs_curl
@pytest.mark.parametrize("network", ["restricted", "enabled"])
async def test_under_codexs_workspace_profile(client: Client, origin: int, network: str) -> None:
    """codex sends its workspace-write profile (network ``enabled``) with the proxy: the
    profile's filesystem rules apply and the network is still the proxy's only."""
    work = Path.home() / ".cache" / "exec-server-tests" / os.urandom(4).hex()
    work.mkdir(parents=True)
    try:
        script = (
            f"curl -s http://127.0.0.1:{origin}/; curl -s -m 5 --noproxy '*' "
            f'http://127.0.0.1:{origin}/; echo "direct=$?"; touch /etc/x 2>/dev/null; echo "etc=$?"'
        )
        result = await client.start(
            "p1",
            ["sh", "-c", script],
            cwd=str(work),
            env=PATH_ENV,
            sandbox=workspace_write(to_file_uri(str(work)), network=network),
            networkProxy=network_proxy({"127.0.0.1": "allow"}),
            enforceManagedNetwork=True,
        )
        assert result["sandboxType"] == "linuxSeccomp"
        out = (await client.wait_closed("p1")).data().decode()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert out == "hello-origin\ndirect=7\netc=1\n"


async def test_arg0_and_exit_status_pass_through(client: Client) -> None:
    params = {"networkProxy": network_proxy({}), "arg0": "renamed"}
    await client.start("p1", ["bash", "-c", 'echo "$0"; exit 3'], env=PATH_ENV, **params)
    events = await client.wait_closed("p1")
    assert events.data() == b"renamed\n"
    assert events.exited is not None and events.exited["exitCode"] == 3


async def test_a_hand_over_past_its_time_fails_the_child_and_never_runs_it_unproxied(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server gives up the hand-over before the child makes it (a timeout of 0): the
    hand-over socket goes with it, so the child's entry fails at once with a message on its
    stderr and exit status 126, instead of waiting forever for a go-ahead nobody will send;
    the command never runs."""
    monkeypatch.setattr(managed, "HANDOVER_TIMEOUT_S", 0.0)
    params = {"networkProxy": network_proxy({"127.0.0.1": "allow"})}
    await client.start("late", ["sh", "-c", "echo ran"], env=PATH_ENV, **params)
    events = await client.wait_closed("late", timeout=30)
    stderr = events.data("stderr").decode(errors="replace")
    assert b"ran" not in events.data("stdout")
    assert "exec-server: cannot set up the managed network proxy" in stderr, stderr
    assert "the server no longer takes the hand-over" in stderr, stderr
    assert events.exited is not None and events.exited["exitCode"] == 126


@needs_curl
async def test_the_servers_own_port_is_out_of_reach(origin: int) -> None:
    """Even with 127.0.0.1 allowed, the proxy does not carry a child to the server's own
    WebSocket port (its control channel); the origin beside it stays reachable."""
    async with running_server() as (_, url), Client.connect(url) as connected:
        own_ports.forget()  # this test's server listens in the test's process, just opened
        await connected.initialize()
        server_port = int(url.rsplit(":", 1)[1])
        script = (
            f"curl -s -i http://127.0.0.1:{server_port}/; echo; curl -s http://127.0.0.1:{origin}/"
        )
        out = await run_proxied(connected, "p1", script, {"127.0.0.1": "allow"})
        assert (
            "x-proxy-error: blocked-by-allowlist" in out and '"reason":"not_allowed_local"' in out
        )
        assert out.endswith("hello-origin\n")
        blocked, allowed = decisions(connected, "p1")
        assert (blocked["port"], blocked["decision"]) == (server_port, "deny")
        assert (allowed["port"], allowed["decision"]) == (origin, "allow")


@needs_curl
@pytest.mark.parametrize("unspecified", ["0.0.0.0", "[::ffff:0.0.0.0]"])
async def test_the_servers_own_port_is_out_of_reach_through_the_unspecified_address(
    unspecified: str,
) -> None:
    """Linux connects ``0.0.0.0`` to loopback: with it allowed exactly, the proxy still does
    not carry a child to the server's own port on 127.0.0.1."""
    async with running_server() as (_, url), Client.connect(url) as connected:
        own_ports.forget()
        await connected.initialize()
        server_port = int(url.rsplit(":", 1)[1])
        script = f"curl -s -i http://{unspecified}:{server_port}/"
        host = unspecified.strip("[]")
        out = await run_proxied(connected, "p1", script, {host: "allow"})
        assert "x-proxy-error: blocked-by-allowlist" in out, out
        assert '"reason":"not_allowed_local"' in out
        [blocked] = decisions(connected, "p1")
        assert (blocked["port"], blocked["decision"]) == (server_port, "deny")


DATAGRAM_PAIR = """
import errno, socket, sys
try:
    pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_RAW)  # the kernel makes it DGRAM
    pair[0].sendmsg([b"escaped"], [], 0, sys.argv[1])
    print("SENT")
except OSError as exc:
    print(errno.errorcode.get(exc.errno, exc.errno))
"""


async def test_a_proxied_child_sends_no_datagram_to_a_unix_socket_outside(client: Client) -> None:
    """Its Unix sockets are stream pairs only: a ``SOCK_RAW`` pair, which Linux makes a
    datagram pair whose ``sendmsg`` may name any datagram socket by path, is refused."""
    place = tempfile.mkdtemp(prefix="np-dgram-")
    try:
        path = os.path.join(place, "dgram.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
            receiver.bind(path)
            receiver.setblocking(False)
            argv = ["python3", "-c", DATAGRAM_PAIR, path]
            params = {"networkProxy": network_proxy({}), "enforceManagedNetwork": True}
            await client.start("p1", argv, env=PATH_ENV, **params)
            output = (await client.wait_closed("p1")).data().decode()
            with pytest.raises(BlockingIOError):
                receiver.recv(64)
            free = await client.run("free", argv, env=PATH_ENV)  # reachable without the filter
            assert free.data() == b"SENT\n"
    finally:
        shutil.rmtree(place, ignore_errors=True)
    assert output == "EPERM\n", output


def write_profile(home: str, text: str) -> None:
    with open(os.path.join(home, ".bash_profile"), "w", encoding="utf-8") as profile:
        profile.write(text)


async def test_a_shell_snapshot_capture_runs_behind_the_managed_network_too(
    client: Client,
) -> None:
    """The login profile the capture sources is the client's (through ``HOME``): with a
    managed network it gets no more network than the command, here none; without one it
    reaches the listener, so the profile did try."""
    home = tempfile.mkdtemp(prefix="np-snap-")
    try:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            listener.setblocking(False)
            port = listener.getsockname()[1]
            profile = f"(exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null\nexport MARK=1\n"
            write_profile(home, profile)
            env = {**PATH_ENV, "HOME": home}
            argv = ["/bin/bash", "-lc", "echo ran"]

            def snapshot(scope: str) -> dict[str, Any]:
                return {"scopeId": scope, "shell": {"name": "bash", "path": "/bin/bash"}}

            params = {"networkProxy": network_proxy({}), "enforceManagedNetwork": True}
            await client.start("p1", argv, env=env, shellSnapshot=snapshot("managed"), **params)
            assert (await client.wait_closed("p1")).data() == b"ran\n"
            with pytest.raises(BlockingIOError):
                listener.accept()
            await client.run("free", argv, env=env, shellSnapshot=snapshot("free"))
            listener.setblocking(True)
            listener.settimeout(10)
            listener.accept()[0].close()
    finally:
        shutil.rmtree(home, ignore_errors=True)


UDP_ECHO = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
while True:
    data, peer = s.recvfrom(65535)
    s.sendto(b"echo:" + data, peer)
"""

SOCKS_UDP_CLIENT = r"""
import os, socket, struct, sys
host, port = os.environ["ALL_PROXY"].rsplit("/", 1)[1].rsplit(":", 1)
control = socket.create_connection((host, int(port)))
control.sendall(b"\x05\x01\x00")
assert control.recv(2) == b"\x05\x00"
control.sendall(b"\x05\x03\x00\x01" + bytes(4) + bytes(2))  # UDP ASSOCIATE from anywhere
reply = control.recv(10)
print("associate", reply[1])
if reply[1] != 0:
    sys.exit(0)
relay = (socket.inet_ntoa(reply[4:8]), struct.unpack("!H", reply[8:10])[0])
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.settimeout(2)
for target, text in ((sys.argv[1], b"hi"), ("denied.test", b"no")):
    name = target.encode()
    port = int(sys.argv[2])
    udp.sendto(b"\x00\x00\x00\x03" + bytes([len(name)]) + name + struct.pack("!H", port) + text, relay)
    try:
        data, _ = udp.recvfrom(65535)
        print(target, data[10:].decode())
    except TimeoutError:
        print(target, "no answer")
"""


@pytest.fixture
def udp_echo() -> Iterator[int]:
    with python_server(UDP_ECHO) as port:
        yield port


async def test_socks5_udp_associate_relays_allowed_datagrams(client: Client, udp_echo: int) -> None:
    domains = {"127.0.0.1": "allow", "denied.test": "deny"}
    argv = f"python3 -c '{SOCKS_UDP_CLIENT}' 127.0.0.1 {udp_echo}"
    out = await run_proxied(client, "p1", argv, domains)
    assert out.splitlines() == ["associate 0", "127.0.0.1 echo:hi", "denied.test no answer"]
    allowed, denied = decisions(client, "p1")
    assert (allowed["protocol"], allowed["decision"], allowed["port"]) == (
        "socks5_udp",
        "allow",
        udp_echo,
    )
    assert "method" not in allowed and allowed["client"].startswith("127.0.0.1:")
    assert (denied["host"], denied["reason"]) == ("denied.test", "denied")


async def test_socks5_udp_is_refused_when_not_asked_for_and_in_limited_mode(client: Client) -> None:
    argv = f"python3 -c '{SOCKS_UDP_CLIENT}' 127.0.0.1 9"
    off = await run_proxied(client, "p1", argv, {"127.0.0.1": "allow"}, enableSocks5Udp=False)
    assert off.strip() == "associate 7"  # command not supported
    limited = await run_proxied(client, "p2", argv, {"127.0.0.1": "allow"}, mode="limited")
    assert limited.strip() == "associate 2"  # not allowed by ruleset


@needs_curl
async def test_expect_100_continue_is_answered_by_the_proxy(client: Client, origin: int) -> None:
    """curl asks before sending a large body; the proxy says go at once (the origin's own
    answer only comes back once the body is through)."""
    script = f"head -c 5000 /dev/zero | tr '\\0' x | curl -s -i -H 'Expect: 100-continue' --data-binary @- http://127.0.0.1:{origin}/"
    out = await run_proxied(client, "p1", script, {"127.0.0.1": "allow"})
    assert out.startswith("HTTP/1.1 100 Continue")
    assert out.endswith("posted:" + "x" * 5000)


async def test_a_child_cannot_hold_more_than_its_share_of_connections(client: Client) -> None:
    from exec_server.network.proxy import MAX_CONNECTIONS

    script = f"""python3 - <<'PY'
import os, socket, time
port = int(os.environ["HTTP_PROXY"].rsplit(":", 1)[1])
held = [socket.create_connection(("127.0.0.1", port)) for _ in range({MAX_CONNECTIONS + 20})]
time.sleep(0.5)
closed = 0
for s in held:
    s.setblocking(False)
    try:
        closed += s.recv(1) == b""
    except BlockingIOError:
        pass
print("closed", closed)
PY"""
    out = await run_proxied(client, "p1", script, {"127.0.0.1": "allow"})
    assert out.strip() == "closed 20"


async def test_a_terminal_child_works_behind_its_proxy(client: Client) -> None:
    params = {"networkProxy": network_proxy({}), "tty": True}
    await client.start(
        "p1",
        ["sh", "-c", 'tty >/dev/null && echo "tty ok $CODEX_NETWORK_PROXY_ACTIVE"'],
        env=PATH_ENV,
        **params,
    )
    events = await client.wait_closed("p1")
    assert b"tty ok 1" in events.data()
    assert events.exited is not None and events.exited["exitCode"] == 0


async def test_a_proxied_child_reaches_no_unix_socket_outside(
    client: Client, origin: int, tmp_path: Path
) -> None:
    """Its namespace leaves only the proxy on IP; a Unix socket outside (an ssh-agent, a
    docker.sock, a listener of this test's own) is refused too: the entry loads the seccomp
    filter before the command, which can make no AF_UNIX socket() to connect with, while
    stream socket pairs still work."""
    path = tmp_path / "outside.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    try:
        script = f"""
python3 - <<'PY'
import socket
try:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect({str(path)!r})
    print("unix=connected")
except OSError as error:
    print("unix=refused", error.errno)
a, b = socket.socketpair()
a.sendall(b"pair")
print("pair=" + b.recv(4).decode())
PY
"""
        out = await run_proxied(client, "p1", script, {"127.0.0.1": "allow"})
    finally:
        listener.close()
    assert "unix=refused 1" in out and "unix=connected" not in out  # EPERM
    assert "pair=pair" in out


SPRAYER = """
import os, socket, sys
port = int(os.environ["HTTP_PROXY"].rsplit(":", 1)[1])
count = sys.argv[1]
n = 0
while True:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET http://blocked.test:%d/ HTTP/1.1\\r\\nHost: blocked.test\\r\\n\\r\\n" % (n % 60000 + 1))
        while s.recv(4096):
            pass
    n += 1
    if n % 10 == 0:
        with open(count + ".new", "w") as f:
            f.write(str(n))
        os.replace(count + ".new", count)
"""


async def test_audit_notifications_wait_for_a_client_that_reads_none(tmp_path: Path) -> None:
    """A child making blocked requests as fast as it can, for a client that has stopped
    reading: each verdict's ``network/policyDecision`` waits for room in the connection's
    outbound queue, so the child's requests stall instead of the server queueing their
    notifications without bound; once the client reads again they go on."""
    from websockets.asyncio.client import connect as ws_connect

    from exec_server.config import Limits
    from exec_server.server import Server
    from exec_server.transport.websocket import serve_websocket

    count = tmp_path / "count"

    def progress() -> int:
        return int(count.read_text()) if count.exists() else 0

    server = Server(Limits(outbound_queue_bytes=16 * 1024))
    listener = await serve_websocket(server, "127.0.0.1", 0)
    # Small kernel buffers on both ends (accepted sockets inherit the listener's), so the
    # server's own queue is what fills up.
    listener.sockets[0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    port = listener.sockets[0].getsockname()[1]
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    try:
        async with ws_connect(f"ws://127.0.0.1:{port}", sock=sock, max_queue=1) as ws:
            start = {
                "processId": "p1",
                "argv": ["python3", "-c", SPRAYER, str(count)],
                "cwd": str(tmp_path),
                "env": PATH_ENV,
                "tty": False,
                "networkProxy": network_proxy({"127.0.0.1": "allow"}),
            }
            for message in (
                {"id": 1, "method": "initialize", "params": {"clientName": "t"}},
                {"method": "initialized", "params": {}},
                {"id": 2, "method": "process/start", "params": start},
            ):
                await ws.send(json.dumps(message))
            while json.loads(await ws.recv()).get("id") != 2:
                pass
            # Not reading now: once the queues are full, the child's requests must stall.
            assert await wait_until(lambda: progress() >= 20, timeout=20)
            stalled = -1
            while progress() != stalled and progress() < 5000:
                stalled = progress()
                await asyncio.sleep(0.5)
            assert progress() == stalled < 5000, "the child went on while nobody read"
            while progress() < stalled + 20:  # reading again lets it go on
                async with asyncio.timeout(20):
                    await ws.recv()
    finally:
        sock.close()
        listener.close()
        await listener.wait_closed()
        await server.shutdown()
