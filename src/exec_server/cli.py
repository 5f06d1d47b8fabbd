"""The ``exec-server`` command."""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import logging
import math
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from . import __version__
from .config import Limits

log = logging.getLogger("exec_server")

DEFAULT_LISTEN = "ws://127.0.0.1:0"
CLIENT_COMMANDS = ("run", "shell", "ls", "cat", "put", "get")


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """Where to serve: ``stdio``, or a WebSocket on a literal IP and port."""

    kind: str  # "ws" or "stdio"
    host: str = ""
    port: int = 0

    @property
    def is_loopback(self) -> bool:
        return self.kind == "stdio" or ipaddress.ip_address(self.host).is_loopback


def parse_listen(url: str) -> ListenAddress:
    """``ws://IP:PORT`` (a literal address, as the reference), ``stdio`` or ``stdio://``."""
    if url in ("stdio", "stdio://"):
        return ListenAddress("stdio")
    if not url.startswith("ws://"):
        raise ValueError(f"unsupported --listen URL `{url}`; expected `ws://IP:PORT` or `stdio`")
    invalid = f"invalid websocket --listen URL `{url}`; expected `ws://IP:PORT`"
    # A socket address, exactly: `IPv4:PORT` or `[IPv6]:PORT`, ASCII digits, nothing after.
    host, sep, port_text = url.removeprefix("ws://").rpartition(":")
    if not (sep and port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(invalid)
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        raise ValueError(invalid) from None
    if bracketed != (address.version == 6) or "%" in host:
        raise ValueError(invalid)
    return ListenAddress("ws", str(address), int(port_text))


def build_parser() -> argparse.ArgumentParser:
    defaults = Limits()
    parser = argparse.ArgumentParser(
        prog="exec-server",
        description=(
            "Serve the exec-server JSON-RPC protocol: clients start and control processes "
            "on this machine. Compatible with clients of `codex exec-server`."
            " Client commands: exec-server {run,shell,ls,cat,put,get} --help."
        ),
        epilog=(
            "Environment: EXEC_SERVER_LOG sets the default --log-level; "
            "EXEC_SERVER_NO_NATIVE_SPAWN=1 starts children through subprocess.Popen instead of "
            "the vfork extension (slower; for comparison and for machines without it); "
            "EXEC_SERVER_NO_PTY_THREAD=1 reads streaming PTYs on the event loop instead of a "
            "reader thread each. "
            "SIGINT or SIGTERM: every child's process group is killed, then exit 0."
        ),
    )
    parser.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="URL",
        help="ws://IP:PORT (a literal IP; port 0 picks a free one and the bound URL is printed "
        "as the first line of stdout) or stdio (newline-delimited JSON on stdin/stdout). "
        f"Default: {DEFAULT_LISTEN}",
    )
    parser.add_argument(
        "--retained-output-bytes",
        type=int,
        default=defaults.retained_output_bytes,
        metavar="N",
        help="output kept per process for process/read; older chunks are dropped whole "
        f"(default {defaults.retained_output_bytes})",
    )
    parser.add_argument(
        "--closed-retention",
        type=float,
        default=defaults.closed_retention_s,
        metavar="SECONDS",
        help="how long a closed process stays readable before it is forgotten "
        f"(default {defaults.closed_retention_s:g})",
    )
    parser.add_argument(
        "--detach-grace",
        type=float,
        default=defaults.detach_grace_s,
        metavar="SECONDS",
        help="how long a disconnected session can be resumed before its processes are killed; "
        f"0 kills them at once (default {defaults.detach_grace_s:g})",
    )
    parser.add_argument(
        "--read-chunk-bytes",
        type=int,
        default=defaults.read_chunk_bytes,
        metavar="N",
        help=f"largest single read from a child's output (default {defaults.read_chunk_bytes})",
    )
    parser.add_argument(
        "--outbound-queue-bytes",
        type=int,
        default=defaults.outbound_queue_bytes,
        metavar="N",
        help="bytes buffered for one slow client before its requests and its children's "
        "output stop being read until it catches up "
        f"(default {defaults.outbound_queue_bytes})",
    )
    parser.add_argument(
        "--spill-threshold-bytes",
        type=int,
        default=defaults.spill_threshold_bytes,
        metavar="N",
        help="output of one process kept in memory; past it the rest of its retained output "
        "goes to an unnamed temporary file in $TMPDIR (a ring buffer the size of "
        "--retained-output-bytes), whose pages the kernel can write back and reclaim. "
        "0 always spills; a value >= --retained-output-bytes never does "
        f"(default {defaults.spill_threshold_bytes})",
    )
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a browser Origin allowed to connect (repeatable); any other Origin gets 403",
    )
    parser.add_argument(
        "--insecure-allow-remote-without-auth",
        action="store_true",
        help="allow --listen on a non-loopback address. Anyone who can reach it can run "
        "commands as this user: only for isolated networks",
    )
    parser.add_argument(
        "--no-uvloop", action="store_true", help="use the standard asyncio event loop"
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("EXEC_SERVER_LOG", "WARNING"),
        metavar="LEVEL",
        help="logging level on stderr (default WARNING, or $EXEC_SERVER_LOG)",
    )
    parser.add_argument("--version", action="version", version=f"exec-server {__version__}")
    return parser


def limits_from_args(args: argparse.Namespace) -> Limits:
    for name in ("retained_output_bytes", "read_chunk_bytes", "outbound_queue_bytes"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    if args.spill_threshold_bytes < 0:
        raise ValueError("--spill-threshold-bytes must not be negative")
    for name in ("closed_retention", "detach_grace"):
        seconds = getattr(args, name)
        if not math.isfinite(seconds) or seconds < 0:  # NaN would break the event loop's timers
            raise ValueError(f"--{name.replace('_', '-')} must be a finite, non-negative number")
    return Limits(
        retained_output_bytes=args.retained_output_bytes,
        closed_retention_s=args.closed_retention,
        detach_grace_s=args.detach_grace,
        read_chunk_bytes=args.read_chunk_bytes,
        outbound_queue_bytes=args.outbound_queue_bytes,
        spill_threshold_bytes=args.spill_threshold_bytes,
    )


async def serve(address: ListenAddress, limits: Limits, allowed_origins: frozenset[str]) -> None:
    """Run until SIGINT/SIGTERM (or stdin EOF over stdio); then kill every child and return."""
    from .server import Server

    server = Server(limits)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        if address.kind == "stdio":
            from .transport.stdio import serve_stdio

            served = asyncio.ensure_future(serve_stdio(server))
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({served, stopped}, return_when=asyncio.FIRST_COMPLETED)
            for task in (served, stopped):
                task.cancel()
        else:
            from .transport.websocket import serve_websocket

            def announce(host: str, port: int) -> None:
                shown = f"[{host}]" if ":" in host else host
                sys.stdout.write(f"ws://{shown}:{port}\n")
                sys.stdout.flush()

            ws_server = await serve_websocket(
                server,
                address.host,
                address.port,
                allowed_origins=allowed_origins,
                on_bound=announce,
            )
            await stop.wait()
            ws_server.close()
    finally:
        await server.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in CLIENT_COMMANDS:  # the client side, in its own package
        from .client.cli import main as client_main

        return client_main(argv)
    parser = build_parser()
    args = parser.parse_args(argv[1:] if argv[:1] == ["serve"] else argv)
    try:
        logging.basicConfig(
            level=args.log_level.upper(),
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    except ValueError:
        parser.error(
            f"unknown --log-level `{args.log_level}`; expected DEBUG, INFO, WARNING or ERROR"
        )
    try:
        address = parse_listen(args.listen)
        limits = limits_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    if not address.is_loopback and not args.insecure_allow_remote_without_auth:
        parser.error(
            f"refusing to listen on non-loopback address {address.host}: anyone who can reach "
            "it could run commands here. Pass --insecure-allow-remote-without-auth to do it anyway"
        )
    loop_factory = None
    if not args.no_uvloop:
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:  # pragma: no cover - uvloop is a default dependency on Linux
            pass
    # Everything imported so far lives as long as the process: keep it out of every cyclic
    # collection, and collect the young generation less often (requests make many short-lived
    # objects and almost no cycles). In a micro-benchmark of process/read this halved the
    # Python time per request (22 -> 13 us).
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(address, limits, frozenset(args.allow_origin)))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
