"""pip's settings on this machine, carried into ``podman build`` without baking them in.

``make image`` runs this with the host's Python. It reads the settings pip would use here
(``pip config list``: the global, user and site files and the ``PIP_*`` environment, later
ones winning as in pip) and

* writes them as ``PIP_*=value`` lines to ``ENV_FILE``, which the build passes as the secret
  ``pipenv`` (an index URL may hold a password: it never lands in a layer or the history);
* prints one ``--volume=PATH:/run/host-pip/PATH:ro`` per local path those settings name (a CA
  bundle, a constraints file, a ``find-links`` directory, a ``file://`` index with the
  directory above its ``simple/``, where its links point), and writes the settings with those
  paths, so pip inside the build sees what pip outside sees. Build volumes are not committed
  to the image; mounting under ``/run/host-pip`` keeps them off the image's own files (the
  build's ``apt-get`` must still write its own CA bundle).

Usage: ``python3 deploy/pip_settings.py ENV_FILE`` (prints the podman arguments, one a line).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from urllib.parse import unquote, urlsplit


def effective_settings(python: str = sys.executable) -> dict[str, str]:
    """pip's option name (``cert``, ``extra-index-url``...) to its value here, as pip would
    resolve it: ``pip config list`` lists files first and the environment last."""
    listing = subprocess.run(
        [python, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    ).stdout
    settings: dict[str, str] = {}
    for line in listing.splitlines():
        key, sep, raw = line.partition("=")
        if not sep or "." not in key:
            continue
        section, _, name = key.rpartition(".")
        # config-file names where these came from: they are flattened into the variables.
        if section not in ("global", "install", ":env:") or name == "config-file":
            continue
        values = shlex.split(raw)
        settings[name] = values[0] if values else ""
    return settings


MOUNT_ROOT = "/run/host-pip"
"""Where the build sees the host's paths that pip's settings name."""


def local_paths(value: str) -> list[str]:
    """The existing local files and directories a setting's value names (``file://`` URLs
    included), in order; for an index directory named ``simple`` the directory above it."""
    found: list[str] = []
    for word in value.split():
        path = unquote(urlsplit(word).path) if word.startswith("file:") else word
        if not (os.path.isabs(path) and os.path.exists(path)):
            continue
        path = os.path.normpath(path)
        if os.path.basename(path) == "simple":
            path = os.path.dirname(path)
        if path not in found:
            found.append(path)
    return found


def moved(value: str, mounts: list[str]) -> str:
    """``value`` with every mounted host path put under :data:`MOUNT_ROOT`."""
    words = []
    for word in value.split():
        for path in mounts:
            scheme = "file://" if word.startswith("file:") else ""
            start = f"{scheme}{path}"
            if word == start or word.startswith(f"{start}/"):
                word = f"{scheme}{MOUNT_ROOT}{path}{word[len(start) :]}"
                break
        words.append(word)
    return " ".join(words)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    settings = effective_settings()
    mounts: list[str] = []
    for value in settings.values():
        mounts += [p for p in local_paths(value) if p not in mounts]
    lines = [
        f"PIP_{name.upper().replace('-', '_')}={shlex.quote(moved(value, mounts))}"
        for name, value in settings.items()
    ]
    fd = os.open(argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as env_file:
        env_file.write("".join(f"{line}\n" for line in lines))
    for path in mounts:
        print(f"--volume={path}:{MOUNT_ROOT}{path}:ro")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
