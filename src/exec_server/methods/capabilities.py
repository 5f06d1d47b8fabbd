"""``capabilityRoots/discoverV1``: the plugin and skill files below capability roots, read on
the executor (:mod:`..capability_discovery`), each root under its own sandbox profile
narrowed by the server's ``--confine``."""

from __future__ import annotations

import os
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from ..errors import invalid_params
from ..paths import parse_path
from ..protocol import (
    CapabilityRootDiscovery,
    CapabilityRootsDiscoverParams,
    CapabilityRootsDiscoverResult,
    CapabilityTextFile,
    DiscoveredPluginFiles,
    DiscoveredSkillFiles,
)
from . import method
from .fs import FILESYSTEM, _reply, _submit

if TYPE_CHECKING:
    from ..capability_discovery import RootDiscovery, TextFile
    from ..connection import Connection
    from ..sandbox.policy import Confinement, Policy
    from ..sandbox.profile import SandboxRequest


@method("capabilityRoots/discoverV1", CapabilityRootsDiscoverParams, FILESYSTEM)
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
    confinement = connection.server.guards.confinement

    def work() -> list[RootDiscovery]:
        return [
            discovery.discover(root_id, path, _policy(profile, confinement))
            for root_id, path, profile in roots
        ]

    return _reply(_submit(work), _result)


def _policy(profile: SandboxRequest | None, confinement: Confinement | None) -> Policy | None:
    """The policy a root is read under (None: no restriction), as for every ``fs/*`` read."""
    if profile is None and confinement is None:
        return None
    from ..sandbox.enforce import fs_policy

    policy = fs_policy(profile, confinement, os.getcwd())
    return policy if policy is not None and policy.restricts_filesystem else None


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
