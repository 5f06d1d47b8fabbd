"""Wire types of ``capabilityRoots/discoverV1`` and ``capabilities/discoverV2`` (imported
with :mod:`..methods.capabilities`)."""

from __future__ import annotations

from typing import Any

from . import FsSandbox, _Params, _Wire

# ---- capabilityRoots/discoverV1 (codex 0.169; gated by capabilityDiscoverySandbox) ---------


class CapabilityRootRequest(_Wire, kw_only=True):
    id: str
    path: str
    sandbox: FsSandbox = None


class CapabilityRootsDiscoverParams(_Params):
    roots: list[CapabilityRootRequest]


class CapabilityTextFile(_Wire):
    path: str
    contents: str


class DiscoveredPluginFiles(_Wire):
    manifest: CapabilityTextFile
    mcp_config: CapabilityTextFile | None
    apps_config: CapabilityTextFile | None


class DiscoveredSkillFiles(_Wire):
    instructions: CapabilityTextFile
    metadata: CapabilityTextFile | None


class CapabilityRootDiscovery(_Wire):
    id: str
    path: str
    plugin: DiscoveredPluginFiles | None
    skills: list[DiscoveredSkillFiles]
    namespace_manifests: list[CapabilityTextFile]
    warnings: list[str]
    error: str | None


class CapabilityRootsDiscoverResult(_Wire):
    roots: list[CapabilityRootDiscovery]


# ---- capabilities/discoverV2 (codex 0.169; gated by capabilityDiscoveryV2) ------------------


class DiscoverV2Params(_Params):
    cwd: str
    sandbox: FsSandbox = None


class SkillDiscoveryRoot(_Wire):
    id: str
    path: str


class ExecutorPluginSkill(_Wire):
    name: str
    description: str
    short_description: str | None
    path: str
    dependencies: dict[str, Any] | None
    policy: dict[str, Any] | None


class ExecutorSkill(_Wire):
    name: str
    description: str
    short_description: str | None
    path: str
    discovery_root: SkillDiscoveryRoot
    dependencies: dict[str, Any] | None
    policy: dict[str, Any] | None


class ExecutorPlugin(_Wire):
    id: str
    display_name: str
    remote_plugin_id: str | None
    version: str
    root: str
    files: DiscoveredPluginFiles
    skills: list[ExecutorPluginSkill]


class DiscoverV2Result(_Wire):
    plugins: list[ExecutorPlugin]
    skills: list[ExecutorSkill]
    warnings: list[str]
