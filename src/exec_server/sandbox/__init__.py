"""Sandboxes: codex's ``sandbox`` permission profile, enforced by the kernel.

* :mod:`.profile` decodes the wire param (``parse_sandbox``), with the reference's -32602 texts;
* :mod:`.policy` resolves it into a concrete :class:`~.policy.Policy` (and combines it with a
  server-side confinement that clients cannot loosen);
* :mod:`.bwrap` runs a child inside a policy with bubblewrap (``wrap``), found by :mod:`.locate`;
* :mod:`.fs_guard` performs ``fs/*`` mutations under a policy without symlink or hard-link
  escapes;
* :mod:`.denial` decides ``sandboxDenied`` as the reference does.

Nothing is imported here: a server that never meets a sandbox never loads these.
docs/sandbox.md describes the reference's behaviour these follow, with sources.
"""
