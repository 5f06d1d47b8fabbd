"""Resolving profiles into policies, as the reference 0.169 resolves them (docs/sandbox.md).

The expectations come from the bwrap arguments the reference built for the same profiles.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from exec_server.sandbox.policy import (
    UNRESTRICTED,
    Access,
    Policy,
    PolicyError,
    ResolveContext,
    Rule,
    combine,
    fs_context,
    glob_regex,
    glob_static_prefix,
    load_confinement,
    process_context,
    resolve,
)
from exec_server.sandbox.profile import ProfileError, parse_permissions, parse_sandbox

from .test_sandbox_profile import workspace_write


def _uri(path: Path | str) -> str:
    return f"file://{path}"


def _profile(ws: Path) -> dict[str, Any]:
    profile = json.loads(
        json.dumps(workspace_write()).replace("/home/dev/project-root/work", str(ws))
    )
    assert isinstance(profile, dict)
    return profile


def _managed(entries: list[dict[str, Any]], network: str = "restricted") -> Any:
    return parse_permissions(
        {
            "type": "managed",
            "file_system": {"type": "restricted", "entries": entries},
            "network": network,
        },
        "permissions",
        plain_paths=True,
    )


def _path(path: Path | str, access: str, **extra: Any) -> dict[str, Any]:
    return {"path": {"type": "path", "path": str(path)}, "access": access, **extra}


def _special(kind: str, access: str, **value: Any) -> dict[str, Any]:
    return {"path": {"type": "special", "value": {"kind": kind, **value}}, "access": access}


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    workspace = tmp_path / "ws"
    (workspace / ".git").mkdir(parents=True)
    return workspace


def test_workspace_write_resolves_like_the_reference(ws: Path, tmp_path: Path) -> None:
    """The capture's profile: / readable, the workspace, /tmp and the child's $TMPDIR writable,
    .git and friends read-only (existing or not), the network closed."""
    tmpdir = tmp_path / "child-tmp"
    tmpdir.mkdir()
    request = parse_sandbox(_profile(ws))
    assert request is not None
    policy = resolve(
        request.permissions, process_context(request, str(ws), {"TMPDIR": str(tmpdir)})
    )
    assert policy.base == Access.READ and not policy.network
    writable = {rule.path for rule in policy.rules if rule.access == Access.WRITE}
    assert writable == {str(ws), "/tmp", str(tmpdir)}
    names = (".git", ".agents", ".codex", ".aws")
    assert {f"{ws}/{n}" for n in names} <= set(policy.read_only_paths)
    assert {f"/tmp/{n}" for n in names} <= set(policy.read_only_paths)
    assert policy.access_at(f"{ws}/src/main.py") == Access.WRITE
    assert policy.access_at(f"{ws}/.git/config") == Access.READ
    assert policy.access_at(f"{ws}/.codex/config.toml") == Access.READ  # missing, still protected
    assert policy.access_at("/etc/passwd") == Access.READ
    assert policy.access_at(f"{tmpdir}/x") == Access.WRITE
    assert policy.hidden_paths == ()
    assert policy.is_restricted and policy.restricts_filesystem


def test_tmpdir_is_the_childs_not_the_servers(ws: Path, tmp_path: Path) -> None:
    """The reference resolves ``tmpdir`` from the child's environment; none there, none at all."""
    permissions = _managed([_special("root", "read"), _special("tmpdir", "write")])
    elsewhere = tmp_path / "t"
    elsewhere.mkdir()
    with_tmpdir = ResolveContext(cwd=str(ws), tmpdir=str(elsewhere))
    assert resolve(permissions, with_tmpdir).writable_roots == (str(elsewhere),)
    assert resolve(permissions, ResolveContext(cwd=str(ws))).writable_roots == ()
    request = parse_sandbox(_profile(ws))
    assert request is not None
    assert process_context(request, "/", {}).tmpdir is None
    assert process_context(request, "/", {"TMPDIR": "relative"}).tmpdir is None
    assert fs_context(request, "/").tmpdir is None  # the reference's fs helper has no env


def test_project_roots_default_to_the_cwd_and_subpaths_stay_inside(
    ws: Path, tmp_path: Path
) -> None:
    (tmp_path / "outside").mkdir()
    permissions = _managed(
        [
            _special("root", "read"),
            _special("project_roots", "write"),
            _special("project_roots", "write", subpath="../outside"),
            _special("project_roots", "write", subpath=str(tmp_path / "outside")),
            _special("unknown", "write", path="some_future_kind"),
        ]
    )
    policy = resolve(permissions, ResolveContext(cwd=str(ws)))
    assert policy.writable_roots == (str(ws),)
    assert policy.access_at(str(tmp_path / "outside" / "x")) == Access.READ


def test_most_specific_path_wins_and_deny_beats_write_beats_read(ws: Path) -> None:
    (ws / "sub" / "deep").mkdir(parents=True)
    (ws / "same").mkdir()
    (ws / "both").mkdir()
    permissions = _managed(
        [
            _special("root", "read"),
            _path(ws, "write"),
            _path(ws / "sub", "read"),
            _path(ws / "sub" / "deep", "write"),
            _path(ws / "same", "read"),
            _path(ws / "same", "write"),
            _path(ws / "both", "write"),
            _path(ws / "both", "none"),
        ]
    )
    policy = resolve(permissions, ResolveContext(cwd=str(ws)))
    assert policy.access_at(str(ws / "sub" / "f")) == Access.READ
    assert policy.access_at(str(ws / "sub" / "deep" / "f")) == Access.WRITE
    assert policy.access_at(str(ws / "same" / "f")) == Access.WRITE
    assert policy.access_at(str(ws / "both" / "f")) == Access.NONE
    assert str(ws / "both") in policy.hidden_paths
    assert str(ws / "sub" / "deep" / ".git") in policy.read_only_paths  # every writable root


def test_missing_paths(ws: Path, tmp_path: Path) -> None:
    """A missing writable root is dropped; a missing read-only path inside a writable root
    stays (so it cannot be created), unless ``skip`` and not a protected metadata name."""
    permissions = _managed(
        [
            _special("root", "read"),
            _path(tmp_path / "no-such-root", "write"),
            _path(ws, "write"),
            _path(ws / "keep-out", "read"),
            _path(ws / "optional", "read", missing_path_behavior="skip"),
            _path(ws / ".agents", "read", missing_path_behavior="skip"),
        ]
    )
    policy = resolve(permissions, ResolveContext(cwd=str(ws)))
    assert policy.writable_roots == (str(ws),)
    assert policy.access_at(str(ws / "keep-out")) == Access.READ
    assert policy.access_at(str(ws / "optional")) == Access.WRITE
    assert policy.access_at(str(ws / ".agents")) == Access.READ


def test_symlinked_roots_are_canonical(ws: Path, tmp_path: Path) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(ws)
    policy = resolve(
        _managed([_special("root", "read"), _special("project_roots", "write")]),
        ResolveContext(cwd=str(alias)),
    )
    assert policy.writable_roots == (str(ws),)
    assert policy.access_at(str(ws / ".git" / "HEAD")) == Access.READ


def test_a_carve_out_through_a_writable_symlink_is_refused(ws: Path) -> None:
    """The sandbox could re-point the symlink: protecting today's target would be a lie."""
    (ws / "real").mkdir()
    (ws / "link").symlink_to(ws / "real")
    permissions = _managed(
        [_special("root", "read"), _path(ws, "write"), _path(ws / "link" / "conf", "read")]
    )
    with pytest.raises(PolicyError, match="crosses writable symlink"):
        resolve(permissions, ResolveContext(cwd=str(ws)))


def test_a_symlinked_metadata_dir_is_refused(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / ".codex").symlink_to(tmp_path)
    with pytest.raises(PolicyError, match=r"\.codex"):
        resolve(
            _managed([_special("root", "read"), _path(ws, "write")]), ResolveContext(cwd=str(ws))
        )


def test_kinds_without_filesystem_restrictions() -> None:
    context = ResolveContext(cwd="/")
    assert resolve(parse_permissions({"type": "disabled"}, "p"), context) == UNRESTRICTED
    assert not UNRESTRICTED.is_restricted
    external = resolve(
        parse_permissions({"type": "external", "network": "restricted"}, "p"), context
    )
    assert external.is_restricted and not external.restricts_filesystem and not external.network
    open_fs = parse_permissions(
        {"type": "managed", "file_system": {"type": "unrestricted"}, "network": "enabled"}, "p"
    )
    assert not resolve(open_fs, context).is_restricted
    full_write = resolve(_managed([_special("root", "write")], network="enabled"), context)
    assert not full_write.is_restricted  # no metadata carve-outs under / itself


def test_minimal_and_nothing_readable(ws: Path) -> None:
    policy = resolve(
        _managed([_special("minimal", "read"), _path(ws, "write")]), ResolveContext(cwd=str(ws))
    )
    assert policy.base == Access.NONE and not policy.readable_everywhere
    assert policy.access_at("/usr/bin/env") == Access.READ
    assert policy.access_at("/root/secret") == Access.NONE
    assert policy.access_at(str(ws / "x")) == Access.WRITE


def test_deny_globs(ws: Path) -> None:
    permissions = _managed(
        [
            _special("root", "read"),
            _path(ws, "write"),
            {"path": {"type": "glob_pattern", "pattern": "**/*.env"}, "access": "deny"},
            {"path": {"type": "glob_pattern", "pattern": "**/*.txt"}, "access": "write"},
        ]
    )
    policy = resolve(permissions, ResolveContext(cwd=str(ws)))
    assert policy.deny_globs == (f"{ws}/**/*.env",)  # globs only ever deny
    assert policy.access_at(str(ws / "a" / "prod.env")) == Access.NONE
    assert policy.access_at(str(ws / "prod.env")) == Access.NONE
    assert policy.access_at(str(ws / "prod.env.txt")) == Access.WRITE


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/w/**/*.env", "/w/a.env", True),
        ("/w/**/*.env", "/w/x/y/a.env", True),
        ("/w/*.env", "/w/x/a.env", False),
        ("/w/secret?", "/w/secret1", True),
        ("/w/secret?", "/w/secret/", False),
        ("/w/[ab].txt", "/w/b.txt", True),
        ("/w/[!ab].txt", "/w/b.txt", False),
        ("/w/[ab", "/w/[ab", True),
        ("/w/private/**", "/w/private/a/b", True),
        ("/w/a.b", "/w/aXb", False),
    ],
)
def test_glob_regex(pattern: str, path: str, matches: bool) -> None:
    assert bool(glob_regex(pattern).fullmatch(path)) is matches


def test_glob_static_prefix() -> None:
    assert glob_static_prefix("/w/src/**/*.env") == "/w/src"
    assert glob_static_prefix("/w/a*") == "/w"
    assert glob_static_prefix("/**/x") == ""


def test_intersection_is_what_both_allow(ws: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    client = Policy(
        base=Access.READ,
        rules=(Rule(str(ws), Access.WRITE), Rule(str(other), Access.WRITE)),
        network=True,
    )
    server = Policy(
        base=Access.READ,
        rules=(Rule(str(ws), Access.WRITE), Rule(str(ws / "secrets"), Access.NONE)),
        network=False,
    )
    both = client.intersect(server)
    assert both.access_at(str(ws / "x")) == Access.WRITE
    assert both.access_at(str(other / "x")) == Access.READ  # the server did not allow it
    assert both.access_at(str(ws / "secrets" / "k")) == Access.NONE
    assert not both.network
    assert both == server.intersect(client)
    assert combine(None, server) == UNRESTRICTED.intersect(server)
    assert combine(client, None) is client
    assert combine(None, None) is None


def test_a_client_cannot_loosen_a_confinement(ws: Path, tmp_path: Path) -> None:
    conf_file = tmp_path / "confine.json"
    conf_file.write_text(
        json.dumps(
            {
                "permissions": {
                    "type": "managed",
                    "file_system": {
                        "type": "restricted",
                        "entries": [_special("root", "read"), _special("project_roots", "write")],
                    },
                    "network": "restricted",
                },
                "workspaceRoots": [str(ws)],
            }
        )
    )
    confinement = load_confinement(str(conf_file))
    wide_open = resolve(
        _managed([_special("root", "write")], network="enabled"), ResolveContext(cwd="/")
    )
    policy = combine(wide_open, confinement.policy())
    assert policy is not None
    assert policy.access_at(str(ws / "x")) == Access.WRITE
    assert policy.access_at(str(ws / ".git" / "config")) == Access.READ
    assert policy.access_at("/etc/passwd") == Access.READ
    assert not policy.network


def test_confinement_file_forms_and_errors(tmp_path: Path) -> None:
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"type": "external", "network": "restricted"}))
    assert load_confinement(str(bare)).permissions.kind == "external"
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ProfileError, match="cannot read confinement profile"):
        load_confinement(str(broken))
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"type": "bogus"}))
    with pytest.raises(ProfileError, match="unknown variant `bogus`"):
        load_confinement(str(wrong))
    with pytest.raises(ProfileError):
        load_confinement(os.path.join(str(tmp_path), "missing.json"))
