"""``capabilityRoots/discoverV1``: the plugin and skill files below capability roots, read on
the executor (:mod:`..capability_discovery`), each root under its own sandbox profile
narrowed by the server's ``--confine``; ``capabilities/discoverV2``: the executor's own
skills and plugins (:mod:`..skill_discovery`), under the request's profile."""

from __future__ import annotations

import os
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from ..errors import invalid_params
from ..paths import parse_path
from ..protocol.discovery import (
    CapabilityRootDiscovery,
    CapabilityRootsDiscoverParams,
    CapabilityRootsDiscoverResult,
    CapabilityTextFile,
    DiscoveredPluginFiles,
    DiscoveredSkillFiles,
    DiscoverV2Params,
    DiscoverV2Result,
    ExecutorPlugin,
    ExecutorPluginSkill,
    ExecutorSkill,
    SkillDiscoveryRoot,
)
from . import method
from .fs import _reply, _submit, fs_call_policy

if TYPE_CHECKING:
    from ..capability_discovery import PluginFiles, RootDiscovery, TextFile
    from ..connection import Connection
    from ..skill_discovery import Discovered


CAPABILITY_DISCOVERY = "capability discovery"
"""The family these methods belong to in the handshake's refusals (the reference's name)."""


@method("capabilityRoots/discoverV1", CapabilityRootsDiscoverParams, CAPABILITY_DISCOVERY)
def discover_roots(
    connection: Connection, params: CapabilityRootsDiscoverParams
) -> Awaitable[CapabilityRootsDiscoverResult]:
    """Every root's files, in request order; more than 128 roots is -32600, a bad path or
    profile -32602 (nothing read); a root that cannot be read is that root's ``error``."""
    from .. import capability_discovery as discovery
    from ..sandbox.profile import ProfileError, parse_sandbox

    discovery.check_root_count(len(params.roots))
    roots = []
    for root in params.roots:
        try:
            profile = parse_sandbox(root.sandbox, "roots.sandbox")
        except ProfileError as error:
            raise invalid_params(error.message) from None
        roots.append((root.id, parse_path(root.path, "roots.path"), profile))
    guards = connection.server.guards

    def work() -> list[RootDiscovery]:
        return [
            discovery.discover(root_id, path, fs_call_policy(profile, guards))
            for root_id, path, profile in roots
        ]

    return _reply(_submit(work), _result)


def _text(found: TextFile | None) -> CapabilityTextFile | None:
    return None if found is None else CapabilityTextFile(found.path, found.contents)


def _result(found: list[RootDiscovery]) -> CapabilityRootsDiscoverResult:
    roots = []
    for root in found:
        plugin = root.plugin
        roots.append(
            CapabilityRootDiscovery(
                id=root.id,
                path=root.path,
                plugin=None
                if plugin is None
                else DiscoveredPluginFiles(
                    CapabilityTextFile(plugin.manifest.path, plugin.manifest.contents),
                    _text(plugin.mcp_config),
                    _text(plugin.apps_config),
                ),
                skills=[
                    DiscoveredSkillFiles(
                        CapabilityTextFile(s.instructions.path, s.instructions.contents),
                        _text(s.metadata),
                    )
                    for s in root.skills
                ],
                namespace_manifests=[
                    CapabilityTextFile(m.path, m.contents) for m in root.namespace_manifests
                ],
                warnings=root.warnings,
                error=root.error,
            )
        )
    return CapabilityRootsDiscoverResult(roots)


@method("capabilities/discoverV2", DiscoverV2Params, CAPABILITY_DISCOVERY)
def discover_v2(connection: Connection, params: DiscoverV2Params) -> Awaitable[DiscoverV2Result]:
    """The skills and plugins installed for the server's user; a bad ``cwd`` or profile is
    -32602, and whatever cannot be read is left out with a warning."""
    from ..sandbox.profile import ProfileError, parse_sandbox
    from ..skill_discovery import discover_v2 as discover

    parse_path(params.cwd, "cwd")
    try:
        profile = parse_sandbox(params.sandbox)
    except ProfileError as error:
        raise invalid_params(error.message) from None
    guards = connection.server.guards
    environment = dict(os.environ)

    def work() -> Discovered:
        return discover(environment, fs_call_policy(profile, guards))

    return _reply(_submit(work), _v2_result)


def _plugin_files(files: PluginFiles) -> DiscoveredPluginFiles:
    manifest = CapabilityTextFile(files.manifest.path, files.manifest.contents)
    return DiscoveredPluginFiles(manifest, _text(files.mcp_config), _text(files.apps_config))


def _v2_result(found: Discovered) -> DiscoverV2Result:
    skills = [
        ExecutorSkill(
            s.name,
            s.description,
            s.short_description,
            s.path,
            SkillDiscoveryRoot(*s.root) if s.root is not None else SkillDiscoveryRoot("", ""),
            s.dependencies,
            s.policy,
        )
        for s in found.skills
    ]
    plugins = [
        ExecutorPlugin(
            p.id,
            p.display_name,
            None,
            p.version,
            p.root,
            _plugin_files(p.files),
            [
                ExecutorPluginSkill(
                    s.name, s.description, s.short_description, s.path, s.dependencies, s.policy
                )
                for s in p.skills
            ],
        )
        for p in found.plugins
    ]
    return DiscoverV2Result(plugins, skills, found.warnings)
