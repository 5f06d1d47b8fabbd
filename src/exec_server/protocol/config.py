"""Wire types of ``environmentConfig/read`` (imported with :mod:`..methods.config` and
:mod:`..environment_config`)."""

from __future__ import annotations

from . import _Params, _Wire

# ---- environmentConfig/read (codex 0.169) ---------------------------------------------------


class EnvironmentConfigReadParams(_Params):
    """``environmentConfig/read``: both path lists are required (each a list of TOML keys)."""

    cwd: str
    config_paths: list[list[str]]
    requirements_paths: list[list[str]]


class EnvironmentConfigLayer(_Wire):
    source: str
    base_dir: str
    toml: str


class EnvironmentConfigLayerStack(_Wire):
    layers: list[EnvironmentConfigLayer]
    cloud_insertion_index: int


class EnvironmentConfigReadResult(_Wire):
    user_home_dir: str | None
    codex_home_dir: str
    hostname: str | None
    config: EnvironmentConfigLayerStack
    requirements: EnvironmentConfigLayerStack
