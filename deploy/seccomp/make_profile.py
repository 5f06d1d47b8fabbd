"""Write the seccomp profile that lets bubblewrap build sandboxes inside a container.

    python3 deploy/seccomp/make_profile.py [--from DEFAULT_PROFILE] [OUTPUT]

Reads a container runtime's default profile from this machine (by default containers-common's
``/usr/share/containers/seccomp.json``, which Debian's podman installs; a Docker user passes
the default profile of their Docker release) and writes it back with one rule of ours: the
five calls bubblewrap needs to build its namespaces (``clone`` with namespace flags,
``unshare``, ``mount``, ``umount2``, ``pivot_root``), allowed to every process. So that this
rule is the only one that grants them, they are first taken out of the default's own rules:
Docker's grants them only with CAP_SYS_ADMIN (``clone`` only without namespace flags),
containers-common's grants them to everyone. Everything else is the default as it was read.

``make seccomp-profile`` writes ``build/seccomp/exec-server/bubblewrap.json``: the
``--seccomp-profile-root`` for ``podman kube play`` is ``build/seccomp``; on Kubernetes the
operator copies ``build/seccomp/exec-server/`` into each node's seccomp directory
(``/var/lib/kubelet/seccomp/``). deploy/README.md says where else it goes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

BUBBLEWRAP_CALLS = ("clone", "unshare", "mount", "umount2", "pivot_root")
"""What bwrap calls to build a sandbox's namespaces and root; without any one it fails."""
RULE_COMMENT = "exec-server: bubblewrap builds each sandbox's namespaces (deploy/README.md)"
RUNTIME_DEFAULT = Path("/usr/share/containers/seccomp.json")
OUTPUT = Path(__file__).resolve().parents[2] / "build" / "seccomp" / "exec-server" / "bubblewrap.json"  # fmt: skip
LOCALHOST_PROFILE = "exec-server/bubblewrap.json"
"""The manifests' ``localhostProfile``: OUTPUT relative to the seccomp profile root."""


class NotAProfile(ValueError):
    """The input is not a seccomp profile this script understands."""


def bubblewrap_rule() -> dict[str, Any]:
    """The one rule we add: the five calls, allowed with no condition."""
    return {"names": list(BUBBLEWRAP_CALLS), "action": "SCMP_ACT_ALLOW", "comment": RULE_COMMENT}


def without_bubblewrap_calls(rule: dict[str, Any]) -> dict[str, Any] | None:
    """``rule`` with the five calls taken out of an allowing rule's names; None when nothing
    is left of it. Rules that refuse (errno, kill, trace...) are kept as they are."""
    names = rule.get("names")
    if not isinstance(names, list) or not isinstance(rule.get("action"), str):
        raise NotAProfile(f"a rule without 'names' and 'action': {rule!r:.200}")
    if rule["action"] != "SCMP_ACT_ALLOW":
        return rule
    kept = [name for name in names if name not in BUBBLEWRAP_CALLS]
    if not kept:
        return None
    return {**rule, "names": kept}


def with_bubblewrap(default: dict[str, Any]) -> dict[str, Any]:
    """The profile for exec-server's containers, made from a runtime's ``default`` profile."""
    if default.get("defaultAction") in (None, "SCMP_ACT_ALLOW"):
        raise NotAProfile("a default profile refuses what it does not name ('defaultAction')")
    rules = default.get("syscalls")
    if not isinstance(rules, list):
        raise NotAProfile("no 'syscalls' list")
    if any(rule.get("comment") == RULE_COMMENT for rule in rules):
        raise NotAProfile("this is already a profile made by make_profile.py, not a default")
    kept = [r for r in map(without_bubblewrap_calls, rules) if r is not None]
    return {**default, "syscalls": [*kept, bubblewrap_rule()]}


def write(profile: dict[str, Any], output: Path) -> None:
    """Write ``profile`` to ``output`` whole (a temporary file renamed over it)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".tmp")
    partial.write_text(json.dumps(profile, indent=2) + "\n")
    os.replace(partial, output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--from",
        dest="source",
        type=Path,
        default=RUNTIME_DEFAULT,
        help=f"the runtime's default seccomp profile (default: {RUNTIME_DEFAULT})",
    )
    parser.add_argument("output", nargs="?", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    try:
        default = json.loads(args.source.read_text())
        if not isinstance(default, dict):
            raise NotAProfile("not a JSON object")
        profile = with_bubblewrap(default)
    except FileNotFoundError:
        hint = "install podman (containers-common), or pass --from with your runtime's default"
        print(f"make_profile.py: {args.source} does not exist: {hint}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as error:  # json.JSONDecodeError and NotAProfile included
        print(f"make_profile.py: {args.source}: {error}", file=sys.stderr)
        return 1
    write(profile, args.output)
    print(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
