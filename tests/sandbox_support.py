"""What the sandbox tests share: codex's workspace-write profile and a directory outside it."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from exec_server.config import Guards
from exec_server.paths import to_file_uri
from exec_server.sandbox.policy import load_confinement

from .support import Client, running_server

ORIGINAL = "original\n"
"""What the file outside the workspace holds, and must still hold after every escape."""


def special(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": "special", "value": {"kind": kind, **extra}}


def workspace_write(root: str, *, network: str = "restricted") -> dict[str, Any]:
    """The sandbox param codex 0.169 sends for ``codex exec -s workspace-write`` with
    ``root`` (a ``file://`` URI) as its workspace, fs/* extras included."""
    entries: list[dict[str, Any]] = [
        {"path": special("root"), "access": "read"},
        {"path": special("project_roots"), "access": "write"},
        {"path": special("slash_tmp"), "access": "write"},
        {"path": special("tmpdir"), "access": "write"},
    ]
    entries += [
        {
            "path": special("project_roots", subpath=name),
            "access": "read",
            "missing_path_behavior": "skip",
        }
        for name in (".git", ".agents", ".codex", ".aws")
    ]
    return {
        "permissions": {
            "type": "managed",
            "file_system": {"type": "restricted", "entries": entries},
            "network": network,
        },
        "cwd": root,
        "policyContext": {"cwd": root, "workspaceRoots": [root]},
        "workspaceRoots": [root],
        "userHomeDir": "file:///home/dev",
        "windowsSandboxLevel": "disabled",
        "useLegacyLandlock": False,
    }


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside every writable root, holding ``target.txt``."""
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "target.txt").write_text(ORIGINAL)
    return directory


def local_workspace_write(root: Path, *, network: str = "restricted") -> dict[str, Any]:
    """:func:`workspace_write` for the local folder ``root``."""
    return workspace_write(to_file_uri(str(root)), network=network)


def workspace_confinement(work: Path) -> dict[str, Any]:
    """codex's workspace-write profile as an operator's ``--confine`` file names it, with
    ``work`` as the workspace."""
    return {**local_workspace_write(work), "workspaceRoots": [str(work)]}


@contextlib.contextmanager
def home_places(folder: str) -> Iterator[tuple[Path, Path]]:
    """A workspace and an outside directory under ``~/.cache/<folder>/<random>``, neither
    under /tmp (which the workspace-write profile opens); removed at the end."""
    base = Path.home() / ".cache" / folder / os.urandom(4).hex()
    work, outside = base / "work", base / "outside"
    work.mkdir(parents=True)
    outside.mkdir()
    yield work, outside
    subprocess.run(["rm", "-rf", str(base)], check=False)


def confinement(profile: dict[str, Any], directory: Path) -> Guards:
    """Guards confining every process to ``profile``, read from ``directory/confine.json`` as
    ``--confine`` reads it."""
    path = directory / "confine.json"
    path.write_text(json.dumps(profile))
    return Guards(confinement=load_confinement(str(path)))


@contextlib.asynccontextmanager
async def confined_by_operator(profile: dict[str, Any], directory: Path) -> AsyncIterator[Client]:
    """An initialized client of a server whose operator confines every process to
    ``profile`` (see :func:`confinement`)."""
    guards = confinement(profile, directory)
    async with running_server(guards=guards) as (_, url), Client.connect(url) as client:
        await client.initialize()
        yield client
