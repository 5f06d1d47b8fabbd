"""Starting children (pipes or PTY) and killing them. No asyncio here: plain fds and pids.

Every child is a session leader (``setsid``), so its pid is its process group id and one
``killpg`` reaches it and every descendant that stayed in the group; and a child subreaper,
so descendants orphaned while it lives stay in its tree (``tree.py``). Each child also gets
a parent-death signal (SIGKILL), so a server killed with SIGKILL leaves no child running
(the keeper, ``keeper.py``, sees to its descendants). In PTY mode the slave becomes the
child's controlling terminal, so job control works.

The server raises its own soft limit on open files (:func:`raise_fd_limit`); children start
with the soft limit the server was given, as services under systemd do: many programs
misbehave with a huge one (loops over every possible descriptor, ``select()``). The hard
limit is unchanged, so a child that wants more can raise its own (``ulimit -n``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import logging
import os
import resource
import signal
import struct
import termios
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    import subprocess

PTY_ROWS = 24
PTY_COLUMNS = 80

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36

log = logging.getLogger(__name__)

_child_fd_limit: int | None = None
"""The soft RLIMIT_NOFILE children start with (the server's own before it raised it), or
None when the server never raised it (children then inherit the server's)."""

_SIG_DFL = 0
_SIG_IGN = 1
_RESETTABLE_SIGNALS = tuple(
    int(s) for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP)
)


class SpawnRequest(msgspec.Struct, frozen=True):
    argv: list[str]
    cwd: str
    env: dict[str, str]
    tty: bool
    pipe_stdin: bool
    arg0: str | None = None
    size: tuple[int, int] | None = None
    """The PTY's (rows, columns); None for the usual 24x80."""
    keep_fd: int | None = None
    """A descriptor (3 or above) the child keeps open under its own number, every other one
    above 2 being closed: the seccomp program bubblewrap reads (``--seccomp N``)."""
    cgroup_fd: int | None = None
    """A ``cgroup.procs`` file the child moves itself into before it executes (a sandbox's
    pids cgroup), so all it starts is counted there from its first fork."""
    ignored_signals: tuple[int, ...] = ()
    """Signals the child starts with ignored (every other one at its default): what
    bubblewrap must survive so the command it runs gets them (``sandbox/bwrap.py``)."""


class Child(msgspec.Struct):
    """A started child: its pid and the parent's ends of its stdio, all non-blocking.

    In PTY mode ``stdout`` is the PTY master (read and written), ``stdin`` is the same fd and
    ``stderr`` is None. In pipe mode ``stdin`` is None unless stdin was asked to be writable.
    """

    pid: int
    tty: bool
    stdout: int
    stderr: int | None
    stdin: int | None
    popen: subprocess.Popen[bytes] | None = None
    """Only on the Popen path; kept so subprocess never reaps or warns about our child."""


@functools.cache
def _libc_calls() -> tuple[Any, Any]:
    """prctl and signal from libc, for the Popen path only (loaded on first use: ctypes is
    not needed when the extension is there)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols include libc's
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    set_handler = libc.signal
    set_handler.argtypes = [ctypes.c_int, ctypes.c_void_p]
    set_handler.restype = ctypes.c_void_p
    return prctl, set_handler


def _preexec(
    tty: bool,
    parent_pid: int,
    cgroup_fd: int | None,
    ignored: tuple[int, ...],
    fd_limit: int | None,
) -> None:  # pragma: no cover - runs in the child
    # setsid has already run (start_new_session); fds 0-2 are in place.
    _restore_fd_limit(fd_limit)
    if cgroup_fd is not None:
        os.write(cgroup_fd, b"0")  # into the sandbox's pids cgroup before anything forks
    _prctl, _signal = _libc_calls()
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the server died before the line above took effect
        os._exit(137)
    _prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphaned descendants stay in its tree
    if tty:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    # Default dispositions and no blocked signal, whatever the server runs with (an ignored
    # SIGINT, as under a shell's background job, would make "interrupt" do nothing).
    for signum in _RESETTABLE_SIGNALS:
        _signal(signum, _SIG_IGN if signum in ignored else _SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def raise_fd_limit() -> None:
    """Raise this process's soft limit on open files to the hard one, and have every child
    started from now on begin with the soft limit it had before.

    A server holds a descriptor per connection, handle and child pipe, and the common soft
    limit of 1024 is soon reached (idle sockets alone could take them all before the pending
    bound drops them); its children keep the limit they would have had without the server.
    """
    global _child_fd_limit
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as exc:
        log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
        return
    _child_fd_limit = soft


def child_fd_limit() -> int | None:
    """The soft open-file limit children are given, or None (they inherit the server's)."""
    return _child_fd_limit


def restore_child_fd_limit() -> None:  # pragma: no cover - runs in the child
    """For a ``preexec_fn`` (in a forked child): the open-file soft limit back to
    :func:`child_fd_limit`, the hard one unchanged; nothing when that is None."""
    _restore_fd_limit(_child_fd_limit)


def _restore_fd_limit(soft: int | None) -> None:  # pragma: no cover - runs in the child
    if soft is not None:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, hard), hard))


def set_window_size(fd: int, rows: int, columns: int) -> None:
    """Size a PTY (either side); the terminal's foreground group gets SIGWINCH."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


def _native_module() -> Any:
    """The vfork extension, or None where it was not built."""
    try:
        from . import _spawn
    except ImportError:  # pragma: no cover - only where the extension could not be built
        return None
    return _spawn


def native_spawn_available() -> bool:
    return _native_module() is not None


def check_request(request: SpawnRequest) -> None:
    """Raise ``ValueError`` naming what cannot be passed to a child: a NUL byte in the
    program, an argument, the cwd or the environment, or ``=`` in a variable's name.
    Both spawn paths refuse the same requests, before anything is started."""
    for index, arg in enumerate(request.argv):
        if "\0" in arg:
            raise ValueError(f"argv[{index}] contains a NUL byte")
    if request.arg0 is not None and "\0" in request.arg0:
        raise ValueError("arg0 contains a NUL byte")
    if "\0" in request.cwd:
        raise ValueError("cwd contains a NUL byte")
    if request.keep_fd is not None and request.keep_fd < 3:
        raise ValueError("keep_fd must be 3 or above (0-2 are the child's stdio)")
    for name, value in request.env.items():
        if "\0" in name or "=" in name:
            raise ValueError(f"illegal environment variable name {name!r}")
        if "\0" in value:
            raise ValueError(f"environment variable {name} contains a NUL byte")


def spawn(request: SpawnRequest, *, native: bool = True) -> Child:
    """Start a child. Raises ``OSError`` (missing program, bad cwd, ...) with the OS reason,
    ``ValueError`` for what :func:`check_request` refuses.

    The program is ``argv[0]``, looked up on the child's PATH (libc's default path when the
    child env has none); the program sees ``arg0`` (when given) as its argv[0]. ``native``
    starts it through the vfork extension when that is built, else through Popen.
    """
    check_request(request)
    program = request.argv[0]
    if not program:
        raise OSError(2, "missing program: argv[0] is empty")
    extension = _native_module() if native else None
    args = list(request.argv)
    if request.arg0 is not None:
        args[0] = request.arg0
    parent_pid = os.getpid()
    tty = request.tty
    fd_limit = _child_fd_limit

    def preexec() -> None:  # pragma: no cover - runs in the child
        _preexec(tty, parent_pid, request.cgroup_fd, request.ignored_signals, fd_limit)

    to_close: list[int] = []
    try:
        if tty:
            master, slave = os.openpty()
            to_close.append(slave)
            set_window_size(slave, *(request.size or (PTY_ROWS, PTY_COLUMNS)))
            stdin_child: int = slave
            stdout_child, stderr_child = slave, slave
            parent_fds: tuple[int, int | None, int | None] = (master, None, master)
        else:
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            to_close += [out_w, err_w]
            stdout_child, stderr_child = out_w, err_w
            if request.pipe_stdin:
                in_r, in_w = os.pipe()
                to_close.append(in_r)
                stdin_child = in_r
                parent_fds = (out_r, err_r, in_w)
            else:
                stdin_child = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
                to_close.append(stdin_child)
                parent_fds = (out_r, err_r, None)
        try:
            if extension is not None:
                pid = _native_spawn(
                    extension, program, args, request, (stdin_child, stdout_child, stderr_child)
                )
                popen = None
            else:
                _libc_calls()  # resolved here in the parent, never in the forked child

                import subprocess  # the fallback path only

                def start(argv: list[str], executable: str) -> subprocess.Popen[bytes]:
                    return subprocess.Popen(
                        argv,
                        executable=executable,
                        stdin=stdin_child,
                        stdout=stdout_child,
                        stderr=stderr_child,
                        cwd=request.cwd,
                        env=request.env,
                        start_new_session=True,
                        preexec_fn=preexec,
                        close_fds=True,
                        pass_fds=() if request.keep_fd is None else (request.keep_fd,),
                    )

                try:
                    popen = start(args, program)
                except OSError as exc:
                    script = _script_fallback(program, args, request.env)
                    if exc.errno != errno.ENOEXEC or script is None:
                        raise
                    popen = start(script, script[0])
                pid = popen.pid
        except BaseException:
            # Each fd once: in PTY mode the master is both stdout and stdin, and closing a
            # number twice could close an fd a worker thread has opened in between.
            for end in {end for end in parent_fds if end is not None}:
                with contextlib.suppress(OSError):
                    os.close(end)
            raise
    finally:
        for fd in to_close:
            os.close(fd)
    stdout, stderr, stdin = parent_fds
    for end in {fd for fd in (stdout, stderr, stdin) if fd is not None}:
        os.set_blocking(end, False)
    return Child(pid, tty, stdout, stderr, stdin, popen)


def _candidates(program: str, env: dict[str, str]) -> list[bytes]:
    """Where execvp would look for ``program``: itself if it has a slash, else each entry of
    the child's PATH (libc's default path when it has none)."""
    encoded = os.fsencode(program)
    if b"/" in encoded:
        return [encoded]
    return [os.path.join(os.fsencode(directory), encoded) for directory in os.get_exec_path(env)]


def _script_fallback(program: str, args: list[str], env: dict[str, str]) -> list[str] | None:
    """For the Popen path: ``/bin/sh <path> <args>`` for an executable with no ``#!`` line, as
    execvp (and the vfork path) do; None when no such file is on the path."""
    for candidate in _candidates(program, env):
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return ["/bin/sh", os.fsdecode(candidate), *args[1:]]
    return None


def _native_spawn(
    extension: Any,
    program: str,
    args: list[str],
    request: SpawnRequest,
    fds: tuple[int, int, int],
) -> int:
    """Start through the vfork extension; errors carry the path the failing step used."""
    candidates = _candidates(program, request.env)
    envp = [os.fsencode(name) + b"=" + os.fsencode(value) for name, value in request.env.items()]
    try:
        return int(
            extension.spawn(
                candidates,
                [os.fsencode(arg) for arg in args],
                envp,
                os.fsencode(request.cwd),
                *fds,
                request.tty,
                signal.SIGKILL,
                True,  # a child subreaper: see tree.py
                -1 if request.keep_fd is None else request.keep_fd,
                -1 if request.cgroup_fd is None else request.cgroup_fd,
                sum(1 << (signum - 1) for signum in request.ignored_signals),
                -1 if _child_fd_limit is None else _child_fd_limit,
            )
        )
    except OSError as exc:
        step = exc.filename
        path = request.cwd if step == "chdir" else program if step == "exec" else None
        raise OSError(exc.errno, exc.strerror, path) from None


def exit_code_from_status(status: int) -> int:
    """The exit code, or 128+N for a death by signal N (Part A §A2, both modes)."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return -1


def signal_group(pid: int, signum: int, *, include_leader: bool = True) -> None:
    """Send ``signum`` to the process group led by ``pid`` (and to ``pid`` itself).

    The leader is signalled directly as well: a PTY child might have moved itself to another
    group, and the group may already be empty while the leader is a zombie. Errors for a
    group that is gone are ignored.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)
    if include_leader:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)
