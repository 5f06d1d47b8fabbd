"""What can go wrong with a forwarded stream, as values ``methods/forward.py`` words for the
wire. Each message says what happened and, where there is one, what to do."""

from __future__ import annotations


class ForwardError(Exception):
    """Base of the forwarding errors; ``message`` is for a person."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class StreamRefused(ForwardError):
    """The operator's rules forbid this destination (``--confine``, ``--http-deny``)."""


class ConnectFailed(ForwardError):
    """The destination could not be resolved or reached."""


class UnknownStream(ForwardError):
    """No open stream has this id (never opened, or already closed)."""


class StreamMisuse(ForwardError):
    """The client broke a rule of the protocol: a reused id, a write past its window or
    after its shutdown, too many streams."""
