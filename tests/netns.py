"""Network namespaces for tests that need several hosts without a cluster.

A hub namespace holds a bridge; each "host" is a namespace joined to it by a veth pair, with
an address of a private test range that exists only inside these namespaces (nothing is
added to the machine's own network). Everything is named with the ``ops-`` prefix and
removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

SUBNET = "10.231.7"
"""The private test range: 10.231.7.0/24, only inside the namespaces made here."""
HUB = "ops-hub"


@dataclass(frozen=True)
class Host:
    namespace: str
    address: str


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _remove(names: list[str]) -> None:
    for name in names:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=30)


def skip_unless_possible() -> None:
    """Skip (saying why) where namespaces cannot be made: not root, or no ``ip``."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("the `ip` command (Debian package iproute2) is not installed")
    probe = subprocess.run(
        ["ip", "netns", "add", "ops-probe"], capture_output=True, text=True, timeout=30
    )
    if probe.returncode != 0:
        pytest.skip(f"`ip netns add` is not possible here: {probe.stderr.strip()}")
    _remove(["ops-probe"])


@contextlib.contextmanager
def hosts(count: int) -> Iterator[tuple[Host, list[Host]]]:
    """A hub (address .1, where a test's client runs) and ``count`` hosts (.11, .12, ...)
    on one bridge."""
    skip_unless_possible()
    names = [HUB, *(f"ops-h{i}" for i in range(1, count + 1))]
    _remove(names)  # left over from an interrupted run
    try:
        for name in names:
            _ip("netns", "add", name)
            _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", HUB, "link", "add", "br0", "type", "bridge")
        _ip("-n", HUB, "addr", "add", f"{SUBNET}.1/24", "dev", "br0")
        _ip("-n", HUB, "link", "set", "br0", "up")
        members = []
        for i, name in enumerate(names[1:], start=1):
            address = f"{SUBNET}.{10 + i}"
            _ip("-n", HUB, "link", "add", f"hv{i}", "type", "veth", "peer", "name", "eth0",
                "netns", name)  # fmt: skip
            _ip("-n", HUB, "link", "set", f"hv{i}", "master", "br0", "up")
            _ip("-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", name, "link", "set", "eth0", "up")
            members.append(Host(name, address))
        yield Host(HUB, f"{SUBNET}.1"), members
    finally:
        _remove(names)
