"""The ``fs/walk`` fixture tree and requests, shared by the test that compares our answers
with the reference's recording (``tests/data/fs_walk_reference.json``) and by the script
that makes that recording against the reference binary:

    .venv/bin/python -m tests.walk_cases record   # needs codex 0.169 (tests/codex/harness.py)

Paths in answers are made relative to the tree (``ROOT`` stands for its ``file://`` URI), so
a recording from one temporary directory compares with answers from another.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .support import Client, RpcFailure

RECORDING = Path(__file__).parent / "data" / "fs_walk_reference.json"

CODEX_DEFAULT = {
    "maxDepth": 6,
    "maxDirectories": 2000,
    "maxEntries": 20000,
    "followDirectorySymlinks": True,
    "pruneHiddenDirectories": True,
}
"""What ``codex exec`` 0.169 sends for a repository's ``.agents/skills`` (recorded)."""


def build_tree(root: Path) -> None:
    """Hidden directories, file and directory symlinks, a dangling one, a loop back to the
    root, a FIFO, names that sort differently bytewise and by case, and a chain five deep."""
    for directory in ("Z", "b/d/e/g", ".hidden/.deeper", "loop", "denied", "b/d/x"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    for name in ("B.txt", "a.txt", ".hfile", "b/c1.txt", "b/d/e/f.txt", "b/d/e/g/h.txt"):
        (root / name).write_text(name)
    for name in (".hidden/inner.txt", ".hidden/.deeper/x.txt", "denied/secret.txt", "Z/a b%.md"):
        (root / name).write_text(name)
    (root / "file_link").symlink_to("a.txt")
    (root / "dir_link").symlink_to("b")
    (root / "dangling").symlink_to("nowhere")
    (root / "loop" / "up").symlink_to("..")
    (root / "b" / "d" / "x" / "back").symlink_to("../../d")
    os.mkfifo(root / "fifo")


def tree_in(place: Path, build: Callable[[Path], None]) -> Path:
    """``place/tree``, made by ``build``."""
    root = place / "tree"
    root.mkdir()
    build(root)
    return root


def options(**changes: Any) -> dict[str, Any]:
    return {**CODEX_DEFAULT, **changes}


def denying_profile(root: Path, denied: Path) -> dict[str, Any]:
    """A restricted profile: everything readable except ``denied``."""
    entries = [
        {"path": {"type": "special", "value": {"kind": "root"}}, "access": "read"},
        {"path": {"type": "path", "path": f"file://{denied}"}, "access": "none"},
    ]
    return {
        "permissions": {
            "type": "managed",
            "file_system": {"type": "restricted", "entries": entries},
            "network": "restricted",
        },
        "cwd": f"file://{root}",
        "windowsSandboxLevel": "disabled",
        "useLegacyLandlock": False,
    }


def cases(root: Path) -> dict[str, dict[str, Any]]:
    """Each request by name (params of ``fs/walk``)."""
    top = f"file://{root}"
    no_follow = options(followDirectorySymlinks=False, pruneHiddenDirectories=False)
    return {
        "codex_default": {"path": top, "options": options(), "sandbox": None},
        "no_follow_no_prune": {"path": top, "options": no_follow},
        "prune_only": {"path": top, "options": options(followDirectorySymlinks=False)},
        "depth_0": {"path": top, "options": options(maxDepth=0)},
        "depth_1": {"path": top, "options": options(maxDepth=1)},
        "entries_3": {"path": top, "options": options(maxEntries=3)},
        **{
            f"entries_{count}": {"path": top, "options": options(maxEntries=count)}
            for count in (6, 7, 8, 9, 10, 11, 12)
        },
        "entries_exact": {"path": f"{top}/b/d/e", "options": options(maxEntries=3)},
        "directories_1": {"path": top, "options": options(maxDirectories=1)},
        "directories_3": {"path": top, "options": options(maxDirectories=3)},
        "entries_0": {"path": top, "options": options(maxEntries=0)},
        "directories_0": {"path": top, "options": options(maxDirectories=0)},
        "depth_too_deep": {"path": top, "options": options(maxDepth=10**6)},
        "directories_too_many": {"path": top, "options": options(maxDirectories=10**9)},
        "entries_too_many": {"path": top, "options": options(maxEntries=10**9)},
        "root_is_file": {"path": f"{top}/a.txt", "options": options()},
        "root_is_dir_link": {"path": f"{top}/dir_link", "options": options()},
        "root_is_dir_link_no_follow": {"path": f"{top}/dir_link", "options": no_follow},
        "root_missing": {"path": f"{top}/missing", "options": options()},
        "root_dangling": {"path": f"{top}/dangling", "options": options()},
        "root_fifo": {"path": f"{top}/fifo", "options": options()},
        "depth_missing": {"path": top, "options": {"maxDirectories": 1, "maxEntries": 1}},
        "follow_missing": {
            "path": top,
            "options": {"maxDepth": 1, "maxDirectories": 1, "maxEntries": 1},
        },
        "depth_negative": {"path": top, "options": options(maxDepth=-1)},
        "options_missing": {"path": top},
        "plain_path": {"path": str(root / "Z"), "options": options()},
        "prune_absent": {
            "path": top,
            "options": {k: v for k, v in no_follow.items() if k != "pruneHiddenDirectories"},
        },
        "sandbox_denied_dir": {
            "path": top,
            "options": no_follow,
            "sandbox": denying_profile(root, root / "denied"),
        },
        "sandbox_denied_dir_follow": {
            "path": top,
            "options": options(pruneHiddenDirectories=False),
            "sandbox": denying_profile(root, root / "denied"),
        },
        "sandbox_denied_root": {
            "path": f"{top}/denied",
            "options": no_follow,
            "sandbox": denying_profile(root, root / "denied"),
        },
    }


def relative(value: Any, top: str) -> Any:
    """``value`` with every string's ``top`` prefix written ``ROOT``."""
    if isinstance(value, str):
        return value.replace(top, "ROOT")
    if isinstance(value, list):
        return [relative(item, top) for item in value]
    if isinstance(value, dict):
        return {key: relative(item, top) for key, item in value.items()}
    return value


async def outcome(client: Client, method: str, params: Any) -> dict[str, Any]:
    """One call's answer as a recording keeps it: ``{"result": ...}`` or
    ``{"error": [code, message]}``."""
    try:
        return {"result": await client.call(method, params)}
    except RpcFailure as failure:
        return {"error": [failure.code, failure.message]}


async def case_answers(
    client: Client, method: str, requests: dict[str, Any], root: Path
) -> dict[str, Any]:
    """The :func:`outcome` of each named request, paths relative to ``root``."""
    found = {name: await outcome(client, method, params) for name, params in requests.items()}
    return relative(found, f"file://{root}")


async def answers(client: Client, root: Path) -> dict[str, Any]:
    """Every case's answer (``{"result": ...}`` or ``{"error": [code, message]}``)."""
    return await case_answers(client, "fs/walk", cases(root), root)


def save_recording(recording: Path, found: dict[str, Any]) -> None:
    """Writes the reference's answers where the comparing test reads them."""
    recording.parent.mkdir(exist_ok=True)
    recording.write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
    print(f"recorded {len(found)} answers in {recording}")


async def record_tree(
    recording: Path,
    build: Callable[[Path], None],
    ask: Callable[[Client, Path], Awaitable[dict[str, Any]]],
) -> None:
    """Builds a tree with ``build`` in a temporary folder (under ``$WALK_TREE_DIR`` when set),
    puts the cases to the reference binary with ``ask`` and saves its answers."""
    from .codex.reference import reference_client

    with tempfile.TemporaryDirectory(dir=os.environ.get("WALK_TREE_DIR")) as place:
        root = tree_in(Path(place), build)
        async with reference_client() as reference:
            found = await ask(reference, root)
    save_recording(recording, found)


if __name__ == "__main__" and sys.argv[1:] == ["record"]:
    asyncio.run(record_tree(RECORDING, build_tree, answers))
