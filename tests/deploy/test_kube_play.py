"""deploy/kubernetes/ under ``podman kube play`` (4.3, as deploy/podman/play.py adapts it):
three replicas of the Deployment all run, and a command goes through each with the client."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import ROOT, drive_in, podman, podman_env, seccomp_profile

pytestmark = [pytest.mark.container, pytest.mark.timeout(900)]

REPLICAS = 3


def ready_pids(names: list[str], timeout: float = 60.0) -> dict[str, int]:
    """Each container's process id once every one of them answers /readyz inside its pod
    (podman 4.3 ignores readinessProbe: this is the same check, run by hand)."""
    check = "import urllib.request as u; u.urlopen('http://127.0.0.1:8765/readyz', timeout=1)"
    deadline = time.monotonic() + timeout
    waiting = list(names)
    while waiting:
        name = waiting[0]
        done = subprocess.run(
            ["podman", "exec", name, "python3", "-c", check],
            capture_output=True,
            env=podman_env(),
            check=False,
        )
        if done.returncode == 0:
            waiting.pop(0)
        else:
            assert time.monotonic() < deadline, f"{name} never became ready"
            time.sleep(0.2)
    pids = {}
    for name in names:
        pids[name] = int(podman("inspect", "--format={{.State.Pid}}", name))
    return pids


@pytest.fixture
def played(image: str, tmp_path: Path) -> Iterator[tuple[dict[str, int], str]]:
    """The Deployment played with the token; yields ({container: pid}, token)."""
    token = secrets.token_hex(32)
    (tmp_path / "token").write_text(token)
    render = ["--token-file", str(tmp_path / "token"), f"--image={image}"]
    render += [f"--replicas={REPLICAS}"]
    stream = subprocess.run(
        [sys.executable, str(ROOT / "deploy/podman/play.py"), *render],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    kube = tmp_path / "kube.yaml"
    kube.write_text(stream)
    # the generated profile's root: localhostProfile exec-server/bubblewrap.json is found there
    profiles = f"--seccomp-profile-root={seccomp_profile().parents[1]}"
    podman("secret", "rm", "exec-server-token", check=False)  # a previous run's, if any
    try:
        podman("kube", "play", "--network=none", profiles, str(kube))
        names = [f"exec-server-pod-{i}-exec-server" for i in range(REPLICAS)]
        yield ready_pids(names), token
    finally:
        podman("kube", "down", str(kube), check=False)
        podman("secret", "rm", "exec-server-token", check=False)  # kube down leaves it


def test_three_replicas_each_run_a_command(played: tuple[dict[str, int], str]) -> None:
    pids, token = played
    assert len(pids) == REPLICAS
    hosts = set()
    for name, pid in pids.items():
        run, info = drive_in(
            pid,
            "ws://127.0.0.1:8765",
            token,
            {"run": ["sh", "-c", "id -u; hostname"]},
            {"info": True},
        )
        uid, host = run["stdout"].split()
        assert run["code"] == 0 and uid == "10001", name
        hosts.add(host)
        # podman 4.3 ignores procMount: Unmasked, so sandboxes are refused there (README).
        assert info["sandbox"]["freshProc"] is False
        assert info["sandbox"]["available"] is False
    assert hosts == {f"exec-server-pod-{i}" for i in range(REPLICAS)}
