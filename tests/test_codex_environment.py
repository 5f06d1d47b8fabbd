"""What codex 0.169 learns from ``initialize`` (capabilities, ``prependPathDirs``), the
``--prepend-path`` option behind the latter, and ``fs/canonicalize``; compared with the
reference where its answer is deterministic."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from exec_server.capabilities import capabilities

from .codex.reference import reference_client
from .support import Client, RpcFailure
from .test_cli import cli_server

OURS = {
    "networkProxyLaunch": True,
    "networkProxyReviewDomains": True,
    "credentialMasking": True,
    "credentialMaskingCustomProviders": True,
    "capabilityDiscoverySandbox": True,
    "fsWatchMissing": True,
    "capabilityDiscoveryV2": True,
    "environmentConfigRead": True,
    "httpHeaderEnvVars": True,
    "sandboxedFileStreaming": True,
    "fileWriteStreaming": True,
    "shellSnapshotV2": True,
    "windowsMxc": False,
    "linuxRootWritePreservesDevices": True,
    "linuxApprovedRootWritePreservesRestrictions": True,
}


def uri(path: Path | str) -> str:
    return f"file://{path}"


async def test_capabilities_name_every_flag_of_the_reference(server_url: str) -> None:
    async with Client.connect(server_url) as client:
        ours = (await client.initialize())["environmentInfo"]["capabilities"]
        assert (await client.call("environment/info"))["capabilities"] == ours
    assert ours == OURS == capabilities()
    async with reference_client() as reference:
        info = await reference.call("environment/info")
    assert list(info["capabilities"]) == list(ours)  # the same fifteen flags, in order


# ---- --prepend-path --------------------------------------------------------------------------


async def test_prepend_path_puts_tools_first_for_every_child(tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    tool = tools / "e2e-tool"
    tool.write_text("#!/bin/sh\necho tool ran\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    inherit = {
        "inherit": "all",
        "ignoreDefaultExcludes": True,
        "exclude": [],
        "set": {},
        "includeOnly": [],
    }
    show_path = ["/bin/sh", "-c", 'printf "%s" "$PATH"']
    async with (
        cli_server("--prepend-path", str(tools)) as server,
        Client.connect(server.url) as client,
    ):
        info = (await client.initialize())["environmentInfo"]
        assert info["prependPathDirs"] == [uri(tools)]
        explicit = await client.run("explicit", show_path, env={"PATH": "/usr/bin:/bin"})
        assert explicit.data() == f"{tools}:/usr/bin:/bin".encode()
        already = await client.run("already", show_path, env={"PATH": f"/usr/bin:{tools}"})
        assert already.data() == f"/usr/bin:{tools}".encode()
        without = await client.run("without", show_path, env={})
        assert without.data() == f"{tools}:/bin:/usr/bin".encode()
        inherited = await client.run("inherited", show_path, env={}, envPolicy=inherit)
        assert inherited.data().startswith(f"{tools}:".encode())
        found = await client.run("tool", ["e2e-tool"], env={"PATH": "/usr/bin:/bin"})
        assert found.data() == b"tool ran\n"


async def test_without_prepend_path_nothing_changes(client: Client) -> None:
    events = await client.run(
        "p", ["/bin/sh", "-c", 'printf "%s" "$PATH"'], env={"PATH": "/usr/bin:/bin"}
    )
    assert events.data() == b"/usr/bin:/bin"


# ---- fs/canonicalize -------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "a b%").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "a b%")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dirlink").symlink_to("dir")
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    return tmp_path


async def canonical(client: Client, path: str) -> str | tuple[int, str]:
    try:
        return str((await client.call("fs/canonicalize", {"path": path, "sandbox": None}))["path"])
    except RpcFailure as failure:
        return failure.code, failure.message.split(" (os error")[0]


async def test_canonicalize_as_the_reference(client: Client, tree: Path) -> None:
    paths = [
        "file:///",
        "file:///tmp/../tmp/",
        uri(tree / "link"),
        uri(tree / "a%20b%25"),
        uri(tree / "dirlink") + "/",
        uri(tree / "dirlink" / ".." / "link"),  # lexically first, as every wire path
        uri(tree / "missing" / "x"),
        uri(tree / "loop1"),
    ]
    ours = [await canonical(client, path) for path in paths]
    async with reference_client() as reference:
        theirs = [await canonical(reference, path) for path in paths]
    assert ours[:-1] == theirs[:-1]
    assert ours[2] == uri(tree / "a%20b%25")
    assert ours[4] == uri(tree / "dir")
    assert ours[6] == (-32004, "No such file or directory")
    # a loop is -32603 for both; the text is the C library's (the reference is built on musl)
    assert (ours[7][0], theirs[7][0]) == (-32603, -32603)


async def test_canonicalize_accepts_a_plain_path_too(client: Client, tree: Path) -> None:
    """Part A §A1: every fs path may be an absolute path as well as a file:// URI."""
    assert await canonical(client, str(tree / "link")) == uri(tree / "a%20b%25")
