"""Where bubblewrap is, found with ``os`` alone: ``initialize`` asks (its root-write flags)
and must not load the sandbox modules or ``shutil`` for it (a stdio server's start-up)."""

from __future__ import annotations

import os

FALLBACK = "/usr/bin/bwrap"


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def find_bwrap() -> str | None:
    """The bubblewrap binary: the first ``bwrap`` on PATH, else ``/usr/bin/bwrap``; None
    when neither exists."""
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(folder or os.curdir, "bwrap")
        if _executable(candidate):
            return candidate
    return FALLBACK if _executable(FALLBACK) else None
