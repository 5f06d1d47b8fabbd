"""Running a child inside a policy, with bubblewrap: the kernel enforces it (mount, user,
PID, IPC and network namespaces), for the child and every descendant, ``setsid`` or not.

:func:`wrap` turns a :class:`~.policy.Policy` and a command into the argv to spawn instead
(:class:`Launch`). The mounts follow the policy's rules shallow first: ``/`` read-only (or a
tmpfs, or writable), a fresh ``/dev`` and ``/proc``, then a bind per rule (``--bind`` for
writable, ``--ro-bind`` for read-only carve-outs, an empty tmpfs or ``/dev/null`` over hidden
paths). Missing read-only paths inside writable roots (a ``.git`` that does not exist yet) get
an empty placeholder on the host for the child's lifetime, so the child cannot create them;
:meth:`Launch.release` removes it once the child has exited.

Signals: bwrap is spawned with the catchable signals ignored (:attr:`Launch.ignored_signals`,
set by the spawner between fork and exec) and the command runs under ``env
--default-signal``. bubblewrap forwards no signal; if a signal sent to the process group
killed bwrap, ``--die-with-parent`` would SIGKILL the command before its handler ran.
Ignored in bwrap, default in the command: the command gets the signal (it is in the same
process group) and handles it as it would unsandboxed; SIGKILL still kills all.
"""

from __future__ import annotations

import functools
import os
import posixpath
import shutil
import signal
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ..process.spawn import SpawnRequest, restore_child_fd_limit
from . import cgroup as cgroups
from . import seccomp
from .locate import find_bwrap
from .policy import (
    PROTECTED_METADATA_NAMES,
    Access,
    Policy,
    PolicyError,
    glob_regex,
    glob_static_prefix,
)

SANDBOX_TYPE = "linuxSeccomp"
"""The ``sandboxType`` to answer for a sandboxed process: the reference's Linux value, the
one clients know (codex keys its denial heuristics on it)."""

INSTALL_HINT = "install the Debian/Ubuntu package `bubblewrap` (apt-get install bubblewrap)"

IGNORED_IN_BWRAP = tuple(
    int(signum)
    for signum in (
        signal.SIGHUP,
        signal.SIGINT,
        signal.SIGQUIT,
        signal.SIGTERM,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGALRM,
    )
)
"""Signals bwrap itself must survive so the command receives and handles them (see above)."""

MAX_GLOB_MATCHES = 8192
"""More deny-glob matches than this refuses the launch, as the reference does."""

_PROBE_TIMEOUT = 20.0
_SKIPPED_TREES = ("/proc", "/dev")
"""Rules below these are not mounted: the sandbox gets its own fresh /proc and /dev."""


NO_SECCOMP = (
    "a restricted network needs the seccomp filter, which bubblewrap cannot load here "
    "(an architecture other than x86_64 or aarch64, or a runtime that forbids seccomp): "
    "refused rather than run with Unix sockets outside reachable"
)

SHARED_PROC_REASON = (
    "bubblewrap cannot mount a fresh /proc here (a container that masks /proc), so sandboxed "
    "processes would see every process of this machine or container and their command lines; "
    "unmask /proc for the container (deploy/README.md), or start the server with "
    "--sandbox-shared-proc to accept that"
)
"""Why a sandbox without its own /proc is refused unless the operator accepts it."""

_shared_proc = {"accepted": False}


def accept_shared_proc() -> None:
    """Let sandboxes run without a fresh /proc where none can be mounted (the operator's
    ``--sandbox-shared-proc``): they still confine files, network and privileges, but see the
    other processes of the machine or container. Call before the first :func:`support`."""
    _shared_proc["accepted"] = True
    support.cache_clear()


class SandboxUnavailable(RuntimeError):
    """bubblewrap cannot run here; ``message`` is what to tell the client (-32602, as the
    reference's ``sandbox intent cannot be enforced on this executor``)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.message = f"sandbox intent cannot be enforced on this executor: {reason}"
        super().__init__(self.message)


@dataclass(frozen=True, slots=True)
class BwrapSupport:
    """What the probe found: the bwrap binary, whether it works (``reason`` says why not),
    and the optional features used when present."""

    bwrap: str | None
    reason: str | None = None
    fresh_proc: bool = True
    disable_userns: bool = False
    signal_shim: str | None = None
    bash: str | None = None
    seccomp: bool = False
    """Whether commands run under the seccomp filter (:mod:`.seccomp`)."""

    @property
    def usable(self) -> bool:
        """Whether sandboxed children can be started."""
        return self.bwrap is not None and self.reason is None


@functools.cache
def support() -> BwrapSupport:
    """:func:`probe` once per process (the answer does not change while the server runs)."""
    return probe()


def probe(bwrap: str | None = None, *, shared_proc: bool | None = None) -> BwrapSupport:
    """Check that bubblewrap can build a sandbox here by running ``true`` in one.

    One without a fresh /proc counts only when ``shared_proc`` (by default: whether
    :func:`accept_shared_proc` was called); otherwise its ``reason`` is
    :data:`SHARED_PROC_REASON`."""
    shared_proc = _shared_proc["accepted"] if shared_proc is None else shared_proc
    bwrap = bwrap or find_bwrap()
    if bwrap is None:
        return BwrapSupport(None, f"bubblewrap (bwrap) is not installed: {INSTALL_HINT}")
    true = shutil.which("true") or "/bin/true"
    shim = _signal_shim()
    bash = shutil.which("bash")
    base = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--unshare-user", "--unshare-pid"]
    base += ["--unshare-ipc", "--unshare-net", "--die-with-parent", "--cap-drop", "ALL"]
    attempts = [(True, True), (True, False), (False, False)]  # (fresh /proc, --disable-userns)
    first_error = ""
    for fresh_proc, disable_userns in attempts:
        argv = list(base)
        argv += ["--proc", "/proc"] if fresh_proc else []
        argv += ["--disable-userns"] if disable_userns else []
        error = _run_quietly([*argv, "--", true])
        if error is None:
            filtered = _seccomp_works([*argv, "--", true])
            refused = None if fresh_proc or shared_proc else SHARED_PROC_REASON
            return BwrapSupport(bwrap, refused, fresh_proc, disable_userns, shim, bash, filtered)
        first_error = first_error or error
    return BwrapSupport(bwrap, _why(first_error))


@dataclass(frozen=True, slots=True)
class _Placeholder:
    path: str
    directory: bool
    device: int
    inode: int


_placeholder_lock = threading.Lock()
_placeholders: dict[str, tuple[_Placeholder, int]] = {}
"""Placeholders this server created, with how many running launches use each."""


@dataclass(slots=True)
class Launch:
    """A command ready to spawn: ``argv`` replaces the original argv, and ``arg0`` is what
    the spawner must still show as ``argv[0]`` (None once the sandbox took care of it).

    ``env`` is the environment to spawn ``argv`` with: for a sandboxed launch, one the
    server chose (empty), the command's own environment being applied by bubblewrap inside
    the sandbox only (``--clearenv --setenv``), so no variable of the client's (``LD_PRELOAD``,
    ``LD_DEBUG_OUTPUT``, ...) reaches the launchers that run outside it. ``keep_fd`` is the
    descriptor the child must keep (the seccomp program): close it with :meth:`spawned`.

    Call :meth:`release` once the child has exited (or failed to start): it removes the
    host-side placeholders this launch created, if no other launch still uses them.
    """

    argv: list[str]
    sandboxed: bool
    arg0: str | None = None
    env: dict[str, str] | None = None
    keep_fd: int | None = None
    cgroup: cgroups.SandboxCgroup | None = None
    """The sandbox's pids cgroup, which the spawned launcher joins before it executes."""
    ignored_signals: tuple[int, ...] = ()
    """Signals bwrap must start with ignored (see the module docstring)."""
    _placeholders: list[_Placeholder] = field(default_factory=list, repr=False)
    on_release: list[Callable[[], None]] = field(default_factory=list, repr=False)
    """Run once by :meth:`release` (a managed network's teardown, ``network/managed.py``)."""

    def subprocess_options(self) -> dict[str, Any]:
        """What ``subprocess.Popen`` needs to start ``argv`` as :meth:`spawn_request` would:
        the environment, the descriptor to keep, the signals to ignore, the cgroup to join
        (a Python ``preexec_fn``: for tests and tools, not for the server)."""
        cgroup_fd = None if self.cgroup is None else self.cgroup.procs_fd
        ignored = self.ignored_signals

        def preexec() -> None:  # pragma: no cover - runs in the child
            restore_child_fd_limit()
            if cgroup_fd is not None:
                os.write(cgroup_fd, b"0")
            for signum in ignored:
                signal.signal(signum, signal.SIG_IGN)

        return {
            "env": self.env,
            "pass_fds": () if self.keep_fd is None else (self.keep_fd,),
            "preexec_fn": preexec,
        }

    def spawn_request(self, request: SpawnRequest) -> SpawnRequest:
        """``request`` (the command as asked) turned into what to spawn for this launch."""
        return msgspec.structs.replace(
            request,
            argv=self.argv,
            arg0=self.arg0,
            env=request.env if self.env is None else self.env,
            keep_fd=self.keep_fd,
            cgroup_fd=None if self.cgroup is None else self.cgroup.procs_fd,
            ignored_signals=self.ignored_signals,
        )

    def spawned(self) -> None:
        """The child has been spawned (or could not be): close the parent's copy of
        ``keep_fd``. Safe to call more than once."""
        fd, self.keep_fd = self.keep_fd, None
        if fd is not None:
            os.close(fd)
        if self.cgroup is not None:
            self.cgroup.spawned()

    def release(self) -> None:
        """Undo the launch's host-side effects; safe to call more than once."""
        self.spawned()
        held_cgroup, self.cgroup = self.cgroup, None
        if held_cgroup is not None:
            held_cgroup.remove()
        held, self._placeholders = self._placeholders, []
        for placeholder in held:
            _release_placeholder(placeholder)
        hooks, self.on_release = self.on_release, []
        for hook in hooks:
            hook()


def wrap(
    policy: Policy,
    argv: Sequence[str],
    cwd: str,
    *,
    arg0: str | None = None,
    bwrap: BwrapSupport | None = None,
    env: Mapping[str, str] | None = None,
    private_paths: Sequence[str] = (),
    pids_limit: int = 0,
    network: NetworkEntry | None = None,
) -> Launch:
    """The launch that runs ``argv`` in ``cwd`` with ``env`` confined by ``policy``.

    An unrestricted policy returns ``argv`` unchanged. Raises :class:`SandboxUnavailable`
    when bubblewrap cannot run here and :class:`~.policy.PolicyError` when the policy
    cannot be built (too many glob matches, a glob with no directory prefix).

    ``private_paths`` are the server's own files (its Unix socket, token file, TLS key and
    certificate, runtime directory): hidden inside the sandbox whatever the policy says.
    ``env`` is set inside the sandbox only; :attr:`Launch.env` is what to spawn with.
    ``pids_limit`` (when above 0, and where :mod:`.cgroup` can make one) puts the sandbox in
    a pids cgroup allowing that many tasks.

    The spawner must not add ``setsid`` inside: the child it spawns (the outer ``env``,
    then bwrap) is the session leader and keeps the PTY as controlling terminal; bwrap runs
    without ``--new-session``, so the command shares that terminal and job control works.
    ``arg0``, when given, is the ``argv[0]`` the program sees (through ``bash exec -a``).
    ``network``, when given, runs the command behind a managed network proxy (see
    :class:`NetworkEntry`): always in a network namespace of its own.
    """
    if not policy.is_restricted and network is None:
        return Launch(list(argv), sandboxed=False, arg0=arg0)
    found = bwrap or support()
    if not found.usable or found.bwrap is None:
        raise SandboxUnavailable(found.reason or "bubblewrap is not usable")
    if (not policy.network or network is not None) and not found.seccomp:
        # Without the filter a restricted network still lets AF_UNIX sockets reach outside.
        raise SandboxUnavailable(NO_SECCOMP)
    if arg0 is not None and found.bash is None:
        raise SandboxUnavailable("arg0 under a sandbox needs bash, which is not installed")
    launch = Launch([], sandboxed=True, env={})
    try:  # every failure from here on (EMFILE making the filter...) undoes what was made
        mounts = _mount_args(policy, found, launch)
        mounts += _private_args(policy, private_paths)
        launch.cgroup = cgroups.create(pids_limit)
        inner = list(argv)
        if arg0 is not None and found.bash is not None:
            inner = [found.bash, "-c", 'exec -a "$0" "$@"', arg0, *argv]
        if network is not None:  # the entry loads the filter once its sockets are handed over
            launch.keep_fd = seccomp.filter_fd(True, unix_sockets=False)
            inner = [*network.entry[:-1], f"seccomp:{launch.keep_fd}", "--", *inner]
            mounts += network.mounts
        if found.signal_shim is not None:
            inner = [found.signal_shim, "--default-signal", "--", *inner]
        namespaces = ["--unshare-user", "--unshare-pid", "--unshare-ipc"]
        namespaces += [] if policy.network and network is None else ["--unshare-net"]
        namespaces += ["--disable-userns"] if found.disable_userns else []
        command = [found.bwrap, *mounts, *namespaces, "--die-with-parent", "--cap-drop", "ALL"]
        command += ["--clearenv"]
        for name, value in (env or {}).items():
            command += ["--setenv", name, value]
        if found.seccomp and network is None:
            launch.keep_fd = seccomp.filter_fd(policy.network)
            command += ["--seccomp", str(launch.keep_fd)]
        command += ["--chdir", cwd, "--", *inner]
        if found.signal_shim is not None:
            launch.ignored_signals = IGNORED_IN_BWRAP
        launch.argv = command
    except BaseException:
        launch.release()
        raise
    return launch


@dataclass(frozen=True, slots=True)
class NetworkEntry:
    """A managed network's part of a launch: ``entry``, the argv prefix that hands the
    proxy sockets over and then execs the command (``--`` last; :func:`wrap` adds a
    ``seccomp:FD`` spec before it, the filter the entry loads before that exec), and
    ``mounts``, bubblewrap arguments added after the policy's own."""

    entry: Sequence[str]
    mounts: Sequence[str]


def _mount_args(policy: Policy, found: BwrapSupport, launch: Launch) -> list[str]:
    args = {
        Access.READ: ["--ro-bind", "/", "/"],
        Access.WRITE: ["--bind", "/", "/"],
        Access.NONE: ["--tmpfs", "/"],
    }[policy.base]
    args += ["--dev", "/dev"]
    args += ["--proc", "/proc"] if found.fresh_proc else []
    for link, target in policy.links:
        if policy.parent_access(link) == Access.NONE and not link.startswith(_SKIPPED_TREES):
            args += ["--symlink", target, link]  # e.g. /lib64 -> usr/lib64 on an empty root
    frozen: list[str] = []  # tmpfs mounts made read-only once everything below them is bound
    pins = _pins(policy)
    for path, access, parent in _layers(policy, pins):
        if path in _SKIPPED_TREES or path.startswith(("/proc/", "/dev/")):
            continue
        if access == parent and path not in pins:
            continue
        if _held(path) or not os.path.lexists(path):
            _guard_missing(policy, path, access, launch, args, frozen)
            continue
        if access == Access.WRITE:
            args += ["--bind", path, path]
        elif access == Access.READ:
            args += ["--ro-bind", path, path]
        else:
            _hide(policy, path, args, frozen)
    for path in reversed(frozen):
        args += ["--remount-ro", path]
    if policy.base == Access.NONE:
        args += ["--remount-ro", "/"]
    return args


def _private_args(policy: Policy, private_paths: Sequence[str]) -> list[str]:
    """Cover the server's own files where the sandbox would otherwise show them: an empty
    tmpfs over a directory, ``/dev/null`` over a file or socket (a ``connect`` to it is
    refused). Added after every other mount, so no rule can re-open them."""
    args: list[str] = []
    for path in sorted(set(private_paths)):
        if path in _SKIPPED_TREES or path.startswith(("/proc/", "/dev/")):
            continue
        if not os.path.lexists(path) or policy.access_at(path) == Access.NONE:
            continue  # absent, or hidden already (an unreadable tmpfs or an empty root)
        if os.path.isdir(path) and not os.path.islink(path):
            args += ["--perms", "000", "--tmpfs", path, "--remount-ro", path]
        else:
            args += ["--ro-bind", "/dev/null", path]
    return args


def _pins(policy: Policy) -> set[str]:
    """Writable directories to bind onto themselves so they cannot be renamed: the
    ancestors of each read-only carve-out (a nested root's ``.git``) up to the nearest mount.
    Mounts move with their directory: renaming ``ws/a`` would take ``ws/a/inner/.git``'s
    read-only mount along and leave ``ws/a/inner/.git`` free to plant; a mount point cannot
    be renamed or removed (``EBUSY``)."""
    mounted = {"/"} | {r.path for r in policy.rules if r.access != policy.parent_access(r.path)}
    pins: set[str] = set()
    for rule in policy.rules:
        if rule.access != Access.READ or policy.parent_access(rule.path) != Access.WRITE:
            continue
        ancestor = posixpath.dirname(rule.path)
        while ancestor not in mounted and ancestor not in pins:
            if policy.rule_access_at(ancestor) == Access.WRITE and os.path.isdir(ancestor):
                pins.add(ancestor)
            ancestor = posixpath.dirname(ancestor)
    return pins


def _layers(
    policy: Policy, pins: AbstractSet[str] = frozenset()
) -> Iterator[tuple[str, Access, Access]]:
    """(path, access, access of its parent) for every rule, deny-glob match and pinned
    directory, shallow first."""
    layers = [(rule.path, rule.access) for rule in policy.rules]
    layers += [(path, Access.NONE) for path in _glob_matches(policy)]
    named = {rule.path for rule in policy.rules}
    layers += [(path, Access.WRITE) for path in pins if path not in named]
    layers.sort(key=lambda layer: (layer[0].count("/"), layer[0]))
    for path, access in layers:
        yield path, access, policy.parent_access(path)


def _hide(policy: Policy, path: str, args: list[str], frozen: list[str]) -> None:
    """An existing hidden path: an empty, unreadable tmpfs over a directory (traversable
    when something below it is bound again), ``/dev/null`` (not openable there) over a file."""
    if os.path.isdir(path) and not os.path.islink(path):
        prefix = path.rstrip("/") + "/"
        reopened = any(r.path.startswith(prefix) and r.access != Access.NONE for r in policy.rules)
        args += ["--perms", "111" if reopened else "000", "--tmpfs", path]
        frozen.append(path)
    else:
        args += ["--ro-bind", "/dev/null", path]


def _guard_missing(
    policy: Policy, path: str, access: Access, launch: Launch, args: list[str], frozen: list[str]
) -> None:
    """A missing read-only or hidden path inside a writable area: the child must not be able
    to create it, so an empty placeholder is made on the host and covered read-only."""
    if access == Access.WRITE:
        return
    first_missing = _first_missing(path)
    if first_missing is None or policy.parent_access(first_missing) != Access.WRITE:
        return  # nothing to create it in, or not writable anyway
    directory = (
        posixpath.basename(first_missing) in PROTECTED_METADATA_NAMES or first_missing != path
    )
    placeholder = _acquire_placeholder(first_missing, directory)
    if placeholder is None:  # it appeared meanwhile: treat it as the existing path it is
        if access == Access.READ:
            args += ["--ro-bind", first_missing, first_missing]
        else:
            _hide(policy, first_missing, args, frozen)
        return
    launch._placeholders.append(placeholder)
    if placeholder.directory:
        args += ["--perms", "555" if access == Access.READ else "000", "--tmpfs", first_missing]
        frozen.append(first_missing)
    else:
        args += ["--ro-bind", "/dev/null", first_missing]


def _first_missing(path: str) -> str | None:
    """The shallowest component of ``path`` that does not exist, or is only our placeholder."""
    current = "/"
    for part in path.strip("/").split("/"):
        current = posixpath.join(current, part)
        if _held(current) or not os.path.lexists(current):
            return current
    return None


def _held(path: str) -> bool:
    """Whether ``path`` is a placeholder a running launch of this server holds (then it is
    still missing as far as policies go, and a new launch must share it, not bind it)."""
    with _placeholder_lock:
        held = _placeholders.get(path)
    return held is not None and _same_file(held[0])


def _acquire_placeholder(path: str, directory: bool) -> _Placeholder | None:
    """Create (or share) the empty placeholder at ``path``; None if something else is there."""
    with _placeholder_lock:
        held = _placeholders.get(path)
        if held is not None and _same_file(held[0]):
            _placeholders[path] = (held[0], held[1] + 1)
            return held[0]
        try:
            if directory:
                os.mkdir(path, 0o755)
            else:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o644))
        except FileExistsError:
            return None
        status = os.lstat(path)
        placeholder = _Placeholder(path, directory, status.st_dev, status.st_ino)
        _placeholders[path] = (placeholder, 1)
        return placeholder


def _release_placeholder(placeholder: _Placeholder) -> None:
    with _placeholder_lock:
        held = _placeholders.get(placeholder.path)
        if held is None or held[0] != placeholder:
            return
        if held[1] > 1:
            _placeholders[placeholder.path] = (placeholder, held[1] - 1)
            return
        del _placeholders[placeholder.path]
        if not _same_file(placeholder):
            return  # replaced on the host meanwhile: not ours to remove
        try:
            if placeholder.directory:
                os.rmdir(placeholder.path)  # fails, and keeps it, if someone filled it
            elif os.lstat(placeholder.path).st_size == 0:
                os.unlink(placeholder.path)
        except OSError:
            pass


def _same_file(placeholder: _Placeholder) -> bool:
    try:
        status = os.lstat(placeholder.path)
    except OSError:
        return False
    kind_ok = (
        stat.S_ISDIR(status.st_mode) if placeholder.directory else stat.S_ISREG(status.st_mode)
    )
    return kind_ok and (status.st_dev, status.st_ino) == (placeholder.device, placeholder.inode)


def _glob_matches(policy: Policy) -> list[str]:
    """Existing paths matching the deny globs (bubblewrap can only mask concrete paths)."""
    matches: list[str] = []
    for pattern in policy.deny_globs:
        prefix = glob_static_prefix(pattern)
        if prefix in ("", "/"):
            raise PolicyError(
                f"unreadable glob `{pattern}` cannot be safely expanded; use a pattern with "
                "a non-root directory prefix"
            )
        if not os.path.isdir(prefix):
            continue
        regex = glob_regex(pattern)
        for directory, subdirs, files in os.walk(prefix):
            descend = []
            for name in subdirs:
                full = posixpath.join(directory, name)
                if regex.fullmatch(full):
                    matches.append(os.path.realpath(full))  # a match hides all below it
                else:
                    descend.append(name)
            subdirs[:] = descend
            for name in files:
                full = posixpath.join(directory, name)
                if regex.fullmatch(full):
                    matches.append(os.path.realpath(full))
            if len(matches) > MAX_GLOB_MATCHES:
                raise PolicyError(
                    f"unreadable glob expansion for {prefix} matched more than "
                    f"{MAX_GLOB_MATCHES} paths"
                )
    return sorted(set(matches))


def _seccomp_works(argv: list[str]) -> bool:
    """Whether bubblewrap loads our seccomp program here (``argv`` ends with ``-- true``)."""
    if not seccomp.available():
        return False
    fd = seccomp.filter_fd(network=False)
    try:
        done = subprocess.run(
            [*argv[:-2], "--seccomp", str(fd), *argv[-2:]],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=_PROBE_TIMEOUT,
            check=False,
            pass_fds=(fd,),
        )
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        os.close(fd)
    return done.returncode == 0


def _signal_shim() -> str | None:
    """An ``env`` that can set signal dispositions (GNU coreutils 8.31 or later)."""
    env = shutil.which("env") or "/usr/bin/env"
    test = [
        env,
        "--ignore-signal=INT",
        "--default-signal=INT",
        "--",
        shutil.which("true") or "/bin/true",
    ]
    return env if _run_quietly(test) is None else None


def _run_quietly(argv: list[str]) -> str | None:
    """Run ``argv``; None when it succeeds, else its error output (or the OS error)."""
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=_PROBE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    if done.returncode == 0:
        return None
    return done.stderr.decode(errors="replace").strip() or f"exit status {done.returncode}"


def _why(error: str) -> str:
    """A reason a person can act on, from bwrap's own complaint."""
    lowered = error.lower()
    if "uid map" in lowered or "user namespace" in lowered or "creating new namespace" in lowered:
        return (
            "bubblewrap cannot create a user namespace here (unprivileged user namespaces are "
            f"disabled: check the sysctl kernel.unprivileged_userns_clone or the container's "
            f"seccomp/AppArmor profile): {error}"
        )
    return f"bubblewrap cannot build a sandbox here: {error}"
