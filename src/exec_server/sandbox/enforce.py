"""From a request's ``sandbox`` param (and the server's confinement) to what is enforced.

The one place that decides, for a process or a file operation, which :class:`Policy`
applies: the client's profile, narrowed by the operator's ``--confine`` profile, which a
client can never loosen. No profile and no confinement: nothing to enforce (None). These
functions touch the filesystem (resolving paths, placeholders): run them off the event loop.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from .bwrap import Launch, NetworkEntry, SandboxUnavailable, support, wrap
from .policy import (
    Access,
    Confinement,
    Policy,
    combine,
    fs_context,
    hiding,
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
    """The policy a process started in ``cwd`` with ``env`` runs under, or None. The
    request's values (cwd, roots, ``$TMPDIR``) resolve the client's own profile only; the
    confinement resolves from operator data alone (:class:`~.policy.Confinement`)."""
    own = None
    if request is not None:
        own = resolve(request.permissions, process_context(request, cwd, env))
    bound = confinement.policy() if confinement is not None else None
    return combine(own, bound)


def fs_policy(
    request: SandboxRequest | None, confinement: Confinement | None, fallback_cwd: str
) -> Policy | None:
    """The policy an ``fs/*`` call runs under, or None (the reference's fs helper ignores
    the server's cwd, so ``fallback_cwd`` only matters when the profile names none)."""
    own = None
    if request is not None:
        own = resolve(request.permissions, fs_context(request, fallback_cwd))
    bound = confinement.policy() if confinement is not None else None
    return combine(own, bound)


def launch(
    policy: Policy,
    argv: list[str],
    cwd: str,
    arg0: str | None,
    env: Mapping[str, str],
    private_paths: Sequence[str] = (),
    pids_limit: int = 0,
    network: NetworkEntry | None = None,
) -> Launch:
    """The sandboxed launch of ``argv``: spawn ``Launch.argv`` with ``Launch.env`` (the
    command's ``env`` applies inside the sandbox only). ``private_paths``, the server's own
    files, are hidden inside whatever the policy; ``pids_limit`` bounds its tasks;
    ``network`` puts the command behind a managed network proxy (``bwrap.NetworkEntry``).
    Raises :class:`SandboxUnavailable` when bubblewrap cannot run here, and
    ``FileNotFoundError`` when the program is not on the child's PATH (as an unsandboxed
    start would: inside, it would only be ``env``'s exit 127) or when the policy hides the
    program or the cwd (they look absent, as missing ones fail)."""
    if not support().usable:
        raise SandboxUnavailable(support().reason or "bubblewrap is not usable")
    seen = hiding(policy, private_paths)  # what the sandbox will show
    if not _findable(argv[0], cwd, env, seen):
        raise FileNotFoundError(2, "No such file or directory", argv[0])
    if seen.access_at(os.path.realpath(cwd)) == Access.NONE:  # as a missing cwd fails
        raise FileNotFoundError(2, "No such file or directory", cwd)
    return wrap(
        policy,
        argv,
        cwd,
        arg0=arg0,
        env=env,
        private_paths=private_paths,
        pids_limit=pids_limit,
        network=network,
    )


def _findable(program: str, cwd: str, env: Mapping[str, str], policy: Policy) -> bool:
    """Whether ``program`` can be found, as the sandbox sees it: a hidden program looks
    absent, so the check tells nothing of what the policy hides. A relative name (``./x``,
    a relative ``PATH`` entry) is found from ``cwd``, as the child's exec finds it."""
    if "/" in program:
        return _visible(os.path.join(cwd, program), policy)
    candidates = (os.path.join(cwd, folder, program) for folder in os.get_exec_path(dict(env)))
    return any(os.access(path, os.X_OK) and _visible(path, policy) for path in candidates)


def _visible(path: str, policy: Policy) -> bool:
    return os.path.exists(path) and policy.access_at(os.path.realpath(path)) != Access.NONE


__all__ = ["SandboxUnavailable", "fs_policy", "launch", "process_policy"]
