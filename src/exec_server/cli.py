"""The ``exec-server`` command: serve the protocol (the default), on a WebSocket or stdio."""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from . import __version__
from .config import Guards, Limits, Runtime

if TYPE_CHECKING:
    import argparse
    import ssl

    from .process.keeper import Keeper
    from .server import Server

log = logging.getLogger("exec_server")

DEFAULT_LISTEN = "ws://127.0.0.1:0"
TOKEN_ENV = "EXEC_SERVER_TOKEN"
CLIENT_COMMANDS = (
    "run",
    "shell",
    "ls",
    "stat",
    "cat",
    "put",
    "get",
    "mkdir",
    "rm",
    "ps",
    "logs",
    "kill",
    "forward",
    "completion",
)
"""The client's subcommands (client/cli.py), named here so serving never imports it."""
DEFAULT_DRAIN_S = 30.0
"""How long SIGTERM lets running processes finish; a Kubernetes pod's
terminationGracePeriodSeconds should exceed it (deploy/)."""


class ListenAddress(msgspec.Struct, frozen=True):
    """Where to serve: ``stdio``; a WebSocket on a literal IP and port (``ws``, or ``wss``
    with TLS); or a WebSocket on a Unix socket (``unix``, ``path`` set)."""

    kind: str
    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def is_loopback(self) -> bool:
        """Whether only this machine can reach it (a Unix socket is created 0600)."""
        if self.kind in ("stdio", "unix"):
            return True
        import ipaddress  # a TCP listener's concern only

        return ipaddress.ip_address(self.host).is_loopback


def parse_listen(url: str) -> ListenAddress:
    """``ws://IP:PORT`` or ``wss://IP:PORT`` (a literal address, as the reference),
    ``unix:///PATH``, ``stdio`` or ``stdio://``."""
    if url in ("stdio", "stdio://"):
        return ListenAddress("stdio")
    if url.startswith("unix://"):
        path = url.removeprefix("unix://")
        if not path.startswith("/"):
            raise ValueError(f"invalid --listen URL `{url}`; expected `unix:///ABSOLUTE/PATH`")
        return ListenAddress("unix", path=path)
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("ws", "wss"):
        raise ValueError(
            f"unsupported --listen URL `{url}`; expected `ws://IP:PORT` or `stdio` "
            "(or, beyond the reference, `wss://IP:PORT` or `unix:///PATH`)"
        )
    invalid = f"invalid websocket --listen URL `{url}`; expected `{scheme}://IP:PORT`"
    # A socket address, exactly: `IPv4:PORT` or `[IPv6]:PORT`, ASCII digits, nothing after.
    host, sep, port_text = rest.rpartition(":")
    if not (sep and port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(invalid)
    import ipaddress  # a TCP listener's concern only

    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        raise ValueError(invalid) from None
    if bracketed != (address.version == 6) or "%" in host:
        raise ValueError(invalid)
    return ListenAddress(scheme, str(address), int(port_text))


# ---- the parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    import argparse  # not for `--listen stdio` alone (see plain_stdio_options)

    parser = argparse.ArgumentParser(
        prog="exec-server",
        usage="exec-server [serve] [OPTIONS]      serve (the options are below)\n"
        "       exec-server COMMAND [ARGS...]     use a server; COMMAND is one of "
        + ", ".join(CLIENT_COMMANDS)
        + " (exec-server COMMAND --help)",
        description=(
            "Serve the exec-server JSON-RPC protocol: clients start and control processes "
            "on this machine. Compatible with clients of `codex exec-server`."
            " With no arguments it serves on a free loopback port and writes the URL where "
            "the client commands on this machine find it. Client commands: "
            "exec-server {" + ",".join(CLIENT_COMMANDS) + "} --help."
        ),
        epilog=(
            f"Environment: {TOKEN_ENV} holds a bearer token (instead of --auth-token-file); "
            "EXEC_SERVER_LOG sets the default --log-level; EXEC_SERVER_NO_NATIVE_SPAWN=1 is "
            "--no-native-spawn. Sandboxing: codex's sandbox profiles (and --confine) are "
            "enforced with bubblewrap (the bwrap program; Debian/Ubuntu package bubblewrap); "
            "where it cannot run, a restricted profile is refused, never run unconfined "
            "(environment/info says whether it runs here). SIGINT or SIGTERM: every child and "
            "all it started is killed, then exit 0."
        ),
    )
    parser.add_argument(
        "--listen",
        default=None,
        metavar="URL",
        help="ws://IP:PORT (a literal IP; port 0 picks a free one, and the bound URL is "
        "printed as the first line of stdout), wss://IP:PORT (TLS: needs --tls-cert and "
        "--tls-key), unix:///PATH (a Unix socket, mode 0600) or stdio (newline-delimited "
        f"JSON on stdin/stdout). Default: {DEFAULT_LISTEN}, with the URL also written to "
        "the --url-file",
    )
    parser.add_argument(
        "--url-file",
        metavar="PATH",
        help="also write the bound URL (never the token) to PATH, mode 0600, where the client "
        "commands find it when given no --url. Default without --listen: "
        "$XDG_RUNTIME_DIR/exec-server/url (or ~/.cache/exec-server/url)",
    )
    _add_security(parser)
    _add_limits(parser)
    _add_accelerators(parser)
    _add_operations(parser)
    parser.add_argument("--version", action="version", version=f"exec-server {__version__}")
    return parser


def _add_operations(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "operating it",
        "Probes, metrics, logs and shutdown for a service manager or Kubernetes "
        "(docs/operations.md). GET /readyz: 200, or 503 while draining; GET /healthz: 200, "
        "503 when the event loop stalled, no answer when it is stuck; GET /metrics: "
        "Prometheus text, with the token like the rest.",
    )
    group.add_argument(
        "--log-level",
        default=os.environ.get("EXEC_SERVER_LOG"),
        metavar="LEVEL",
        help="logging level on stderr (default WARNING for text logs and INFO for JSON, or "
        "$EXEC_SERVER_LOG); INFO logs each connection, handshake, session and process",
    )
    group.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text (the default) or json: one JSON object per line, for a log collector",
    )
    group.add_argument(
        "--drain-timeout",
        type=float,
        default=DEFAULT_DRAIN_S,
        metavar="SECONDS",
        help="on SIGTERM, stop taking sessions and processes (/readyz answers 503) and let "
        "running processes finish for up to this long; then every client is told the server "
        "is shutting down (WebSocket close 1001) and what still runs is killed. 0 ends at "
        f"once; SIGINT, or a second SIGTERM, always does (default {DEFAULT_DRAIN_S:g})",
    )
    group.add_argument(
        "--metrics-public",
        action="store_true",
        help="serve GET /metrics without the bearer token (for a scraper on a trusted network)",
    )


def _add_security(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "who may connect, and what they may do",
        "Anyone who can open a session here can run commands as this user. The default is "
        "safe for one user on one machine: loopback only, no browser origins.",
    )
    group.add_argument(
        "--auth-token-file",
        metavar="PATH",
        help="a file holding a bearer token (surrounding whitespace ignored); every WebSocket "
        "client must then send `Authorization: Bearer <token>` or gets 401. With a token, "
        f"a non-loopback --listen is allowed. ${TOKEN_ENV} may hold the token instead",
    )
    group.add_argument("--tls-cert", metavar="PATH", help="certificate chain (PEM) for wss://")
    group.add_argument("--tls-key", metavar="PATH", help="private key (PEM) for wss://")
    group.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a browser Origin allowed to connect (repeatable); any other Origin gets 403",
    )
    group.add_argument(
        "--insecure-allow-remote-without-auth",
        action="store_true",
        help="allow a non-loopback --listen without a token. Anyone who can reach it can run "
        "commands as this user: only for isolated networks",
    )
    group.add_argument(
        "--confine",
        metavar="PROFILE",
        help="a sandbox profile (a JSON file in the terms of codex's permission profiles: "
        "file_system entries with read/write/deny access, network restricted or enabled, "
        "optional workspaceRoots) that every process and every fs/* call is held to, "
        "whatever the client asks: a client's own profile can only narrow it. With the "
        "network restricted, http/request and forward/open are refused. Enforced with bubblewrap; the server "
        "will not start if bubblewrap cannot run here",
    )
    group.add_argument(
        "--sandbox-shared-proc",
        action="store_true",
        default=bool(os.environ.get("EXEC_SERVER_SANDBOX_SHARED_PROC")),
        help="where bubblewrap cannot mount a fresh /proc (a container that masks /proc), "
        "still enforce sandbox profiles: files, network and privileges stay confined, but "
        "sandboxed processes see this container's other processes and their command lines. "
        "Without it such sandboxes are refused ($EXEC_SERVER_SANDBOX_SHARED_PROC=1 is the same)",
    )
    group.add_argument(
        "--sandbox-pids-limit",
        type=int,
        default=Guards().pids_limit,
        metavar="N",
        help="the most tasks (processes and threads) one sandboxed command may have at once, "
        "enforced with a pids cgroup per sandbox where the server can create one "
        "(environment/info's sandbox.pidsCgroup says whether it can, and what to configure "
        f"if not); 0: no limit. Default {Guards().pids_limit}",
    )
    group.add_argument(
        "--http-deny",
        action="append",
        default=[],
        metavar="CIDR",
        help="an IP network http/request and forward/open (port forwarding) may not reach "
        "(repeatable), checked after DNS "
        "resolution and on every redirect, e.g. 127.0.0.0/8, ::1/128, 169.254.0.0/16, "
        "10.0.0.0/8 to keep clients off this host's own and its network's services. "
        "Environment proxies are not used then. Default: none denied, as the reference",
    )
    group.add_argument(
        "--prepend-path",
        action="append",
        default=[],
        metavar="DIR",
        help="a directory of tools put at the front of every child's PATH and reported to "
        "clients in environmentInfo.prependPathDirs (repeatable, in priority order)",
    )
    group.add_argument(
        "--env-exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="names of environment variables never passed to a child, whatever the client "
        "asks (repeatable; `*` any run, `?` one character, case-insensitive), e.g. "
        "'*PASSWORD*' or DATABASE_URL",
    )


def _add_limits(parser: argparse.ArgumentParser) -> None:
    defaults = Limits()
    group = parser.add_argument_group(
        "limits", "Bounds on what clients may hold; each refusal says which bound was reached."
    )

    def bound(flag: str, field: str, help_text: str, kind: type = int) -> None:
        default = getattr(defaults, field)
        group.add_argument(
            flag,
            dest=field,
            type=kind,
            default=default,
            metavar="SECONDS" if kind is float else "N",
            help=f"{help_text} (default {default:g})"
            if kind is float
            else f"{help_text} (default {default})",
        )

    bound(
        "--retained-output-bytes",
        "retained_output_bytes",
        "output kept per process for process/read; older chunks are dropped whole",
    )
    bound(
        "--closed-retention",
        "closed_retention_s",
        "how long a closed process stays readable before it is forgotten",
        float,
    )
    bound(
        "--detach-grace",
        "detach_grace_s",
        "how long a disconnected session can be resumed before its processes are killed; "
        "0 kills them at once",
        float,
    )
    bound("--read-chunk-bytes", "read_chunk_bytes", "largest single read from a child's output")
    bound(
        "--outbound-queue-bytes",
        "outbound_queue_bytes",
        "bytes buffered for one slow client before its requests and its children's output "
        "stop being read until it catches up",
    )
    bound(
        "--spill-threshold-bytes",
        "spill_threshold_bytes",
        "output of one process kept in memory; past it the rest of its retained output goes "
        "to an unnamed temporary file in $TMPDIR (a ring buffer the size of "
        "--retained-output-bytes), whose pages the kernel can write back and reclaim. "
        "0 always spills; a value >= --retained-output-bytes never does",
    )
    bound("--max-message-bytes", "max_message_bytes", "the largest message a client may send")
    bound("--max-sessions", "max_sessions", "sessions at once, attached or resumable")
    bound(
        "--max-processes-per-session",
        "max_processes_per_session",
        "processes of one session that have not closed yet",
    )
    bound(
        "--max-open-files-per-session",
        "fs_max_open_handles",
        "file handles (fs/open) one session may hold open",
    )
    bound(
        "--max-waiting-requests",
        "max_waiting_requests",
        "requests of one connection that may wait at once (long polls, full stdin, file "
        "I/O); past it further requests are held back, not refused",
    )
    bound(
        "--stdin-buffer-bytes",
        "stdin_buffer_bytes",
        "bytes queued for one child's stdin before process/write waits for it to read",
    )
    bound(
        "--stdin-max-bytes-per-process",
        "stdin_process_max_bytes",
        "bytes held for one child's stdin, queued or waiting, before process/write is refused",
    )
    bound(
        "--stdin-max-bytes-per-session",
        "stdin_session_max_bytes",
        "the same bound for all the children of one session",
    )
    bound(
        "--max-open-files",
        "fs_max_open_handles_total",
        "file handles all sessions together may hold (at most half the open-file limit); "
        "past it each session still opens its first 4",
    )
    bound(
        "--max-watched-paths-per-session",
        "fs_max_watched_paths",
        "paths one session's fs/watchMissing may watch at once; past it the watch is refused",
    )
    bound(
        "--handshake-timeout",
        "handshake_timeout_s",
        "how long a connection may take to become a WebSocket, TLS included, before it is dropped",
        float,
    )
    bound(
        "--max-pending-connections",
        "max_pending_connections",
        "connections still in that handshake at once; a new one past it drops the oldest",
    )
    bound(
        "--forward-window-bytes",
        "forward_window_bytes",
        "port forwarding: bytes a client may send on one stream before the server grants more, "
        "and so the most of them one stream holds while its destination does not read",
    )
    bound(
        "--max-forward-streams",
        "forward_max_streams",
        "port forwarding: streams one connection may have open at once",
    )
    bound(
        "--max-http-streams",
        "http_max_streams",
        "http/request: response bodies one connection may stream at once",
    )


def _add_accelerators(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "accelerators",
        "Each is used when installed (`pip install exec-server[standard]` brings uvloop and "
        "pybase64); these switches turn one off, for comparison or for a machine where it "
        "misbehaves. The results are the same either way.",
    )
    group.add_argument(
        "--no-native-spawn",
        action="store_true",
        default=bool(os.environ.get("EXEC_SERVER_NO_NATIVE_SPAWN")),
        help="start children through subprocess.Popen instead of the vfork C extension",
    )
    group.add_argument(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="the event loop: uvloop, or the standard asyncio loop. auto (the default) takes "
        "uvloop for a WebSocket listener, which lives long and serves many, and the standard "
        "loop for stdio, which some clients start once per session: importing uvloop would "
        "add to every start, and a single session rarely needs its speed",
    )
    group.add_argument("--no-uvloop", action="store_true", help="the same as --loop asyncio")
    group.add_argument(
        "--no-pybase64",
        action="store_true",
        help="encode output chunks with msgspec's base64 instead of pybase64's",
    )
    group.add_argument(
        "--no-pidfd",
        action="store_true",
        help="watch child exits with a thread per child instead of a pidfd (as on kernels "
        "before 5.3)",
    )


# ---- from arguments to configuration -----------------------------------------------------------


_POSITIVE = (
    "retained_output_bytes",
    "read_chunk_bytes",
    "outbound_queue_bytes",
    "max_message_bytes",
    "max_sessions",
    "max_processes_per_session",
    "fs_max_open_handles",
    "max_waiting_requests",
    "stdin_buffer_bytes",
    "stdin_process_max_bytes",
    "stdin_session_max_bytes",
    "max_pending_connections",
    "fs_max_watched_paths",
    "fs_max_open_handles_total",
    "forward_window_bytes",
    "forward_max_streams",
    "http_max_streams",
)


def limits_from_args(args: argparse.Namespace) -> Limits:
    """The limits the arguments ask for; ValueError naming the option that is wrong."""
    for name in _POSITIVE:
        if getattr(args, name) <= 0:
            raise ValueError(f"{_flag(name)} must be positive")
    if not (math.isfinite(args.handshake_timeout_s) and args.handshake_timeout_s > 0):
        raise ValueError("--handshake-timeout must be a positive number of seconds")
    if args.spill_threshold_bytes < 0:
        raise ValueError("--spill-threshold-bytes must not be negative")
    for name in ("closed_retention_s", "detach_grace_s"):
        seconds = getattr(args, name)
        if not math.isfinite(seconds) or seconds < 0:  # NaN would break the event loop's timers
            raise ValueError(f"{_flag(name)} must be a finite, non-negative number")
    return Limits(**{name: getattr(args, name) for name in (*_POSITIVE, *_OTHER_LIMITS)})


_OTHER_LIMITS = (
    "spill_threshold_bytes",
    "closed_retention_s",
    "detach_grace_s",
    "handshake_timeout_s",
)


def _flag(dest: str) -> str:
    names = {
        "closed_retention_s": "--closed-retention",
        "handshake_timeout_s": "--handshake-timeout",
        "detach_grace_s": "--detach-grace",
        "fs_max_open_handles": "--max-open-files-per-session",
        "fs_max_watched_paths": "--max-watched-paths-per-session",
        "fs_max_open_handles_total": "--max-open-files",
        "stdin_process_max_bytes": "--stdin-max-bytes-per-process",
        "stdin_session_max_bytes": "--stdin-max-bytes-per-session",
        "forward_max_streams": "--max-forward-streams",
        "http_max_streams": "--max-http-streams",
    }
    return names.get(dest, "--" + dest.replace("_", "-"))


def runtime_from_args(args: argparse.Namespace, address: ListenAddress) -> Runtime:
    loop = "asyncio" if args.no_uvloop else args.loop
    if loop == "auto":
        loop = "asyncio" if address.kind == "stdio" else "uvloop"
    return Runtime(
        native_spawn=not args.no_native_spawn,
        uvloop=loop == "uvloop",
        pybase64=not args.no_pybase64,
        pidfd=not args.no_pidfd,
        subreaper=True,  # the command owns its process: it adopts and reaps orphans
        return_memory=True,  # and its memory: given back after bursts (memory.py)
    ).resolve()


def guards_from_args(args: argparse.Namespace) -> Guards:
    if args.sandbox_shared_proc:
        from .sandbox.bwrap import accept_shared_proc

        accept_shared_proc()
    for value in args.http_deny:
        import ipaddress  # only when networks are denied

        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(
                f"--http-deny {value!r} is not an IP network such as 10.0.0.0/8"
            ) from None
    confinement = None
    if args.confine is not None:
        from .sandbox.bwrap import support
        from .sandbox.policy import load_confinement
        from .sandbox.profile import ProfileError

        try:
            confinement = load_confinement(args.confine)
        except ProfileError as error:
            raise ValueError(f"--confine {args.confine}: {error.message}") from None
        if not support().usable:
            raise ValueError(f"--confine needs a working sandbox: {support().reason}")
    if args.sandbox_pids_limit < 0:
        raise ValueError("--sandbox-pids-limit must not be negative")
    return Guards(
        env_exclude=tuple(args.env_exclude),
        http_deny=tuple(args.http_deny),
        confinement=confinement,
        pids_limit=args.sandbox_pids_limit,
    )


def private_paths_from_args(args: argparse.Namespace, address: ListenAddress) -> tuple[str, ...]:
    """The server's own files, which every sandbox hides (its control channel and secrets):
    the Unix socket it listens on, the token file, the TLS certificate and key. Operator
    data, resolved once here (absolute, symlinks followed)."""
    named = [args.auth_token_file, args.tls_cert, args.tls_key]
    if address.kind == "unix":
        named.append(address.path)
    return tuple(dict.fromkeys(os.path.realpath(path) for path in named if path))


def read_token(args: argparse.Namespace) -> str | None:
    """The bearer token from --auth-token-file or the environment, or None for none.

    ``$EXEC_SERVER_TOKEN`` is removed from this process's environment once read, whichever
    source wins: no child can inherit it (``envPolicy`` ``inherit: all`` with
    ``ignoreDefaultExcludes``) and use it against this server."""
    from_env = os.environ.pop(TOKEN_ENV, "").strip()
    if args.auth_token_file is not None:
        try:
            with open(args.auth_token_file, encoding="utf-8") as file:
                token = file.read().strip()
        except (OSError, UnicodeError) as exc:
            raise ValueError(f"cannot read --auth-token-file: {exc}") from None
        if not token:
            raise ValueError(f"--auth-token-file {args.auth_token_file} is empty")
        return token
    return from_env or None


def tls_from_args(args: argparse.Namespace, address: ListenAddress) -> ssl.SSLContext | None:
    """A server TLS context for wss://; ValueError when the pair is missing or unusable."""
    if address.kind != "wss":
        if args.tls_cert or args.tls_key:
            raise ValueError("--tls-cert and --tls-key are for a wss:// --listen URL")
        return None
    if not (args.tls_cert and args.tls_key):
        raise ValueError("a wss:// --listen URL needs both --tls-cert and --tls-key")
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load --tls-cert/--tls-key: {exc}") from None
    return context


# ---- serving ---------------------------------------------------------------------------------


class ServeOptions(msgspec.Struct, frozen=True):
    """Everything ``serve`` needs, checked."""

    address: ListenAddress
    limits: Limits
    runtime: Runtime
    guards: Guards
    allowed_origins: frozenset[str]
    token: str | None
    tls: ssl.SSLContext | None
    prepend_path_dirs: tuple[str, ...] = ()
    drain_timeout_s: float = DEFAULT_DRAIN_S
    metrics_public: bool = False
    url_file: str | None = None
    """Where the bound URL is written for the client commands (url_file.py), if anywhere."""
    banner: bool = True
    """Whether to tell the person on stderr where the URL went (not when stderr carries
    JSON logs, which must stay one object per line)."""


def _announce(url: str) -> None:
    sys.stdout.write(url + "\n")
    sys.stdout.flush()


_published: dict[str, str] = {}
"""The URL this process wrote to each --url-file, so that it removes only its own."""


def _publish(url: str, options: ServeOptions) -> None:
    """The URL on stdout; in the --url-file too, with a word on stderr for the person who
    ran the server (where the client finds it, how to stop)."""
    _announce(url)
    if options.url_file is None:
        return
    from pathlib import Path

    from .client.url_file import write_url_file

    try:
        write_url_file(Path(options.url_file), url)
        _published[options.url_file] = url
    except OSError as exc:
        log.warning("cannot write the URL to %s: %s", options.url_file, exc)
        return
    if not options.banner:
        return
    token = " with its token (--token-file)" if options.token else ""
    program, hint = _client_program()
    sys.stderr.write(
        f"exec-server: serving on {url} (written to {options.url_file}, where the client "
        "commands on this machine look for it)\n"
        f"  in another terminal: {program} shell{token}    or: {program} --help{hint}\n"
        "  Ctrl-C stops the server\n"
    )
    sys.stderr.flush()


def _client_program() -> tuple[str, str]:
    """How the person who started us runs the client: ``exec-server`` when that is us on
    PATH, else our full path, with the hint that ``make install`` puts it on PATH."""
    import shutil

    ours = os.path.join(os.path.dirname(sys.executable), "exec-server")
    found = shutil.which("exec-server")
    if found is not None and os.path.realpath(found) == os.path.realpath(ours):
        return "exec-server", ""
    if not os.path.exists(ours):
        return "exec-server", ""
    return ours, "\n  (`make install` puts exec-server on your PATH)"


async def _listen(server: Server, options: ServeOptions) -> asyncio.Server:
    """Start the WebSocket listener and print where it listens."""
    from .transport.websocket import serve_unix, serve_websocket

    address = options.address
    if address.kind == "unix":
        listener = await serve_unix(
            server,
            address.path,
            allowed_origins=options.allowed_origins,
            token=options.token,
            metrics_public=options.metrics_public,
        )
        _publish(f"unix://{address.path}", options)
        return listener

    def announce(host: str, port: int) -> None:
        shown = f"[{host}]" if ":" in host else host
        _publish(f"{address.kind}://{shown}:{port}", options)

    return await serve_websocket(
        server,
        address.host,
        address.port,
        allowed_origins=options.allowed_origins,
        token=options.token,
        tls=options.tls,
        on_bound=announce,
        metrics_public=options.metrics_public,
    )


async def serve(options: ServeOptions, keeper: Keeper | None = None) -> None:
    """Run until SIGINT/SIGTERM (or stdin EOF over stdio); then kill every child and return.
    A WebSocket listener drains on SIGTERM first (``--drain-timeout``)."""
    from .server import Server

    server = Server(
        options.limits, options.runtime, options.guards, keeper, options.prepend_path_dirs
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()  # end now
    drain = asyncio.Event()  # end once running processes are done (SIGTERM)

    def on_sigterm() -> None:
        (stop if drain.is_set() else drain).set()  # a second SIGTERM does not wait

    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        if options.address.kind == "stdio":
            from .transport.stdio import serve_stdio

            served = asyncio.ensure_future(serve_stdio(server))
            ended = {asyncio.ensure_future(e.wait()) for e in (stop, drain)}
            await asyncio.wait({served, *ended}, return_when=asyncio.FIRST_COMPLETED)
            for task in (served, *ended):
                task.cancel()
        else:
            listener = await _listen(server, options)
            signalled = [asyncio.ensure_future(e.wait()) for e in (stop, drain)]
            await asyncio.wait(signalled, return_when=asyncio.FIRST_COMPLETED)
            for task in signalled:
                task.cancel()
            await _say_goodbye(server, options.drain_timeout_s, stop)
            listener.close()
    finally:
        await server.shutdown()
        _unpublish(options)


def _unpublish(options: ServeOptions) -> None:
    """Remove the --url-file if it still names this server."""
    if options.url_file is None:
        return
    from pathlib import Path

    from .client.url_file import read_url_file, remove_url_file

    path = Path(options.url_file)
    url = read_url_file(path)
    if url is not None and url == _published.get(options.url_file):
        remove_url_file(path, url)


async def _say_goodbye(server: Server, drain_timeout_s: float, stop: asyncio.Event) -> None:
    """Drain (unless told to stop now), then close every connection with the reason."""
    if stop.is_set() or drain_timeout_s <= 0:
        reason = "stopped; running processes were killed"
    else:
        log.warning("SIGTERM: draining for up to %g s", drain_timeout_s)
        if await server.drain(drain_timeout_s, stop):
            reason = "drained, every process finished"
        elif stop.is_set():
            reason = "stopped while draining; running processes were killed"
        else:
            reason = f"drain timeout ({drain_timeout_s:g} s) passed; running processes were killed"
    await server.goodbye(reason)


def options_from_args(args: argparse.Namespace) -> ServeOptions:
    """Check the arguments as a whole; ValueError with a message for the user."""
    address = parse_listen(args.listen or DEFAULT_LISTEN)
    token = read_token(args) if address.kind != "stdio" else None
    os.environ.pop(TOKEN_ENV, None)  # never passed on to a child, over stdio too
    if not address.is_loopback and token is None and not args.insecure_allow_remote_without_auth:
        raise ValueError(
            f"refusing to listen on non-loopback address {address.host} without a token: "
            "anyone who can reach it could run commands here. Give one with "
            f"--auth-token-file (or ${TOKEN_ENV}), or pass "
            "--insecure-allow-remote-without-auth for an isolated network"
        )
    guards = msgspec.structs.replace(
        guards_from_args(args), private_paths=private_paths_from_args(args, address)
    )
    return ServeOptions(
        address=address,
        limits=limits_from_args(args),
        runtime=runtime_from_args(args, address),
        guards=guards,
        allowed_origins=frozenset(args.allow_origin),
        token=token,
        tls=tls_from_args(args, address),
        prepend_path_dirs=tuple(os.path.abspath(d) for d in args.prepend_path),
        drain_timeout_s=_drain_timeout(args.drain_timeout),
        metrics_public=args.metrics_public,
        url_file=_url_file(args, address),
        banner=args.log_format != "json",
    )


def _drain_timeout(seconds: float) -> float:
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("--drain-timeout must be a finite, non-negative number of seconds")
    return seconds


def _configure_logging(level: str | None, log_format: str) -> None:
    """Logs on stderr, as text or one JSON object per line; ValueError for a bad level."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        from .observability import JsonFormatter

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    default = "INFO" if log_format == "json" else "WARNING"
    logging.basicConfig(level=(level or default).upper(), handlers=[handler])


STDIO_ARGV = (["--listen", "stdio"], ["--listen=stdio"], ["--listen", "stdio://"])
"""Command lines that ask for nothing but a stdio server with every default."""


def plain_stdio_options(argv: Sequence[str]) -> ServeOptions | None:
    """The options of ``exec-server --listen stdio`` with nothing else, built without
    argparse (whose import and parser cost a server started per session a few ms of its
    start-up); None for any other command line. tests/test_startup.py holds this equal to
    what the parser gives."""
    if list(argv) not in STDIO_ARGV:
        return None
    from types import SimpleNamespace

    defaults = SimpleNamespace(
        no_uvloop=False,
        loop="auto",
        no_native_spawn=bool(os.environ.get("EXEC_SERVER_NO_NATIVE_SPAWN")),
        no_pybase64=False,
        no_pidfd=False,
        http_deny=[],
        env_exclude=[],
        confine=None,
        sandbox_shared_proc=bool(os.environ.get("EXEC_SERVER_SANDBOX_SHARED_PROC")),
        sandbox_pids_limit=Guards().pids_limit,
    )
    os.environ.pop(TOKEN_ENV, None)  # as read_token does: no child inherits it
    address = ListenAddress("stdio")
    return ServeOptions(
        address=address,
        limits=Limits(),
        runtime=runtime_from_args(defaults, address),  # type: ignore[arg-type]
        guards=guards_from_args(defaults),  # type: ignore[arg-type]
        allowed_origins=frozenset(),
        token=None,
        tls=None,
    )


def _url_file(args: argparse.Namespace, address: ListenAddress) -> str | None:
    """--url-file, or the default one when no --listen was given (a person's `make run`)."""
    if args.url_file is not None:
        return str(os.path.abspath(args.url_file))
    if args.listen is not None or address.kind == "stdio":
        return None
    from .client.url_file import default_url_file

    return str(default_url_file())


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in CLIENT_COMMANDS:  # the client side, in its own package
        from .client.cli import main as client_main

        return client_main(argv)
    if argv[:1] == ["help"]:
        argv = ["--help"]
    if argv and not argv[0].startswith("-") and argv[0] != "serve":
        from .client.cli import suggest

        sys.stderr.write(f"exec-server: {suggest(argv[0], ['serve', *CLIENT_COMMANDS])}\n")
        return 2
    argv = argv[1:] if argv[:1] == ["serve"] else argv
    options = plain_stdio_options(argv)
    if options is not None and _configure_logging_quietly(os.environ.get("EXEC_SERVER_LOG")):
        return _run(options)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _configure_logging(args.log_level, args.log_format)
    except ValueError:
        parser.error(
            f"unknown --log-level `{args.log_level}`; expected DEBUG, INFO, WARNING or ERROR"
        )
    try:
        options = options_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    return _run(options)


def _configure_logging_quietly(level: str | None) -> bool:
    """Text logs at ``level``; False (nothing configured) when the level is not one (the
    parser's path then says what is wrong)."""
    if not isinstance(logging.getLevelName((level or "WARNING").upper()), int):
        return False
    _configure_logging(level, "text")
    return True


def _run(options: ServeOptions) -> int:
    loop_factory = None
    if options.runtime.uvloop:
        import uvloop

        loop_factory = uvloop.new_event_loop
    # Before any loop or thread exists: orphans of our children come to us, and the keeper
    # cleans up after us should we be killed (process/tree.py, process/keeper.py).
    from .process.keeper import Keeper
    from .process.spawn import raise_fd_limit
    from .process.tree import become_subreaper

    become_subreaper()
    raise_fd_limit()
    keeper = Keeper.start()
    # Everything imported so far lives as long as the process: keep it out of every cyclic
    # collection, and collect the young generation less often (requests make many
    # short-lived objects and almost no cycles; bench/README.md has the measurement).
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(options, keeper))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
