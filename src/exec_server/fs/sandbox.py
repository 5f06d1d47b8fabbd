"""Whether an ``fs/*`` request's ``sandbox`` profile is one this server can honour.

The reference runs a file operation inside a sandboxed helper when the profile restricts the
filesystem; this server has no such helper. It therefore runs an operation only when the
profile grants full filesystem access anyway, and refuses every restricted profile with
-32600 saying so, rather than silently doing more than the client allowed (Part B §9).
"""

from __future__ import annotations

from typing import Any

from ..errors import invalid_params, invalid_request

_UNRESTRICTED_TYPES = frozenset({"disabled", "external"})


def check_sandbox(sandbox: dict[str, Any] | None, *, writes: bool) -> None:
    """Return if the operation may run unsandboxed; otherwise raise the error to send.

    Runs directly: no profile; ``permissions.type`` ``disabled`` or ``external`` (someone else
    sandboxes this machine); ``managed`` with an ``unrestricted`` file system; or ``managed``
    with a ``restricted`` one whose entries grant the whole filesystem (root) — write access
    for an operation that ``writes``, read or write access for one that only reads — and deny
    nothing. Anything else asks for restrictions we would not enforce: -32600.
    """
    if sandbox is None:
        return
    permissions = sandbox.get("permissions")
    if not isinstance(permissions, dict):
        raise invalid_params("sandbox.permissions must be an object")
    kind = permissions.get("type")
    if not isinstance(kind, str):
        raise invalid_params("sandbox.permissions.type must be a string")
    if kind in _UNRESTRICTED_TYPES:
        return
    if kind != "managed":
        raise invalid_params(
            f"sandbox.permissions.type `{kind}` is unknown; expected managed, disabled or external"
        )
    file_system = permissions.get("file_system")
    fs_kind = file_system.get("type") if isinstance(file_system, dict) else None
    if fs_kind == "unrestricted":
        return
    if fs_kind != "restricted" or not isinstance(file_system, dict):
        raise invalid_params(
            "sandbox.permissions.file_system.type must be `restricted` or `unrestricted`"
        )
    root_access = _root_access(file_system.get("entries"))
    if root_access == "write" or (root_access == "read" and not writes):
        return
    raise invalid_request(
        "fs sandbox is not supported: this server cannot enforce a restricted filesystem "
        "profile; send no sandbox, or one that grants "
        + ("write" if writes else "read")
        + " access to the whole filesystem"
    )


_ROOT_PATHS = frozenset({"/", "file:///", "file://localhost/"})


def _root_access(entries: Any) -> str | None:
    """The access a restricted profile grants to ``/``: ``write``, ``read``, or None.

    None as well when any entry denies something: a carve-out we would have to enforce.
    """
    if not isinstance(entries, list):
        return None
    granted: str | None = None
    for entry in entries:
        if not isinstance(entry, dict):
            return None
        access = entry.get("access")
        if access not in ("read", "write"):
            return None
        path = entry.get("path")
        if not isinstance(path, dict):
            continue
        value = path.get("value")
        is_root = (
            path.get("type") == "special"
            and isinstance(value, dict)
            and value.get("kind") == "root"
        ) or (path.get("type") == "path" and path.get("path") in _ROOT_PATHS)
        if is_root and granted != "write":
            granted = access
    return granted
