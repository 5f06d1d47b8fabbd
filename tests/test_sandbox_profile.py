"""Decoding codex's ``sandbox`` param: the shapes 0.169 sends, and the reference's -32602 texts.

The expected messages were recorded from the reference 0.169 binary (docs/sandbox.md, "Validation").
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from typing import Any

import pytest

from exec_server.sandbox.profile import (
    ExactPath,
    GlobPath,
    ProfileError,
    SpecialPath,
    parse_permissions,
    parse_sandbox,
)

from .sandbox_support import special as _special
from .sandbox_support import workspace_write as codex_workspace_write
from .support import REPO

CAPTURE = os.path.join(
    os.path.dirname(REPO), "shared", "captures", "codex-0.169-client-vs-reference.jsonl"
)
ROOT = "file:///home/dev/project-root/work"


def workspace_write() -> dict[str, Any]:
    return codex_workspace_write(ROOT)


def test_captured_profiles_decode() -> None:
    """Every sandbox codex 0.169 sent in the capture decodes (process/start and fs/*)."""
    if not os.path.exists(CAPTURE):
        pytest.skip(f"the capture is not at {CAPTURE}")
    seen = 0
    with open(CAPTURE) as lines:
        for line in lines:
            params = json.loads(line)["msg"].get("params") or {}
            if not isinstance(params.get("sandbox"), dict):
                continue
            request = parse_sandbox(params["sandbox"])
            assert request is not None
            assert request.permissions.kind == "managed" and request.permissions.restricted_fs
            assert request.permissions.network is False
            assert request.workspace_roots[0].startswith("/home/dev/project-root/")
            seen += 1
    assert seen >= 4


def test_workspace_write_profile_fields() -> None:
    request = parse_sandbox(workspace_write())
    assert request is not None
    assert request.cwd == "/home/dev/project-root/work"
    assert request.workspace_roots == ("/home/dev/project-root/work",)
    assert request.policy_cwd == "/home/dev/project-root/work"
    assert request.policy_workspace_roots == ("/home/dev/project-root/work",)
    assert request.user_home == "/home/dev"
    entries = request.permissions.entries
    assert [e.access for e in entries] == ["read", "write", "write", "write", *["read"] * 4]
    assert entries[0].path == SpecialPath(kind="root")
    assert entries[4].path == SpecialPath(kind="project_roots", subpath=".git")
    assert entries[4].skip_if_missing and not entries[1].skip_if_missing


def test_null_is_no_sandbox() -> None:
    assert parse_sandbox(None) is None


def test_other_permission_kinds_and_aliases() -> None:
    disabled = parse_permissions({"type": "disabled"}, "p")
    assert disabled.kind == "disabled" and disabled.network
    external = parse_permissions({"type": "external", "network": "restricted"}, "p")
    assert external.kind == "external" and not external.network
    open_fs = parse_permissions(
        {"type": "managed", "file_system": {"type": "unrestricted"}, "network": "enabled"}, "p"
    )
    assert not open_fs.restricted_fs and open_fs.network
    aliases = parse_permissions(
        {
            "type": "managed",
            "file_system": {
                "type": "restricted",
                "entries": [
                    {"path": _special("current_working_directory"), "access": "write"},
                    {"path": {"type": "path", "path": "file:///etc/x%20y"}, "access": "none"},
                    {"path": {"type": "glob_pattern", "pattern": "**/*.env"}, "access": "deny"},
                    {"path": _special("unknown", path="future_kind"), "access": "read"},
                ],
            },
            "network": {"enabled": {}},
        },
        "p",
    )
    assert [e.path for e in aliases.entries] == [
        SpecialPath(kind="project_roots"),
        ExactPath(path="/etc/x y"),
        GlobPath(pattern="**/*.env"),
        SpecialPath(kind="unknown", name="future_kind"),
    ]
    assert [e.access for e in aliases.entries] == ["write", "deny", "deny", "read"]
    assert aliases.network


def test_confinement_terms_accept_plain_paths() -> None:
    entry = {"path": {"type": "path", "path": "/srv/data"}, "access": "read"}
    spec = {"type": "managed", "file_system": {"type": "restricted", "entries": [entry]}}
    spec["network"] = "restricted"
    assert parse_permissions(spec, "p", plain_paths=True).entries[0].path == ExactPath("/srv/data")
    with pytest.raises(ProfileError) as caught:
        parse_permissions(spec, "p")
    assert caught.value.message == "invalid URI: relative URL without a base"


def _entries(profile: dict[str, Any]) -> list[Any]:
    entries: list[Any] = profile["permissions"]["file_system"]["entries"]
    return entries


Mutation = Callable[[dict[str, Any]], Any]

# (mutation of the workspace-write profile, the reference 0.169's -32602 message)
REFERENCE_MESSAGES: dict[str, tuple[Mutation, str]] = {
    "bad type": (
        lambda p: p["permissions"].__setitem__("type", "bogus"),
        "unknown variant `bogus`, expected one of `managed`, `disabled`, `external`",
    ),
    "no permissions": (lambda p: p.pop("permissions"), "missing field `permissions`"),
    "null permissions": (
        lambda p: p.__setitem__("permissions", None),
        "invalid type: null, expected internally tagged enum ExecPermissionProfile",
    ),
    "string permissions": (
        lambda p: p.__setitem__("permissions", "x"),
        'invalid type: string "x", expected internally tagged enum ExecPermissionProfile',
    ),
    "external without network": (
        lambda p: p.__setitem__("permissions", {"type": "external"}),
        "missing field `network`",
    ),
    "bad file_system type": (
        lambda p: p["permissions"]["file_system"].__setitem__("type", "bogus"),
        "unknown variant `bogus`, expected `restricted` or `unrestricted`",
    ),
    "no file_system": (
        lambda p: p["permissions"].pop("file_system"),
        "missing field `file_system`",
    ),
    "null file_system": (
        lambda p: p["permissions"].__setitem__("file_system", None),
        "invalid type: null, expected internally tagged enum ExecManagedFileSystemPermissions",
    ),
    "bad network": (
        lambda p: p["permissions"].__setitem__("network", "bogus"),
        "unknown variant `bogus`, expected `restricted` or `enabled`",
    ),
    "no network": (lambda p: p["permissions"].pop("network"), "missing field `network`"),
    "boolean network": (
        lambda p: p["permissions"].__setitem__("network", True),
        "invalid type: boolean `true`, expected string or map",
    ),
    "bad access": (
        lambda p: _entries(p)[0].__setitem__("access", "bogus"),
        "unknown variant `bogus`, expected one of `read`, `write`, `deny`, `none`",
    ),
    "access in capitals": (
        lambda p: _entries(p)[0].__setitem__("access", "Read"),
        "unknown variant `Read`, expected one of `read`, `write`, `deny`, `none`",
    ),
    "no access": (
        lambda p: _entries(p).append({"path": _special("root")}),
        "missing field `access`",
    ),
    "bad kind": (
        lambda p: _entries(p)[0]["path"]["value"].__setitem__("kind", "bogus"),
        "unknown variant `bogus`, expected one of `root`, `minimal`, `current_working_directory`, "
        "`project_roots`, `tmpdir`, `slash_tmp`, `unknown`",
    ),
    "no kind": (
        lambda p: _entries(p).append({"path": {"type": "special", "value": {}}, "access": "read"}),
        "missing field `kind`",
    ),
    "bad path type": (
        lambda p: _entries(p)[0]["path"].__setitem__("type", "bogus"),
        "unknown variant `bogus`, expected one of `path`, `glob_pattern`, `special`",
    ),
    "plain path": (
        lambda p: _entries(p).append({"path": {"type": "path", "path": "/etc"}, "access": "read"}),
        "invalid URI: relative URL without a base",
    ),
    "http path": (
        lambda p: _entries(p).append(
            {"path": {"type": "path", "path": "http://x/y"}, "access": "read"}
        ),
        "unsupported path URI scheme `http`",
    ),
    "query in path": (
        lambda p: _entries(p).append(
            {"path": {"type": "path", "path": "file:///tmp/ab?x=1"}, "access": "read"}
        ),
        "query parameters are not allowed in path URIs",
    ),
    "glob without pattern": (
        lambda p: _entries(p).append({"path": {"type": "glob_pattern"}, "access": "deny"}),
        "missing field `pattern`",
    ),
    "unknown kind without path": (
        lambda p: _entries(p).append({"path": _special("unknown"), "access": "read"}),
        "missing field `path`",
    ),
    "bad missing_path_behavior": (
        lambda p: _entries(p)[4].__setitem__("missing_path_behavior", "bogus"),
        "unknown variant `bogus`, expected `skip`",
    ),
    "null entry": (
        lambda p: _entries(p).append(None),
        "invalid type: null, expected struct ExecFileSystemSandboxEntry",
    ),
    "entries as object": (
        lambda p: p["permissions"]["file_system"].__setitem__("entries", {}),
        "invalid type: map, expected a sequence",
    ),
    "no entries": (
        lambda p: p["permissions"]["file_system"].pop("entries"),
        "missing field `entries`",
    ),
    "integer subpath": (
        lambda p: _entries(p).append(
            {"path": _special("project_roots", subpath=5), "access": "read"}
        ),
        "invalid type: integer `5`, expected a string",
    ),
    "plain cwd": (
        lambda p: p.__setitem__("cwd", "/tmp"),
        "invalid URI: relative URL without a base",
    ),
    "null workspaceRoots": (
        lambda p: p.__setitem__("workspaceRoots", None),
        "invalid type: null, expected a sequence",
    ),
    "null useLegacyLandlock": (
        lambda p: p.__setitem__("useLegacyLandlock", None),
        "invalid type: null, expected a boolean",
    ),
    "no windowsSandboxLevel": (
        lambda p: p.pop("windowsSandboxLevel"),
        "missing field `windowsSandboxLevel`",
    ),
    "bad windowsSandboxLevel": (
        lambda p: p.__setitem__("windowsSandboxLevel", "bogus"),
        "unknown variant `bogus`, expected one of `disabled`, `restricted-token`, `elevated`, `mxc`",
    ),
    "mxc": (
        lambda p: p.__setitem__("windowsSandboxLevel", "mxc"),
        "native MXC is unavailable on this executor",
    ),
    "bad proxy settings mode": (
        lambda p: p.__setitem__("windowsSandboxProxySettingsMode", "x"),
        "unknown variant `x`, expected `reconcile` or `preserve`",
    ),
    "string policyContext": (
        lambda p: p.__setitem__("policyContext", "x"),
        'invalid type: string "x", expected struct WireFileSystemPolicyContext',
    ),
}


@pytest.mark.parametrize("case", sorted(REFERENCE_MESSAGES))
def test_reference_messages(case: str) -> None:
    mutate, message = REFERENCE_MESSAGES[case]
    profile = copy.deepcopy(workspace_write())
    mutate(profile)
    with pytest.raises(ProfileError) as caught:
        parse_sandbox(profile)
    assert caught.value.message == message


def test_a_string_sandbox_is_refused_as_the_reference_does() -> None:
    with pytest.raises(ProfileError) as caught:
        parse_sandbox("x")
    assert caught.value.message == (
        'invalid type: string "x", expected struct WireFileSystemSandboxContext'
    )
    assert caught.value.field == "sandbox"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: p.pop("cwd"),
        lambda p: p.pop("workspaceRoots"),
        lambda p: p.pop("useLegacyLandlock"),
        lambda p: p.__setitem__("cwd", None),
        lambda p: p.__setitem__("zzz", 1),
        lambda p: p["permissions"].__setitem__("zzz", 1),
        lambda p: _entries(p)[0].__setitem__("zzz", 1),
        lambda p: _entries(p)[4].__setitem__("missing_path_behavior", None),
        lambda p: p.__setitem__("windowsSandboxPrivateDesktop", "anything"),
        lambda p: p.__setitem__("policyContext", {"workspaceRoots": []}),
    ],
)
def test_what_the_reference_accepts(mutate: Mutation) -> None:
    profile = copy.deepcopy(workspace_write())
    mutate(profile)
    assert parse_sandbox(profile) is not None


def test_errors_name_the_field() -> None:
    profile = workspace_write()
    _entries(profile)[2]["access"] = "bogus"
    with pytest.raises(ProfileError) as caught:
        parse_sandbox(profile)
    assert caught.value.field == "sandbox.permissions.file_system.entries[2].access"
