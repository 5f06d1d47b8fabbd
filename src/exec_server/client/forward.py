"""``exec-server forward [LOCAL_ADDR:]LOCAL_PORT:HOST:PORT``: ssh -L over an exec-server.

Listens on a local port (loopback unless told otherwise); every connection accepted there
becomes a stream to HOST:PORT as the *server's* machine reaches it (``Client.open_connection``),
with both directions copied and half-closes passed on. Runs until interrupted; if the
connection to the server is lost for good, exits with 255.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import textwrap
from dataclasses import dataclass
from typing import Any

from .client import Client, State
from .errors import ExecServerError

COPY_BYTES = 256 * 1024
"""The largest piece copied in one go, each way."""

EXAMPLE = textwrap.dedent(
    """\
    examples:
      exec-server forward 8080:localhost:80      # http://127.0.0.1:8080 is the server's port 80
      exec-server forward 0:db.internal:5432     # a free local port (printed), to a host the
                                                 # server reaches and this machine may not
      exec-server forward '[::1]:2222:10.0.0.5:22' 5901:localhost:5901
    """
)


@dataclass(frozen=True)
class Spec:
    """One forward: where we listen, and where the server connects."""

    local_host: str | None
    """None listens on every interface (``*``)."""
    local_port: int
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def _fields(text: str) -> list[str]:
    """Colon-separated fields, where ``[...]`` (an IPv6 address) may contain colons."""
    fields, rest = [], text
    while True:
        if rest.startswith("["):
            end = rest.find("]")
            if end < 0:
                raise ValueError("an unclosed `[`")
            field, rest = rest[1:end], rest[end + 1 :]
            if rest and not rest.startswith(":"):
                raise ValueError(f"`:` expected after `[{field}]`")
        else:
            field, _, tail = rest.partition(":")
            rest = ":" + tail if _ else ""
        fields.append(field)
        if not rest:
            return fields
        rest = rest[1:]


def _port(text: str, what: str, zero: bool = False) -> int:
    if not text.isdigit() or not (0 if zero else 1) <= int(text) <= 65535:
        raise ValueError(f"{what} `{text}` is not a port number")
    return int(text)


def parse_spec(text: str) -> Spec:
    """``[LOCAL_ADDR:]LOCAL_PORT:HOST:PORT``; raises :class:`argparse.ArgumentTypeError`."""
    try:
        fields = _fields(text)
        if len(fields) == 3:
            fields.insert(0, "127.0.0.1")
        if len(fields) != 4:
            raise ValueError("expected [LOCAL_ADDR:]LOCAL_PORT:HOST:PORT")
        local_host, local_port, host, port = fields
        if not host:
            raise ValueError("HOST is empty")
        return Spec(
            None if local_host in ("*", "") else local_host,
            _port(local_port, "LOCAL_PORT", zero=True),
            host,
            _port(port, "PORT"),
        )
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"`{text}`: {exc}") from None


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    """Register ``forward`` among the client's subcommands."""
    parser = commands.add_parser(
        "forward",
        parents=[common],
        help="forward a local port to a host:port reached from the server (like ssh -L)",
        description=textwrap.fill(
            "Listen on LOCAL_PORT (on 127.0.0.1 unless LOCAL_ADDR says otherwise; `*` for "
            "every interface) and carry each connection made there to HOST:PORT as the "
            "server's machine reaches it, over the same connection to the server (like "
            "`ssh -L` and `kubectl port-forward`). Bracket IPv6 addresses. LOCAL_PORT 0 picks "
            "a free port. Runs until interrupted. The server refuses destinations its "
            "operator denies (--http-deny, or --confine with the network restricted); each "
            "refused connection is reported here and closed.",
            width=78,
        ),
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "specs",
        nargs="+",
        type=parse_spec,
        metavar="[LOCAL_ADDR:]LOCAL_PORT:HOST:PORT",
    )
    parser.set_defaults(handler=forward, parser=parser)


async def forward(client: Client, args: argparse.Namespace) -> int:
    """Serve every spec until interrupted, or until the connection to the server ends."""
    forwarder = Forwarder(client)
    try:
        for spec in args.specs:
            await forwarder.listen(spec)
        return await forwarder.serve()
    finally:
        await forwarder.close()


class Forwarder:
    """The local listeners and the connections they carry."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.servers: list[asyncio.Server] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def listen(self, spec: Spec) -> None:
        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self.tasks.add(task)
            try:
                await self.carry(spec, reader, writer)
            finally:
                self.tasks.discard(task)

        server = await asyncio.start_server(accepted, spec.local_host, spec.local_port)
        self.servers.append(server)
        for sock in server.sockets:
            host, port = sock.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            _say(f"forwarding {shown}:{port} -> {spec} (from the server)")

    async def serve(self) -> int:
        # The client has no event for its end; noticing within a quarter second is enough.
        while self.client.state is not State.CLOSED:  # noqa: ASYNC110
            await asyncio.sleep(0.25)
        _say("the connection to the server is lost; stopping")
        return 255

    async def carry(
        self, spec: Spec, local_reader: asyncio.StreamReader, local_writer: asyncio.StreamWriter
    ) -> None:
        """One accepted connection: a stream to the destination, copied both ways."""
        try:
            remote_reader, remote_writer = await self.client.open_connection(spec.host, spec.port)
        except ExecServerError as exc:
            _say(f"{spec}: {exc}")
            local_writer.transport.abort()
            return
        try:
            await asyncio.gather(
                _copy(local_reader, remote_writer),
                _copy(remote_reader, local_writer),
            )
        except (ConnectionError, ExecServerError) as exc:
            _say(f"{spec}: {exc}")
        finally:
            for writer in (local_writer, remote_writer):
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def _copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Bytes until end of file, then the end of file (a half-close, not a close)."""
    try:
        while data := await source.read(COPY_BYTES):
            sink.write(data)
            await sink.drain()
    except ConnectionError:
        sink.transport.abort()
        raise
    if sink.can_write_eof() and not sink.transport.is_closing():
        sink.write_eof()


def _say(message: str) -> None:
    sys.stderr.write(f"exec-server forward: {message}\n")
    sys.stderr.flush()
