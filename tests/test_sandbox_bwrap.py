"""Sandboxed children under real bubblewrap: escape attempts that must fail, and what must
still work (writing in the workspace, reading, PTY job control, signals, git).

Children are started the way the server starts them (``exec_server.process.spawn``: a new
session, the PTY as controlling terminal) or with ``subprocess`` as a session leader.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exec_server.process.spawn import SpawnRequest, exit_code_from_status, spawn
from exec_server.sandbox import bwrap as bwrap_module
from exec_server.sandbox.bwrap import (
    BwrapSupport,
    Launch,
    NetworkEntry,
    SandboxUnavailable,
    probe,
    support,
    wrap,
)
from exec_server.sandbox.policy import UNRESTRICTED, Policy, ResolveContext, resolve

from .sandbox_support import ORIGINAL, outside
from .support import PATH_ENV
from .test_sandbox_policy import _managed, _path, _special

__all__ = ["outside"]  # a fixture, used by name

SUPPORT = support()
pytestmark = pytest.mark.skipif(
    not SUPPORT.usable, reason=f"bubblewrap cannot run here: {SUPPORT.reason}"
)
BASH = ["bash", "--noprofile", "--norc", "-c"]


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    if shutil.which("git"):
        subprocess.run(["git", "init", "-q", str(workspace)], check=True)
    else:
        (workspace / ".git").mkdir()
        (workspace / ".git" / "config").write_text("[core]\n")
    return workspace


def workspace_policy(ws: Path, *extra: dict[str, object], network: str = "restricted") -> Policy:
    """``/`` readable, the workspace writable (with .git & co read-only), nothing else."""
    entries = [_special("root", "read"), _special("project_roots", "write"), *extra]
    return resolve(_managed(entries, network=network), ResolveContext(cwd=str(ws)))


def run(
    policy: Policy, script: str, cwd: Path, *, arg0: str | None = None, inside: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` confined, from ``cwd`` (``inside`` is the cwd bwrap enters, if other)."""
    launch = wrap(policy, [*BASH, script], str(inside or cwd), arg0=arg0, env=os.environ)
    try:
        return subprocess.run(
            launch.argv,
            **launch.subprocess_options(),
            cwd=str(cwd),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            start_new_session=True,
            timeout=60,
            check=False,
        )
    finally:
        launch.release()


@contextlib.contextmanager
def started_when_ready(policy: Policy, script: str, cwd: Path) -> Iterator[subprocess.Popen[str]]:
    """``script`` confined, in a session of its own, once it has printed ``ready``."""
    launch = wrap(policy, [*BASH, script], str(cwd), env=os.environ)
    try:
        child = subprocess.Popen(
            launch.argv,
            cwd=cwd,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
            **launch.subprocess_options(),
        )
        launch.spawned()
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        yield child
    finally:
        launch.release()


def snapshot(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(directory.iterdir()) if p.is_file()}


def test_writes_inside_work_and_outside_fail(ws: Path, outside: Path) -> None:
    done = run(
        workspace_policy(ws),
        f"echo in > inside.txt && echo wrote-inside; echo out > {outside}/new.txt; "
        f"echo out >> {outside}/target.txt; rm -f {outside}/target.txt; echo end",
        ws,
    )
    assert done.stdout == "wrote-inside\nend\n"
    assert (ws / "inside.txt").read_text() == "in\n"
    assert done.stderr.count("Read-only file system") == 3
    assert snapshot(outside) == {"target.txt": ORIGINAL}


def test_descendants_are_confined_setsid_or_not(ws: Path, outside: Path) -> None:
    """A grandchild, a background job and a setsid'd new session all stay inside."""
    script = (
        f"bash -c 'bash -c \"touch ran-grandchild; echo x > {outside}/grandchild\"'; "
        f"(sleep 0.01; touch ran-background; echo x > {outside}/background) & wait; "
        f"setsid -w bash -c 'touch ran-setsid; echo x > {outside}/setsid'; "
        f"nohup bash -c 'touch ran-nohup; echo x > {outside}/nohup' >/dev/null 2>&1; true"
    )
    done = run(workspace_policy(ws), script, ws)
    assert done.returncode == 0, done.stderr
    for name in ("grandchild", "background", "setsid", "nohup"):
        assert (ws / f"ran-{name}").exists(), name  # it did run, and tried
    assert snapshot(outside) == {"target.txt": ORIGINAL}


def test_links_dot_dot_and_proc_root_do_not_escape(ws: Path, outside: Path) -> None:
    (ws / "dirlink").symlink_to(outside)
    (ws / "filelink").symlink_to(outside / "target.txt")
    (ws / "dangling").symlink_to(outside / "created-through-dangling-link")
    script = (
        "echo x > dirlink/via-dir-link; echo x >> filelink; echo x > dangling; "
        f"ln {outside}/target.txt hardlink; "
        "echo x > ../outside/dot-dot; "
        f"echo x > /proc/self/root{outside}/proc-root; echo x > /proc/1/root{outside}/proc-1-root; "
        "echo done"
    )
    done = run(workspace_policy(ws), script, ws)
    assert done.stdout == "done\n"
    assert "Invalid cross-device link" in done.stderr  # no hard link into the writable root
    assert not (ws / "hardlink").exists()
    assert snapshot(outside) == {"target.txt": ORIGINAL}
    assert sorted(p.name for p in outside.iterdir()) == ["target.txt"]


def test_git_metadata_stays_read_only_and_cannot_be_created(ws: Path) -> None:
    config = (ws / ".git" / "config").read_text()
    script = (
        "echo x > .git/config; echo x > .git/new; rm -rf .git; mv .git moved; "
        "mkdir .codex; touch .agents/x; mkdir -p .aws/creds; echo end"
    )
    done = run(workspace_policy(ws), script, ws)
    assert done.stdout == "end\n"
    assert (ws / ".git" / "config").read_text() == config
    assert not (ws / ".git" / "new").exists() and not (ws / "moved").exists()
    # The placeholders that kept .codex and friends from being created are gone again.
    assert sorted(p.name for p in ws.iterdir()) == [".git"]


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_works_in_the_workspace(ws: Path) -> None:
    (ws / "tracked.txt").write_text("a\n")
    done = run(
        workspace_policy(ws),
        "git status --porcelain && echo changed > tracked.txt && git diff --stat; git add tracked.txt",
        ws,
    )
    assert done.stdout.startswith("?? tracked.txt\n"), done.stderr
    assert "Read-only file system" in done.stderr  # git add writes .git/index: refused
    assert (ws / "tracked.txt").read_text() == "changed\n"


def test_no_privilege_to_undo_the_mounts(ws: Path) -> None:
    script = (
        "grep CapEff /proc/self/status; mount -o remount,rw / && echo REMOUNTED; "
        "umount .git && echo UNMOUNTED; unshare -Ur true && echo NEW-USERNS; echo end"
    )
    done = run(workspace_policy(ws), script, ws)
    assert done.stdout.splitlines() == ["CapEff:\t0000000000000000", "end"]


def test_the_command_gets_default_signal_dispositions(ws: Path) -> None:
    """bwrap runs with signals ignored; the command must not inherit that."""
    done = run(workspace_policy(ws), "grep -E '^Sig(Blk|Ign)' /proc/self/status", ws)
    status = {k: int(v, 16) for k, v in (line.split(":\t") for line in done.stdout.splitlines())}
    # Signals 32 and 33 are glibc's own (no program can change them), so they stay as CI
    # started us; every signal a program can handle must be back at its default.
    glibc_reserved = (1 << 31) | (1 << 32)
    assert {k: v & ~glibc_reserved for k, v in status.items()} == {"SigBlk": 0, "SigIgn": 0}


def test_hidden_paths_cannot_be_read(ws: Path, outside: Path) -> None:
    (outside / "secret-dir").mkdir()
    (outside / "secret-dir" / "key").write_text("k")
    (outside / "secret-dir" / "shared").mkdir()
    (ws / "token").write_text("t")
    policy = workspace_policy(
        ws,
        _path(outside / "secret-dir", "deny"),
        _path(outside / "secret-dir" / "shared", "write"),
        _path(ws / "token", "deny"),
        _path(ws / "never-created", "deny"),
    )
    script = (
        f"cat {outside}/secret-dir/key; ls {outside}/secret-dir; cat token; "
        f"echo ok > {outside}/secret-dir/shared/f && echo nested-writable; "
        "echo x > never-created; cat outside-free 2>/dev/null; echo end"
    )
    done = run(policy, script, ws)
    assert done.stdout == "nested-writable\nend\n"
    assert done.stderr.count("Permission denied") >= 3
    assert (outside / "secret-dir" / "shared" / "f").read_text() == "ok\n"
    assert not (ws / "never-created").exists()


def test_deny_globs_mask_matches(ws: Path) -> None:
    (ws / "sub").mkdir()
    (ws / "sub" / "prod.env").write_text("SECRET=1\n")
    (ws / "notes.txt").write_text("fine\n")
    glob = {"path": {"type": "glob_pattern", "pattern": "**/*.env"}, "access": "deny"}
    done = run(workspace_policy(ws, glob), "cat notes.txt; cat sub/prod.env; echo end", ws)
    assert done.stdout == "fine\nend\n"
    assert "Permission denied" in done.stderr


def test_reading_everywhere_and_writing_tmp(ws: Path) -> None:
    name = f"/tmp/exec-server-sandbox-test-{os.getpid()}-{time.monotonic_ns()}"
    policy = workspace_policy(ws, _special("slash_tmp", "write"))
    # The reference's sandbox (run by the codex e2e tests) can leave its own placeholders in
    # /tmp: what this checks is that ours go with the child, not that /tmp is clean.
    before = os.path.exists("/tmp/.codex")
    try:
        done = run(policy, f"head -c 4 /etc/passwd; echo; echo t > {name} && cat {name}", ws)
        assert done.stdout == "root\nt\n", done.stderr
    finally:
        if os.path.exists(name):
            os.unlink(name)
    assert os.path.exists("/tmp/.codex") == before  # the /tmp placeholders went with the child


def _listener(family: int, kind: int, address: str) -> socket.socket:
    sock = socket.socket(family, kind)
    sock.bind((address, 0))
    if kind == socket.SOCK_STREAM:
        sock.listen()
    return sock


NET_PROBE = """
import errno, socket, sys

family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
kind = socket.SOCK_STREAM if sys.argv[3] == "tcp" else socket.SOCK_DGRAM
try:
    s = socket.socket(family, kind)
    s.settimeout(10)
    s.connect((sys.argv[1], int(sys.argv[2])))
    s.send(b"leak")
    if kind == socket.SOCK_DGRAM:
        s.recv(10)  # an answer, or a refusal showing the datagram met no listener
    print("connected")
except OSError as exc:
    print(errno.errorcode[exc.errno])
"""


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_network_is_closed_even_on_loopback(ws: Path, address: str, protocol: str) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    try:
        listener = _listener(family, kind, address)
    except OSError as exc:
        pytest.skip(f"no {address} here: {exc}")
    with listener:
        port = str(listener.getsockname()[1])
        script = f"\"{sys.executable}\" -c '{NET_PROBE}' {address} {port} {protocol}"
        denied = run(workspace_policy(ws), script, ws)
        # The seccomp filter refuses the socket itself, as the reference does; without one
        # the empty network namespace refuses the connection
        expected = ("EPERM",) if SUPPORT.seccomp else ("ECONNREFUSED", "ENETUNREACH")
        assert denied.stdout.strip() in expected, denied.stderr
        if protocol == "udp":
            _assert_first_datagram_is_a_marker(listener, family, address)
        # The same probe with the network allowed does reach the listener.
        received: list[bytes] = []
        responder = threading.Thread(target=_answer_once, args=(listener, received))
        if protocol == "udp":
            responder.start()
        allowed = run(workspace_policy(ws, network="enabled"), script, ws)
        assert allowed.stdout.strip() == "connected", allowed.stderr
        if protocol == "udp":
            responder.join(30)
            assert received == [b"leak"]


def _answer_once(listener: socket.socket, received: list[bytes]) -> None:
    listener.settimeout(30)
    data, sender = listener.recvfrom(10)
    received.append(data)
    listener.sendto(b"ack", sender)


def _assert_first_datagram_is_a_marker(listener: socket.socket, family: int, address: str) -> None:
    """Nothing from the sandbox arrived: the first datagram is one sent after it exited."""
    with socket.socket(family, socket.SOCK_DGRAM) as sender:
        sender.sendto(b"marker", (address, listener.getsockname()[1]))
    listener.settimeout(10)
    assert listener.recv(10) == b"marker"


def _read_until(fd: int, marker: bytes, seen: bytearray) -> bytes:
    deadline = time.monotonic() + 30
    while marker not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {marker!r} in {bytes(seen)!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            assert data, f"EOF before {marker!r} in {bytes(seen)!r}"
            seen += data
    head, _, rest = bytes(seen).partition(marker)
    seen[:] = rest
    return head


@pytest.fixture
def pty_shell(ws: Path) -> Iterator[tuple[int, int, Launch]]:
    """An interactive bash in the sandbox on a PTY, started as the server starts children."""
    env = {**PATH_ENV, "PS1": "$ ", "TERM": "dumb", "HOME": str(ws)}
    shell = ["bash", "--noprofile", "--norc", "-i"]
    launch = wrap(workspace_policy(ws), shell, str(ws), env=env)
    request = SpawnRequest(shell, str(ws), env, tty=True, pipe_stdin=False)
    child = spawn(launch.spawn_request(request))
    launch.spawned()
    try:
        yield child.stdout, child.pid, launch
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):  # the test may reap it
            os.killpg(child.pid, signal.SIGKILL)
            os.waitpid(child.pid, 0)
        os.close(child.stdout)
        launch.release()


def test_pty_job_control_and_tty(pty_shell: tuple[int, int, Launch]) -> None:
    fd, pid, _ = pty_shell
    seen = bytearray()

    def send(line: str) -> bytes:
        """Run ``line``; the output up to a marker the echoed command line cannot contain."""
        os.write(fd, f"{line}\necho END''MARK\n".encode())
        return _read_until(fd, b"ENDMARK", seen)

    out = send("tty; echo tty-rc=$?")
    assert b"/dev/" in out and b"tty-rc=0" in out
    send("sleep 300 &")
    assert b"Running" in send("jobs")
    # Each foreground job says it runs before a key is pressed: a ^Z or ^C typed while bash
    # itself still reads the line would reach bash, not the job.
    os.write(fd, b"bash -c 'echo SLEEP''ING; exec sleep 200'\n")
    _read_until(fd, b"SLEEPING", seen)
    os.write(fd, b"\x1a")  # ^Z stops the foreground job
    assert b"Stopped" in send("true")
    assert b"Terminated" in send("bg %2; kill %1 %2; wait")
    os.write(fd, b"bash -c 'echo CAT''TING; exec cat'\n")
    _read_until(fd, b"CATTING", seen)
    os.write(fd, b"\x03")  # ^C interrupts the foreground job, not the shell
    # Typed-ahead input is flushed with the ^C (no NOFLSH): type on once the shell is back
    _read_until(fd, b"^C", seen)
    _read_until(fd, b"$ ", seen)
    assert b"rc=130" in send("echo rc=$?")
    os.write(fd, b"exit 7\n")
    _, status = os.waitpid(pid, 0)
    assert exit_code_from_status(status) == 7


def test_a_signal_to_the_group_reaches_the_command_not_bwrap(ws: Path) -> None:
    """bwrap ignores it, the command handles it: its trap runs to the end."""
    script = (
        "trap 'echo got-int; sleep 0.1; echo handled; exit 5' INT; echo ready; sleep 300 & wait"
    )
    with started_when_ready(workspace_policy(ws), script, ws) as child:
        os.killpg(child.pid, signal.SIGINT)
        assert child.wait(timeout=30) == 5
        assert child.stdout is not None
        assert child.stdout.read() == "got-int\nhandled\n"


def test_exit_codes(ws: Path) -> None:
    policy = workspace_policy(ws)
    assert run(policy, "exit 7", ws).returncode == 7
    # A signal death comes back as bwrap's exit status 128+N, which the server reports as is.
    assert run(policy, "kill -TERM $$", ws).returncode == 143
    assert run(policy, "kill -KILL $$", ws).returncode == 137
    missing = run(policy, "true", ws, inside=ws / "no-such-dir")
    assert missing.returncode == 1 and missing.stderr.startswith("bwrap: ")


def test_killing_the_group_kills_every_sandboxed_process(ws: Path) -> None:
    """Even a setsid'd daemon: the PID namespace dies with bwrap."""
    marker = f"exec-server-sandbox-{os.getpid()}-{time.monotonic_ns()}"
    script = f"setsid bash -c 'exec -a {marker} sleep 300' & echo ready; wait"
    with started_when_ready(workspace_policy(ws), script, ws) as child:
        deadline = time.monotonic() + 30
        while not _processes_named(marker):
            assert time.monotonic() < deadline, "the daemon never started"
            time.sleep(0.01)
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        while _processes_named(marker):
            assert time.monotonic() < deadline, "the setsid daemon survived"
            time.sleep(0.01)


def _processes_named(name: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv0 = handle.read().split(b"\0")[0]
            with open(f"/proc/{entry}/stat") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if argv0 == name.encode() and state != "Z":
            found.append(int(entry))
    return found


def test_arg0_is_what_the_program_sees(ws: Path) -> None:
    done = run(workspace_policy(ws), "tr '\\0' ' ' < /proc/$$/cmdline", ws, arg0="renamed")
    assert done.stdout.startswith("renamed --noprofile --norc -c "), done.stderr


def test_arg0_is_left_to_the_spawner_only_when_unsandboxed(ws: Path) -> None:
    launch = wrap(UNRESTRICTED, ["prog", "a"], "/", arg0="shown")
    assert (launch.argv, launch.sandboxed, launch.arg0) == (["prog", "a"], False, "shown")
    confined = wrap(workspace_policy(ws), ["prog"], str(ws), arg0="shown")
    confined.release()
    assert confined.sandboxed and confined.arg0 is None and "shown" in confined.argv


def test_unavailable_bwrap_is_refused_with_the_reference_prefix(ws: Path) -> None:
    broken = probe("/bin/false")
    assert not broken.usable and broken.reason
    with pytest.raises(SandboxUnavailable) as caught:
        wrap(workspace_policy(ws), ["true"], str(ws), bwrap=broken)
    assert caught.value.message.startswith("sandbox intent cannot be enforced on this executor: ")
    missing = BwrapSupport(
        None, f"bubblewrap (bwrap) is not installed: {bwrap_module.INSTALL_HINT}"
    )
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        wrap(workspace_policy(ws), ["true"], str(ws), bwrap=missing)


def test_placeholders_are_shared_and_removed_by_the_last_launch(ws: Path) -> None:
    policy = workspace_policy(ws)
    first = wrap(policy, ["true"], str(ws))
    second = wrap(policy, ["true"], str(ws))
    assert (ws / ".codex").is_dir()
    first.release()
    assert (ws / ".codex").is_dir()
    second.release()
    second.release()
    assert not (ws / ".codex").exists()
    third = wrap(policy, ["true"], str(ws))
    (ws / ".agents" / "kept").write_text("someone else's file")  # filled on the host meanwhile
    third.release()
    assert (ws / ".agents" / "kept").exists()


def test_minimal_shows_only_the_system_dirs_and_the_workspace(ws: Path, outside: Path) -> None:
    """``minimal`` starts from an empty root: programs still run (merged-/usr symlinks are
    recreated), the rest of the host is simply not there."""
    policy = resolve(
        _managed([_special("minimal", "read"), _special("project_roots", "write")]),
        ResolveContext(cwd=str(ws)),
    )
    script = (
        f"cat {outside}/target.txt; echo in > inside.txt && cat inside.txt; touch /new; echo end"
    )
    done = run(policy, script, ws)
    assert done.stdout == "in\nend\n", done.stderr
    assert "No such file or directory" in done.stderr and "Read-only file system" in done.stderr


@pytest.mark.skipif(not support().usable, reason=f"bubblewrap cannot run here: {support().reason}")
def test_a_restricted_network_without_the_seccomp_filter_is_refused(ws: Path) -> None:
    """Where bubblewrap works but our filter cannot load, an empty network namespace alone
    would leave Unix sockets outside reachable: refused, never run so; with the network
    enabled the filter is not needed for that, and the start goes on."""
    unfiltered = dataclasses.replace(support(), seccomp=False)
    with pytest.raises(SandboxUnavailable, match="needs the seccomp filter"):
        wrap(workspace_policy(ws), ["true"], str(ws), bwrap=unfiltered)
    enabled = wrap(workspace_policy(ws, network="enabled"), ["true"], str(ws), bwrap=unfiltered)
    enabled.release()
    assert enabled.sandboxed


@pytest.mark.skipif(not support().usable, reason=f"bubblewrap cannot run here: {support().reason}")
def test_a_managed_network_is_never_dropped_nor_run_without_the_filter(ws: Path) -> None:
    """A launch with a managed network always gets a network namespace of its own and the
    entry that loads the filter, whatever the policy (an unrestricted one too); where the
    filter cannot load, it is refused rather than run with Unix sockets outside reachable."""
    network = NetworkEntry(["entry", "--"], [])
    launch = wrap(UNRESTRICTED, ["true"], str(ws), network=network)
    launch.release()
    assert launch.sandboxed and "--unshare-net" in launch.argv
    assert any(arg.startswith("seccomp:") for arg in launch.argv)
    unfiltered = dataclasses.replace(support(), seccomp=False)
    enabled = workspace_policy(ws, network="enabled")
    with pytest.raises(SandboxUnavailable, match="needs the seccomp filter"):
        wrap(enabled, ["true"], str(ws), bwrap=unfiltered, network=network)


OUT_OF_DESCRIPTORS = """
import json, os, pickle, resource, sys, traceback
from exec_server.sandbox import bwrap, cgroup

policy, cwd = pickle.loads(sys.stdin.buffer.read())
bwrap.wrap(policy, ["true"], cwd, pids_limit=64).release()  # imports and caches warmed up
group = cgroup.pids_cgroups().group
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
filler = []
try:
    while True:
        filler.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
if group is not None:
    os.close(filler.pop())  # the one the cgroup's procs descriptor takes, before the filter
try:
    bwrap.wrap(policy, ["true"], cwd, pids_limit=64)
    failure = None
except OSError as error:
    failure = [error.errno, traceback.format_exc()]
for fd in filler:
    os.close(fd)
links = []
for fd in os.listdir("/proc/self/fd"):
    try:
        links.append(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        pass  # the listing's own descriptor
print(json.dumps({
    "failure": failure,
    "entries": sorted(os.listdir(cwd)),
    "cgroup_fds": sum(group is not None and link.startswith(group) for link in links),
}))
"""


def test_a_launch_that_cannot_make_its_seccomp_filter_leaves_nothing_behind(ws: Path) -> None:
    """A server out of descriptors (RLIMIT_NOFILE reached, in a child process) fails to make
    the seccomp program after the placeholders and the pids cgroup were made: the launch
    gives them back (no placeholder left in the workspace, no cgroup descriptor held)."""
    import json
    import pickle

    done = subprocess.run(
        [sys.executable, "-c", OUT_OF_DESCRIPTORS],
        input=pickle.dumps((workspace_policy(ws), str(ws))),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads(done.stdout)
    assert report["failure"] is not None, "the launch did not run out of descriptors"
    errno_number, trace = report["failure"]
    assert errno_number == errno.EMFILE and "filter_fd" in trace, trace
    assert report["entries"] == [".git"]  # .codex, .agents... placeholders removed again
    assert report["cgroup_fds"] == 0
