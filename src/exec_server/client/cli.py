"""``exec-server COMMAND``: the client side of the command line.

Every command finds its server as _cli_config.py says (``--url``, ``--server NAME``,
``$EXEC_SERVER_URL``, a profile, or the URL a local server left), and fails with one line
on stderr, prefixed with the command, and an exit code a harness can tell apart:

    0..254  ``run``/``shell``: the remote command's own code (124: ``--timeout`` ended it)
    255     the connection or the server failed (as ssh)
    127     the remote program does not exist (as the shell)
    126     it cannot be run, or the working directory is unusable (as the shell, docker)
    2       the command line is wrong
    1       anything else: a remote or local file, something the server refused

The table of commands is :data:`COMMANDS`; each entry adds its parser and its handler.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence

from . import _cli_attach, _cli_files, _cli_network, _cli_procs
from ._cli_common import (
    CANNOT_RUN,
    LOCAL_ERROR,
    NOT_FOUND,
    TRANSPORT_FAILED,
    Leave,
    complain,
)
from ._cli_config import ConfigError, Target, resolve, save_session, saved_session
from .client import Client, connect
from .errors import (
    BadWorkingDirectory,
    ConnectionFailed,
    ConnectionLost,
    ExecServerError,
    ProgramNotExecutable,
    ProgramNotFound,
    RpcError,
)
from .forward import add_parser as add_forward
from .terminal import is_null_device

Handler = Callable[[Client, argparse.Namespace], Awaitable[int]]
Adder = Callable[
    ["argparse._SubParsersAction[argparse.ArgumentParser]", argparse.ArgumentParser], None
]


# ---- the parser ---------------------------------------------------------------------------


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("which server")
    group.add_argument(
        "--url",
        help="ws://HOST:PORT, wss://HOST:PORT or unix:///PATH (default: --server, "
        "$EXEC_SERVER_URL, the config's default profile, or the URL a local `exec-server` "
        "wrote to $XDG_RUNTIME_DIR/exec-server/url)",
    )
    group.add_argument(
        "--server",
        metavar="NAME",
        help="a profile of $XDG_CONFIG_HOME/exec-server/config.toml (default: $EXEC_SERVER)",
    )
    group.add_argument(
        "--token",
        help="sent as `Authorization: Bearer TOKEN`; prefer --token-file or "
        "$EXEC_SERVER_TOKEN, which other users cannot see in the process list",
    )
    group.add_argument("--token-file", metavar="PATH", help="a file holding the token")
    group.add_argument("--ca-file", metavar="PATH", help="CA certificates (PEM) for wss://")
    group.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for the server to accept and answer (default 10)",
    )
    group.add_argument(
        "--reconnect-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to keep trying to resume the session when the connection drops "
        "(default 30; 0 gives up at once)",
    )
    return common


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    name: str,
    summary: str,
    description: str,
    examples: str,
    handler: Handler,
) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name,
        parents=[common],
        help=summary,
        description=description,
        epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=handler, parser=parser)
    return parser


def _process_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-w", "--cwd", metavar="DIR", help="the remote working directory")
    parser.add_argument(
        "-e",
        "--env",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="set a variable (repeatable); NAME alone passes our value of it. The rest is "
        "the server's environment",
    )
    parser.add_argument(
        "--env-file",
        action="append",
        default=[],
        metavar="PATH",
        help="variables from a file: NAME=VALUE or NAME lines, # comments (repeatable)",
    )
    parser.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")


def _add_run(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    run = _command(
        commands,
        common,
        "run",
        "run a command, streaming its output (like `docker exec`, `ssh HOST CMD`)",
        "Run CMD on the server. Its stdout and stderr stream to ours; Ctrl-C interrupts it; "
        "we exit with its code. Our stdin goes to it when it is a pipe or a file, or with "
        "-i; from a terminal without -i it gets none (as docker). -t gives it a "
        "pseudo-terminal; -it makes it interactive (keystrokes as typed, ~. leaves). -d "
        "starts it detached and prints its id, for `ps`, `logs` and `kill`.",
        "  exec-server run -- uname -a\n"
        "  tar czf - src | exec-server run -w /tmp -- tar xzf -\n"
        "  exec-server run -it -- python3\n"
        "  exec-server run -d -- sleep 600 && exec-server ps\n"
        "  exec-server run --allow-domain pypi.org --allow-domain '*.pythonhosted.org' "
        "-- pip download requests\n"
        "  exec-server run --allow-domain pypi.org --ask -- ./build.sh\n"
        "  exec-server run --approve '**.example.com' -- curl -sI https://www.example.com\n",
        _run,
    )
    run.add_argument("-i", "--interactive", action="store_true", help="send our stdin to it")
    run.add_argument("-t", "--tty", action="store_true", help="run it in a pseudo-terminal")
    run.add_argument(
        "-d", "--detach", action="store_true", help="start it and print its id (see ps)"
    )
    run.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="kill it after SECONDS and exit 124 (as timeout(1))",
    )
    _cli_network.add_options(run)
    _process_options(run)


def _add_shell(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    shell = _command(
        commands,
        common,
        "shell",
        "an interactive shell on the server (like `ssh HOST`, `docker exec -it`)",
        "Open CMD (default: the server's shell) in a pseudo-terminal: keystrokes go as "
        "typed, the window size follows ours. When our stdin is not a terminal it runs "
        "without one, reading the script from stdin (as ssh); -t forces a pseudo-terminal, "
        "-T refuses one. Type ~. after Enter to leave at any time. If the connection drops, "
        "a line counts down while it is resumed; Ctrl-C then gives up.",
        "  exec-server shell\n"
        "  exec-server shell -w /srv -- bash -l\n"
        "  echo 'uname -a' | exec-server shell\n",
        _shell,
    )
    shell.add_argument("-t", dest="force_tty", action="store_true", help="force a PTY")
    shell.add_argument("-T", dest="no_tty", action="store_true", help="never a PTY")
    _process_options(shell)


def _add_files(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    ls = _command(
        commands,
        common,
        "ls",
        "list remote directories",
        "List each PATH (default: the server's working directory); directories end in /.",
        "  exec-server ls /etc\n  exec-server ls -l --json /var/log\n",
        _cli_files.ls,
    )
    ls.add_argument("-l", dest="long", action="store_true", help="kind, size and time")
    ls.add_argument("--json", action="store_true", help="a JSON list, for scripts")
    ls.add_argument("paths", nargs="*", metavar="PATH")

    stat = _command(
        commands,
        common,
        "stat",
        "kind, size and times of remote paths",
        "Describe each PATH.",
        "  exec-server stat /etc/hostname\n  exec-server stat --json /tmp\n",
        _cli_files.stat_,
    )
    stat.add_argument("--json", action="store_true", help="a JSON list, for scripts")
    stat.add_argument("paths", nargs="+", metavar="PATH")

    cat = _command(
        commands,
        common,
        "cat",
        "print remote files",
        "Write each remote file to stdout, byte for byte.",
        "  exec-server cat /etc/os-release\n",
        _cli_files.cat,
    )
    cat.add_argument("paths", nargs="+", metavar="PATH")

    put = _command(
        commands,
        common,
        "put",
        "copy local files to the server (like scp)",
        "Copy LOCAL (- for stdin) to REMOTE (default: the server's working directory); "
        "into it when it is a directory or ends in /. A progress line shows on a terminal "
        "when it takes more than a second.",
        "  exec-server put notes.txt /tmp/\n"
        "  exec-server put -rp ./site /srv/www\n"
        "  tar czf - . | exec-server put - /tmp/backup.tgz\n",
        _cli_files.put,
    )
    put.add_argument("-r", "--recursive", action="store_true", help="copy directories")
    put.add_argument("-p", "--preserve", action="store_true", help="keep modes and times")
    put.add_argument("paths", nargs="+", metavar="LOCAL... [REMOTE]")

    get = _command(
        commands,
        common,
        "get",
        "copy remote files here (like scp)",
        "Copy REMOTE to LOCAL (default: ./NAME; - for stdout); into it if it is a directory.",
        "  exec-server get /var/log/syslog\n  exec-server get -r /srv/www ./www-copy\n",
        _cli_files.get,
    )
    get.add_argument("-r", "--recursive", action="store_true", help="copy directories")
    get.add_argument("-p", "--preserve", action="store_true", help="keep modes and times")
    get.add_argument("remote", metavar="REMOTE")
    get.add_argument("local", nargs="?", metavar="LOCAL")

    mkdir = _command(
        commands,
        common,
        "mkdir",
        "create remote directories",
        "Create each directory; -p creates parents and accepts one that exists.",
        "  exec-server mkdir -p /tmp/a/b/c\n",
        _cli_files.mkdir,
    )
    mkdir.add_argument("-p", "--parents", action="store_true", help="parents too; no error")
    mkdir.add_argument("paths", nargs="+", metavar="PATH")

    rm = _command(
        commands,
        common,
        "rm",
        "remove remote files",
        "Remove each PATH; -r removes directory trees, -f ignores missing paths.",
        "  exec-server rm /tmp/notes.txt\n  exec-server rm -rf /tmp/a\n",
        _cli_files.rm,
    )
    rm.add_argument("-r", "--recursive", action="store_true", help="directories and contents")
    rm.add_argument("-f", "--force", action="store_true", help="no error for a missing path")
    rm.add_argument("paths", nargs="+", metavar="PATH")


def _add_processes(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    note = (
        " Processes started with `run -d` live in one session per server, kept by the "
        "server for its --detach-grace (30 s by default) after each of these commands."
    )
    ps = _command(
        commands,
        common,
        "ps",
        "list the processes started with `run -d`",
        "List the processes of the detached session: id, pid, state, exit code, command." + note,
        "  exec-server ps\n  exec-server ps --json\n",
        _cli_procs.ps,
    )
    ps.add_argument("--json", action="store_true", help="the server's rows as JSON")

    logs = _command(
        commands,
        common,
        "logs",
        "print the output of a `run -d` process",
        "Print the output the server kept for process ID; -f follows it until it ends." + note,
        "  exec-server logs -f $(exec-server run -d -- sh -c 'sleep 1; echo done')\n",
        _cli_procs.logs,
    )
    logs.add_argument("-f", "--follow", action="store_true", help="go on until it ends")
    logs.add_argument("id", metavar="ID")

    kill = _command(
        commands,
        common,
        "kill",
        "signal a `run -d` process",
        "Send SIGNAL (default TERM) to each process ID and its process group; KILL ends "
        "its whole process tree." + note,
        "  exec-server kill ID\n  exec-server kill -s INT ID\n",
        _cli_procs.kill,
    )
    kill.add_argument("-s", "--signal", default=_cli_procs.SIGNAL_DEFAULT, metavar="SIGNAL")
    kill.add_argument("ids", nargs="+", metavar="ID")


def _add_completion(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    completion = commands.add_parser(
        "completion",
        help="print a shell completion script (bash or zsh)",
        description="Print a completion script for the shell named.",
        epilog="examples:\n"
        "  exec-server completion bash > ~/.local/share/bash-completion/completions/exec-server\n"
        "  echo 'source <(exec-server completion zsh)' >> ~/.zshrc\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    completion.add_argument("shell", choices=("bash", "zsh"))
    completion.set_defaults(handler=None, parser=completion)


COMMANDS: list[Adder] = [
    _add_run,
    _add_shell,
    _add_files,
    _add_processes,
    add_forward,  # port forwarding, in its own module
    _add_completion,
]
"""Each entry adds its subcommands to the parser; the order is --help's."""

DETACHED_SESSION_COMMANDS = frozenset({"ps", "logs", "kill"})
"""Commands that take up the session `run -d` left (and leave it running)."""


def build_parser() -> argparse.ArgumentParser:
    """The client's parser: one subcommand per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="exec-server",
        description="Use a running exec-server (`exec-server serve --help`: start one).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common_options()
    for add in COMMANDS:
        add(commands, common)
    return parser


def command_names() -> list[str]:
    """Every client subcommand, in --help's order."""
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []  # pragma: no cover


def suggest(word: str, choices: Sequence[str]) -> str:
    """``unknown command `rn``` with the closest of ``choices``, if one is close."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    hint = f"; did you mean `{close[0]}`?" if close else ""
    return f"unknown command `{word}`{hint} (exec-server --help lists them)"


# ---- running a command --------------------------------------------------------------------


def main(argv: Sequence[str]) -> int:
    """Run one client command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "completion":
        from ._cli_completion import script

        sys.stdout.write(script(parser, args.shell))
        return 0
    try:
        _check(args)
        target = resolve(args)
    except ConfigError as exc:
        args.parser.error(str(exc))
    try:
        return asyncio.run(_connected(args, target))
    except Leave as leave:
        if leave.message:
            complain(args.command, leave.message)
        return leave.code
    except ProgramNotFound as exc:
        complain(args.command, f"{exc.subject}: command not found on the server")
        return NOT_FOUND
    except ProgramNotExecutable as exc:
        complain(args.command, f"{exc.subject}: cannot be run ({_os_reason(exc.message)})")
        return CANNOT_RUN
    except BadWorkingDirectory as exc:
        complain(args.command, f"--cwd {exc.subject}: {_os_reason(exc.message)} on the server")
        return CANNOT_RUN
    except (ConnectionFailed, ConnectionLost) as exc:
        complain(args.command, str(exc))
        return TRANSPORT_FAILED
    except ExecServerError as exc:
        complain(args.command, _describe(exc))
        return LOCAL_ERROR
    except ValueError as exc:  # e.g. a relative remote path for a server that has no cwd
        complain(args.command, str(exc))
        return LOCAL_ERROR
    except BrokenPipeError:  # our reader went away (`... | head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except OSError as exc:
        complain(args.command, f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        return LOCAL_ERROR
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


def _check(args: argparse.Namespace) -> None:
    """What the parser cannot check; raises ConfigError (a usage error)."""
    if args.command == "put":  # as cp: the last of two or more is the target
        args.local, args.remote = (
            (args.paths[:-1], args.paths[-1]) if len(args.paths) > 1 else (args.paths, None)
        )
    if args.command not in ("run", "shell"):
        return
    args.argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if args.command == "run" and not args.argv:
        raise ConfigError("no command given (exec-server run -- CMD ARGS...)")
    if args.command == "run" and args.detach and (args.tty or args.interactive):
        raise ConfigError("-d runs without a terminal and without stdin: drop -i and -t")
    if args.command == "run":
        _cli_network.check(args)
    if args.command == "shell" and args.force_tty and args.no_tty:
        raise ConfigError("-t and -T contradict each other")
    args.env = _environment(args.env_file, args.env)


def _environment(files: list[str], pairs: list[str]) -> dict[str, str]:
    """``--env-file`` lines, then ``-e`` pairs; NAME alone takes our value (skipped if we
    have none, as docker)."""
    lines: list[str] = []
    for path in files:
        try:
            with open(path, encoding="utf-8") as file:
                lines += [line.strip() for line in file]
        except (OSError, UnicodeError) as exc:
            raise ConfigError(f"cannot read --env-file {path}: {exc}") from None
    env: dict[str, str] = {}
    for item in [*(line for line in lines if line and not line.startswith("#")), *pairs]:
        name, sep, value = item.partition("=")
        if not name:
            raise ConfigError(f"--env wants NAME=VALUE or NAME, got `{item}`")
        if sep:
            env[name] = value
        elif name in os.environ:
            env[name] = os.environ[name]
    return env


def _os_reason(message: str) -> str:
    """``Permission denied`` of ``Permission denied (os error 13): /x``."""
    return message.split(" (os error", 1)[0]


def _describe(error: ExecServerError) -> str:
    """An error as one line: a failure about a path or a program names it first."""
    if not isinstance(error, RpcError) or error.subject is None:
        return str(error)
    if not (error.method.startswith("fs/") or error.method == "process/start"):
        return str(error)
    return f"{error.subject}: {error.message.removesuffix(f': {error.subject}')}"


async def _connected(args: argparse.Namespace, target: Target) -> int:
    detached = args.command in DETACHED_SESSION_COMMANDS or (args.command == "run" and args.detach)
    connector = connect(
        target.url,
        token=target.token,
        client_name="exec-server-cli",
        connect_timeout=args.connect_timeout,
        reconnect=args.reconnect_timeout > 0,
        reconnect_timeout=args.reconnect_timeout,
        ca_file=target.ca_file,
        resume_session=saved_session(target.url) if detached else None,
    )
    try:
        async with connector as client:
            if not detached:
                handler: Handler = args.handler
                return await handler(client, args)
            return await _in_detached_session(client, args, target.url)
    except RpcError as exc:
        if exc.method == "initialize" and "already attached" in exc.message:
            raise Leave(
                LOCAL_ERROR,
                "the detached session is in use by another exec-server command (a `logs -f`?); "
                "try again once it ends",
            ) from None
        raise


async def _in_detached_session(client: Client, args: argparse.Namespace, url: str) -> int:
    """``run -d``, ``ps``, ``logs``, ``kill``: in the session they share, left running."""
    try:
        if args.command == "run":
            return await _cli_procs.run_detached(client, args.argv, args.cwd, args.env)
        if not client.resumed:
            raise Leave(
                LOCAL_ERROR,
                "no detached session on this server (none started with `run -d`, or the "
                "server ended it after its --detach-grace)",
            )
        code: int = await args.handler(client, args)
        return code
    finally:
        save_session(url, client.session_id)
        await client.detach()


async def _run(client: Client, args: argparse.Namespace) -> int:
    forward = args.interactive or not (os.isatty(0) or is_null_device(0))
    how = _cli_attach.Attachment(tty=args.tty, forward_stdin=forward)
    network = _cli_network.launch(args) if _cli_network.wanted(args) else None
    async with _cli_network.answering(args) as answer:
        client.on_server_request = answer
        return await _cli_attach.attach(
            client,
            args.argv,
            how,
            command="run",
            cwd=args.cwd,
            env=args.env,
            timeout=args.timeout,
            network_proxy=network,
        )


async def _shell(client: Client, args: argparse.Namespace) -> int:
    tty = args.force_tty or (os.isatty(0) and not args.no_tty)
    how = _cli_attach.Attachment(tty=tty, forward_stdin=not is_null_device(0))
    argv = args.argv or _cli_attach.default_shell(client)
    return await _cli_attach.attach(client, argv, how, command="shell", cwd=args.cwd, env=args.env)
