"""Sandboxes: codex's ``sandbox`` permission profile, enforced by the kernel.

* :mod:`.profile` decodes the wire param (``parse_sandbox``), with the reference's -32602 texts;
* :mod:`.policy` resolves it into a concrete :class:`~.policy.Policy` (and combines it with a
  server-side confinement that clients cannot loosen);
* :mod:`.bwrap` runs a child inside a policy with bubblewrap (``wrap``);
* :mod:`.fs_guard` performs ``fs/*`` mutations under a policy without symlink or hard-link
  escapes;
* :mod:`.denial` decides ``sandboxDenied`` as the reference does.

docs/sandbox.md describes the reference's behaviour these follow, with sources.
"""

from .bwrap import SANDBOX_TYPE, Launch, SandboxUnavailable, support, wrap
from .denial import is_sandbox_denied
from .policy import (
    UNRESTRICTED,
    Access,
    Confinement,
    Policy,
    PolicyError,
    ResolveContext,
    combine,
    fs_context,
    load_confinement,
    process_context,
    resolve,
)
from .profile import ProfileError, SandboxRequest, parse_sandbox

__all__ = [
    "SANDBOX_TYPE",
    "UNRESTRICTED",
    "Access",
    "Confinement",
    "Launch",
    "Policy",
    "PolicyError",
    "ProfileError",
    "ResolveContext",
    "SandboxRequest",
    "SandboxUnavailable",
    "combine",
    "fs_context",
    "is_sandbox_denied",
    "load_confinement",
    "parse_sandbox",
    "process_context",
    "resolve",
    "support",
    "wrap",
]
