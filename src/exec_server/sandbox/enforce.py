"""From a request's ``sandbox`` param (and the server's confinement) to what is enforced.

The one place that decides, for a process or a file operation, which :class:`Policy`
applies: the client's profile, narrowed by the operator's ``--confine`` profile, which a
client can never loosen. No profile and no confinement: nothing to enforce (None). These
functions touch the filesystem (resolving paths, placeholders): run them off the event loop.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from .bwrap import Launch, NetworkEntry, SandboxUnavailable, support, wrap
from .policy import (
    Confinement,
    Policy,
    ResolveContext,
    combine,
    fs_context,
    process_context,
    resolve,
)
from .profile import SandboxRequest


def process_policy(
    request: SandboxRequest | None,
    confinement: Confinement | None,
    cwd: str,
    env: Mapping[str, str],
) -> Policy | None:
    """The policy a process started in ``cwd`` with ``env`` runs under, or None."""
    if request is None:
        own = None
        context = ResolveContext(cwd=cwd, workspace_roots=(cwd,), tmpdir=_tmpdir(env))
    else:
        context = process_context(request, cwd, env)
        own = resolve(request.permissions, context)
    bound = confinement.policy(context) if confinement is not None else None
    return combine(own, bound)


def fs_policy(
    request: SandboxRequest | None, confinement: Confinement | None, fallback_cwd: str
) -> Policy | None:
    """The policy an ``fs/*`` call runs under, or None (the reference's fs helper ignores
    the server's cwd, so ``fallback_cwd`` only matters when the profile names none)."""
    if request is None:
        own = None
        context = ResolveContext(cwd=fallback_cwd, workspace_roots=(fallback_cwd,))
    else:
        context = fs_context(request, fallback_cwd)
        own = resolve(request.permissions, context)
    bound = confinement.policy(context) if confinement is not None else None
    return combine(own, bound)


def launch(
    policy: Policy,
    argv: list[str],
    cwd: str,
    arg0: str | None,
    env: Mapping[str, str],
    network: NetworkEntry | None = None,
) -> Launch:
    """The sandboxed launch of ``argv``. Raises :class:`SandboxUnavailable` when bubblewrap
    cannot run here, and ``FileNotFoundError`` when the program is not on the child's PATH
    (as an unsandboxed start would: inside, it would only be ``env``'s exit 127).
    ``network`` puts the command behind a managed network proxy (``bwrap.NetworkEntry``)."""
    if not support().usable:
        raise SandboxUnavailable(support().reason or "bubblewrap is not usable")
    if not _findable(argv[0], env):
        raise FileNotFoundError(2, "No such file or directory", argv[0])
    return wrap(policy, argv, cwd, arg0=arg0, network=network)


def _findable(program: str, env: Mapping[str, str]) -> bool:
    if "/" in program:
        return os.path.exists(program)
    return any(
        os.access(os.path.join(directory, program), os.X_OK)
        for directory in os.get_exec_path(dict(env))
    )


def _tmpdir(env: Mapping[str, str]) -> str | None:
    tmpdir = env.get("TMPDIR")
    return tmpdir if tmpdir and tmpdir.startswith("/") else None


__all__ = ["SandboxUnavailable", "fs_policy", "launch", "process_policy"]
