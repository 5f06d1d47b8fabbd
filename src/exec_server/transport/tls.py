"""TLS for ``wss://``, done by the WebSocket transport itself over memory buffers.

The listener accepts plain TCP and the transport runs TLS on the bytes (``ssl.MemoryBIO``),
so a connection is the transport's from its first byte: one that never starts TLS counts
among the listener's pending connections and gets the same handshake timeout as one that
never sends its upgrade (with the event loop's TLS, the transport would only learn of it
after the TLS handshake, and could neither count nor drop it). The same code serves under
asyncio's loop and uvloop.
"""

from __future__ import annotations

import contextlib
import ssl

_READ_STEP = 256 * 1024


class TlsClosed(Exception):
    """The peer ended TLS (``close_notify``): nothing more will come."""


class TlsSession:
    """The server side of one TLS connection: ciphertext in, plaintext out, and back."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self.established = False

    def receive(self, data: bytes) -> bytes:
        """Feed ciphertext; returns the plaintext it completes (b"" during the handshake).
        Raises ``ssl.SSLError`` for a failed handshake or a corrupt record, and
        :class:`TlsClosed` when the peer ended TLS. Send :meth:`outgoing` afterwards."""
        self._incoming.write(data)
        if not self.established:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                return b""
            self.established = True
        chunks = []
        while True:
            try:
                chunk = self._tls.read(_READ_STEP)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                raise TlsClosed from None
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def send(self, data: bytes) -> None:
        """Encrypt ``data`` (the handshake must be done); collect it with :meth:`outgoing`."""
        view = memoryview(data)
        while view:
            view = view[self._tls.write(view) :]

    def close(self) -> None:
        """Queue our ``close_notify`` (collect it with :meth:`outgoing`)."""
        if self.established:
            # SSLWantReadError: the peer's close_notify has not come; ours is queued anyway.
            with contextlib.suppress(ssl.SSLError):
                self._tls.unwrap()

    def outgoing(self) -> bytes:
        """The ciphertext to send now."""
        return self._outgoing.read()
