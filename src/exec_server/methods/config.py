"""``environmentConfig/read``: the executor's codex configuration layers (codex 0.169).

The reading itself (:mod:`..environment_config`) blocks on the disk, so it runs on a worker
thread; the server's own environment decides ``$CODEX_HOME`` and the home directory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from ..paths import parse_path
from ..protocol.config import (
    EnvironmentConfigReadParams,
    EnvironmentConfigReadResult,
)
from . import method

if TYPE_CHECKING:
    from ..connection import Connection

ENVIRONMENT_CONFIG = "environment config"
"""The family named in the handshake errors (``... before using environment config methods``)."""


@method("environmentConfig/read", EnvironmentConfigReadParams, ENVIRONMENT_CONFIG)
def read(
    connection: Connection, params: EnvironmentConfigReadParams
) -> Awaitable[EnvironmentConfigReadResult]:
    """Config and requirements layers from this machine, reduced to the requested key paths."""
    from .. import environment_config  # TOML and friends, on first use

    cwd = parse_path(params.cwd, "cwd")
    environment_config.validate_paths(params.config_paths, params.requirements_paths)
    return asyncio.get_running_loop().run_in_executor(
        None,
        environment_config.read_environment_config,
        cwd,
        params.config_paths,
        params.requirements_paths,
        dict(connection.server.server_env),
    )
