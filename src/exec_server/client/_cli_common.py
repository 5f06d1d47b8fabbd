"""What every client subcommand shares: exit codes, the one-line complaint, and the
exception that ends a command with a chosen code and message."""

from __future__ import annotations

import sys

TRANSPORT_FAILED = 255
"""The connection or the server failed (as ssh does)."""
LOCAL_ERROR = 1
"""A local file or a remote path could not be used."""
USAGE = 2
"""The command line is wrong (as argparse does)."""
CANNOT_RUN = 126
"""The remote program exists but cannot be run, or the working directory is unusable (the
shell's and docker's convention)."""
NOT_FOUND = 127
"""The remote program does not exist (the shell's convention)."""


class Leave(Exception):
    """End the command now with ``code``, saying ``message`` (if any) on one line."""

    def __init__(self, code: int, message: str | None = None) -> None:
        super().__init__(message or f"exit {code}")
        self.code = code
        self.message = message


def complain(command: str, message: str, raw: bool = False) -> None:
    """One line on stderr, prefixed with the subcommand; ``raw``: the terminal is in raw
    mode, so the line ends in CR LF."""
    sys.stderr.write(f"exec-server {command}: {message}{chr(13) if raw else ''}\n")
    sys.stderr.flush()
