"""fs/* end to end through the WebSocket: results, and every error path of Part B §9."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exec_server.config import Limits
from exec_server.paths import to_file_uri

from .support import Client, RpcFailure, running_server


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def fails(client: Client, method: str, params: dict[str, Any]) -> RpcFailure:
    """The error a call must end with."""
    with pytest.raises(RpcFailure) as info:
        await client.call(method, params)
    return info.value


@contextlib.asynccontextmanager
async def fresh_client(limits: Limits) -> AsyncIterator[Client]:
    """An initialized client of a server of its own, with ``limits``."""
    async with running_server(limits) as (_, url), Client.connect(url) as client:
        await client.initialize()
        yield client


def read_bytes(path: bytes) -> bytes:
    with open(path, "rb") as f:
        return f.read()


async def read(client: Client, path: str) -> bytes:
    result = await client.call("fs/readFile", {"path": path})
    return base64.b64decode(result["dataBase64"])


# ---- readFile / writeFile -------------------------------------------------------------------


async def test_write_then_read_by_path_and_by_uri(client: Client, tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    data = bytes(range(256)) * 10
    assert await client.call("fs/writeFile", {"path": str(target), "dataBase64": b64(data)}) == {}
    assert target.read_bytes() == data
    assert await read(client, str(target)) == data
    assert await read(client, to_file_uri(str(target))) == data
    # Overwrite truncates.
    await client.call("fs/writeFile", {"path": to_file_uri(str(target)), "dataBase64": b64(b"x")})
    assert await read(client, str(target)) == b"x"


async def test_paths_are_normalised_lexically(client: Client, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_bytes(b"here")
    assert await read(client, f"{tmp_path}/d/../f") == b"here"
    assert await read(client, f"{tmp_path}/./d/./../f") == b"here"
    # No symlink resolution: `..` pops the link's name, not its target's.
    (tmp_path / "link").symlink_to("/")
    assert await read(client, f"{tmp_path}/link/../f") == b"here"


async def test_read_missing_file_is_not_found(client: Client, tmp_path: Path) -> None:
    error = await fails(client, "fs/readFile", {"path": str(tmp_path / "missing")})
    assert error.code == -32004
    assert "No such file or directory (os error 2)" in error.message


async def test_read_directory_as_file_is_internal_error(client: Client, tmp_path: Path) -> None:
    error = await fails(client, "fs/readFile", {"path": str(tmp_path)})
    assert error.code == -32603
    assert "Is a directory (os error 21)" in error.message


async def test_file_where_a_directory_is_expected(client: Client, tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    inside = str(tmp_path / "file" / "child")
    error = await fails(client, "fs/readFile", {"path": inside})
    assert (error.code, "Not a directory (os error 20)" in error.message) == (-32603, True)
    error = await fails(client, "fs/writeFile", {"path": inside, "dataBase64": ""})
    assert (error.code, "Not a directory (os error 20)" in error.message) == (-32603, True)
    error = await fails(client, "fs/readDirectory", {"path": str(tmp_path / "file")})
    assert (error.code, "Not a directory (os error 20)" in error.message) == (-32603, True)
    error = await fails(client, "fs/createDirectory", {"path": inside})
    assert error.code == -32603


async def test_write_into_missing_parent_is_not_found(client: Client, tmp_path: Path) -> None:
    error = await fails(
        client, "fs/writeFile", {"path": str(tmp_path / "no" / "f"), "dataBase64": ""}
    )
    assert error.code == -32004


async def test_write_with_bad_base64_is_invalid_request(client: Client, tmp_path: Path) -> None:
    error = await fails(client, "fs/writeFile", {"path": str(tmp_path / "f"), "dataBase64": "!!"})
    assert error.code == -32600
    assert error.message.startswith("fs/writeFile requires valid base64 dataBase64: ")
    assert not (tmp_path / "f").exists()


async def test_read_above_the_limit_is_refused(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * 11)
    (tmp_path / "ok").write_bytes(b"x" * 10)
    async with fresh_client(Limits(fs_read_file_max_bytes=10)) as client:
        error = await fails(client, "fs/readFile", {"path": str(tmp_path / "big")})
        assert error.code == -32600
        assert error.message == "file is too large to read: limit is 10 bytes"
        assert await read(client, str(tmp_path / "ok")) == b"x" * 10
        # A file whose size the OS does not know is bounded by the read itself.
        error = await fails(client, "fs/readFile", {"path": "/proc/self/status"})
        assert error.message == "file is too large to read: limit is 10 bytes"


async def test_read_special_files_is_refused(client: Client, tmp_path: Path) -> None:
    """As the 0.169 reference: only regular files (a FIFO would block, a device never end)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (str(fifo), "/dev/zero", "/dev/null"):
        error = await fails(client, "fs/readFile", {"path": path})
        assert (error.code, error.message) == (-32600, f"path `{path}` is not a file")
    # Through a symlink, the target is what counts.
    (tmp_path / "link").symlink_to(fifo)
    error = await fails(client, "fs/readFile", {"path": str(tmp_path / "link")})
    assert error.code == -32600


# ---- path parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "params", "field"),
    [
        ("fs/readFile", {"path": "relative/file"}, "path"),
        ("fs/writeFile", {"path": "x", "dataBase64": ""}, "path"),
        ("fs/getMetadata", {"path": "http://host/x"}, "path"),
        (
            "fs/copy",
            {"sourcePath": "/tmp", "destinationPath": "b", "recursive": True},
            "destinationPath",
        ),
        (
            "fs/copy",
            {"sourcePath": "a", "destinationPath": "/tmp/b", "recursive": True},
            "sourcePath",
        ),
        ("fs/open", {"handleId": "h", "path": "file:relative"}, "path"),
    ],
)
async def test_relative_or_foreign_path_names_the_field(
    client: Client, method: str, params: dict[str, Any], field: str
) -> None:
    error = await fails(client, method, params)
    assert error.code == -32602
    assert field in error.message


async def test_non_utf8_names_through_percent_encoding(client: Client, tmp_path: Path) -> None:
    base = to_file_uri(str(tmp_path))
    uri = base + "/caf%E9.txt"  # Latin-1 "café": not UTF-8
    await client.call("fs/writeFile", {"path": uri, "dataBase64": b64(b"latin")})
    assert os.listdir(os.fsencode(tmp_path)) == [b"caf\xe9.txt"]
    assert await read(client, uri) == b"latin"
    meta = await client.call("fs/getMetadata", {"path": uri})
    assert meta["isFile"] and meta["size"] == 5
    listing = await client.call("fs/readDirectory", {"path": base})
    assert listing["entries"] == [
        {"fileName": "caf\ufffd.txt", "isDirectory": False, "isFile": True}
    ]
    await client.call(
        "fs/copy", {"sourcePath": uri, "destinationPath": base + "/%FF", "recursive": False}
    )
    assert read_bytes(os.fsencode(tmp_path) + b"/\xff") == b"latin"
    await client.call("fs/remove", {"path": uri})
    assert os.listdir(os.fsencode(tmp_path)) == [b"\xff"]


async def test_nul_byte_in_path_is_invalid_input(client: Client, tmp_path: Path) -> None:
    uri = to_file_uri(str(tmp_path)) + "/a%00b"
    error = await fails(client, "fs/readFile", {"path": uri})
    assert error.code == -32600
    assert "null" in error.message


# ---- createDirectory ------------------------------------------------------------------------


async def test_create_directory(client: Client, tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "c"
    assert await client.call("fs/createDirectory", {"path": str(deep)}) == {}
    assert deep.is_dir()
    # Recursive (the default) is fine when it exists; a single mkdir is not.
    await client.call("fs/createDirectory", {"path": str(deep), "recursive": True})
    error = await fails(client, "fs/createDirectory", {"path": str(deep), "recursive": False})
    assert error.code == -32603 and "File exists (os error 17)" in error.message
    error = await fails(
        client, "fs/createDirectory", {"path": str(tmp_path / "x" / "y"), "recursive": False}
    )
    assert error.code == -32004
    await client.call("fs/createDirectory", {"path": str(tmp_path / "x"), "recursive": False})
    assert (tmp_path / "x").is_dir()


# ---- getMetadata ------------------------------------------------------------------------------


async def test_metadata(client: Client, tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"12345")
    (tmp_path / "to_f").symlink_to(f)
    (tmp_path / "to_dir").symlink_to(tmp_path)
    meta = await client.call("fs/getMetadata", {"path": str(f)})
    assert meta == {
        "isDirectory": False,
        "isFile": True,
        "isSymlink": False,
        "size": 5,
        "createdAtMs": meta["createdAtMs"],
        "modifiedAtMs": f.stat().st_mtime_ns // 1_000_000,
    }
    assert isinstance(meta["createdAtMs"], int)
    link = await client.call("fs/getMetadata", {"path": str(tmp_path / "to_f")})
    assert (link["isFile"], link["isSymlink"], link["size"]) == (True, True, 5)
    link = await client.call("fs/getMetadata", {"path": str(tmp_path / "to_dir")})
    assert (link["isDirectory"], link["isFile"], link["isSymlink"]) == (True, False, True)


async def test_metadata_of_broken_symlink_is_not_found(client: Client, tmp_path: Path) -> None:
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    error = await fails(client, "fs/getMetadata", {"path": str(tmp_path / "dangling")})
    assert error.code == -32004


# ---- readDirectory ----------------------------------------------------------------------------


async def test_read_directory(client: Client, tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    (tmp_path / "dir").mkdir()
    (tmp_path / "link_to_dir").symlink_to(tmp_path / "dir")
    (tmp_path / "broken").symlink_to(tmp_path / "nowhere")
    os.mkfifo(tmp_path / "fifo")
    result = await client.call("fs/readDirectory", {"path": to_file_uri(str(tmp_path))})
    entries = {e["fileName"]: (e["isDirectory"], e["isFile"]) for e in result["entries"]}
    assert entries == {
        "file": (False, True),
        "dir": (True, False),
        "link_to_dir": (True, False),
        "fifo": (False, False),
    }


async def test_read_missing_directory(client: Client, tmp_path: Path) -> None:
    error = await fails(client, "fs/readDirectory", {"path": str(tmp_path / "none")})
    assert error.code == -32004


# ---- remove -----------------------------------------------------------------------------------


async def test_remove(client: Client, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    tree = tmp_path / "tree" / "sub"
    tree.mkdir(parents=True)
    (tree / "g").write_bytes(b"")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_bytes(b"keep")
    (tree / "link_out").symlink_to(outside)
    (tmp_path / "link_f").symlink_to(outside / "keep")

    await client.call("fs/remove", {"path": str(tmp_path / "f")})
    assert not (tmp_path / "f").exists()
    # A symlink is removed itself, never its target; a tree's symlinks are not followed.
    await client.call("fs/remove", {"path": str(tmp_path / "link_f")})
    error = await fails(client, "fs/remove", {"path": str(tmp_path / "tree"), "recursive": False})
    assert error.code == -32603 and "Directory not empty" in error.message
    await client.call("fs/remove", {"path": str(tmp_path / "tree")})
    assert not (tmp_path / "tree").exists()
    assert (outside / "keep").read_bytes() == b"keep"
    await client.call("fs/remove", {"path": str(outside / "keep")})
    await client.call("fs/remove", {"path": str(outside), "recursive": False})
    assert sorted(os.listdir(tmp_path)) == []


async def test_remove_missing(client: Client, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing")
    assert await client.call("fs/remove", {"path": missing}) == {}
    error = await fails(client, "fs/remove", {"path": missing, "force": False})
    assert error.code == -32004
    # A broken symlink exists (lstat): it is removed, not reported missing.
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    await client.call("fs/remove", {"path": str(tmp_path / "dangling"), "force": False})
    assert os.listdir(tmp_path) == []


# ---- copy -------------------------------------------------------------------------------------


async def test_copy_file_overwrites_and_keeps_mode(client: Client, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"new contents")
    src.chmod(0o751)
    dst = tmp_path / "dst"
    dst.write_bytes(b"old contents that are longer")
    params = {"sourcePath": str(src), "destinationPath": str(dst), "recursive": False}
    assert await client.call("fs/copy", params) == {}
    assert dst.read_bytes() == b"new contents"
    assert stat.S_IMODE(dst.stat().st_mode) == 0o751


async def test_copy_tree(client: Client, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "top").write_bytes(b"top")
    (src / "a" / "b" / "deep").write_bytes(b"deep")
    (src / "rel_link").symlink_to("top")
    (src / "abs_link").symlink_to("/nonexistent/target")
    os.mkfifo(src / "a" / "fifo")
    dst = tmp_path / "out" / "dst"
    params = {"sourcePath": str(src), "destinationPath": str(dst), "recursive": True}
    assert await client.call("fs/copy", params) == {}
    assert (dst / "top").read_bytes() == b"top"
    assert (dst / "a" / "b" / "deep").read_bytes() == b"deep"
    assert os.readlink(dst / "rel_link") == "top"
    assert os.readlink(dst / "abs_link") == "/nonexistent/target"  # recreated, not followed
    assert (dst / "rel_link").is_symlink()
    assert sorted(os.listdir(dst / "a")) == ["b"]  # the FIFO, a special file, is skipped


async def test_copy_symlink_is_recreated(client: Client, tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to("some/target")
    params = {
        "sourcePath": str(tmp_path / "link"),
        "destinationPath": str(tmp_path / "copy"),
        "recursive": False,
    }
    await client.call("fs/copy", params)
    assert os.readlink(tmp_path / "copy") == "some/target"


async def test_copy_refusals(client: Client, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)

    def copy(source: Path | str, destination: Path | str, recursive: bool) -> dict[str, Any]:
        return {
            "sourcePath": str(source),
            "destinationPath": str(destination),
            "recursive": recursive,
        }

    error = await fails(client, "fs/copy", copy(src, tmp_path / "d", False))
    assert error.code == -32600
    assert error.message == "fs/copy requires recursive: true when sourcePath is a directory"
    for destination in (src, src / "sub" / "inner", f"{src}/sub/../x"):
        error = await fails(client, "fs/copy", copy(src, destination, True))
        assert error.code == -32600
        assert (
            error.message == "fs/copy cannot copy a directory to itself or one of its descendants"
        )
    # Through a symlink to the source: canonicalised, still refused.
    (tmp_path / "alias").symlink_to(src)
    error = await fails(client, "fs/copy", copy(src, tmp_path / "alias" / "x", True))
    assert error.code == -32600
    # A sibling whose name merely starts like the source is fine.
    await client.call("fs/copy", copy(src, tmp_path / "src2", True))
    assert (tmp_path / "src2" / "sub").is_dir()

    os.mkfifo(tmp_path / "fifo")
    error = await fails(client, "fs/copy", copy(tmp_path / "fifo", tmp_path / "f2", False))
    assert error.code == -32600
    assert error.message == "fs/copy only supports regular files, directories, and symlinks"

    (tmp_path / "f").write_bytes(b"keep me")
    error = await fails(client, "fs/copy", copy(tmp_path / "f", tmp_path / "f", False))
    assert error.code == -32600
    assert (tmp_path / "f").read_bytes() == b"keep me"

    error = await fails(client, "fs/copy", copy(tmp_path / "missing", tmp_path / "x", True))
    assert error.code == -32004
    error = await fails(client, "fs/copy", {"sourcePath": str(src), "destinationPath": "/tmp/x"})
    assert error.code == -32602 and "recursive" in error.message


# ---- sandbox profiles -------------------------------------------------------------------------

_LEVEL = {"windowsSandboxLevel": "disabled"}


def _restricted(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "permissions": {
            "type": "managed",
            "file_system": {"type": "restricted", "entries": entries},
            "network": "enabled",
        },
        **_LEVEL,
    }


_ROOT = {"type": "special", "value": {"kind": "root"}}


async def test_sandbox_profiles(client: Client, tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"data")
    unrestricted = [
        None,
        {"permissions": {"type": "disabled"}, **_LEVEL},
        {"permissions": {"type": "external", "network": "enabled"}, **_LEVEL},
        {
            "permissions": {
                "type": "managed",
                "file_system": {"type": "unrestricted"},
                "network": "restricted",
            },
            **_LEVEL,
        },
        _restricted([{"path": _ROOT, "access": "write"}]),
        _restricted([{"path": {"type": "path", "path": "file:///"}, "access": "write"}]),
    ]
    for sandbox in unrestricted:
        result = await client.call("fs/readFile", {"path": str(f), "sandbox": sandbox})
        assert result == {"dataBase64": b64(b"data")}
        await client.call(
            "fs/writeFile", {"path": str(f), "dataBase64": b64(b"data"), "sandbox": sandbox}
        )

    # Restricted profiles are enforced (tests/test_sandbox_server.py has the escapes): a
    # read-only root lets reads through and refuses writes as the reference does (EROFS).
    read_only_root = _restricted([{"path": _ROOT, "access": "read"}])
    assert await client.call("fs/getMetadata", {"path": str(f), "sandbox": read_only_root})
    error = await fails(
        client, "fs/writeFile", {"path": str(f), "dataBase64": "", "sandbox": read_only_root}
    )
    assert error.code == -32603 and "Read-only file system (os error 30)" in error.message
    hidden = _restricted([{"path": _ROOT, "access": "write"}, {"path": _ROOT, "access": "deny"}])
    error = await fails(client, "fs/readFile", {"path": str(f), "sandbox": hidden})
    assert error.code == -32600 and "Permission denied (os error 13)" in error.message
    assert f.read_bytes() == b"data"  # nothing was written by a refused request

    error = await fails(client, "fs/readFile", {"path": str(f), "sandbox": {}})
    assert error.code == -32602


# ---- permission denied -------------------------------------------------------------------------


@pytest.fixture
async def unprivileged(tmp_path: Path) -> AsyncIterator[Client]:
    """A client of a server that is subject to file modes.

    As a normal user that is any server; as root, a server started without the capabilities
    that let root ignore modes (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER).
    """
    if os.geteuid() != 0:
        async with running_server() as (_, url), Client.connect(url) as client:
            await client.initialize()
            yield client
        return
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv is missing: root ignores file modes")
    drop = [setpriv, "--bounding-set", "-dac_override,-dac_read_search,-fowner"]
    probe = await asyncio.create_subprocess_exec(*drop, "true", stderr=asyncio.subprocess.PIPE)
    _, stderr = await probe.communicate()
    if probe.returncode != 0:
        pytest.skip(f"running as root and cannot drop capabilities: {stderr!r}")
    process = await asyncio.create_subprocess_exec(
        *drop,
        sys.executable,
        "-m",
        "exec_server",
        "--listen",
        "ws://127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        url = (await asyncio.wait_for(process.stdout.readline(), 20)).decode().strip()
        async with Client.connect(url) as client:
            await client.initialize()
            yield client
    finally:
        process.kill()
        await process.wait()


async def test_permission_denied_is_invalid_request(unprivileged: Client, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"secret")
    secret.chmod(0)
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "inside").write_bytes(b"")
    locked.chmod(0o500)  # readable and searchable, not writable
    closed = tmp_path / "closed"
    closed.mkdir()
    closed.chmod(0)
    try:
        for method, params in [
            ("fs/readFile", {"path": str(secret)}),
            ("fs/writeFile", {"path": str(secret), "dataBase64": ""}),
            ("fs/writeFile", {"path": str(locked / "new"), "dataBase64": ""}),
            ("fs/createDirectory", {"path": str(locked / "sub")}),
            ("fs/remove", {"path": str(locked / "inside")}),
            ("fs/readDirectory", {"path": str(closed)}),
            ("fs/open", {"handleId": "h", "path": str(secret)}),
            ("fs/open", {"handleId": "h", "path": str(locked / "new"), "mode": "replace"}),
            (
                "fs/copy",
                {
                    "sourcePath": str(secret),
                    "destinationPath": str(tmp_path / "c"),
                    "recursive": False,
                },
            ),
        ]:
            error = await fails(unprivileged, method, params)
            assert (method, error.code) == (method, -32600)
            assert "Permission denied (os error 13)" in error.message
    finally:
        locked.chmod(0o700)
        closed.chmod(0o700)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b))
def test_file_uris_are_encoded_as_urllib_encodes_them(name: bytes) -> None:
    from urllib.parse import quote_from_bytes

    from exec_server.paths import parse_path

    path = "/" + os.fsdecode(name)
    assert to_file_uri(path) == "file://" + quote_from_bytes(os.fsencode(path), safe="/")
    assert parse_path(to_file_uri(path), "path") == parse_path(path, "path")
