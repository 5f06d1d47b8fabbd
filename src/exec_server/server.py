"""The server object: configuration, the session registry, and orderly shutdown."""

from __future__ import annotations

import os
import pwd
import sys
import tempfile
from collections.abc import Sequence

from . import __version__
from .capabilities import capabilities
from .config import Limits
from .paths import to_file_uri
from .protocol import EnvironmentInfo, ShellInfo
from .sessions import SessionRegistry


def describe_environment(prepend_path_dirs: Sequence[str] = ()) -> EnvironmentInfo:
    """What ``initialize`` and ``environment/info`` tell a client about this machine."""
    shell_path = os.environ.get("SHELL") or _login_shell() or "/bin/sh"
    home = os.path.expanduser("~")
    temp_dir = tempfile.gettempdir()
    return EnvironmentInfo(
        shell=ShellInfo(name=os.path.basename(shell_path), path=shell_path),
        executor_version=__version__,
        provider_id="local",
        cwd=to_file_uri(os.getcwd()),
        user_home_dir=to_file_uri(home),
        platform_os=sys.platform,
        prepend_path_dirs=[to_file_uri(d) for d in prepend_path_dirs],
        temporary_directories=[to_file_uri(temp_dir)],
        temp_dir=to_file_uri(temp_dir),
        capabilities=capabilities(),
    )


def _login_shell() -> str | None:
    try:
        return pwd.getpwuid(os.getuid()).pw_shell or None
    except KeyError:
        return None


class Server:
    """Everything connections share: limits, sessions, and facts about the machine."""

    def __init__(self, limits: Limits | None = None, prepend_path_dirs: Sequence[str] = ()) -> None:
        self.limits = limits or Limits()
        self.sessions = SessionRegistry(self.limits)
        self.prepend_path_dirs = tuple(prepend_path_dirs)
        """Put at the front of every child's PATH (``--prepend-path``)."""
        self.environment_info = describe_environment(self.prepend_path_dirs)
        self.server_env: dict[str, str] = dict(os.environ)

    async def shutdown(self, timeout: float = 5.0) -> None:
        """End every session: every child group is killed, then reaped."""
        for session in self.sessions.shutdown():
            await session.processes.wait_reaped(timeout)
