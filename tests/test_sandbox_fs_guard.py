"""``fs/*`` mutations under a policy: what the workspace allows, and the escapes it refuses
(symlinks, ``..``, ``/proc/self/root``, hard links, carve-outs, a symlink swapped in mid-way).

Refusals carry the reference's errno: EROFS (-32603 "Read-only file system (os error 30)")
where reading is allowed, EACCES (-32600 "Permission denied (os error 13)") where not.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from exec_server.errors import RpcError
from exec_server.fs.errors import fs_error
from exec_server.sandbox import fs_guard
from exec_server.sandbox.policy import Policy, ResolveContext, resolve

from .sandbox_support import ORIGINAL, outside
from .test_sandbox_policy import _managed, _path, _special

__all__ = ["outside"]  # a fixture, used by name


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    workspace = tmp_path / "ws"
    (workspace / ".git").mkdir(parents=True)
    (workspace / ".git" / "config").write_text("[core]\n")
    return workspace


@pytest.fixture
def policy(ws: Path, outside: Path) -> Policy:
    (outside / "hidden").mkdir()
    (outside / "hidden" / "key").write_text("k")
    entries = [
        _special("root", "read"),
        _special("project_roots", "write"),
        _path(outside / "hidden", "deny"),
    ]
    return resolve(_managed(entries), ResolveContext(cwd=str(ws)))


def _errno_of(call: object, *args: object) -> int:
    with pytest.raises(OSError) as caught:
        call(*args)  # type: ignore[operator]
    assert caught.value.errno is not None
    return caught.value.errno


def test_refusals_map_to_the_reference_replies() -> None:
    read_only = fs_error(OSError(errno.EROFS, os.strerror(errno.EROFS)))
    hidden = fs_error(OSError(errno.EACCES, os.strerror(errno.EACCES)))
    assert (read_only.code, read_only.message) == (-32603, "Read-only file system (os error 30)")
    assert (hidden.code, hidden.message) == (-32600, "Permission denied (os error 13)")


def test_writes_inside_the_workspace(policy: Policy, ws: Path) -> None:
    fs_guard.create_directory(policy, str(ws / "sub" / "dir"), recursive=True)
    fs_guard.create_directory(policy, str(ws / "sub" / "dir"), recursive=True)  # exists: fine
    fs_guard.write_file(policy, str(ws / "sub" / "dir" / "nested.txt"), b"nested\n")
    fs_guard.write_file(policy, str(ws / "sub" / "dir" / "nested.txt"), b"again\n")
    assert (ws / "sub" / "dir" / "nested.txt").read_text() == "again\n"
    fs_guard.copy(policy, str(ws / "sub"), str(ws / "copy"), recursive=True)
    assert (ws / "copy" / "dir" / "nested.txt").read_text() == "again\n"
    fd = fs_guard.open_for_replace(policy, str(ws / "blocks.bin"))
    try:
        os.write(fd, b"block")
    finally:
        os.close(fd)
    assert (ws / "blocks.bin").read_bytes() == b"block"
    fs_guard.remove(policy, str(ws / "sub"), recursive=True, force=False)
    fs_guard.remove(policy, str(ws / "gone"), recursive=False, force=True)
    assert not (ws / "sub").exists()
    assert _errno_of(fs_guard.write_file, policy, str(ws / "no-dir" / "x"), b"") == errno.ENOENT


def test_outside_the_roots_is_read_only(policy: Policy, ws: Path, outside: Path) -> None:
    target = str(outside / "target.txt")
    assert _errno_of(fs_guard.write_file, policy, target, b"x") == errno.EROFS
    assert _errno_of(fs_guard.write_file, policy, str(outside / "new"), b"x") == errno.EROFS
    assert _errno_of(fs_guard.open_for_replace, policy, str(outside / "new")) == errno.EROFS
    assert _errno_of(fs_guard.create_directory, policy, str(outside / "d"), True) == errno.EROFS
    assert _errno_of(fs_guard.create_directory, policy, str(outside / "d"), False) == errno.EROFS
    assert _errno_of(fs_guard.remove, policy, target, False, False) == errno.EROFS
    assert (
        _errno_of(fs_guard.copy, policy, str(ws / ".git"), str(outside / "c"), True) == errno.EROFS
    )
    fs_guard.copy(policy, target, str(ws / "copied.txt"), recursive=False)  # reading is fine
    assert (ws / "copied.txt").read_text() == ORIGINAL
    assert sorted(p.name for p in outside.iterdir()) == ["hidden", "target.txt"]
    assert (outside / "target.txt").read_text() == ORIGINAL


def test_symlinks_dot_dot_and_proc_root_do_not_escape(
    policy: Policy, ws: Path, outside: Path
) -> None:
    (ws / "dirlink").symlink_to(outside)
    (ws / "filelink").symlink_to(outside / "target.txt")
    (ws / "dangling").symlink_to(outside / "made-through-dangling-link")
    (ws / "relative").symlink_to("../outside/target.txt")
    attempts = [
        str(ws / "dirlink" / "via-dir-link"),
        str(ws / "filelink"),
        str(ws / "dangling"),
        str(ws / "relative"),
        f"{ws}/../outside/dot-dot",
        f"{ws}/dirlink/../outside/target.txt",
        f"/proc/self/root{outside}/proc-root",
        f"/proc/{os.getpid()}/root{outside}/target.txt",
        f"/proc/self/cwd/{outside}/target.txt",
    ]
    for path in attempts:
        with pytest.raises(OSError) as caught:
            fs_guard.write_file(policy, path, b"escaped")
        assert caught.value.errno in (errno.EROFS, errno.ELOOP), path
    assert (
        _errno_of(fs_guard.create_directory, policy, str(ws / "dirlink" / "d"), True) == errno.EROFS
    )
    assert _errno_of(fs_guard.copy, policy, str(ws / ".git"), str(ws / "dirlink" / "g"), True) == (
        errno.EROFS
    )
    assert sorted(p.name for p in outside.iterdir()) == ["hidden", "target.txt"]
    assert (outside / "target.txt").read_text() == ORIGINAL
    fs_guard.remove(policy, str(ws / "dirlink"), recursive=True, force=False)  # the link only
    assert (outside / "target.txt").exists() and not (ws / "dirlink").exists()


def test_a_symlink_to_inside_the_workspace_is_followed(policy: Policy, ws: Path) -> None:
    (ws / "real").mkdir()
    (ws / "alias").symlink_to(ws / "real")
    (ws / "real" / "file").write_text("a")
    (ws / "shortcut").symlink_to("real/file")
    fs_guard.write_file(policy, str(ws / "alias" / "new"), b"n")
    fs_guard.write_file(policy, str(ws / "shortcut"), b"b")
    assert (ws / "real" / "new").read_text() == "n"
    assert (ws / "real" / "file").read_text() == "b" and (ws / "shortcut").is_symlink()


def test_a_hard_link_is_replaced_not_written_through(
    policy: Policy, ws: Path, outside: Path
) -> None:
    link = ws / "hardlink"
    os.link(outside / "target.txt", link)
    os.chmod(link, 0o640)
    fs_guard.write_file(policy, str(link), b"new content\n")
    assert link.read_text() == "new content\n"
    assert (outside / "target.txt").read_text() == ORIGINAL
    assert os.stat(outside / "target.txt").st_nlink == 1
    assert os.stat(link).st_mode & 0o777 == 0o640
    os.link(outside / "target.txt", ws / "second")
    fd = fs_guard.open_for_replace(policy, str(ws / "second"))
    os.close(fd)
    fs_guard.copy(policy, str(ws / "hardlink"), str(ws / "second"), recursive=False)
    assert (ws / "second").read_text() == "new content\n"
    assert (outside / "target.txt").read_text() == ORIGINAL
    assert sorted(p.name for p in ws.iterdir()) == [".git", "hardlink", "second"]  # no temp left


def test_git_metadata_is_read_only_even_when_missing(policy: Policy, ws: Path) -> None:
    assert _errno_of(fs_guard.write_file, policy, str(ws / ".git" / "config"), b"x") == errno.EROFS
    assert _errno_of(fs_guard.write_file, policy, str(ws / ".git" / "hooks-x"), b"x") == errno.EROFS
    assert _errno_of(fs_guard.remove, policy, str(ws / ".git"), True, True) == errno.EROFS
    assert _errno_of(fs_guard.create_directory, policy, str(ws / ".codex"), False) == errno.EROFS
    assert (
        _errno_of(fs_guard.create_directory, policy, str(ws / ".agents" / "x"), True) == errno.EROFS
    )
    assert _errno_of(fs_guard.write_file, policy, str(ws / ".aws"), b"x") == errno.EROFS
    (ws / "src").mkdir()
    (ws / "src" / "link-to-git").symlink_to(ws / ".git")
    path = str(ws / "src" / "link-to-git" / "config")
    assert _errno_of(fs_guard.write_file, policy, path, b"x") == errno.EROFS
    assert (ws / ".git" / "config").read_text() == "[core]\n"
    assert sorted(p.name for p in ws.iterdir()) == [".git", "src"]


def test_a_tree_holding_a_carve_out_is_not_removed(tmp_path: Path, ws: Path) -> None:
    """Removing a writable root's parent tree must not delete its read-only ``.git``."""
    entries = [_special("root", "read"), _path(tmp_path, "write"), _path(ws, "write")]
    policy = resolve(_managed(entries), ResolveContext(cwd=str(ws)))
    assert _errno_of(fs_guard.remove, policy, str(ws), True, False) == errno.EROFS
    assert (ws / ".git" / "config").exists()


def test_hidden_paths_can_be_neither_read_nor_written(policy: Policy, outside: Path) -> None:
    key = str(outside / "hidden" / "key")
    assert _errno_of(fs_guard.open_for_read, policy, key) == errno.EACCES
    assert _errno_of(fs_guard.check_readable, policy, str(outside / "hidden")) == errno.EACCES
    assert _errno_of(fs_guard.write_file, policy, key, b"x") == errno.EACCES
    assert _errno_of(fs_guard.copy, policy, str(outside), "/nonexistent-dest", True) == errno.EACCES
    fd = fs_guard.open_for_read(policy, str(outside / "target.txt"))
    try:
        assert os.read(fd, 100) == ORIGINAL.encode()
    finally:
        os.close(fd)


def test_protocol_refusals_keep_their_messages(policy: Policy, ws: Path) -> None:
    (ws / "d").mkdir()
    with pytest.raises(RpcError, match="requires recursive: true"):
        fs_guard.copy(policy, str(ws / "d"), str(ws / "e"), recursive=False)
    with pytest.raises(RpcError, match="to itself or one of its descendants"):
        fs_guard.copy(policy, str(ws / "d"), str(ws / "d" / "in"), recursive=True)
    (ws / "f").write_text("f")
    with pytest.raises(RpcError, match="are the same file"):
        fs_guard.copy(policy, str(ws / "f"), str(ws / "f"), recursive=False)
    assert (ws / "f").read_text() == "f"
    assert _errno_of(fs_guard.create_directory, policy, str(ws / "f"), True) == errno.EEXIST


def test_a_symlink_swapped_in_mid_way_never_writes_outside(
    policy: Policy, ws: Path, outside: Path
) -> None:
    """A racer flips ``ws/flip`` between a directory and a symlink to outside while writes go
    through it: each write lands inside or is refused, never outside."""
    flip = ws / "flip"
    parked = ws / "parked"
    parked.mkdir()
    stop = threading.Event()

    def racer() -> None:
        while not stop.is_set():
            try:
                os.rename(parked, flip)  # a real directory
                os.rename(flip, parked)
                os.symlink(outside, flip)  # a way out
                os.unlink(flip)
            except OSError:
                pass

    thread = threading.Thread(target=racer)
    thread.start()
    outcomes: set[str] = set()
    try:
        for index in range(300):
            try:
                fs_guard.write_file(policy, str(flip / f"f{index}"), b"x")
                outcomes.add("written")
            except OSError as exc:
                outcomes.add(errno.errorcode[exc.errno or 0])
    finally:
        stop.set()
        thread.join()
    assert sorted(p.name for p in outside.iterdir()) == ["hidden", "target.txt"]
    assert outcomes <= {"written", "EROFS", "ENOENT", "ELOOP"}
