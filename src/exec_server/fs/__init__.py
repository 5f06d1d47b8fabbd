"""Filesystem work behind the ``fs/*`` methods, kept apart from JSON and sockets.

``operations`` holds the blocking calls (run on worker threads by the method layer),
``handles`` the per-session table of open files for block-wise transfers, and ``sandboxed``
the same operations under a sandbox policy (``exec_server.sandbox``).
"""

from __future__ import annotations

from .errors import fs_error
from .handles import FileHandle, HandleBudget, HandleTable

__all__ = ["FileHandle", "HandleBudget", "HandleTable", "fs_error"]
