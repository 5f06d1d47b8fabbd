"""The client commands beyond run and shell, and the habits people bring from ssh, scp and
docker: exit codes a harness can trust, finding the server, profiles, unix:// and wss://,
copying trees, processes that outlive one command. Real servers, real pipes."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exec_server.client import (
    BadWorkingDirectory,
    ProgramNotExecutable,
    ProgramNotFound,
)
from exec_server.client import sync as blocking

from .client_support import CLI, cli, server_process
from .support import REPO, self_signed


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with server_process("ours-subprocess") as found:
        yield found


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """An environment whose runtime and config directories are the test's own."""
    (tmp_path / "run").mkdir(mode=0o700)
    (tmp_path / "config").mkdir()
    return {"XDG_RUNTIME_DIR": str(tmp_path / "run"), "XDG_CONFIG_HOME": str(tmp_path / "config")}


def serve(
    *args: str, env: dict[str, str], stderr: int = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*CLI, *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        env={**os.environ, **env},
        cwd=REPO,
        start_new_session=True,
    )


def stop(server: subprocess.Popen[bytes]) -> None:
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=30)


# ---- exit codes ---------------------------------------------------------------------------------


def test_exit_codes_tell_failures_apart(url: str, tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("not a program\n")
    cases = {
        ("run", "--", "no-such-program-here"): 127,
        ("run", "--", "/nonexistent/prog"): 127,
        ("run", "--", str(tmp_path / "plain")): 126,  # not executable
        ("run", "--", str(tmp_path)): 126,  # a directory
        ("run", "-w", str(tmp_path / "missing"), "--", "true"): 126,
        ("run", "--", "sh", "-c", "exit 3"): 3,
        ("run", "--url", "ws://127.0.0.1:9", "--", "true"): 255,
        ("cat", str(tmp_path / "missing")): 1,
        ("run",): 2,
    }
    for args, code in cases.items():
        done = cli(*args, url=url)
        assert done.returncode == code, (args, done.stderr)
        assert b"Traceback" not in done.stderr
    missing_cwd = cli("run", "-w", str(tmp_path / "missing"), "--", "pwd", url=url)
    assert missing_cwd.stderr.decode() == (
        f"exec-server run: --cwd {tmp_path / 'missing'}: No such file or directory on the server\n"
    )


def test_the_library_raises_typed_errors_for_programs(url: str, tmp_path: Path) -> None:
    with blocking.connect(url) as client:
        with pytest.raises(ProgramNotFound) as missing:
            client.run(["no-such-program-here"])
        assert isinstance(missing.value, FileNotFoundError)
        assert missing.value.filename == "no-such-program-here"
        with pytest.raises(ProgramNotExecutable):
            client.run([str(tmp_path)])
        with pytest.raises(BadWorkingDirectory) as bad_cwd:
            client.run(["true"], cwd=tmp_path / "missing")
        assert bad_cwd.value.filename == str(tmp_path / "missing")


# ---- small things -----------------------------------------------------------------------------


def test_a_typo_names_the_closest_command() -> None:
    done = subprocess.run([*CLI, "rn", "--", "true"], capture_output=True, cwd=REPO, timeout=30)
    assert done.returncode == 2
    assert done.stderr.decode() == (
        "exec-server: unknown command `rn`; did you mean `run`? (exec-server --help lists them)\n"
    )


def test_every_command_has_a_description_and_an_example() -> None:
    import argparse

    from exec_server.cli import CLIENT_COMMANDS
    from exec_server.client.cli import build_parser, command_names

    assert list(CLIENT_COMMANDS) == command_names()  # the server knows them all
    subcommands = next(
        action
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    for name, parser in subcommands.choices.items():
        assert parser.description, name
        assert "examples:\n  exec-server " in parser.format_help(), name
    shown = subprocess.run([*CLI, "put", "--help"], capture_output=True, cwd=REPO, timeout=30)
    assert shown.returncode == 0 and b"exec-server put -rp ./site /srv/www" in shown.stdout


def test_bare_exec_server_serves_and_tells_where(home: dict[str, str]) -> None:
    server = serve(env=home, stderr=subprocess.PIPE)
    try:
        assert server.stdout is not None and server.stderr is not None
        url = server.stdout.readline().decode().strip()
        said = server.stderr.readline().decode()
        url_file = Path(home["XDG_RUNTIME_DIR"]) / "exec-server" / "url"
        assert f"serving on {url}" in said and str(url_file) in said
        assert url_file.read_text() == url + "\n"  # the URL only, never a token
        assert stat.S_IMODE(url_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(url_file.parent.stat().st_mode) == 0o700
        env = {**home, "EXEC_SERVER_URL": ""}
        found = cli("run", "--", "echo", "found", url=None, extra_env=env)  # no --url
        assert found.stdout == b"found\n"
    finally:
        stop(server)
    assert not url_file.exists()  # removed on exit


def test_the_server_logs_each_connection_at_info(tmp_path: Path) -> None:
    server = serve(
        "--listen",
        "ws://127.0.0.1:0",
        "--log-level",
        "INFO",
        env={"EXEC_SERVER_TOKEN": "right"},
        stderr=subprocess.PIPE,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().decode().strip()
        assert cli("ls", "/", url=url, extra_env={"EXEC_SERVER_TOKEN": "right"}).returncode == 0
        assert cli("ls", "/", url=url, extra_env={"EXEC_SERVER_TOKEN": "wrong"}).returncode == 255
    finally:
        stop(server)
    assert server.stderr is not None
    log = server.stderr.read().decode()
    assert "handshake peer=exec-server websocket 127.0.0.1:" in log
    assert "status=101 auth=upgraded" in log
    assert "status=401 auth=unauthorized" in log
    assert "right" not in log and "wrong" not in log  # tokens are never logged
    assert "session created session=" in log and " client=exec-server-cli" in log
    assert "connection closed connection=1 reason=the client closed it" in log
    assert "session_after=detached" in log


# ---- docker and ssh habits --------------------------------------------------------------------------


def test_environment_working_directory_and_timeout(url: str, tmp_path: Path) -> None:
    (tmp_path / "vars").write_text("# a comment\nFROM_FILE=1\n\nFROM_OURS\n")
    done = cli(
        "run", "-w", str(tmp_path), "--env-file", str(tmp_path / "vars"), "-e", "MINE",
        "-e", "SET=a=b", "--", "sh", "-c", 'echo "$FROM_FILE $FROM_OURS $MINE $SET $(pwd)"',
        url=url, extra_env={"MINE": "local", "FROM_OURS": "ours"},
    )  # fmt: skip
    assert done.stdout == f"1 ours local a=b {tmp_path}\n".encode()
    slow = cli("run", "--timeout", "0.5", "--", "sleep", "30", url=url)
    assert slow.returncode == 124
    assert slow.stderr == b"exec-server run: the command did not finish within 0.5 s\n"


def test_completion_scripts_know_the_commands(tmp_path: Path) -> None:
    script = subprocess.run([*CLI, "completion", "bash"], capture_output=True, cwd=REPO, timeout=30)
    (tmp_path / "complete.bash").write_bytes(script.stdout)
    probe = (
        f"source {tmp_path / 'complete.bash'}; "
        "COMP_WORDS=(exec-server ru); COMP_CWORD=1; _exec_server; echo ${COMPREPLY[@]}; "
        "COMP_WORDS=(exec-server put --recu); COMP_CWORD=2; _exec_server; echo ${COMPREPLY[@]}"
    )
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30)
    assert done.stdout.splitlines() == ["run", "--recursive"]
    zsh = subprocess.run([*CLI, "completion", "zsh"], capture_output=True, cwd=REPO, timeout=30)
    assert zsh.stdout.startswith(b"autoload -U +X bashcompinit")


# ---- files ------------------------------------------------------------------------------------


def test_copying_trees_keeps_bytes_modes_and_times(url: str, tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "run.sh").write_bytes(b"#!/bin/sh\n")
    (source / "sub" / "data.bin").write_bytes(os.urandom(700_000))
    os.chmod(source / "run.sh", 0o751)
    os.utime(source / "run.sh", (1_600_000_000, 1_600_000_000))
    os.utime(source / "sub", (1_500_000_000, 1_500_000_000))
    assert cli("put", "-rp", str(source), str(tmp_path / "remote"), url=url).returncode == 0
    assert (
        cli("get", "-r", "-p", str(tmp_path / "remote"), str(tmp_path / "back"), url=url).returncode
        == 0
    )
    for copy in (tmp_path / "remote", tmp_path / "back"):
        assert (copy / "sub" / "data.bin").read_bytes() == (
            source / "sub" / "data.bin"
        ).read_bytes()
        assert stat.S_IMODE((copy / "run.sh").stat().st_mode) == 0o751
        assert (copy / "run.sh").stat().st_mtime == 1_600_000_000
        assert (copy / "sub").stat().st_mtime == 1_500_000_000
    refused = cli("put", str(source), str(tmp_path / "other"), url=url)
    assert refused.returncode == 1 and b"is a directory (use put -r)" in refused.stderr
    assert b"\r" not in refused.stderr  # no progress line off a terminal


def test_mkdir_rm_stat_and_ls(url: str, tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "c"
    assert cli("mkdir", "-p", str(deep), url=url).returncode == 0
    assert cli("mkdir", "-p", str(deep), url=url).returncode == 0  # exists: fine with -p
    assert cli("mkdir", str(deep), url=url).returncode == 1
    (deep / "f").write_bytes(b"12345")
    described = json.loads(cli("stat", "--json", str(deep / "f"), url=url).stdout)
    assert described[0]["type"] == "file" and described[0]["size"] == 5
    listed = json.loads(cli("ls", "--json", str(deep), url=url).stdout)
    assert [(row["name"], row["size"]) for row in listed] == [("f", 5)]
    long = cli("ls", "-l", str(tmp_path / "a"), url=url).stdout.decode()
    assert long.startswith("d ") and long.rstrip().endswith(" b/")
    refused = cli("rm", str(tmp_path / "a"), url=url)
    assert refused.returncode == 1 and b"is a directory (use rm -r)" in refused.stderr
    assert cli("rm", "-r", str(tmp_path / "a"), url=url).returncode == 0
    assert not (tmp_path / "a").exists()
    assert cli("rm", "-f", str(tmp_path / "a"), url=url).returncode == 0


# ---- processes that outlive a command ----------------------------------------------------------------


def test_run_detached_then_ps_logs_and_kill(url: str, home: dict[str, str]) -> None:
    started = cli(
        "run",
        "-d",
        "--",
        "sh",
        "-c",
        "echo one; echo two >&2; exec sleep 60",
        url=url,
        extra_env=home,
    )
    assert started.returncode == 0
    process_id = started.stdout.decode().strip()
    rows = json.loads(cli("ps", "--json", url=url, extra_env=home).stdout)
    assert [(r["processId"], r["state"]) for r in rows] == [(process_id, "running")]
    deadline = time.monotonic() + 20
    while (logs := cli("logs", process_id, url=url, extra_env=home)).stdout != b"one\n":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert logs.stderr == b"two\n"
    assert cli("kill", "-s", "INT", process_id, url=url, extra_env=home).returncode == 0
    followed = cli("logs", "-f", process_id, url=url, extra_env=home)
    assert followed.returncode == 128 + signal.SIGINT and followed.stdout == b"one\n"
    table = cli("ps", url=url, extra_env=home).stdout.decode()
    assert process_id in table and " closed " in table


def test_ps_without_a_detached_session_says_so(url: str, home: dict[str, str]) -> None:
    done = cli("ps", url=url, extra_env=home)
    assert done.returncode == 1
    assert b"no detached session on this server" in done.stderr


# ---- every listener, and profiles ------------------------------------------------------------------------


def test_unix_socket_with_a_token(tmp_path: Path) -> None:
    socket = tmp_path / "s.sock"
    (tmp_path / "token").write_text("s3cret\n")
    server = serve("--listen", f"unix://{socket}", env={"EXEC_SERVER_TOKEN": "s3cret"})
    try:
        assert server.stdout is not None
        assert server.stdout.readline().decode().strip() == f"unix://{socket}"
        target = f"unix://{socket}"
        done = cli(
            "run",
            "--url",
            target,
            "--token-file",
            str(tmp_path / "token"),
            "--",
            "echo",
            "hi",
            url=None,
        )
        assert (done.returncode, done.stdout) == (0, b"hi\n")
        refused = cli("run", "--url", target, "--", "true", url=None)
        assert refused.returncode == 255 and b"needs a token" in refused.stderr
    finally:
        stop(server)


def test_wss_with_a_ca_file_and_a_clear_tls_error(url: str, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server = serve(
        "--listen", "wss://127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key), env={}
    )
    try:
        assert server.stdout is not None
        wss = server.stdout.readline().decode().strip()
        trusted = cli("run", "--url", wss, "--ca-file", str(cert), "--", "echo", "tls", url=None)
        assert (trusted.returncode, trusted.stdout) == (0, b"tls\n")
        began = time.monotonic()
        untrusted = cli("run", "--url", wss, "--", "true", url=None)
        assert untrusted.returncode == 255
        assert (
            b"certificate is not trusted" in untrusted.stderr and b"--ca-file" in untrusted.stderr
        )
        assert time.monotonic() - began < 10  # said, not timed out
        plain = cli("run", "--url", wss.replace("wss://", "ws://"), "--", "true", url=None)
        assert plain.returncode == 255 and b"timed out" not in plain.stderr
        began = time.monotonic()
        mistaken = cli("run", "--url", url.replace("ws://", "wss://"), "--", "true", url=None)
        assert mistaken.returncode == 255
        assert b"dropped the TLS handshake (is it ws://, not wss://?)" in mistaken.stderr
        assert time.monotonic() - began < 10  # not the handshake timeout
    finally:
        stop(server)


def test_profiles_name_servers(url: str, home: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "token").write_text("unused\n")
    config = Path(home["XDG_CONFIG_HOME"]) / "exec-server" / "config.toml"
    config.parent.mkdir()
    config.write_text(
        f'default = "here"\n[servers.here]\nurl = "{url}"\n'
        f'[servers.nowhere]\nurl = "ws://127.0.0.1:9"\ntoken_file = "{tmp_path / "token"}"\n'
    )
    env = {**home, "EXEC_SERVER_URL": ""}
    assert cli("run", "--", "echo", "default", url=None, extra_env=env).stdout == b"default\n"
    named = cli("run", "--server", "nowhere", "--", "true", url=None, extra_env=env)
    assert named.returncode == 255 and b"ws://127.0.0.1:9" in named.stderr
    by_env = cli("run", "--", "true", url=None, extra_env={**env, "EXEC_SERVER": "nowhere"})
    assert by_env.returncode == 255 and b"ws://127.0.0.1:9" in by_env.stderr
    unknown = cli("ls", "--server", "elsewhere", url=None, extra_env=env)
    assert unknown.returncode == 2 and b"no server named `elsewhere`" in unknown.stderr


def test_make_install_puts_the_command_on_path(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        ["make", "--no-print-directory", "install", f"BINDIR={bindir}"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (bindir / "exec-server").resolve() == (
        Path(REPO) / ".venv" / "bin" / "exec-server"
    ).resolve()
    assert f"{bindir} is not on your PATH" in done.stdout
    helped = subprocess.run(
        [bindir / "exec-server", "run", "--help"], capture_output=True, timeout=30
    )
    assert helped.returncode == 0 and b"examples:" in helped.stdout


@pytest.mark.parametrize("kind", ["ours-subprocess", "ref-0.169"])
def test_start_failures_are_told_apart_on_every_server(kind: str, tmp_path: Path) -> None:
    """The reference names no path in its message: the working directory is looked at."""
    with server_process(kind) as server_url:
        missing = cli("run", "-w", str(tmp_path / "gone"), "--", "true", url=server_url)
        assert missing.returncode == 126
        assert b"--cwd " in missing.stderr and b"No such file or directory" in missing.stderr
        absent = cli("run", "-w", str(tmp_path), "--", "no-such-program-here", url=server_url)
        assert absent.returncode == 127
        assert absent.stderr.endswith(b"no-such-program-here: command not found on the server\n")


def test_a_busy_detached_session_is_said_plainly(url: str, home: dict[str, str]) -> None:
    started = cli("run", "-d", "--", "sleep", "60", url=url, extra_env=home)
    process_id = started.stdout.decode().strip()
    env = {**os.environ, **home, "EXEC_SERVER_URL": url}

    def follow() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [*CLI, "logs", "-f", process_id], env=env, cwd=REPO, stdout=subprocess.DEVNULL
        )

    follower = follow()
    try:
        deadline = time.monotonic() + 20
        while (busy := cli("ps", url=url, extra_env=home)).returncode == 0:
            assert time.monotonic() < deadline  # until `logs -f` holds the session
            if follower.poll() is not None:  # it met one of our `ps` in the session: again
                follower = follow()
            time.sleep(0.1)
        assert busy.returncode == 1
        assert b"the detached session is in use by another exec-server command" in busy.stderr
    finally:
        follower.terminate()
        follower.wait()
    assert cli("kill", "-s", "KILL", process_id, url=url, extra_env=home).returncode == 0
