"""Connections of one listener that have not finished their handshake yet (TLS, then the
HTTP upgrade with its token check): at most ``bound`` at once, the oldest dropped first.

An idle socket costs the peer nothing and the server a descriptor; without a bound, enough
of them (each held until the handshake timeout) exhaust the server's descriptors and lock out
the client that has the token. Dropping the oldest keeps room for a client that completes
its handshake promptly, however many idle ones keep arriving.
"""

from __future__ import annotations

from typing import Protocol


class Abortable(Protocol):
    def abort(self) -> None:
        """Drop the connection at once."""


class PendingConnections:
    """The not-yet-upgraded connections of one listener, oldest first."""

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self._waiting: dict[Abortable, None] = {}  # insertion order: oldest first

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, connection: Abortable) -> None:
        """``connection`` starts its handshake; past the bound the oldest is dropped."""
        self._waiting[connection] = None
        while len(self._waiting) > self.bound:
            oldest = next(iter(self._waiting))
            del self._waiting[oldest]
            oldest.abort()

    def done(self, connection: Abortable) -> None:
        """``connection`` upgraded, or went away: it no longer counts."""
        self._waiting.pop(connection, None)
