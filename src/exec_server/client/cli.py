"""``exec-server run|shell|ls|cat|put|get``: the client side of the command line.

Every command takes ``--url`` (or ``$EXEC_SERVER_URL``) and ``--token`` (or
``$EXEC_SERVER_TOKEN``). Failures are one line on stderr and a non-zero exit: 255 for the
connection or the server, 1 for a local file, 2 for usage; ``run`` and ``shell`` otherwise
exit with the remote command's code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import PurePosixPath
from typing import Any, BinaryIO

from .client import Client, connect
from .errors import ExecServerError, NotSupported, OutputGap, ProcessLost, RpcError, StdinClosed
from .process import Output, Process
from .terminal import LocalInput, is_null_device, raw_mode, window_size

CLIENT_ERROR = 255
"""Exit code when the connection or the server failed (as ssh does)."""
LOCAL_ERROR = 1
FILE_BLOCK = 256 * 1024

Handler = Callable[[Client, argparse.Namespace], Awaitable[int]]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=os.environ.get("EXEC_SERVER_URL"),
        help="the server, ws://HOST:PORT (default: $EXEC_SERVER_URL)",
    )
    common.add_argument(
        "--token",
        default=os.environ.get("EXEC_SERVER_TOKEN"),
        help="sent as `Authorization: Bearer TOKEN` (default: $EXEC_SERVER_TOKEN, which, "
        "unlike a command line, other users cannot see)",
    )
    common.add_argument(
        "--reconnect-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to keep trying to resume the session when the connection drops "
        "(default 30; 0 gives up at once)",
    )
    parser = argparse.ArgumentParser(
        prog="exec-server",
        description="Use a running exec-server. (`exec-server serve`, or no command, serves.)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        parents=[common],
        help="run a command, streaming its output and forwarding stdin",
        description="Run CMD on the server. Its stdout and stderr stream to ours, our stdin "
        "goes to it (end of file included), Ctrl-C interrupts it, and we exit with its code.",
    )
    run.add_argument("--tty", "-t", action="store_true", help="run it in a pseudo-terminal")
    _process_options(run)
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    run.set_defaults(handler=_run, parser=run)

    shell = commands.add_parser(
        "shell",
        parents=[common],
        help="an interactive terminal on the server (like `docker exec -it`)",
        description="Open an interactive terminal running CMD (default: the server's shell). "
        "Keystrokes go to it as typed; the window size follows ours.",
    )
    _process_options(shell)
    shell.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    shell.set_defaults(handler=_shell, parser=shell)

    ls = commands.add_parser("ls", parents=[common], help="list remote directories")
    ls.add_argument("paths", nargs="*", metavar="PATH", help="default: the server's directory")
    ls.set_defaults(handler=_ls, parser=ls)

    cat = commands.add_parser("cat", parents=[common], help="print remote files")
    cat.add_argument("paths", nargs="+", metavar="PATH")
    cat.set_defaults(handler=_cat, parser=cat)

    put = commands.add_parser("put", parents=[common], help="copy a local file to the server")
    put.add_argument("local", metavar="LOCAL", help="a local file, or - for stdin")
    put.add_argument(
        "remote", nargs="?", metavar="REMOTE", help="a remote file or directory (default: .)"
    )
    put.set_defaults(handler=_put, parser=put)

    get = commands.add_parser("get", parents=[common], help="copy a remote file here")
    get.add_argument("remote", metavar="REMOTE")
    get.add_argument(
        "local", nargs="?", metavar="LOCAL", help="a local file or directory, or - for stdout"
    )
    get.set_defaults(handler=_get, parser=get)

    from .forward import add_parser as add_forward  # port forwarding: its own module

    add_forward(commands, common)
    return parser


def _process_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cwd", metavar="DIR", help="the remote working directory")
    parser.add_argument(
        "--env",
        "-e",
        action="append",
        default=[],
        metavar="K=V",
        help="set a variable (repeatable); the rest is the server's environment",
    )


def main(argv: Sequence[str]) -> int:
    """Run one client command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.url:
        args.parser.error("no server given: pass --url ws://HOST:PORT or set EXEC_SERVER_URL")
    if args.command in ("run", "shell"):
        args.argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if args.command == "run" and not args.argv:
            args.parser.error("no command given (exec-server run --url URL -- CMD ARGS...)")
        try:
            args.env = _parse_env(args.env)
        except ValueError as exc:
            args.parser.error(str(exc))
    try:
        return asyncio.run(_connected(args))
    except ExecServerError as exc:
        _complain(args.command, _describe(exc))
        return CLIENT_ERROR
    except ValueError as exc:  # e.g. a relative remote path for a server that has no cwd
        _complain(args.command, str(exc))
        return LOCAL_ERROR
    except BrokenPipeError:  # our reader went away (`... | head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except OSError as exc:
        _complain(args.command, f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        return LOCAL_ERROR
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


def _describe(error: ExecServerError) -> str:
    """An error as one line: a failure about a path or a program names it first."""
    if not isinstance(error, RpcError) or error.subject is None:
        return str(error)
    if not (error.method.startswith("fs/") or error.method == "process/start"):
        return str(error)
    return f"{error.subject}: {error.message.removesuffix(f': {error.subject}')}"


def _complain(command: str, message: str, raw: bool = False) -> None:
    """One line on stderr; ``raw``: the terminal is in raw mode, so the line ends in CR LF."""
    sys.stderr.write(f"exec-server {command}: {message}{chr(13) if raw else ''}\n")
    sys.stderr.flush()


def _parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--env wants NAME=VALUE, got `{pair}`")
        env[name] = value
    return env


async def _connected(args: argparse.Namespace) -> int:
    handler: Handler = args.handler
    async with connect(
        args.url,
        token=args.token,
        client_name="exec-server-cli",
        reconnect=args.reconnect_timeout > 0,
        reconnect_timeout=args.reconnect_timeout,
    ) as client:
        return await handler(client, args)


# ---- run and shell ---------------------------------------------------------------------------


async def _run(client: Client, args: argparse.Namespace) -> int:
    return await _attach(client, args.argv, args, tty=args.tty)


async def _shell(client: Client, args: argparse.Namespace) -> int:
    return await _attach(client, args.argv or _default_shell(client), args, tty=True)


def _default_shell(client: Client) -> list[str]:
    shell = (client.environment_info or {}).get("shell")
    if isinstance(shell, dict) and isinstance(shell.get("path"), str):
        return [shell["path"]]
    return ["/bin/sh", "-c", 'exec "${SHELL:-/bin/sh}"']


def _exit_code(code: int) -> int:
    """A remote code as ours: 0..255 as is; the 0.128 reference's -1 (signal death) as 255."""
    return code if 0 <= code <= 255 else 255


async def _attach(client: Client, argv: list[str], args: argparse.Namespace, *, tty: bool) -> int:
    """Start ``argv`` and connect our stdin, stdout and stderr to it until it closes."""
    env = dict(args.env)
    if tty and "TERM" in os.environ:
        env.setdefault("TERM", os.environ["TERM"])
    forward_stdin = not is_null_device(0)
    stdin = _LocalStdin(forward_stdin)
    if forward_stdin and not tty and not os.isatty(0) and not client.supports("closeStdin"):
        await stdin.measure()  # this server cannot close stdin: announce its size instead
    size = window_size(1) or window_size(0) if tty else None
    process = await client.start(
        argv,
        cwd=args.cwd,
        env=env,
        tty=tty,
        stdin=forward_stdin,
        stdin_size=stdin.size,
        size=size,
    )
    interactive = tty and os.isatty(0)
    session = _Session(client, process, args.command, raw=interactive)
    with raw_mode(0) if interactive else contextlib.nullcontext():
        return await session.follow(stdin)


class _LocalStdin:
    """Our stdin as the remote process gets it: streamed as it comes, or, for a server that
    cannot close stdin, with its size known before the start (a file's remaining size, or
    a pipe read to its end first)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.size: int | None = None
        self._preloaded: bytes | None = None

    async def measure(self) -> None:
        self.size = _remaining_file_bytes(0)
        if self.size is None:
            local, pieces = LocalInput(0), []
            while piece := await local.read():
                pieces.append(piece)
            self._preloaded = b"".join(pieces)
            self.size = len(self._preloaded)

    async def chunks(self) -> AsyncIterator[bytes]:
        if self._preloaded is not None:
            yield self._preloaded
            return
        local, left = LocalInput(0), self.size
        while (left is None or left > 0) and (data := await local.read()):
            data = data if left is None else data[:left]
            left = None if left is None else left - len(data)
            yield data


def _remaining_file_bytes(fd: int) -> int | None:
    """Bytes from the current offset to the end, if ``fd`` is a regular file."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        return None
    return max(info.st_size - os.lseek(fd, 0, os.SEEK_CUR), 0)


class _Session:
    """One remote process attached to this terminal: output out, input in, signals over."""

    def __init__(self, client: Client, process: Process, command: str, raw: bool) -> None:
        self.client = client
        self.process = process
        self.command = command
        self.raw = raw
        self.loop = asyncio.get_running_loop()
        self.tasks: set[asyncio.Task[None]] = set()
        self.interrupts = 0
        self.stopped_by: int | None = None

    async def follow(self, stdin: _LocalStdin) -> int:
        main = asyncio.current_task()
        assert main is not None
        handlers = {
            signal.SIGINT: self._interrupt,
            signal.SIGWINCH: self._resized,
            signal.SIGTERM: lambda: self._stop(main, signal.SIGTERM),
            signal.SIGHUP: lambda: self._stop(main, signal.SIGHUP),
        }
        for signum, handler in handlers.items():
            self.loop.add_signal_handler(signum, handler)
        if stdin.enabled and stdin.size != 0:
            self._spawn(self._forward_stdin(stdin))
        try:
            await self._print_output()
        except asyncio.CancelledError:
            if self.stopped_by is None:
                raise
            return 128 + self.stopped_by
        finally:
            for signum in handlers:
                self.loop.remove_signal_handler(signum)
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
        return _exit_code(self.process.returncode if self.process.returncode is not None else 255)

    async def _print_output(self) -> None:
        out, err = sys.stdout.buffer, sys.stderr.buffer
        while True:
            try:
                async for event in self.process.events():
                    if isinstance(event, Output):
                        stream = err if event.stream == "stderr" else out
                        stream.write(event.data)
                        stream.flush()
                return
            except OutputGap as gap:  # say so, then go on with what follows
                out.flush()
                err.write(f"\r\n[exec-server {self.command}: {gap}]\r\n".encode())
                err.flush()

    async def _forward_stdin(self, stdin: _LocalStdin) -> None:
        try:
            async for data in stdin.chunks():
                await self.process.write(data)
            if stdin.size is None:
                await self.process.close_stdin()
        except NotSupported as exc:
            _complain(self.command, f"warning: {exc}", self.raw)
        except (StdinClosed, ProcessLost):
            pass  # the remote side stopped reading: nothing more to send

    def _spawn(self, coroutine: Any) -> None:
        task: asyncio.Task[None] = self.loop.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and isinstance(task.exception(), ExecServerError):
            _complain(self.command, f"warning: {task.exception()}", self.raw)

    def _interrupt(self) -> None:
        """Ctrl-C (outside raw mode): interrupt the remote process; a second one kills it."""
        self.interrupts += 1
        self._spawn(self._send_interrupt(self.interrupts > 1))

    async def _send_interrupt(self, kill: bool) -> None:
        if not kill:
            try:
                await self.process.signal("INT")
                return
            except NotSupported:
                pass
        await self.process.terminate()

    def _resized(self) -> None:
        size = window_size(1) or window_size(0)
        if size is not None and self.process.tty and self.client.supports("resize"):
            self._spawn(self.process.resize(*size))

    def _stop(self, main: asyncio.Task[Any], signum: int) -> None:
        self.stopped_by = signum
        main.cancel()


# ---- files -----------------------------------------------------------------------------------


async def _ls(client: Client, args: argparse.Namespace) -> int:
    paths = args.paths or ["."]
    for index, path in enumerate(paths):
        info = await client.fs.stat(path)
        if not info.is_dir:
            print(path)
            continue
        if len(paths) > 1:
            print(f"{'' if index == 0 else chr(10)}{path}:")
        for entry in await client.fs.iterdir(path):
            print(entry.name + ("/" if entry.is_dir else ""))
    return 0


async def _cat(client: Client, args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    for path in args.paths:
        async with client.fs.open(path) as remote:
            async for block in remote:
                out.write(block)
        out.flush()
    return 0


async def _put(client: Client, args: argparse.Namespace) -> int:
    name = "stdin" if args.local == "-" else os.path.basename(args.local)
    target = PurePosixPath(args.remote or ".")
    if (args.remote or ".").endswith("/") or await client.fs.is_dir(target):
        target = target / name
    with _local_source(args.local) as source:
        async with client.fs.open(target, "wb") as remote:
            while block := await _read_local(source):
                await remote.write(block)
    return 0


async def _get(client: Client, args: argparse.Namespace) -> int:
    remote_path = PurePosixPath(args.remote)
    local = _local_target(args.local, remote_path.name)
    async with client.fs.open(remote_path) as remote:
        with _local_sink(local) as sink:
            async for block in remote:
                sink.write(block)
    return 0


def _local_target(local: str | None, name: str) -> str:
    """Where ``get`` writes: LOCAL, LOCAL/NAME if it is a directory, or ./NAME."""
    if local is None:
        return name
    return os.path.join(local, name) if local != "-" and os.path.isdir(local) else local


@contextlib.contextmanager
def _local_source(path: str) -> Any:
    if path == "-":
        yield sys.stdin.buffer
    else:
        with open(path, "rb") as file:
            yield file


@contextlib.contextmanager
def _local_sink(path: str) -> Any:
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
    else:
        with open(path, "wb") as file:
            yield file


async def _read_local(source: BinaryIO) -> bytes:
    return await asyncio.get_running_loop().run_in_executor(None, source.read, FILE_BLOCK)
