"""Which server a client command talks to, and with what credentials.

The URL, first found wins: ``--url``; ``--server NAME`` (a profile); ``$EXEC_SERVER_URL``;
``$EXEC_SERVER`` (a profile name); the config file's ``default`` profile; the URL a local
server started without ``--listen`` wrote (url_file.py). The token: ``--token``,
``--token-file``, ``$EXEC_SERVER_TOKEN``, the profile's ``token_file``. The CA file:
``--ca-file``, the profile's ``ca_file``.

Profiles live in ``$XDG_CONFIG_HOME/exec-server/config.toml`` (``~/.config/...``)::

    default = "build"

    [servers.build]
    url = "wss://build.example:8443"
    token_file = "~/.config/exec-server/build.token"
    ca_file = "~/.config/exec-server/build-ca.pem"
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .url_file import default_url_file, read_url_file, write_url_file


class ConfigError(Exception):
    """The command line, a profile or a file it names cannot be used; the message says why."""


@dataclass(frozen=True)
class Target:
    """A server to connect to."""

    url: str
    token: str | None
    ca_file: str | None


def config_file() -> Path:
    """``$XDG_CONFIG_HOME/exec-server/config.toml``, or under ``~/.config``."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "exec-server" / "config.toml"


def resolve(args: argparse.Namespace) -> Target:
    """The server and credentials the arguments and the environment name."""
    profile = _profile(args)
    url = args.url or profile.get("url")
    if url is None:
        url = os.environ.get("EXEC_SERVER_URL") or read_url_file(default_url_file())
    if not url:
        raise ConfigError(
            "no server given: pass --url ws://HOST:PORT (or --server NAME, or set "
            "EXEC_SERVER_URL); or start one here with `exec-server` (or `make run`), whose "
            f"URL is then found in {default_url_file()}"
        )
    token = args.token
    if token is None and args.token_file is not None:
        token = _read_token(args.token_file, "--token-file")
    if token is None:
        token = os.environ.get("EXEC_SERVER_TOKEN") or None
    if token is None and isinstance(profile.get("token_file"), str):
        token = _read_token(_expand(profile["token_file"]), "the profile's token_file")
    ca_file = args.ca_file or (_expand(profile["ca_file"]) if "ca_file" in profile else None)
    return Target(str(url), token, ca_file)


def _profile(args: argparse.Namespace) -> dict[str, str]:
    """The profile named by --server, $EXEC_SERVER or the config's ``default``; none when a
    URL is given (--url, or $EXEC_SERVER_URL without --server)."""
    if args.url is not None:
        return {}
    path = config_file()
    name = args.server
    if name is None and not os.environ.get("EXEC_SERVER_URL"):
        name = os.environ.get("EXEC_SERVER") or None
        if name is None and path.exists():
            default = _load(path).get("default")
            name = default if isinstance(default, str) else None
    if name is None:
        return {}
    servers = _load(path).get("servers", {})
    found = servers.get(name) if isinstance(servers, dict) else None
    if not isinstance(found, dict):
        known = ", ".join(sorted(servers)) if isinstance(servers, dict) and servers else "none"
        raise ConfigError(f"no server named `{name}` in {path} (known: {known})")
    if not isinstance(found.get("url"), str):
        raise ConfigError(f"server `{name}` in {path} has no url")
    return {key: str(value) for key, value in found.items()}


def _load(path: Path) -> dict[str, object]:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def _expand(path: str) -> str:
    return os.path.expanduser(path)


def _read_token(path: str, what: str) -> str:
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from None
    if not token:
        raise ConfigError(f"{what} {path} is empty")
    return token


# ---- the session detached commands share -----------------------------------------------------


def _session_file(url: str) -> Path:
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return default_url_file().with_name(f"session-{digest}")


def saved_session(url: str) -> str | None:
    """The session ``run -d`` left on the server at ``url``, if one was saved."""
    return read_url_file(_session_file(url))


def save_session(url: str, session_id: str) -> None:
    """Remember the session for ``ps``, ``logs``, ``kill`` and the next ``run -d``."""
    write_url_file(_session_file(url), session_id)
