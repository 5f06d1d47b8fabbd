"""``fs/walk`` (codex 0.169 calls it for a repository's ``.agents/skills``): the same answers
as the reference's recording on the same tree (``tests/walk_cases.py`` makes both), the
answer budget, bounded reading of a huge directory, and no way past a sandbox profile or
the operator's ``--confine`` through a symlink."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from exec_server.fs.walk import ITEM_OVERHEAD_BYTES, MAX_RESPONSE_BYTES

from .codex.reference import listening, reference_client, reference_server
from .sandbox_support import confined_by_operator
from .support import Client, server_command
from .walk_cases import RECORDING, answers, build_tree, denying_profile, options, tree_in

DIFFERENT_BY_DESIGN = {
    # Part A §A1: every fs path may be a plain absolute path as well as a file:// URI
    "plain_path": {"result": {"entries": [{"kind": "file", "path": "ROOT/Z/a%20b%25.md"}]}},
}
"""Where our answer differs from the reference's on purpose (the rest must be equal)."""


def params_error_code(answer: dict[str, Any]) -> Any:
    """-32602 texts are serde's in the reference and msgspec's here: only the code counts."""
    if "error" in answer and answer["error"][0] == -32602:
        return {"error": -32602}
    return answer


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return tree_in(tmp_path, build_tree)


async def test_answers_equal_the_reference_recording(client: Client, tree: Path) -> None:
    recorded = json.loads(RECORDING.read_text())
    ours = await answers(client, tree)
    assert set(ours) == set(recorded)
    for name, expected in DIFFERENT_BY_DESIGN.items():
        got = ours.pop(name)
        assert got["result"]["entries"] == expected["result"]["entries"]
        recorded.pop(name)
    assert {k: params_error_code(v) for k, v in ours.items()} == {
        k: params_error_code(v) for k, v in recorded.items()
    }
    # what the recording shows, said plainly
    default = recorded["codex_default"]["result"]
    listed = [entry["path"] for entry in default["entries"]]
    assert listed[:3] == ["ROOT/.hfile", "ROOT/.hidden", "ROOT/B.txt"]  # bytewise, breadth first
    assert "ROOT/.hidden/inner.txt" not in listed  # a hidden directory is listed, not walked
    assert "ROOT/loop/up" in listed and "ROOT/loop/up/a.txt" not in listed  # loops walked once
    assert "ROOT/file_link" not in listed and "ROOT/fifo" not in listed


async def test_a_huge_answer_stops_at_the_budget(client: Client, tmp_path: Path) -> None:
    """50 000 long names would pass 4 MiB: the walk stops, ``truncated``, within budget
    (the reference listed the same 12 595 entries of this tree, probed once)."""
    root = tmp_path / "wide"
    root.mkdir()
    name_length = 240
    for index in range(20_000):
        (root / f"{index:05d}".ljust(name_length, "x")).touch()
    reply = await client.call(
        "fs/walk", {"path": f"file://{root}", "options": options(maxEntries=50_000)}
    )
    entries = reply["entries"]
    cost = sum(len(entry["path"]) + ITEM_OVERHEAD_BYTES for entry in entries)
    one_more = len(entries[-1]["path"]) + ITEM_OVERHEAD_BYTES
    assert reply["truncated"] is True
    assert MAX_RESPONSE_BYTES - one_more < cost <= MAX_RESPONSE_BYTES
    assert entries[-1]["path"].startswith(f"file://{root}/{len(entries) - 1:05d}")


async def test_a_huge_directory_gives_its_smallest_names(client: Client, tmp_path: Path) -> None:
    root = tmp_path / "many"
    root.mkdir()
    names = [f"n{(index * 7919) % 5000:04d}" for index in range(5000)]
    for name in names:
        (root / name).touch()
    reply = await client.call(
        "fs/walk", {"path": f"file://{root}", "options": options(maxEntries=4)}
    )
    assert [entry["path"] for entry in reply["entries"]] == [
        f"file://{root}/{name}" for name in sorted(names)[:4]
    ]
    assert reply["truncated"] is True


@pytest.fixture
def escape(tmp_path: Path) -> tuple[Path, Path]:
    """A readable workspace whose symlink leads into a hidden directory."""
    work, hidden = tmp_path / "work", tmp_path / "hidden"
    (hidden / "inner").mkdir(parents=True)
    (hidden / "secret.txt").write_text("secret")
    work.mkdir()
    (work / "ok.txt").write_text("ok")
    (work / "way_out").symlink_to(hidden)
    return work, hidden


def listed(reply: dict[str, Any]) -> list[str]:
    return [entry["path"] for entry in reply["entries"]]


async def test_no_symlink_leads_past_the_profile(client: Client, escape: tuple[Path, Path]) -> None:
    work, hidden = escape
    params = {
        "path": f"file://{work}",
        "options": options(),
        "sandbox": denying_profile(work, hidden),
    }
    reply = await client.call("fs/walk", params)
    assert listed(reply) == [f"file://{work}/ok.txt", f"file://{work}/way_out"]
    assert reply["errors"] == [
        {"path": f"file://{work}/way_out", "message": "Permission denied (os error 13)"}
    ]
    unsandboxed = await client.call("fs/walk", {**params, "sandbox": None})
    assert f"file://{work}/way_out/secret.txt" in listed(unsandboxed)  # the fixture is sound


@pytest.fixture
async def confined(tmp_path: Path, escape: tuple[Path, Path]) -> AsyncIterator[Client]:
    work, hidden = escape
    async with confined_by_operator(denying_profile(work, hidden), tmp_path) as client:
        yield client


async def test_confinement_applies_without_a_profile(
    confined: Client, escape: tuple[Path, Path]
) -> None:
    work, hidden = escape
    reply = await confined.call("fs/walk", {"path": f"file://{work}", "options": options()})
    assert all(not path.startswith(f"file://{work}/way_out/") for path in listed(reply))
    assert reply["errors"][0]["message"] == "Permission denied (os error 13)"
    root = await confined.call("fs/walk", {"path": f"file://{hidden}", "options": options()})
    assert root == {
        "entries": [],
        "errors": [{"path": f"file://{hidden}", "message": "Permission denied (os error 13)"}],
        "truncated": False,
    }


async def test_a_hidden_root_answers_alike_whether_or_not_it_exists(
    confined: Client, escape: tuple[Path, Path]
) -> None:
    """What the confinement hides is not there to look at: walking a path inside it gives
    the same answer for a directory, a file and nothing at all (else the walk would tell
    which names exist behind the confinement)."""
    _, hidden = escape
    for name in ("inner", "secret.txt", "nothing-here"):
        root = hidden / name
        reply = await confined.call("fs/walk", {"path": f"file://{root}", "options": options()})
        assert reply == {
            "entries": [],
            "errors": [{"path": f"file://{root}", "message": "Permission denied (os error 13)"}],
            "truncated": False,
        }, name


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def shared_tree() -> Iterator[Path]:
    """A tree user nobody can reach, with a directory it cannot read (and a home for it)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the servers as another user")
    place = Path(tempfile.mkdtemp(prefix="exec-server-walk-"))
    place.chmod(0o755)
    (place / "home").mkdir(mode=0o777)
    (place / "home").chmod(0o777)
    for name in ("tree/open", "tree/locked/inner"):
        (place / name).mkdir(parents=True)
    (place / "tree/open/f.txt").write_text("f")
    (place / "tree/locked/secret.txt").write_text("s")
    (place / "tree/locked").chmod(0o000)
    yield place
    (place / "tree/locked").chmod(0o755)
    shutil.rmtree(place, ignore_errors=True)


async def test_unreadable_directories_as_the_reference(shared_tree: Path) -> None:
    """Without a profile, a directory the server's user cannot read: listed in its parent,
    its path and the OS reason in ``errors``; as the root, the same (both run as nobody)."""
    tree = shared_tree / "tree"
    requests = [
        {"path": f"file://{tree}", "options": options()},
        {"path": f"file://{tree}/locked", "options": options()},
    ]
    env = {"HOME": str(shared_tree / "home"), "CODEX_HOME": str(shared_tree / "home")}

    async def asked(url: str) -> list[Any]:
        async with Client.connect(url) as client:
            await client.initialize()
            return [await client.call("fs/walk", params) for params in requests]

    async with listening([*NOBODY, *server_command()], env) as url:
        ours = await asked(url)
    async with reference_server(env, NOBODY) as url:
        theirs = await asked(url)
    assert ours == theirs
    denied = {"path": f"file://{tree}/locked", "message": "Permission denied (os error 13)"}
    assert ours[0]["errors"] == [denied]
    assert f"file://{tree}/locked" in listed(ours[0])
    assert ours[1] == {"entries": [], "errors": [denied], "truncated": False}


def build_odd_names(root: Path) -> None:
    """More names than one read batch takes, sorting otherwise bytewise than by what the
    reference sees: by number, valid names starting with U+FFFD (``\xef\xbf\xbd``) for
    even numbers and, for odd ones, two names that are not UTF-8 (``\x80...``, ``\xff...``)
    and read as U+FFFD and the number; before them a file, a directory and a dangling
    symlink with plain names, one a prefix of another."""
    for number in range(3000):
        starts = (b"\xef\xbf\xbd",) if number % 2 == 0 else (b"\x80", b"\xff")
        for start in starts:
            path = os.fsencode(root) + b"/" + start + b"%04d" % number
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
    (root / "a").touch()
    (root / "a0").symlink_to("nowhere")
    (root / "a1").mkdir()


async def test_the_smallest_odd_names_as_the_reference(client: Client, tmp_path: Path) -> None:
    """Which names of a big directory the walk looks at, and in what order, when names tie
    on their lossy form, are not UTF-8 or lead nowhere: the same answers as the reference,
    for cuts that fall on every kind of name."""
    root = tree_in(tmp_path, build_odd_names)
    requests = [
        {"path": f"file://{root}", "options": options(maxDepth=0, maxEntries=count)}
        for count in (1, 2, 3, 4, 5, 6, 7, 12)
    ]

    async def asked(client: Client) -> list[Any]:
        return [await client.call("fs/walk", params) for params in requests]

    async with reference_client() as reference:
        theirs = await asked(reference)
    ours = await asked(client)
    assert ours == theirs
    assert listed(ours[-1])[:3] == [
        f"file://{root}/a",
        f"file://{root}/a1",
        f"file://{root}/%EF%BF%BD0000",
    ]
