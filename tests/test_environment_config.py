"""``environmentConfig/read``: the executor's codex config layers, compared with the reference.

Each test builds a ``CODEX_HOME`` and a project tree on disk and asks our server (over a real
WebSocket) and, where the answer is deterministic, the 0.169 reference with the same
environment. Layer TOML is compared parsed: both write the same document, with different
line breaks in arrays. The system folder (``/etc/codex``) is exercised through the reading
function itself, pointed at a folder of the test's own.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from exec_server.environment_config import read_environment_config
from exec_server.errors import RpcError

from .codex.reference import reference_client
from .support import Client, RpcFailure, running_server

MCP = {"configPaths": [["mcp_servers"]], "requirementsPaths": [["mcp_servers"]]}


def uri(path: Path | str) -> str:
    return f"file://{path}"


def normalised(result: dict[str, Any]) -> dict[str, Any]:
    """The answer with each layer's TOML parsed."""
    out = dict(result)
    for stack in ("config", "requirements"):
        out[stack] = {
            "cloudInsertionIndex": result[stack]["cloudInsertionIndex"],
            "layers": [
                {**layer, "toml": tomllib.loads(layer["toml"])} for layer in result[stack]["layers"]
            ],
        }
    return out


@pytest.fixture
def codex_home(tmp_path: Path) -> Path:
    home = tmp_path / "codex-home"
    home.mkdir()
    return home


@pytest.fixture
async def ours(codex_home: Path) -> AsyncIterator[Client]:
    async with running_server() as (server, url):
        server.server_env["CODEX_HOME"] = str(codex_home)
        async with Client.connect(url) as client:
            await client.initialize()
            yield client


async def both(codex_home: Path, ours: Client, params: dict[str, Any]) -> dict[str, Any]:
    """Our answer, after checking the reference gives the same one."""
    mine = await ours.call("environmentConfig/read", params)
    async with reference_client({"CODEX_HOME": str(codex_home)}) as reference:
        theirs = await reference.call("environmentConfig/read", params)
    assert normalised(mine) == normalised(theirs)
    return normalised(mine)


def make_project(root: Path, *, repository: bool = True) -> Path:
    """A project with a root .codex layer and one in ``sub``; returns ``sub/dir``."""
    if repository:
        (root / ".git").mkdir(parents=True)
        (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / ".codex").mkdir(parents=True, exist_ok=True)
    (root / ".codex" / "config.toml").write_text(
        'model = "m"\nmodel_providers = { x = { name = "x" } }\nnotify = ["n"]\n'
        '[mcp_servers.root]\nurl = "http://root"\n'
    )
    (root / "sub" / ".codex").mkdir(parents=True)
    (root / "sub" / ".codex" / "config.toml").write_text('[mcp_servers.sub]\nurl = "http://sub"\n')
    (root / "sub" / "dir").mkdir()
    return root / "sub" / "dir"


async def test_user_layer_reduced_to_the_requested_paths(
    codex_home: Path, ours: Client, tmp_path: Path
) -> None:
    (codex_home / "config.toml").write_text(
        'model = "gpt-5.5"\n[mcp_servers.docs]\nurl = "http://127.0.0.1:9/mcp"\nargs = ["a", "b"]\n'
        '[mcp_servers.local]\ncommand = "echo"\n[other]\nx = 1\n'
    )
    result = await both(codex_home, ours, {"cwd": uri(tmp_path), **MCP})
    assert result["codexHomeDir"] == uri(codex_home)
    assert result["config"] == {
        "cloudInsertionIndex": 0,
        "layers": [
            {
                "source": f"user ({codex_home}/config.toml)",
                "baseDir": uri(codex_home),
                "toml": {
                    "mcp_servers": {
                        "docs": {"url": "http://127.0.0.1:9/mcp", "args": ["a", "b"]},
                        "local": {"command": "echo"},
                    }
                },
            }
        ],
    }
    assert result["requirements"] == {"cloudInsertionIndex": 0, "layers": []}
    # a deeper path keeps its (now empty) parent table; a key absent everywhere drops the layer
    deeper = await both(
        codex_home,
        ours,
        {
            "cwd": uri(tmp_path),
            "configPaths": [["mcp_servers", "none"], ["model"]],
            "requirementsPaths": [],
        },
    )
    assert deeper["config"]["layers"][0]["toml"] == {"model": "gpt-5.5", "mcp_servers": {}}
    absent = await both(
        codex_home,
        ours,
        {"cwd": uri(tmp_path), "configPaths": [["nowhere"]], "requirementsPaths": []},
    )
    assert absent["config"]["layers"] == []


async def test_trusted_project_layers_from_the_root_down(
    codex_home: Path, ours: Client, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    cwd = make_project(project)
    (codex_home / "config.toml").write_text(f'[projects."{project}"]\ntrust_level = "trusted"\n')
    params = {
        "cwd": uri(cwd),
        "configPaths": [["mcp_servers"], ["model"], ["model_providers"], ["notify"]],
        "requirementsPaths": [],
    }
    result = await both(codex_home, ours, params)
    assert [(layer["source"], layer["toml"]) for layer in result["config"]["layers"]] == [
        (
            f"project ({project}/.codex/config.toml)",
            {"model": "m", "mcp_servers": {"root": {"url": "http://root"}}},
        ),
        (
            f"project ({project}/sub/.codex/config.toml)",
            {"mcp_servers": {"sub": {"url": "http://sub"}}},
        ),
    ]


@pytest.mark.parametrize("trust", ["untrusted", None])
async def test_untrusted_projects_are_left_out(
    codex_home: Path, ours: Client, tmp_path: Path, trust: str | None
) -> None:
    project = tmp_path / "project"
    cwd = make_project(project)
    if trust:
        (codex_home / "config.toml").write_text(
            f'[projects."{project}"]\ntrust_level = "{trust}"\n'
        )
    result = await both(codex_home, ours, {"cwd": uri(cwd), **MCP})
    assert result["config"]["layers"] == []


async def test_an_empty_git_folder_is_no_project_root(
    codex_home: Path, ours: Client, tmp_path: Path
) -> None:
    """Without HEAD, .git marks nothing: the project root is cwd itself, so the trusted
    parent's layers are not read."""
    project = tmp_path / "project"
    cwd = make_project(project, repository=False)
    (project / ".git").mkdir()
    (codex_home / "config.toml").write_text(f'[projects."{project}"]\ntrust_level = "trusted"\n')
    assert (await both(codex_home, ours, {"cwd": uri(cwd), **MCP}))["config"]["layers"] == []
    on_root = await both(codex_home, ours, {"cwd": uri(project), **MCP})
    assert [layer["source"] for layer in on_root["config"]["layers"]] == [
        f"project ({project}/.codex/config.toml)"
    ]


async def test_errors_as_the_reference(codex_home: Path, ours: Client, tmp_path: Path) -> None:
    cases = [
        (
            {"cwd": uri(tmp_path), "configPaths": [], "requirementsPaths": []},
            -32602,
            "at least one config or requirements path is required",
        ),
        (
            {"cwd": uri(tmp_path), "configPaths": [["a"], []], "requirementsPaths": []},
            -32602,
            "TOML paths must contain at least one key segment",
        ),
    ]
    async with reference_client({"CODEX_HOME": str(codex_home)}) as reference:
        for params, code, message in cases:
            for client in (ours, reference):
                with pytest.raises(RpcFailure) as failure:
                    await client.call("environmentConfig/read", params)
                assert (failure.value.code, failure.value.message) == (code, message)
    with pytest.raises(RpcFailure) as missing:
        await ours.call("environmentConfig/read", {"cwd": uri(tmp_path), "configPaths": [["a"]]})
    assert missing.value.code == -32602 and "requirementsPaths" in missing.value.message


async def test_codex_home_must_exist(tmp_path: Path) -> None:
    async with running_server() as (server, url):
        server.server_env["CODEX_HOME"] = str(tmp_path / "nowhere")
        async with Client.connect(url) as client:
            await client.initialize()
            with pytest.raises(RpcFailure) as failure:
                await client.call("environmentConfig/read", {"cwd": uri(tmp_path), **MCP})
    assert failure.value.code == -32603
    assert failure.value.message == (
        f'failed to find Codex home: CODEX_HOME points to "{tmp_path / "nowhere"}", but that path does not exist'
    )


def test_system_and_legacy_managed_layers(tmp_path: Path) -> None:
    """The /etc/codex files, read from a folder of the test's own."""
    system = tmp_path / "etc-codex"
    system.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    (system / "config.toml").write_text('[mcp_servers.sys]\nurl = "http://sys"\n')
    (system / "requirements.toml").write_text(
        '[mcp_servers.sys]\nidentity = { url = "http://sys" }\n'
    )
    (system / "managed_config.toml").write_text(
        'approval_policy = "never"\nsandbox_mode = "workspace-write"\n[mcp_servers.managed]\nurl = "http://m"\n'
    )
    (home / "config.toml").write_text('[mcp_servers.user]\nurl = "http://u"\n')
    result = read_environment_config(
        str(tmp_path),
        [["mcp_servers"]],
        [["mcp_servers"], ["allowed_sandbox_modes"], ["allowed_approval_policies"]],
        {"CODEX_HOME": str(home), "HOME": str(tmp_path)},
        system_dir=str(system),
    )
    assert [(layer.source, tomllib.loads(layer.toml)) for layer in result.config.layers] == [
        (f"system ({system}/config.toml)", {"mcp_servers": {"sys": {"url": "http://sys"}}}),
        (f"user ({home}/config.toml)", {"mcp_servers": {"user": {"url": "http://u"}}}),
        (
            f"legacy managed_config.toml ({system}/managed_config.toml)",
            {"mcp_servers": {"managed": {"url": "http://m"}}},
        ),
    ]
    assert result.config.cloud_insertion_index == 1  # after the system layer
    assert [(layer.source, tomllib.loads(layer.toml)) for layer in result.requirements.layers] == [
        (
            f"{system}/requirements.toml",
            {"mcp_servers": {"sys": {"identity": {"url": "http://sys"}}}},
        ),
        (
            f"{system}/managed_config.toml",
            {
                "allowed_approval_policies": ["never"],
                "allowed_sandbox_modes": ["read-only", "workspace-write"],
            },
        ),
    ]
    assert result.requirements.cloud_insertion_index == 1
    assert result.user_home_dir == uri(tmp_path)


def test_a_broken_config_file_is_an_internal_error(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("model = \n")
    with pytest.raises(RpcError) as failure:
        read_environment_config(
            str(tmp_path), [["model"]], [], {"CODEX_HOME": str(tmp_path)}, system_dir=os.devnull
        )
    assert failure.value.code == -32603
    assert failure.value.message.startswith("failed to load executor-local config:")
