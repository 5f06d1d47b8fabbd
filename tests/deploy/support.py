"""What the container tests share: whether they can run here, podman's settings, the image
they build once per run, and a client driven inside another network namespace."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("EXEC_SERVER_TEST_IMAGE", "localhost/exec-server:tests")
TEST_IMAGE = f"{IMAGE}-pytest"
BUILD_TIMEOUT = 900.0
"""A first build (the Debian base, then the image) takes about 3 minutes on 2 vCPUs."""


def why_not_here() -> str | None:
    """Why the container tests cannot run on this machine, or None when they can (CI: root
    on Debian, where deploy/image.sh installs podman & co. itself)."""
    if os.environ.get("EXEC_SERVER_SKIP_CONTAINER_TESTS"):
        return "EXEC_SERVER_SKIP_CONTAINER_TESTS is set"
    if not sys.platform.startswith("linux"):
        return "containers need Linux"
    if os.geteuid() != 0:
        return "the container tests run podman as root, as deploy/image.sh does (run as root)"
    if shutil.which("podman") is None and shutil.which("apt-get") is None:
        return "podman is not installed and apt-get cannot install it"
    return None


@functools.cache
def podman_env() -> dict[str, str]:
    """The environment for podman: our own containers.conf (deploy/image.sh conf)."""
    conf = subprocess.run(
        [str(ROOT / "deploy" / "image.sh"), "conf"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return {**os.environ, "CONTAINERS_CONF": conf}


def podman(*args: str, check: bool = True, timeout: float = 120.0) -> str:
    """Run podman with our settings; its stdout."""
    done = subprocess.run(
        ["podman", *args],
        capture_output=True,
        text=True,
        env=podman_env(),
        timeout=timeout,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done.stdout


def build(target: str) -> None:
    """``deploy/image.sh build|test`` for :data:`IMAGE`; fails the test with its output."""
    done = subprocess.run(
        [str(ROOT / "deploy" / "image.sh"), target],
        capture_output=True,
        text=True,
        env={**os.environ, "IMAGE": IMAGE, "TEST_IMAGE": TEST_IMAGE},
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"deploy/image.sh {target} failed:\n{done.stderr[-4000:]}")


@functools.cache
def seccomp_profile() -> Path:
    """The profile deploy/seccomp/make_profile.py makes from this machine's podman default
    (``deploy/image.sh seccomp``, as ``make image`` does), written once per run."""
    done = subprocess.run(
        [str(ROOT / "deploy" / "image.sh"), "seccomp"],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "SECCOMP_PROFILE": str(ROOT / "build/seccomp/exec-server/bubblewrap.json"),
        },
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"deploy/image.sh seccomp failed:\n{done.stderr[-4000:]}")
    return Path(done.stdout.strip())


def drive_in(pid: int, url: str, token: str, *requests: dict[str, Any]) -> list[Any]:
    """Run tests/deploy/drive.py in the network namespace of process ``pid`` (a pod's or a
    task's), so the client reaches the executor on that namespace's own loopback."""
    done = subprocess.run(
        ["nsenter", "-t", str(pid), "-n", sys.executable, "-m", "tests.deploy.drive", url],
        input=json.dumps({"token": token, "requests": list(requests)}),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    answers: list[Any] = json.loads(done.stdout)
    return answers
