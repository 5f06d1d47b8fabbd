"""deploy/swarm/stack.yml under Docker Swarm, run as an operator would, on one node: a private
dockerd (Debian's docker.io) that touches no iptables, three replicas with the token as a
secret, work on each, one container killed: its process is reported lost, the engine starts
a replacement, and new work runs on the survivors and the replacement.

On one machine the tasks share the host's network, each on its own loopback port (its slot),
instead of the routing mesh, which needs iptables; the stack file is otherwise as shipped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exec_server.client import ExecServerError, Pool, connect, connect_stdio

from .support import IMAGE, ROOT, podman_env, seccomp_profile

pytestmark = [pytest.mark.container, pytest.mark.timeout(900)]

DOCKER = "/usr/bin/docker"
"""Debian's client: /usr/local/bin/docker on these machines is a newer static client."""
STACK = "exec-server-tests"
SERVICE = f"{STACK}_exec-server"
PRIVATE = "exec-server-tests-dockerd"
REPLICAS = 3


def docker(*args: str, check: bool = True, timeout: float = 120.0) -> str:
    env = {**os.environ, "DOCKER_HOST": f"unix:///run/{PRIVATE}.sock"}
    done = subprocess.run(
        [DOCKER, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done.stdout


def start_daemon(profile: Path | None) -> subprocess.Popen[bytes]:
    """dockerd of our own: its own data and exec roots and socket, no iptables or bridge
    (nothing on the host's firewall), runc with limits it can set, and the daemon-wide
    settings a sandbox needs (Swarm services take no seccomp option in 20.10): the seccomp
    ``profile``, or Docker's built-in default when None."""
    limits = ["--default-ulimit=nofile=20000:20000", "--default-ulimit=nproc=32768:32768"]
    command = [
        "dockerd", f"--data-root=/var/lib/{PRIVATE}", f"--exec-root=/run/{PRIVATE}",
        f"--host=unix:///run/{PRIVATE}.sock", f"--pidfile=/run/{PRIVATE}.pid",
        "--iptables=false", "--ip6tables=false", "--ip-masq=false", "--bridge=none",
        f"--containerd-namespace={PRIVATE}", f"--containerd-plugins-namespace={PRIVATE}-plugins",
        "--no-new-privileges", *limits,
    ]  # fmt: skip
    command += [] if profile is None else [f"--seccomp-profile={profile}"]
    log = open(f"/tmp/{PRIVATE}.log", "wb")  # noqa: SIM115 (the daemon's, closed with it)
    daemon = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 60
    while not docker("version", "--format={{.Server.Version}}", check=False).strip():
        assert daemon.poll() is None, Path(f"/tmp/{PRIVATE}.log").read_text()[-2000:]
        assert time.monotonic() < deadline, "dockerd did not answer"
        time.sleep(0.2)
    return daemon


def stop_daemon(daemon: subprocess.Popen[bytes]) -> None:
    daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait()


def load_image(image: str) -> None:
    """The image from podman's storage into our dockerd's."""
    save = subprocess.Popen(
        ["podman", "save", "--format=docker-archive", image],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=podman_env(),
    )
    env = {**os.environ, "DOCKER_HOST": f"unix:///run/{PRIVATE}.sock"}
    subprocess.run(
        [DOCKER, "load", "-q"], stdin=save.stdout, env=env, check=True, capture_output=True
    )
    save.wait()


def free_base(count: int) -> int:
    """A port p with p+1..p+count free on the loopback (one per slot)."""
    for _ in range(50):
        base = 20000 + secrets.randbelow(30000)
        try:
            for port in range(base + 1, base + count + 1):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError("no free ports")


def one_node_stack(base: int, secret: str) -> dict[str, Any]:
    """deploy/swarm/stack.yml for one machine: the host's network, slot N listening on
    127.0.0.1:base+N (its healthcheck asking there)."""
    stack: dict[str, Any] = yaml.safe_load((ROOT / "deploy/swarm/stack.yml").read_text())
    service = stack["services"]["exec-server"]
    service["image"] = IMAGE
    service.pop("ports")
    service["networks"] = ["host"]
    stack["networks"] = {"host": {"external": True, "name": "host"}}
    service["environment"] = {"SLOT": "{{.Task.Slot}}", "BASE": str(base)}
    # $$: a literal $ in a compose file (the shell in the container expands it).
    listen = 'exec exec-server --listen "ws://127.0.0.1:$$((BASE + SLOT))" "$$@"'
    service["entrypoint"] = ["sh", "-c", listen, "exec-server"]
    service["command"] = [a for a in service["command"] if not a.startswith("--listen")]
    probe = (
        "import sys, urllib.request; sys.exit(urllib.request.urlopen(sys.argv[1]).status != 200)"
    )
    url = "http://127.0.0.1:$$((BASE + SLOT))/healthz"
    service["healthcheck"]["test"] = ["CMD-SHELL", f'python3 -c "{probe}" "{url}"']
    stack["secrets"]["exec-server-token"]["name"] = secret
    return stack


@pytest.fixture(scope="module")
def swarm(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[str], str]]:
    """The stack deployed and all replicas healthy; yields (one URL per slot, token)."""
    subprocess.run([str(ROOT / "deploy/image.sh"), "docker"], check=True, capture_output=True)
    daemon = start_daemon(seccomp_profile())
    try:
        if docker("info", "--format={{.Swarm.LocalNodeState}}").strip() != "active":
            docker("swarm", "init", "--advertise-addr=127.0.0.1")
        load_image(image)
        token, secret = secrets.token_hex(32), f"exec-server-token-{secrets.token_hex(4)}"
        work = tmp_path_factory.mktemp("swarm")
        (work / "token").write_text(token)
        docker("secret", "create", secret, str(work / "token"))
        base = free_base(REPLICAS)
        (work / "stack.yml").write_text(yaml.safe_dump(one_node_stack(base, secret)))
        docker("stack", "deploy", f"--compose-file={work / 'stack.yml'}", STACK)
        healthy(REPLICAS)
        yield [f"ws://127.0.0.1:{base + slot}" for slot in range(1, REPLICAS + 1)], token
    finally:
        docker("stack", "rm", STACK, check=False)
        deadline = time.monotonic() + 60
        while docker("ps", "-aq", check=False).strip() and time.monotonic() < deadline:
            time.sleep(0.5)
        docker("secret", "rm", *docker("secret", "ls", "-q", check=False).split(), check=False)
        docker("swarm", "leave", "--force", check=False)
        stop_daemon(daemon)


@pytest.fixture
def docker_default(image: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Our dockerd with Docker's built-in seccomp profile (its runtime default), the image
    loaded; DOCKER_HOST names it for the test. Stopped before the Swarm's daemon starts."""
    subprocess.run([str(ROOT / "deploy/image.sh"), "docker"], check=True, capture_output=True)
    daemon = start_daemon(None)
    try:
        load_image(image)
        monkeypatch.setenv("DOCKER_HOST", f"unix:///run/{PRIVATE}.sock")
        yield
    finally:
        stop_daemon(daemon)


async def sandbox_under_docker(*options: str) -> Any:
    """environment/info's sandbox block of the image run by ``docker run`` over stdio, with
    no capabilities, no-new-privileges and ``options``; a shared /proc accepted (Docker masks
    /proc), so what is left to decide is whether bubblewrap can build its namespaces."""
    argv = [DOCKER, "run", "-i", "--rm", "--network=none", "--cap-drop=ALL"]
    argv += ["--security-opt=no-new-privileges", *options, IMAGE]
    async with connect_stdio([*argv, "--listen=stdio", "--sandbox-shared-proc"]) as client:
        return (await client.request("environment/info", {}))["sandbox"]


async def test_dockers_default_refuses_bubblewrap_the_generated_profile_allows_it(
    docker_default: None,
) -> None:
    default = await sandbox_under_docker()
    assert default["available"] is False
    assert "namespace" in default["reason"], default["reason"]
    ours = await sandbox_under_docker(f"--security-opt=seccomp={seccomp_profile()}")
    assert ours["available"] is True, ours["reason"]
    assert ours["freshProc"] is False and ours["seccomp"] is True


def containers() -> dict[int, str]:
    """Slot to container id of the running tasks."""
    found = {}
    for line in docker("ps", "--format={{.ID}} {{.Names}}").splitlines():
        ident, name = line.split()
        found[int(name.split(".")[1])] = ident
    return found


def healthy(count: int, timeout: float = 90.0) -> list[str]:
    """Wait until ``count`` containers are healthy; their ids."""
    deadline = time.monotonic() + timeout
    while True:
        ids = docker("ps", "--filter=health=healthy", "-q").split()
        if len(ids) >= count:
            return ids
        assert time.monotonic() < deadline, docker("service", "ps", "--no-trunc", SERVICE)
        time.sleep(0.5)


async def slot_of(url: str, token: str) -> str:
    """The task slot of the executor at ``url``, as a command run there sees it."""
    async with connect(url, token=token, reconnect=False) as client:
        done = await client.run(["sh", "-c", "echo $SLOT"], check=True)
    return done.stdout.decode().strip()


async def test_three_replicas_a_kill_and_the_replacement(swarm: tuple[list[str], str]) -> None:
    urls, token = swarm
    before = containers()
    assert [await slot_of(url, token) for url in urls] == ["1", "2", "3"]
    victim = 1
    async with connect(urls[victim - 1], token=token, reconnect=False) as client:
        process = await client.start(["sleep", "60"])
        docker("kill", before[victim])
        with pytest.raises(ExecServerError):  # reported lost, never silently gone
            await asyncio.wait_for(process.wait(), 30)
    healthy(REPLICAS)
    after = containers()
    assert after[victim] != before[victim]  # the engine started a replacement
    assert {after[s] for s in after if s != victim} == {before[s] for s in before if s != victim}
    # the survivors and the replacement all take new work
    assert [await slot_of(url, token) for url in urls] == ["1", "2", "3"]


async def test_a_pool_carries_on_over_a_kill(swarm: tuple[list[str], str]) -> None:
    urls, token = swarm
    async with Pool(urls, token=token, reconnect_timeout=1.0) as pool:
        processes = [await pool.start(["sleep", "60"]) for _ in range(REPLICAS)]
        places = {pool.executor_of(p) for p in processes}
        assert places == set(urls)
        victim = urls.index(pool.executor_of(processes[0])) + 1
        docker("kill", containers()[victim])
        with pytest.raises(ExecServerError):
            await asyncio.wait_for(processes[0].wait(), 30)
        done = [await pool.run(["true"]) for _ in range(2 * REPLICAS)]
        assert all(d.returncode == 0 for d in done)  # on the survivors meanwhile
        healthy(REPLICAS)  # the engine's replacement
        await pool.refresh()
        async with contextlib.AsyncExitStack() as stack:
            sessions = [await stack.enter_async_context(pool.session()) for _ in range(REPLICAS)]
            runs = [await session.run(["sh", "-c", "echo $SLOT"]) for session in sessions]
        assert {run.stdout.decode().strip() for run in runs} == {"1", "2", "3"}
