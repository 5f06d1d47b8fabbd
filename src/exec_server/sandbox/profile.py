"""The ``sandbox`` param of ``process/start`` and ``fs/*``, decoded into typed values.

Codex 0.169 sends a permission profile (docs/sandbox.md has the schema and its sources). This
module only checks its shape: ``parse_sandbox`` turns the wire object into a
:class:`SandboxRequest` or raises :class:`ProfileError`, whose ``message`` is the reference's
own wording for the same mistake (serde's ``missing field `x```, ``unknown variant ...``), so
the methods layer can answer -32602 exactly as the reference does. Nothing here touches the
filesystem; :mod:`.policy` turns a request into concrete paths.

Top-level fields are camelCase (``workspaceRoots``), fields inside ``permissions`` snake_case
(``file_system``, ``missing_path_behavior``), as the client sends them. Unknown fields are
ignored, as the reference ignores them.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import unquote_to_bytes, urlsplit

import msgspec

AccessMode = Literal["read", "write", "deny"]
SpecialKind = Literal["root", "minimal", "project_roots", "tmpdir", "slash_tmp", "unknown"]
PermissionsKind = Literal["managed", "disabled", "external"]


class ProfileError(ValueError):
    """A malformed ``sandbox`` value: ``field`` says where, ``message`` what (reference wording).

    The methods layer answers -32602 with ``message``; ``str()`` adds the field for logs.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class SpecialPath(msgspec.Struct, frozen=True, tag="special", tag_field="type"):
    """A path the server works out: ``/``, the platform's system dirs, the project roots, ...

    ``subpath`` is relative to each project root; ``name`` is the token of a kind this
    version does not know (``kind: unknown``), kept only so it can be reported.
    """

    kind: SpecialKind
    subpath: str | None = None
    name: str | None = None


class ExactPath(msgspec.Struct, frozen=True, tag="path", tag_field="type"):
    """One absolute, lexically normalised path (symlinks not resolved yet)."""

    path: str


class GlobPath(msgspec.Struct, frozen=True, tag="glob_pattern", tag_field="type"):
    """A git-style glob (``**/*.env``); relative patterns are relative to the policy cwd."""

    pattern: str


PathSpec = SpecialPath | ExactPath | GlobPath


class Entry(msgspec.Struct, frozen=True):
    """One ``file_system.entries`` item. ``deny`` is also what the legacy ``none`` means."""

    path: PathSpec
    access: AccessMode
    skip_if_missing: bool = False


class Permissions(msgspec.Struct, frozen=True):
    """``permissions``: who sandboxes (``kind``), the filesystem entries, the network.

    ``managed`` with ``restricted_fs`` False is ``file_system: {type: unrestricted}``;
    ``disabled`` and ``external`` carry no entries. ``network`` is True for ``enabled``.
    """

    kind: PermissionsKind
    network: bool
    restricted_fs: bool = False
    entries: tuple[Entry, ...] = ()


class SandboxRequest(msgspec.Struct, frozen=True):
    """The whole ``sandbox`` object of one request.

    ``cwd`` and ``workspace_roots`` are the top-level fields; ``policy_cwd`` and
    ``policy_workspace_roots`` come from ``policyContext`` (sent with ``fs/*``), None when
    absent. ``user_home`` is carried but unused: no 0.169 path kind refers to it.
    """

    permissions: Permissions
    cwd: str | None = None
    workspace_roots: tuple[str, ...] = ()
    policy_cwd: str | None = None
    policy_workspace_roots: tuple[str, ...] | None = None
    user_home: str | None = None
    use_legacy_landlock: bool = False
    windows_sandbox_level: str = "disabled"


_PERMISSION_KINDS = ("managed", "disabled", "external")
_FILE_SYSTEM_KINDS = ("restricted", "unrestricted")
_NETWORK_MODES = ("restricted", "enabled")
_ACCESS_MODES = ("read", "write", "deny", "none")
_PATH_TYPES = ("path", "glob_pattern", "special")
_SPECIAL_KINDS = (
    "root",
    "minimal",
    "current_working_directory",
    "project_roots",
    "tmpdir",
    "slash_tmp",
    "unknown",
)
_MISSING_PATH_BEHAVIORS = ("skip",)
_WINDOWS_LEVELS = ("disabled", "restricted-token", "elevated", "mxc")
_PROXY_SETTINGS_MODES = ("reconcile", "preserve")
_SANDBOX_OVERRIDES = ("noOverride", "escalatedSandboxWithRestrictions", "bypassSandboxFirstAttempt")
"""``sandbox.sandboxOverride`` (0.169): checked, then nothing more. An approved escalation
arrives as its own profile (``/`` writable, deny rules kept), enforced as any other; the
reference runs every variant under the profile sent (probed: the denied read still fails)."""
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")


def parse_sandbox(value: object, field: str = "sandbox") -> SandboxRequest | None:
    """Decode the ``sandbox`` param; None (absent or null) means no sandbox was asked for.

    Paths must be ``file://`` URIs, as the reference requires (a plain path is
    ``invalid URI: relative URL without a base``).
    """
    if value is None:
        return None
    obj = _struct(value, field, "struct WireFileSystemSandboxContext")
    permissions = parse_permissions(_required(obj, "permissions", field), f"{field}.permissions")
    cwd = _optional_uri(obj, "cwd", field)
    roots = _uri_list(obj, "workspaceRoots", field)
    policy_cwd: str | None = None
    policy_roots: tuple[str, ...] | None = None
    context = obj.get("policyContext")
    if context is not None:
        context_field = f"{field}.policyContext"
        context_obj = _struct(context, context_field, "struct WireFileSystemPolicyContext")
        policy_cwd = _optional_uri(context_obj, "cwd", context_field)
        if "workspaceRoots" in context_obj:
            policy_roots = _uri_list(context_obj, "workspaceRoots", context_field)
    home = _optional_uri(obj, "userHomeDir", field)
    legacy = obj.get("useLegacyLandlock", False)
    if not isinstance(legacy, bool):
        raise _type_error(f"{field}.useLegacyLandlock", legacy, "a boolean")
    level = _variant(_required(obj, "windowsSandboxLevel", field), _WINDOWS_LEVELS, field)
    if level == "mxc":
        raise ProfileError(
            f"{field}.windowsSandboxLevel", "native MXC is unavailable on this executor"
        )
    override = obj.get("sandboxOverride")
    if override is not None:
        _variant(override, _SANDBOX_OVERRIDES, f"{field}.sandboxOverride")
    mode = obj.get("windowsSandboxProxySettingsMode")
    if mode is not None:
        _variant(mode, _PROXY_SETTINGS_MODES, f"{field}.windowsSandboxProxySettingsMode")
    return SandboxRequest(
        permissions=permissions,
        cwd=cwd,
        workspace_roots=roots,
        policy_cwd=policy_cwd,
        policy_workspace_roots=policy_roots,
        user_home=home,
        use_legacy_landlock=legacy,
        windows_sandbox_level=level,
    )


def parse_permissions(value: object, field: str, *, plain_paths: bool = False) -> Permissions:
    """Decode a ``permissions`` object (``{"type": "managed", "file_system": ..., ...}``).

    ``plain_paths`` also accepts absolute paths where the wire wants ``file://`` URIs, for
    profiles written by hand (the server's confinement file).
    """
    obj = _struct(value, field, "internally tagged enum ExecPermissionProfile")
    kind = _variant(_required(obj, "type", field), _PERMISSION_KINDS, f"{field}.type")
    if kind == "disabled":
        return Permissions(kind="disabled", network=True)
    if kind == "external":
        network = _network(_required(obj, "network", field), f"{field}.network")
        return Permissions(kind="external", network=network)
    fs_field = f"{field}.file_system"
    fs_obj = _struct(
        _required(obj, "file_system", field),
        fs_field,
        "internally tagged enum ExecManagedFileSystemPermissions",
    )
    fs_kind = _variant(_required(fs_obj, "type", fs_field), _FILE_SYSTEM_KINDS, f"{fs_field}.type")
    entries: tuple[Entry, ...] = ()
    if fs_kind == "restricted":
        raw = _required(fs_obj, "entries", fs_field)
        if not isinstance(raw, list):
            raise _type_error(f"{fs_field}.entries", raw, "a sequence")
        entries = tuple(
            _entry(item, f"{fs_field}.entries[{index}]", plain_paths)
            for index, item in enumerate(raw)
        )
    network = _network(_required(obj, "network", field), f"{field}.network")
    return Permissions(
        kind="managed", network=network, restricted_fs=fs_kind == "restricted", entries=entries
    )


def _entry(value: object, field: str, plain_paths: bool) -> Entry:
    obj = _struct(value, field, "struct ExecFileSystemSandboxEntry")
    path = _path_spec(_required(obj, "path", field), f"{field}.path", plain_paths)
    access = _variant(_required(obj, "access", field), _ACCESS_MODES, f"{field}.access")
    behavior = obj.get("missing_path_behavior")
    if behavior is not None:
        _variant(behavior, _MISSING_PATH_BEHAVIORS, f"{field}.missing_path_behavior")
    mode: AccessMode = (
        "deny" if access in ("deny", "none") else "write" if access == "write" else "read"
    )
    return Entry(path=path, access=mode, skip_if_missing=behavior is not None)


def _path_spec(value: object, field: str, plain_paths: bool) -> PathSpec:
    obj = _struct(value, field, "internally tagged enum ExecFileSystemPath")
    kind = _variant(_required(obj, "type", field), _PATH_TYPES, f"{field}.type")
    if kind == "path":
        raw = _string(_required(obj, "path", field), f"{field}.path")
        return ExactPath(path=_entry_path(raw, f"{field}.path", plain_paths))
    if kind == "glob_pattern":
        return GlobPath(pattern=_string(_required(obj, "pattern", field), f"{field}.pattern"))
    value_field = f"{field}.value"
    special = _struct(
        _required(obj, "value", field), value_field, "internally tagged enum FileSystemSpecialPath"
    )
    special_kind = _variant(
        _required(special, "kind", value_field), _SPECIAL_KINDS, f"{value_field}.kind"
    )
    subpath = special.get("subpath")
    if subpath is not None:
        subpath = _string(subpath, f"{value_field}.subpath")
    if special_kind == "unknown":
        name = _string(_required(special, "path", value_field), f"{value_field}.path")
        return SpecialPath(kind="unknown", subpath=subpath, name=name)
    if special_kind in ("project_roots", "current_working_directory"):
        return SpecialPath(kind="project_roots", subpath=subpath)
    fixed: SpecialKind = special_kind  # type: ignore[assignment]  # root, minimal, tmpdir, slash_tmp
    return SpecialPath(kind=fixed)


def _entry_path(raw: str, field: str, plain_paths: bool) -> str:
    if plain_paths and raw.startswith("/"):
        return _normalise(raw)
    return parse_path_uri(raw, field)


def parse_path_uri(value: str, field: str) -> str:
    """A ``file://`` URI as a normalised absolute path, with the reference's refusals."""
    if not _URI_SCHEME.match(value):
        raise ProfileError(field, "invalid URI: relative URL without a base")
    parts = urlsplit(value)
    if parts.scheme.lower() != "file":
        raise ProfileError(field, f"unsupported path URI scheme `{parts.scheme}`")
    if parts.query:
        raise ProfileError(field, "query parameters are not allowed in path URIs")
    if parts.netloc not in ("", "localhost"):
        raise ProfileError(
            field, f"invalid sandbox permission path: '{value}' is invalid on 'linux'"
        )
    path = os.fsdecode(unquote_to_bytes(parts.path))
    return _normalise(path if path.startswith("/") else "/" + path)


def _normalise(path: str) -> str:
    normalised = posixpath.normpath(path)
    return "/" + normalised.lstrip("/") if normalised.startswith("//") else normalised


def _optional_uri(obj: Mapping[str, Any], key: str, field: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    return parse_path_uri(_string(value, f"{field}.{key}"), f"{field}.{key}")


def _uri_list(obj: Mapping[str, Any], key: str, field: str) -> tuple[str, ...]:
    if key not in obj:
        return ()
    value = obj[key]
    if not isinstance(value, list):
        raise _type_error(f"{field}.{key}", value, "a sequence")
    item_field = f"{field}.{key}"
    return tuple(
        parse_path_uri(_string(item, f"{item_field}[{i}]"), f"{item_field}[{i}]")
        for i, item in enumerate(value)
    )


def _network(value: object, field: str) -> bool:
    return _variant(value, _NETWORK_MODES, field, "string or map") == "enabled"


def _struct(value: object, field: str, expected: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _type_error(field, value, expected)
    return value


def _required(obj: Mapping[str, Any], key: str, field: str) -> Any:
    if key not in obj:
        raise ProfileError(field, f"missing field `{key}`")
    return obj[key]


def _string(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise _type_error(field, value, "a string")
    return value


def _variant(
    value: object, variants: tuple[str, ...], field: str, expected: str = "string or map"
) -> str:
    """A unit variant, spelled as a string (or, as serde also allows, a one-key map)."""
    if isinstance(value, dict) and len(value) == 1:
        value = next(iter(value))
    if not isinstance(value, str):
        raise _type_error(field, value, expected)
    if value not in variants:
        raise ProfileError(field, f"unknown variant `{value}`, {_expected(variants)}")
    return value


def _expected(variants: tuple[str, ...]) -> str:
    quoted = [f"`{v}`" for v in variants]
    if len(quoted) == 1:
        return f"expected {quoted[0]}"
    if len(quoted) == 2:
        return f"expected {quoted[0]} or {quoted[1]}"
    return "expected one of " + ", ".join(quoted)


def _type_error(field: str, value: object, expected: str) -> ProfileError:
    return ProfileError(field, f"invalid type: {_unexpected(value)}, expected {expected}")


def _unexpected(value: object) -> str:
    """How serde names a JSON value it did not expect."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{'true' if value else 'false'}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value}`"
    if isinstance(value, str):
        return f"string {json.dumps(value, ensure_ascii=False)}"
    if isinstance(value, list):
        return "sequence"
    return "map"
