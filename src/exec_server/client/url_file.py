"""Where a server started without ``--listen`` leaves its URL for the client commands on the
same machine (``exec-server shell`` with no ``--url`` reads it).

The file holds the URL and nothing else (never a token: a server that wants one still needs
it given to the client). It is created mode 0600 in a directory of mode 0700, under
``$XDG_RUNTIME_DIR`` (per user, on tmpfs, emptied at logout) or, without it, under
``~/.cache``; so only this user reads it. The server removes it on a clean exit if it still
names this server.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def default_url_file() -> Path:
    """``$XDG_RUNTIME_DIR/exec-server/url``, or ``~/.cache/exec-server/url`` without it."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime else Path.home() / ".cache"
    return base / "exec-server" / "url"


def write_url_file(path: Path, url: str) -> None:
    """Write ``url`` to ``path`` atomically, readable by this user only."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (url + "\n").encode())
    finally:
        os.close(fd)
    os.replace(temporary, path)


def read_url_file(path: Path) -> str | None:
    """The URL in ``path``, or None when there is none."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeError):
        return None
    return text or None


def remove_url_file(path: Path, url: str) -> None:
    """Remove ``path`` if it still holds ``url`` (another server may have written it since)."""
    if read_url_file(path) == url:
        with contextlib.suppress(OSError):
            path.unlink()
