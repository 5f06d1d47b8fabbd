"""The executor's own codex configuration, as ``environmentConfig/read`` reports it.

codex 0.169 asks its executor for the configuration layers that live on the executor's
machine (today only ``mcp_servers``, to find HTTP MCP servers reachable from there) and
merges them itself. Each layer is reported raw, reduced to the requested TOML key paths;
layers left empty by that reduction are dropped. What is read, lowest precedence first
(as the 0.169 reference reads it; probed and read in openai/codex ``codex-rs/config``):

config
  - system: ``/etc/codex/config.toml``
  - user: ``$CODEX_HOME/config.toml`` (``~/.codex`` when ``CODEX_HOME`` is unset or empty)
  - project: ``<dir>/.codex/config.toml`` for each directory from the project root down to
    ``cwd``, only for trusted projects (``[projects."<dir>"] trust_level = "trusted"`` in
    the system or user config, looked up for the directory, then for the project root), and
    without the keys a repository may not set (model providers, notify, profiles, ...).
    The project root is the nearest ancestor of ``cwd`` holding a marker
    (``project_root_markers``, default ``.git``: a file, or a directory with ``HEAD``),
    else ``cwd`` itself.
  - legacy managed: ``/etc/codex/managed_config.toml``

requirements
  - system: ``/etc/codex/requirements.toml``
  - legacy managed: ``approval_policy``, ``approvals_reviewer`` and ``sandbox_mode`` of
    ``/etc/codex/managed_config.toml``, turned into the ``allowed_*`` lists they imply.

``cloudInsertionIndex`` is where the client inserts its cloud-managed layers: after the
system layer, counted among the layers that survive the reduction.

Everything here blocks on the disk: call it on a worker thread.
"""

from __future__ import annotations

import os
import pwd
import socket
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import tomli_w

from .errors import internal_error, invalid_params
from .paths import to_file_uri
from .protocol.config import (
    EnvironmentConfigLayer,
    EnvironmentConfigLayerStack,
    EnvironmentConfigReadResult,
)

SYSTEM_DIR = "/etc/codex"
CONFIG_FILE = "config.toml"

PROJECT_DENYLIST = (
    "openai_base_url",
    "chatgpt_base_url",
    "apps_mcp_product_sku",
    "model_provider",
    "model_providers",
    "notify",
    "profile",
    "profiles",
    "experimental_realtime_webrtc_call_base_url",
    "experimental_realtime_ws_base_url",
    "otel",
)
"""Keys a project's own config may not set: where credentials go and what runs locally."""

Table = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Layer:
    source: str
    base_dir: str
    table: Table


@dataclass(slots=True)
class LayerStack:
    layers: list[Layer] = field(default_factory=list)
    cloud_insertion_index: int = 0


def validate_paths(config_paths: list[list[str]], requirements_paths: list[list[str]]) -> None:
    """-32602 as the reference words it, before anything is read."""
    if not config_paths and not requirements_paths:
        raise invalid_params("at least one config or requirements path is required")
    if any(not path for path in (*config_paths, *requirements_paths)):
        raise invalid_params("TOML paths must contain at least one key segment")


def read_environment_config(
    cwd: str,
    config_paths: list[list[str]],
    requirements_paths: list[list[str]],
    env: Mapping[str, str],
    system_dir: str = SYSTEM_DIR,
) -> EnvironmentConfigReadResult:
    """The answer to ``environmentConfig/read`` (module docstring); ``env`` is the server's
    environment (``CODEX_HOME``, ``HOME``)."""
    validate_paths(config_paths, requirements_paths)
    codex_home = find_codex_home(env)
    try:
        config, requirements = load_layers(cwd, codex_home, system_dir)
    except (OSError, tomllib.TOMLDecodeError, ValueError) as exc:
        raise internal_error(f"failed to load executor-local config: {exc}") from None
    home = user_home(env)
    return EnvironmentConfigReadResult(
        user_home_dir=None if home is None else to_file_uri(home),
        codex_home_dir=to_file_uri(codex_home),
        hostname=socket.gethostname() or None,
        config=_wire(project(config, config_paths)),
        requirements=_wire(project(requirements, requirements_paths)),
    )


def find_codex_home(env: Mapping[str, str]) -> str:
    """``$CODEX_HOME`` (which must exist; symlinks resolved), else ``~/.codex``."""
    configured = env.get("CODEX_HOME", "")
    if configured:
        if not os.path.exists(configured):
            raise internal_error(
                f'failed to find Codex home: CODEX_HOME points to "{configured}", '
                "but that path does not exist"
            )
        return os.path.realpath(configured)
    home = user_home(env)
    if home is None:
        raise internal_error("failed to find Codex home: no home directory")
    return os.path.join(home, ".codex")


def user_home(env: Mapping[str, str]) -> str | None:
    home = env.get("HOME")
    if home:
        return home
    try:
        return pwd.getpwuid(os.getuid()).pw_dir or None
    except KeyError:
        return None


# ---- reading the layers ----------------------------------------------------------------------


def load_layers(cwd: str, codex_home: str, system_dir: str) -> tuple[LayerStack, LayerStack]:
    """Every layer, whole (before reduction to the requested paths)."""
    system_file = os.path.join(system_dir, CONFIG_FILE)
    user_file = os.path.join(codex_home, CONFIG_FILE)
    managed_file = os.path.join(system_dir, "managed_config.toml")
    system = _read_toml(system_file) or {}
    user = _read_toml(user_file) or {}
    managed = _read_toml(managed_file)

    discovery: Table = {}
    for table in (system, user, managed or {}):
        merge(discovery, table)

    config = LayerStack(
        [
            Layer(f"system ({system_file})", system_dir, system),
            Layer(f"user ({user_file})", codex_home, user),
        ],
        cloud_insertion_index=1,  # cloud layers follow the system layer
    )
    config.layers += _project_layers(cwd, codex_home, discovery)
    if managed is not None:
        config.layers.append(
            Layer(f"legacy managed_config.toml ({managed_file})", system_dir, managed)
        )

    requirements = LayerStack()
    requirements_file = os.path.join(system_dir, "requirements.toml")
    system_requirements = _read_toml(requirements_file)
    if system_requirements is not None:
        requirements.layers.append(Layer(requirements_file, system_dir, system_requirements))
        requirements.cloud_insertion_index = 1
    if managed is not None:
        requirements.layers.append(Layer(managed_file, codex_home, _legacy_requirements(managed)))
    return config, requirements


def _read_toml(path: str) -> Table | None:
    """The parsed file, or None when it does not exist."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return None


def merge(base: Table, overlay: Table) -> None:
    """Overlay ``overlay`` on ``base`` in place: tables merge key by key, anything else replaces."""
    for key, value in overlay.items():
        current = base.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            merge(current, value)
        else:
            base[key] = _copy(value)


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _legacy_requirements(managed: Table) -> Table:
    """The constraints an old-style ``managed_config.toml`` implies."""
    table: Table = {}
    if isinstance(managed.get("approval_policy"), str):
        table["allowed_approval_policies"] = [managed["approval_policy"]]
    reviewer = managed.get("approvals_reviewer")
    if isinstance(reviewer, str):
        table["allowed_approvals_reviewers"] = (
            [reviewer, "user"] if reviewer == "auto_review" else [reviewer]
        )
    mode = managed.get("sandbox_mode")
    if isinstance(mode, str):  # read-only must stay allowed for codex to work at all
        table["allowed_sandbox_modes"] = (
            ["read-only"] if mode == "read-only" else ["read-only", mode]
        )
    return table


# ---- projects --------------------------------------------------------------------------------


def _project_layers(cwd: str, codex_home: str, discovery: Table) -> list[Layer]:
    root = project_root(cwd, discovery)
    trusted = _trusted_projects(discovery)
    root_keys = _lookup_keys(root)
    home_real = os.path.realpath(codex_home)
    layers = []
    for directory in _dirs_from(root, cwd):
        dot_codex = os.path.join(directory, ".codex")
        if not os.path.isdir(dot_codex):
            continue
        if dot_codex == codex_home or os.path.realpath(dot_codex) == home_real:
            continue
        trust = next(
            (trusted[k] for k in (*_lookup_keys(directory), *root_keys) if k in trusted), None
        )
        if trust != "trusted":
            continue
        table = _read_toml(os.path.join(dot_codex, CONFIG_FILE)) or {}
        for key in PROJECT_DENYLIST:
            table.pop(key, None)
        layers.append(Layer(f"project ({dot_codex}/{CONFIG_FILE})", dot_codex, table))
    return layers


def project_root(cwd: str, discovery: Table) -> str:
    """The nearest ancestor of ``cwd`` (itself included) holding a root marker, else ``cwd``."""
    markers = discovery.get("project_root_markers")
    if not isinstance(markers, list):
        markers = [".git"]
    markers = [m for m in markers if isinstance(m, str)]
    if not markers:
        return cwd
    directory = cwd
    while True:
        if any(_is_marker(os.path.join(directory, marker), marker) for marker in markers):
            return directory
        parent = os.path.dirname(directory)
        if parent == directory:
            return cwd
        directory = parent


def _is_marker(path: str, marker: str) -> bool:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    if marker == ".git" and stat.S_ISDIR(mode):  # an empty .git folder is not a repository
        return os.path.exists(os.path.join(path, "HEAD"))
    return True


def _dirs_from(root: str, cwd: str) -> list[str]:
    """``root``, then each directory down to ``cwd`` (only ``cwd`` if ``root`` is not above it)."""
    dirs = [cwd]
    while dirs[-1] != root:
        parent = os.path.dirname(dirs[-1])
        if parent == dirs[-1]:
            return [cwd]
        dirs.append(parent)
    return dirs[::-1]


def _trusted_projects(discovery: Table) -> dict[str, str]:
    projects = discovery.get("projects")
    if not isinstance(projects, dict):
        return {}
    return {
        key: value["trust_level"]
        for key, value in projects.items()
        if isinstance(value, dict) and isinstance(value.get("trust_level"), str)
    }


def _lookup_keys(directory: str) -> tuple[str, ...]:
    real = os.path.realpath(directory)
    return (real,) if real == directory else (real, directory)


# ---- reduction to the requested paths -------------------------------------------------------


def project(stack: LayerStack, paths: list[list[str]]) -> LayerStack:
    """Keep only the requested key paths of each layer and drop layers left empty; the cloud
    insertion index counts the surviving layers below it."""
    selector = _selector(paths)
    kept = LayerStack()
    for index, layer in enumerate(stack.layers):
        table = _select(layer.table, selector)
        if not table:
            continue
        if index < stack.cloud_insertion_index:
            kept.cloud_insertion_index += 1
        kept.layers.append(Layer(layer.source, layer.base_dir, table))
    return kept


_ALL: dict[str, Any] = {}
"""A selector leaf: the whole value below it is kept."""


def _selector(paths: list[list[str]]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for path in paths:
        node = root
        for depth, key in enumerate(path):
            child = node.get(key)
            if child is _ALL:
                break
            if depth == len(path) - 1:
                node[key] = _ALL
            else:
                node = node.setdefault(key, {})
    return root


def _select(table: Table, selector: dict[str, Any]) -> Table:
    selected: Table = {}
    for key, value in table.items():  # in the layer's own order, as the reference keeps it
        child = selector.get(key)
        if child is None:
            continue
        if child is _ALL or not isinstance(value, dict):
            selected[key] = value  # a non-table ancestor still overrides lower layers
        else:
            selected[key] = _select(value, child)
    return selected


def _wire(stack: LayerStack) -> EnvironmentConfigLayerStack:
    return EnvironmentConfigLayerStack(
        [
            EnvironmentConfigLayer(
                layer.source, to_file_uri(layer.base_dir), tomli_w.dumps(layer.table)
            )
            for layer in stack.layers
        ],
        stack.cloud_insertion_index,
    )
