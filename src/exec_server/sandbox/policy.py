"""Concrete policies: what a child (or an ``fs/*`` call) may read and write, and the network.

:func:`resolve` turns a decoded :class:`~.profile.Permissions` plus the request's context (cwd,
workspace roots, tmpdir) into a :class:`Policy`: a base access for ``/`` and a set of rules,
each an absolute canonical path with one access that holds for it and everything below it
until a deeper rule says otherwise. This is the shape bubblewrap builds (one mount per rule,
shallow first) and the shape the fs guard checks (the deepest rule above a path wins).

The semantics follow the reference (docs/sandbox.md): the most specific path wins; for one
path ``deny`` beats ``write`` beats ``read``; ``.git``, ``.agents``, ``.codex`` and ``.aws``
directly under every writable root stay read-only unless an entry names them; writable roots
that do not exist are dropped; a project-roots ``subpath`` that leaves its root is dropped.
"""

from __future__ import annotations

import enum
import json
import os
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .profile import (
    Entry,
    ExactPath,
    GlobPath,
    Permissions,
    ProfileError,
    SandboxRequest,
    SpecialPath,
    parse_path_uri,
    parse_permissions,
)

PROTECTED_METADATA_NAMES = (".git", ".agents", ".codex", ".aws")
"""Names kept read-only directly under each writable root (the reference 0.169 protects these)."""

PLATFORM_READ_ROOTS = (
    "/bin",
    "/sbin",
    "/usr",
    "/etc",
    "/lib",
    "/lib64",
    "/nix/store",
    "/run/current-system/sw",
)
"""What the ``minimal`` special path makes readable (the reference's Linux platform defaults)."""


class Access(enum.IntEnum):
    """What may be done at a path; ordered, so the stricter of two is ``min``."""

    NONE = 0
    READ = 1
    WRITE = 2


class PolicyError(ValueError):
    """A profile that cannot be enforced as asked (for example a read-only path reached
    through a symlink the sandboxed process could re-point)."""


@dataclass(frozen=True, slots=True)
class Rule:
    """``access`` at ``path`` (absolute, canonical) and below, until a deeper rule.

    ``protected`` marks the metadata carve-outs the server adds itself (``.git``, ...).
    """

    path: str
    access: Access
    protected: bool = False


@dataclass(frozen=True, slots=True)
class ResolveContext:
    """What special paths resolve against: the policy cwd, the project roots, ``$TMPDIR``."""

    cwd: str
    workspace_roots: tuple[str, ...] = ()
    tmpdir: str | None = None


@dataclass(frozen=True)
class Policy:
    """An immutable, resolved sandbox policy.

    ``base`` is the access at ``/``; ``rules`` are sorted shallow first, one per path, never
    ``/`` itself; ``deny_globs`` are absolute git-style patterns whose matches (and what is
    below them) can be neither read nor written. ``network`` says whether sockets may reach
    anything outside the sandbox. ``links`` are the symlinks (path, target) through which
    entries were named (``/lib64 -> usr/lib64``), recreated where the sandbox would not
    otherwise show them.
    """

    base: Access
    rules: tuple[Rule, ...] = ()
    network: bool = True
    deny_globs: tuple[str, ...] = ()
    links: tuple[tuple[str, str], ...] = ()
    _by_path: dict[str, Rule] = field(init=False, repr=False, compare=False)
    _glob_regexes: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_path = {rule.path: rule for rule in self.rules}
        ordered = tuple(sorted(by_path.values(), key=lambda r: (_depth(r.path), r.path)))
        object.__setattr__(self, "rules", ordered)
        object.__setattr__(self, "_by_path", by_path)
        object.__setattr__(self, "deny_globs", tuple(dict.fromkeys(self.deny_globs)))
        object.__setattr__(self, "links", tuple(sorted(set(self.links))))
        object.__setattr__(self, "_glob_regexes", tuple(glob_regex(g) for g in self.deny_globs))

    @property
    def is_restricted(self) -> bool:
        """Whether anything at all is restricted (else the server answers ``sandboxType: none``)."""
        return (
            self.base != Access.WRITE
            or not self.network
            or bool(self.deny_globs)
            or any(rule.access != Access.WRITE for rule in self.rules)
        )

    @property
    def restricts_filesystem(self) -> bool:
        """Whether some path is not writable (fs/* calls then go through the guard)."""
        return (
            self.base != Access.WRITE
            or bool(self.deny_globs)
            or any(rule.access != Access.WRITE for rule in self.rules)
        )

    def access_at(self, path: str) -> Access:
        """The access at ``path`` (absolute, canonical): the deepest rule above it wins."""
        if self._glob_regexes and self.glob_denied(path):
            return Access.NONE
        return self.rule_access_at(path)

    def rule_access_at(self, path: str) -> Access:
        """Like :meth:`access_at`, ignoring the deny globs."""
        current = path
        while True:
            rule = self._by_path.get(current)
            if rule is not None:
                return rule.access
            if current == "/":
                return self.base
            current = posixpath.dirname(current)

    def glob_denied(self, path: str) -> bool:
        """Whether ``path`` or one of its ancestors matches a deny glob."""
        current = path
        while current != "/":
            if any(regex.fullmatch(current) for regex in self._glob_regexes):
                return True
            current = posixpath.dirname(current)
        return False

    def parent_access(self, path: str) -> Access:
        """The rule access of the directory holding ``path`` (what a rule at ``path`` overrides)."""
        return self.base if path == "/" else self.rule_access_at(posixpath.dirname(path))

    @property
    def writable_roots(self) -> tuple[str, ...]:
        """The tops of the writable subtrees (``/`` when the base is writable)."""
        tops = [r.path for r in self.rules if r.access == Access.WRITE]
        tops = [p for p in tops if self.parent_access(p) != Access.WRITE]
        return ("/", *tops) if self.base == Access.WRITE else tuple(tops)

    @property
    def read_only_paths(self) -> tuple[str, ...]:
        """Read-only carve-outs inside writable subtrees (``.git`` and friends, ...)."""
        return tuple(
            r.path
            for r in self.rules
            if r.access == Access.READ and self.parent_access(r.path) == Access.WRITE
        )

    @property
    def hidden_paths(self) -> tuple[str, ...]:
        """Paths that can be neither read nor written, inside readable or writable subtrees."""
        return tuple(
            r.path
            for r in self.rules
            if r.access == Access.NONE and self.parent_access(r.path) != Access.NONE
        )

    @property
    def readable_everywhere(self) -> bool:
        """Whether ``/`` is readable (else only the readable roots are)."""
        return self.base >= Access.READ

    def intersect(self, other: Policy) -> Policy:
        """What both allow: writable only where both say so, the network only if both allow
        it, hidden where either hides. A client profile cannot loosen a server confinement."""
        paths = {r.path for r in self.rules} | {r.path for r in other.rules}
        protected = {r.path for r in (*self.rules, *other.rules) if r.protected}
        rules = [
            Rule(p, min(self.rule_access_at(p), other.rule_access_at(p)), p in protected)
            for p in paths
        ]
        return Policy(
            base=min(self.base, other.base),
            rules=tuple(rules),
            network=self.network and other.network,
            deny_globs=(*self.deny_globs, *other.deny_globs),
            links=(*self.links, *other.links),
        )


UNRESTRICTED = Policy(base=Access.WRITE)
"""Nothing restricted: what ``permissions.type: disabled`` asks for."""


def resolve(permissions: Permissions, context: ResolveContext) -> Policy:
    """The concrete policy for ``permissions`` in ``context`` (reads the filesystem: paths
    are canonicalised, missing writable roots dropped). Raises :class:`PolicyError` when a
    read-only or hidden path is reached through a symlink inside a writable area."""
    if permissions.kind == "disabled":
        return UNRESTRICTED
    if permissions.kind == "external" or not permissions.restricted_fs:
        return Policy(base=Access.WRITE, network=permissions.network)
    wanted: dict[str, _Wanted] = {}
    globs: list[str] = []
    for entry in permissions.entries:
        if isinstance(entry.path, GlobPath):
            if entry.access == "deny":  # globs support deny only, as in the reference
                globs.append(_absolute_pattern(entry.path.pattern, context.cwd))
            continue
        access = _entry_access(entry)
        if access is None:
            continue
        for lexical in _concrete_paths(entry, context):
            _merge(wanted, os.path.realpath(lexical), access, lexical, entry.skip_if_missing)
    root = wanted.pop("/", None)
    base = root.access if root is not None else Access.NONE
    rules: dict[str, Rule] = {}
    for path, want in wanted.items():
        exists = os.path.lexists(path)
        if not exists and want.access == Access.WRITE:
            continue  # bubblewrap cannot bind a missing root; the reference skips it too
        if not exists and want.skip and posixpath.basename(path) not in PROTECTED_METADATA_NAMES:
            continue
        rules[path] = Rule(path, want.access)
    draft = Policy(base=base, rules=tuple(rules.values()), network=permissions.network)
    _add_metadata_carve_outs(draft, rules)
    policy = Policy(
        base=base,
        rules=tuple(rules.values()),
        network=permissions.network,
        deny_globs=tuple(globs),
        links=_entry_links(wanted),
    )
    _check_symlinked_carve_outs(policy, wanted)
    return policy


def process_context(
    request: SandboxRequest, process_cwd: str, env: Mapping[str, str]
) -> ResolveContext:
    """The context for ``process/start``: the sandbox cwd (else the process cwd), its
    workspace roots (else that cwd) and ``$TMPDIR`` of the child's environment, which is
    what the reference's ``tmpdir`` means (the server's own ``$TMPDIR`` is not used)."""
    cwd = request.cwd or process_cwd
    tmpdir = env.get("TMPDIR")
    return ResolveContext(
        cwd=cwd,
        workspace_roots=request.workspace_roots or (cwd,),
        tmpdir=tmpdir if tmpdir and tmpdir.startswith("/") else None,
    )


def fs_context(request: SandboxRequest, fallback_cwd: str) -> ResolveContext:
    """The context for ``fs/*``: ``policyContext`` first, then the top-level fields. No
    ``tmpdir``: the reference's fs helper runs with an empty environment, so it resolves to
    nothing there."""
    cwd = request.policy_cwd or request.cwd or fallback_cwd
    roots = request.policy_workspace_roots or request.workspace_roots or (cwd,)
    return ResolveContext(cwd=cwd, workspace_roots=roots)


def combine(requested: Policy | None, confinement: Policy | None) -> Policy | None:
    """The policy to enforce: the client's, narrowed by the server's confinement if any.
    None when neither exists (run unsandboxed)."""
    if confinement is None:
        return requested
    return (requested or UNRESTRICTED).intersect(confinement)


def hiding(policy: Policy, paths: Iterable[str], globs: Iterable[str] = ()) -> Policy:
    """``policy`` with ``paths`` (canonical) and what ``globs`` match hidden, whatever it
    granted there."""
    rules = tuple(Rule(path, Access.NONE) for path in paths)
    hidden = Policy(base=Access.WRITE, rules=rules, deny_globs=tuple(globs))
    return policy.intersect(hidden) if rules or hidden.deny_globs else policy


SERVER_PROCESS_PATHS = ("/proc/kcore",)
SERVER_PROCESS_GLOBS = ("/proc/[0-9]*",)
"""What fs/* calls under a policy never reach, besides the server's own files: they run in
the server's process, so ``/proc/self`` (and ``/proc/PID`` of any thread) would be the
server's memory, environment and descriptors, and other ``/proc/PID`` other processes'; the
reference's fs helper runs in a sandbox with a fresh ``/proc`` of its own. ``/proc/kcore``
is the machine's memory to a server running as root."""


def for_fs_calls(policy: Policy, private_paths: Iterable[str]) -> Policy:
    """``policy`` as fs/* calls run under it in the server's process: the server's own files
    (``private_paths``) and the processes' ``/proc`` directories hidden."""
    return hiding(policy, (*private_paths, *SERVER_PROCESS_PATHS), SERVER_PROCESS_GLOBS)


@dataclass(frozen=True, slots=True)
class Confinement:
    """A server-side profile (the ``--confine PROFILE`` file), resolved from operator data
    only: its project roots are its own ``workspace_roots``, else its ``cwd``; its ``cwd``
    (for relative globs and project roots) is the file's, else the server's working
    directory at start; ``tmpdir`` is the server's own ``$TMPDIR`` at start. Nothing a
    client sends (its cwd, roots, environment) changes what the confinement allows."""

    permissions: Permissions
    cwd: str = "/"
    workspace_roots: tuple[str, ...] = ()
    tmpdir: str | None = None

    @property
    def allows_network(self) -> bool:
        """Whether the confinement lets the network through (else ``http/request`` is
        refused too)."""
        return self.permissions.network

    def policy(self) -> Policy:
        """This confinement resolved now (paths that appeared or went since are seen)."""
        context = ResolveContext(
            cwd=self.cwd,
            workspace_roots=self.workspace_roots or (self.cwd,),
            tmpdir=self.tmpdir,
        )
        return resolve(self.permissions, context)


def load_confinement(path: str, server_env: Mapping[str, str] | None = None) -> Confinement:
    """Read a confinement profile: a JSON object in codex's terms, either the ``permissions``
    object itself or ``{"permissions": ..., "workspaceRoots": [...], "cwd": ...}``. Paths may
    be absolute paths or ``file://`` URIs. Special paths resolve against the server's own
    working directory and ``server_env`` (default: this process's environment), once.
    Raises :class:`ProfileError` naming what is wrong."""
    try:
        with open(path, "rb") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ProfileError(path, f"cannot read confinement profile: {exc}") from None
    if not isinstance(data, dict):
        raise ProfileError(path, "a confinement profile is a JSON object")
    tmpdir = (os.environ if server_env is None else server_env).get("TMPDIR")
    tmpdir = os.path.realpath(tmpdir) if tmpdir and tmpdir.startswith("/") else None
    wrapped = "permissions" in data
    permissions = parse_permissions(
        data["permissions"] if wrapped else data, "permissions", plain_paths=True
    )
    if not wrapped:
        return Confinement(permissions, cwd=os.getcwd(), tmpdir=tmpdir)
    cwd = data.get("cwd")
    roots = data.get("workspaceRoots", [])
    if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
        raise ProfileError("workspaceRoots", "expected a list of paths")
    return Confinement(
        permissions,
        cwd=_plain_or_uri(cwd, "cwd") if isinstance(cwd, str) else os.getcwd(),
        workspace_roots=tuple(_plain_or_uri(r, "workspaceRoots") for r in roots),
        tmpdir=tmpdir,
    )


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A git-style glob as a regex over whole paths: ``*`` and ``?`` stay inside one path
    component, ``**`` crosses them, ``[...]`` is a class (an unclosed ``[`` is literal)."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end]
            negate = body[:1] in ("!", "^")
            body = body[1:] if negate else body
            out.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out), re.DOTALL)


def glob_static_prefix(pattern: str) -> str:
    """The directory above a glob's first wildcard (where matches are searched for)."""
    first = min((i for i, c in enumerate(pattern) if c in "*?["), default=len(pattern))
    head = pattern[:first]
    return head.rstrip("/") if head.endswith("/") else posixpath.dirname(head)


@dataclass(slots=True)
class _Wanted:
    access: Access
    lexical: str
    skip: bool


_CONFLICT_RANK = {Access.NONE: 3, Access.WRITE: 2, Access.READ: 1}
"""For one path, deny beats write beats read (the reference's conflict precedence)."""

_ACCESS = {"read": Access.READ, "write": Access.WRITE, "deny": Access.NONE}


def _merge(wanted: dict[str, _Wanted], path: str, access: Access, lexical: str, skip: bool) -> None:
    current = wanted.get(path)
    if current is None or _CONFLICT_RANK[access] > _CONFLICT_RANK[current.access]:
        wanted[path] = _Wanted(access, lexical, skip)


def _entry_access(entry: Entry) -> Access | None:
    access = _ACCESS[entry.access]
    if isinstance(entry.path, SpecialPath) and entry.path.kind == "minimal":
        # ``minimal`` names the system dirs programs need to run: it only ever grants reads.
        return None if access == Access.NONE else Access.READ
    return access


def _concrete_paths(entry: Entry, context: ResolveContext) -> Iterable[str]:
    spec = entry.path
    if isinstance(spec, ExactPath):
        return (spec.path,)
    assert isinstance(spec, SpecialPath)
    if spec.kind == "root":
        return ("/",)
    if spec.kind == "minimal":
        return tuple(p for p in PLATFORM_READ_ROOTS if os.path.exists(p))
    if spec.kind == "project_roots":
        roots = context.workspace_roots or (context.cwd,)
        return tuple(p for p in (_under(root, spec.subpath) for root in roots) if p is not None)
    if spec.kind == "tmpdir":
        return (context.tmpdir,) if context.tmpdir else ()
    if spec.kind == "slash_tmp":
        return ("/tmp",) if os.path.isdir("/tmp") else ()
    return ()  # a kind from a newer codex: ignored, as the reference ignores it


def _under(root: str, subpath: str | None) -> str | None:
    """``root/subpath``, or None when the subpath leaves the root (absolute, or ``..``)."""
    if subpath is None:
        return root
    joined = posixpath.normpath(posixpath.join(root, subpath))
    inside = joined == root or joined.startswith(root.rstrip("/") + "/")
    return joined if inside else None


def _absolute_pattern(pattern: str, cwd: str) -> str:
    return pattern if pattern.startswith("/") else posixpath.join(cwd, pattern)


def _add_metadata_carve_outs(draft: Policy, rules: dict[str, Rule]) -> None:
    """``.git`` and friends under each writable entry become read-only, nested ones too (not
    under ``/`` itself: a whole-disk grant is full trust, and placeholders at ``/`` would
    litter it)."""
    for root in [rule.path for rule in draft.rules if rule.access == Access.WRITE]:
        for name in PROTECTED_METADATA_NAMES:
            path = posixpath.join(root, name)
            if path in rules or draft.rule_access_at(path) != Access.WRITE:
                continue
            if os.path.islink(path):
                raise PolicyError(
                    f"cannot enforce sandbox read-only path {path} because it is a symlink "
                    "inside a writable root"
                )
            rules[path] = Rule(path, Access.READ, protected=True)


def _entry_links(wanted: Mapping[str, _Wanted]) -> tuple[tuple[str, str], ...]:
    """Readable entries named through a symlink (merged-/usr's ``/bin``, ``/lib64``, ...)."""
    links = []
    for want in wanted.values():
        if want.access != Access.NONE and os.path.islink(want.lexical):
            links.append((want.lexical, os.readlink(want.lexical)))
    return tuple(links)


def _check_symlinked_carve_outs(policy: Policy, wanted: Mapping[str, _Wanted]) -> None:
    """Refuse a read-only or hidden path spelled through a symlink the sandbox may rewrite:
    protecting today's target would not protect the path the client named."""
    for canonical, want in wanted.items():
        if want.access == Access.WRITE or want.lexical == canonical:
            continue
        current = "/"
        for part in want.lexical.strip("/").split("/"):
            current = posixpath.join(current, part)
            if not os.path.islink(current):
                continue
            location = posixpath.join(
                os.path.realpath(posixpath.dirname(current)), posixpath.basename(current)
            )
            if policy.rule_access_at(location) == Access.WRITE:
                kind = "read-only" if want.access == Access.READ else "deny-read"
                raise PolicyError(
                    f"cannot enforce sandbox {kind} path {want.lexical} because it crosses "
                    f"writable symlink {current}"
                )


def _plain_or_uri(value: str, field: str) -> str:
    if value.startswith("/"):
        return posixpath.normpath(value)
    return parse_path_uri(value, field)


def _depth(path: str) -> int:
    return 0 if path == "/" else path.count("/")
