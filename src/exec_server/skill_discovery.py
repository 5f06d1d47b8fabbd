"""``capabilities/discoverV2``: the skills and plugins installed on the executor, parsed as
codex 0.169 parses them (probed on the reference's binary; ``tests/data/discover_v2_reference.json``).

Skill roots, in this order: ``codex-home-skills`` (``$CODEX_HOME/skills``, else
``~/.codex/skills``) and ``user-agent-skills`` (``$HOME/.agents/skills``); a repository's
``.agents/skills`` is not one (codex reads those itself through ``fs/walk``). Each root is
walked as ``capabilityRoots/discoverV1`` walks (depth 6, hidden folders and directory
symlinks followed) and every ``SKILL.md`` found is parsed, in path order:

- YAML front matter between a first line ``---`` and the next ``---`` line; ``name`` (else
  the folder's name, at most 64 characters) and ``description`` (required, at most 1 024)
  with runs of whitespace made one space; ``metadata.short-description`` the short one.
- ``agents/openai.yaml`` beside it gives ``dependencies.tools`` and ``policy``; one that
  cannot be parsed gives neither, silently.
- A skill that cannot be parsed (no front matter, no description, too long) is left out;
  each root (and each plugin) with one or more such skills adds one warning ``some capability metadata could not be loaded; discovery
  may be incomplete``.

Plugins: ``$CODEX_HOME/plugins/cache/<marketplace>/<plugin>/<version>/``, the version folder
``local`` if there is one, else the greatest name that is not a semantic version, else the
greatest semantic version. Its files are read as
``capabilityRoots/discoverV1`` reads a root (manifest, MCP and apps files, every
``SKILL.md``); a folder without a manifest, or with one that is not a JSON object, is left
out with the warning above. ``id`` is ``<plugin>@<marketplace>``; skill names are
``<manifest name>:<skill name>``. Plugins come sorted by ``id``.

Blocking: run on a worker thread.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .capability_discovery import Disk, PluginFiles, RootDiscovery, discover
from .fs.walk import WalkOptions
from .paths import to_file_uri

if TYPE_CHECKING:
    from .sandbox.policy import Policy

INCOMPLETE = "some capability metadata could not be loaded; discovery may be incomplete"
MAX_NAME = 64
MAX_DESCRIPTION = 1024
SKILL_FILE = "SKILL.md"
SKILL_METADATA = "agents/openai.yaml"
TOOL_FIELDS = ("type", "value", "description", "transport", "command", "url")


@dataclass(frozen=True, slots=True)
class Skill:
    """A parsed skill; ``root`` is ``(id, uri)`` of its discovery root, None in a plugin."""

    name: str
    description: str
    short_description: str | None
    path: str
    root: tuple[str, str] | None
    dependencies: dict[str, Any] | None
    policy: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Plugin:
    id: str
    display_name: str
    version: str
    root: str
    files: PluginFiles
    skills: list[Skill]


@dataclass(slots=True)
class Discovered:
    plugins: list[Plugin] = field(default_factory=list)
    skills: list[Skill] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def discover_v2(env: Mapping[str, str], policy: Policy | None) -> Discovered:
    """The executor's skills and plugins (``env``: the server's own environment)."""
    found = Discovered()
    codex_home = _codex_home(env)
    home = env.get("HOME") or None
    roots = []
    if codex_home is not None:
        roots.append(("codex-home-skills", posixpath.join(codex_home, "skills")))
    if home is not None:
        roots.append(("user-agent-skills", posixpath.join(home, ".agents", "skills")))
    for root_id, root in roots:
        _skill_root(found, root_id, root, policy)
    if codex_home is not None:
        _plugins(found, posixpath.join(codex_home, "plugins", "cache"), policy)
    return found


def _codex_home(env: Mapping[str, str]) -> str | None:
    configured = env.get("CODEX_HOME", "")
    if configured:
        return os.path.realpath(configured)
    home = env.get("HOME")
    return posixpath.join(home, ".codex") if home else None


def _skill_root(found: Discovered, root_id: str, root: str, policy: Policy | None) -> None:
    discovery = discover(root_id, root, policy)
    if discovery.error is not None:
        return  # a root that is not there holds no skills
    failed = False
    for files in discovery.skills:
        skill = parse_skill(
            files.instructions.path,
            files.instructions.contents,
            None if files.metadata is None else files.metadata.contents,
            (root_id, discovery.path),
        )
        if skill is None:
            failed = True
        else:
            found.skills.append(skill)
    failed = failed or _unread_skills(discovery)
    if failed:
        found.warnings.append(INCOMPLETE)


def _unread_skills(discovery: RootDiscovery) -> bool:
    """Whether a ``SKILL.md`` was found but could not be read (too big, not UTF-8, ...)."""
    return any(SKILL_FILE in warning for warning in discovery.warnings)


def _plugins(found: Discovered, cache: str, policy: Policy | None) -> None:
    plugins: list[Plugin] = []
    for marketplace in _folders(cache, policy):
        for name in _folders(posixpath.join(cache, marketplace), policy):
            versions = _folders(posixpath.join(cache, marketplace, name), policy)
            if not versions:
                continue
            version = max(versions, key=_version_rank)
            root = posixpath.join(cache, marketplace, name, version)
            plugin = _plugin(f"{name}@{marketplace}", version, root, policy)
            if plugin is None:
                found.warnings.append(INCOMPLETE)
                continue
            plugin_obj, failed = plugin
            plugins.append(plugin_obj)
            if failed:
                found.warnings.append(INCOMPLETE)
    found.plugins = sorted(plugins, key=lambda plugin: plugin.id)


_SEMVER = re.compile(r"(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?")


def _version_rank(name: str) -> tuple[Any, ...]:
    """How the reference picks a plugin's version folder (probed): ``local``, else any name
    that is not a semantic version (the greatest), else the greatest semantic version."""
    if name == "local":
        return (2,)
    found = _SEMVER.fullmatch(name)
    if found is None:
        return (1, name)
    major, minor, patch, pre = found.groups()
    return (0, int(major), int(minor), int(patch), pre is None, pre or "")


def _folders(path: str, policy: Policy | None) -> list[str]:
    """The names of the directories in ``path`` (none when it cannot be listed)."""
    options = WalkOptions(0, 1, 50_000, True, False)
    try:
        outcome = Disk(policy).walk(path, options)
    except OSError:
        return []
    prefix = to_file_uri(path).rstrip("/") + "/"
    return [_decoded(uri[len(prefix) :]) for uri, kind in outcome.entries if kind == "directory"]


def _decoded(encoded: str) -> str:
    from urllib.parse import unquote

    return unquote(encoded)


def _plugin(
    plugin_id: str, version: str, root: str, policy: Policy | None
) -> tuple[Plugin, bool] | None:
    discovery = discover(plugin_id, root, policy)
    files = discovery.plugin
    if files is None:
        return None
    try:
        manifest: Any = json.loads(files.manifest.contents)
    except ValueError:
        return None
    if not isinstance(manifest, dict):
        return None
    name = manifest.get("name") if isinstance(manifest.get("name"), str) else None
    interface = manifest.get("interface")
    display = interface.get("displayName") if isinstance(interface, dict) else None
    prefix = name or posixpath.basename(root)
    failed = _unread_skills(discovery)
    skills = []
    for skill_files in discovery.skills:
        skill = parse_skill(
            skill_files.instructions.path,
            skill_files.instructions.contents,
            None if skill_files.metadata is None else skill_files.metadata.contents,
            None,
        )
        if skill is None:
            failed = True
            continue
        skills.append(
            Skill(
                f"{prefix}:{skill.name}",
                skill.description,
                skill.short_description,
                skill.path,
                None,
                skill.dependencies,
                skill.policy,
            )
        )
    display_name = display if isinstance(display, str) else prefix
    return Plugin(plugin_id, display_name, version, discovery.path, files, skills), failed


def parse_skill(
    uri: str, contents: str, metadata: str | None, root: tuple[str, str] | None
) -> Skill | None:
    """A ``SKILL.md`` (at ``uri``) as codex reads it, or None when codex would refuse it."""
    front = _front_matter(contents)
    if front is None:
        return None
    parsed = _yaml(front)
    if not isinstance(parsed, dict):
        return None
    folder = posixpath.basename(posixpath.dirname(uri))
    raw_name = parsed.get("name")
    if raw_name is None:
        raw_name = _decoded(folder)
    raw_description = parsed.get("description")
    if not isinstance(raw_name, str) or not isinstance(raw_description, str):
        return None
    name, description = _one_line(raw_name), _one_line(raw_description)
    if not name or not description or len(name) > MAX_NAME or len(description) > MAX_DESCRIPTION:
        return None
    extra = parsed.get("metadata")
    short = extra.get("short-description") if isinstance(extra, dict) else None
    short_description = _one_line(short) if isinstance(short, str) and short.strip() else None
    dependencies, policy = _openai_yaml(metadata)
    return Skill(name, description, short_description, uri, root, dependencies, policy)


def _front_matter(contents: str) -> str | None:
    lines = contents.split("\n")
    if contents.endswith("\n"):
        lines.pop()
    lines = [line.removesuffix("\r") for line in lines]
    if not lines or lines[0].strip() != "---":
        return None
    for index, line in enumerate(lines[1:], start=1):
        if line.strip() == "---":
            body = lines[1:index]
            return "\n".join(body) if body else None
    return None


def _yaml(text: str) -> object:
    import yaml  # on first use: only discovery needs it

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _openai_yaml(text: str | None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """``dependencies`` and ``policy`` from ``agents/openai.yaml`` (None each when absent or
    when the file cannot be parsed)."""
    if text is None:
        return None, None
    parsed = _yaml(text)
    if not isinstance(parsed, dict):
        return None, None
    dependencies = None
    raw = parsed.get("dependencies")
    if isinstance(raw, dict):
        tools = raw.get("tools")
        dependencies = {
            "tools": [_tool(tool) for tool in tools if isinstance(tool, dict)]
            if isinstance(tools, list)
            else []
        }
    policy = None
    raw_policy = parsed.get("policy")
    if isinstance(raw_policy, dict):
        allow = raw_policy.get("allow_implicit_invocation")
        products = raw_policy.get("products")
        policy = {
            "allowImplicitInvocation": allow if isinstance(allow, bool) else None,
            "products": [p for p in products if isinstance(p, str)]
            if isinstance(products, list)
            else [],
        }
    return dependencies, policy


def _tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {name: tool.get(name) for name in TOOL_FIELDS}
    port = tool.get("oauth_callback_port", tool.get("oauthCallbackPort"))
    found["oauthCallbackPort"] = port if isinstance(port, int) else None
    return found
