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
import socket
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from .client import Client, State
from .errors import ExecServerError

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
        self.pairs: set[_Pair] = set()

    async def listen(self, spec: Spec) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _Pair(self.client, spec, self.pairs, _say).local,
            spec.local_host,
            spec.local_port,
        )
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

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        opening = [pair.opening for pair in self.pairs if pair.opening is not None]
        for pair in list(self.pairs):
            pair.abort()
        with contextlib.suppress(TimeoutError):  # streams still opening close once open
            async with asyncio.timeout(2):
                await asyncio.gather(*opening, return_exceptions=True)


class _Side(asyncio.Protocol):
    """One end of a forwarded connection: what it receives is written to the other end, and
    the other end's full buffer stops its reading (flow control both ways, no copies)."""

    def __init__(self, pair: _Pair) -> None:
        self.pair = pair
        self.transport: asyncio.Transport | None = None
        self.other: _Side | None = None
        self.eof = False
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        if self is self.pair.local:
            self.pair.accepted()

    def data_received(self, data: bytes) -> None:
        other = self.other
        if other is None or other.transport is None:  # the stream is still being opened
            self.early.append(data)
            assert self.transport is not None
            self.transport.pause_reading()  # (uvloop may start reading after connection_made)
            return
        other.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        other = self.other
        if other is not None and other.transport is not None and not other.transport.is_closing():
            other.transport.write_eof()  # a half-close goes on as one
        self.pair.maybe_done()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.pair.lost(self, exc)

    def pause_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()


class _Pair:
    """An accepted local connection and its stream to the destination."""

    def __init__(
        self, client: Client, spec: Spec, pairs: set[_Pair], report: Callable[[str], None]
    ) -> None:
        """``pairs``: where the pair is kept while it lives; ``report``: what to do with a
        one-line account of a failure."""
        self.client = client
        self.spec = spec
        self.pairs = pairs
        self.report = report
        self.local = _Side(self)
        self.remote: _Side | None = None
        self.opening: asyncio.Task[None] | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        """Done once the stream is open, or with the reason it could not be."""
        self.opened.add_done_callback(_retrieved)  # (reported; awaiting it is optional)
        self.done = False

    def accepted(self) -> None:
        """The local connection is made: open the stream, reading nothing until it is."""
        self.pairs.add(self)
        assert self.local.transport is not None
        self.local.transport.pause_reading()
        self.opening = asyncio.get_running_loop().create_task(self._open())

    async def _open(self) -> None:
        local = self.local
        try:
            _, remote = await self.client.create_connection(
                lambda: _Side(self), self.spec.host, self.spec.port
            )
        except ExecServerError as exc:
            self.report(f"{self.spec}: {exc}")
            if not self.opened.done():
                self.opened.set_exception(exc)
            self.abort()
            return
        finally:
            self.opening = None
        if not self.opened.done():
            self.opened.set_result(None)
        if self.done:
            assert remote.transport is not None
            remote.transport.abort()
            return
        self.remote, remote.other, local.other = remote, local, remote
        assert local.transport is not None and remote.transport is not None
        for data in local.early:
            remote.transport.write(data)
        local.early.clear()
        if local.eof:  # the local side finished before the stream was open
            remote.transport.write_eof()
        else:
            local.transport.resume_reading()

    def maybe_done(self) -> None:
        """Both ends sent their end of file: close both."""
        if self.remote is not None and self.local.eof and self.remote.eof:
            self.close()

    def lost(self, side: _Side, exc: Exception | None) -> None:
        if self.done:
            return
        if exc is not None and side is not self.local and self.remote is not None:
            self.report(f"{self.spec}: {exc}")
        if exc is None:
            self.close()  # what one side still has to write is written first
        else:
            self.abort()

    def close(self) -> None:
        self._end(lambda transport: transport.close())

    def abort(self) -> None:
        self._end(lambda transport: transport.abort())

    def _end(self, how: Callable[[asyncio.Transport], None]) -> None:
        if self.done:
            return
        self.done = True
        self.pairs.discard(self)
        # A stream being opened is left to open and is then closed at once (_open sees
        # `done`): cancelled, the server would keep it, unknown to us, as long as we are
        # connected.
        if not self.opened.done():
            self.opened.set_exception(
                ConnectionResetError("the local connection ended before the stream was open")
            )
        for side in (self.local, self.remote):
            if side is not None and side.transport is not None and not side.transport.is_closing():
                how(side.transport)


async def open_socket(client: Client, host: str, port: int) -> socket.socket:
    """A connected socket whose peer is a stream to ``host:port`` from the server's machine:
    one end of a socket pair, the other spliced to the stream on the client's loop. For code
    that wants a plain blocking socket (``sync.Client.create_connection``)."""
    mine, theirs = socket.socketpair()
    pairs: set[_Pair] = set()
    pair = _Pair(client, Spec(None, 0, host, port), pairs, lambda message: None)
    try:
        await asyncio.get_running_loop().connect_accepted_socket(lambda: pair.local, mine)
        await pair.opened
    except BaseException:
        pair.abort()
        mine.close()
        theirs.close()
        raise
    return theirs


def _retrieved(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def _say(message: str) -> None:
    sys.stderr.write(f"exec-server forward: {message}\n")
    sys.stderr.flush()
