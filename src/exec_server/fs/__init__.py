"""Filesystem work behind the ``fs/*`` methods, kept apart from JSON and sockets.

``operations`` holds the blocking calls (run on worker threads by the method layer),
``handles`` the per-session table of open files for block-wise transfers, and ``sandbox``
the decision whether a request's permission profile is one this server may honour.
"""

from __future__ import annotations

from .errors import fs_error
from .handles import FileHandle, HandleTable
from .sandbox import check_sandbox

__all__ = ["FileHandle", "HandleTable", "check_sandbox", "fs_error"]
