"""Profiles that make ``/`` writable (codex 0.169's ``linuxRootWritePreservesDevices`` and
``linuxApprovedRootWritePreservesRestrictions``): the standard devices keep working, the
protected metadata (``.git``, ``.agents``, ``.codex``) under writable roots stays read-only,
denied paths stay denied, and an approved escalation (``sandboxOverride:
"escalatedSandboxWithRestrictions"``) is taken with its deny rules kept.

Each profile runs the same probe script on ours and on the reference; the answers must be
equal, line for line.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exec_server.sandbox.bwrap import support

from .codex.reference import reference_client
from .support import PATH_ENV, Client, RpcFailure

pytestmark = pytest.mark.skipif(
    not support().usable, reason=f"bubblewrap cannot run here: {support().reason}"
)


@pytest.fixture
def places() -> Iterator[tuple[Path, Path, Path]]:
    """A workspace (with ``.git`` and ``.agents``, no ``.codex``), an outside directory and
    a secret directory, none under /tmp."""
    base = Path.home() / ".cache" / "exec-server-tests" / os.urandom(4).hex()
    work, outside, secret = base / "work", base / "outside", base / "secret"
    for directory in (work / ".git", work / ".agents", outside, secret):
        directory.mkdir(parents=True)
    (secret / "file").write_text("secret")
    yield work, outside, secret
    subprocess.run(["rm", "-rf", str(base)], check=False)


def uri(path: Path | str) -> str:
    return f"file://{path}"


def special(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": "special", "value": {"kind": kind, **extra}}


def entry(path: dict[str, Any], access: str, **extra: Any) -> dict[str, Any]:
    return {"path": path, "access": access, **extra}


def profile(work: Path, entries: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "permissions": {
            "type": "managed",
            "file_system": {"type": "restricted", "entries": entries},
            "network": "restricted",
        },
        "cwd": uri(work),
        "workspaceRoots": [uri(work)],
        "windowsSandboxLevel": "disabled",
        "useLegacyLandlock": False,
        **extra,
    }


def metadata(access: str) -> list[dict[str, Any]]:
    return [
        entry(special("project_roots", subpath=name), access, missing_path_behavior="skip")
        for name in (".git", ".agents", ".codex", ".aws")
    ]


def profiles(work: Path, secret: Path) -> dict[str, dict[str, Any]]:
    root_write = entry(special("root"), "write")
    project = entry(special("project_roots"), "write")
    deny = entry({"type": "path", "path": uri(secret)}, "none")
    root_metadata = [
        entry({"type": "path", "path": f"file:///{name}"}, "write")
        for name in (".git", ".agents", ".codex", ".aws")
    ]
    return {
        "root_write": profile(work, [root_write]),
        "root_write_workspace": profile(work, [root_write, project, *metadata("read")]),
        "root_write_denied": profile(work, [root_write, project, *metadata("read"), deny]),
        "approved_escalation": profile(
            work,
            [root_write, project, *metadata("read"), deny, *root_metadata],
            sandboxOverride="escalatedSandboxWithRestrictions",
        ),
    }


def probe_script(work: Path, outside: Path, secret: Path, tty: bool) -> str:
    checks = {
        "devnull": "echo x > /dev/null",
        "zero": '[ "$(head -c4 /dev/zero | wc -c)" = 4 ]',
        "urandom": '[ "$(head -c4 /dev/urandom | wc -c)" = 4 ]',
        "random": '[ "$(head -c4 /dev/random | wc -c)" = 4 ]',
        "full": "! echo x 2>/dev/null > /dev/full",
        "work": f"touch {work}/made",
        "outside": f"touch {outside}/made",
        "git": f"touch {work}/.git/made",
        "agents": f"touch {work}/.agents/made",
        "codex": f"mkdir {work}/.codex",
        "secret_read": f"cat {secret}/file",
        "secret_write": f"touch {secret}/made",
        **({"tty": "echo x > /dev/tty"} if tty else {}),
    }
    lines = [
        f"if ( {check} ) >/dev/null 2>&1; then echo {name}=yes; else echo {name}=no; fi"
        for name, check in checks.items()
    ]
    return "\n".join(lines)


async def outcome(client: Client, process_id: str, argv: list[str], **params: Any) -> Any:
    try:
        started = await client.start(process_id, argv, env=PATH_ENV, **params)
    except RpcFailure as failure:
        return [failure.code, failure.message]
    events = await client.wait_closed(process_id)
    text = events.data().decode(errors="replace").replace("\r\n", "\n")
    # only the probe's lines: the reference's bash may complain about a ~/.bashrc it sources
    return [started["sandboxType"], sorted(w for w in text.split() if w.endswith(("=yes", "=no")))]


def clear(path: Path) -> None:
    """Undo what a probe made (a file, or the ``.codex`` directory)."""
    if path.is_dir():
        path.rmdir()
    else:
        path.unlink(missing_ok=True)


async def answers(client: Client, work: Path, outside: Path, secret: Path) -> dict[str, Any]:
    found = {}
    for name, sandbox in profiles(work, secret).items():
        for tty in (False, True):
            script = probe_script(work, outside, secret, tty)
            for made in (work / "made", outside / "made", secret / "made", work / ".codex"):
                clear(made)
            found[f"{name}{'-tty' if tty else ''}"] = await outcome(
                client,
                f"{name}-{tty}",
                ["bash", "-c", script],
                cwd=uri(work),
                tty=tty,
                sandbox=sandbox,
            )
    return found


async def test_root_write_profiles_as_the_reference(
    client: Client, places: tuple[Path, Path, Path]
) -> None:
    work, outside, secret = places
    ours = await answers(client, work, outside, secret)
    async with reference_client() as reference:
        theirs = await answers(reference, work, outside, secret)
    # ours keeps the controlling terminal under every profile (the command shares the PTY,
    # docs/sandbox.md); the reference's /dev/tty fails under some root-write profiles
    assert all("tty=yes" in ours[name][1] for name in ours if name.endswith("-tty"))
    assert without_tty(ours) == without_tty(theirs)
    assert ours["approved_escalation"][1] == [
        *("agents=no", "codex=no", "devnull=yes", "full=yes", "git=no", "outside=yes"),
        *("random=yes", "secret_read=no", "secret_write=no", "urandom=yes", "work=yes"),
        "zero=yes",
    ]


def without_tty(found: dict[str, Any]) -> dict[str, Any]:
    return {
        name: [answer[0], [w for w in answer[1] if not w.startswith("tty=")]]
        for name, answer in found.items()
    }


async def test_sandbox_override_is_checked_as_the_reference(
    client: Client, places: tuple[Path, Path, Path]
) -> None:
    work, _, secret = places
    sandbox = profiles(work, secret)["root_write_denied"]
    script = ["bash", "-c", f"cat {secret}/file >/dev/null 2>&1 && echo read=yes || echo read=no"]

    async def each(client: Client) -> list[Any]:
        found = []
        values = ["noOverride", "escalatedSandboxWithRestrictions", "bypassSandboxFirstAttempt"]
        for index, value in enumerate([*values, "bogus", 5]):
            params = {"cwd": uri(work), "sandbox": {**sandbox, "sandboxOverride": value}}
            found.append(await outcome(client, f"o{index}", script, **params))
        return found

    ours = await each(client)
    async with reference_client() as reference:
        theirs = await each(reference)
    assert ours[:4] == theirs[:4]
    assert ours[4][0] == theirs[4][0] == -32602  # serde's type texts vary with its buffering
    assert ours[1] == ["linuxSeccomp", ["read=no"]]  # an approved escalation keeps its denials
    assert ours[3] == [
        -32602,
        "unknown variant `bogus`, expected one of `noOverride`, "
        "`escalatedSandboxWithRestrictions`, `bypassSandboxFirstAttempt`",
    ]
