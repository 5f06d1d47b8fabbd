"""``--prepend-path``: directories of tools put at the front of children's ``PATH``.

The reference prepends its bundled tool folder to its own ``PATH`` at start-up, so children
that inherit the server's environment find those tools first, and reports the folders in
``environmentInfo.prependPathDirs`` so a client can add them where they are missing. Here the
folders are prepended to every child's final environment, whether its ``PATH`` was inherited
or set by the request, so every child sees them; a folder already on the ``PATH`` is not
repeated, and a child without ``PATH`` gets the folders before libc's default path.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping, Sequence


def prepend(path_value: str | None, dirs: Sequence[str]) -> str:
    """``dirs`` (in order) before ``path_value``, leaving out those it already lists."""
    if not path_value:
        path_value = os.defpath  # what the child's program lookup would have used
    present = set(path_value.split(os.pathsep))
    missing = [d for d in dict.fromkeys(dirs) if d not in present]
    return os.pathsep.join([*missing, path_value])


def apply(env: MutableMapping[str, str], dirs: Sequence[str]) -> None:
    """Prepend ``dirs`` to ``env["PATH"]`` in place (setting it if absent); no-op without dirs."""
    if dirs:
        env["PATH"] = prepend(env.get("PATH"), dirs)
