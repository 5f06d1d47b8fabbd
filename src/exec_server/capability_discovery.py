"""``capabilityRoots/discoverV1``: the files that make a capability root's plugin and skills,
read in one pass on the executor (codex 0.169; codex parses them itself).

Per root, as the reference does it (``tests/data/discover_v1_reference.json``):

- The root must be a directory (else the root's ``error``; other roots go on).
- It is walked (:mod:`.fs.walk`: depth 6, 2 000 directories, 20 000 entries, directory
  symlinks followed, hidden directories walked); walk errors and a cut-short walk become
  ``warnings``.
- The plugin manifest is the first of ``.codex-plugin/plugin.json``,
  ``.claude-plugin/plugin.json``, ``.cursor-plugin/plugin.json`` at the root. With one, the
  plugin's MCP file (declared ``mcpServers: "./..."`` below the root, none when declared
  inline, else ``.mcp.json``) and apps file (declared ``apps: "./..."``) are read too.
- ``namespaceManifests``: the root's manifest, else the nearest ancestor's, then one manifest
  per other plugin folder the walk found, ordered by folder, then by the order above.
- ``skills``: every ``SKILL.md`` the walk found, in URI order, each with the
  ``agents/openai.yaml`` beside it when there is one.
- A file is read only if it is a regular file of at most 1 MiB, UTF-8, within 16 MiB read
  for the root so far; anything else is a warning (a missing file is silently absent).

Under a sandbox profile every look and read goes through the same guarded paths as
``fs/*`` (:mod:`.fs.sandboxed`). Blocking: run on a worker thread.
"""

from __future__ import annotations

import errno
import json
import posixpath
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import RpcError, invalid_request
from .fs import operations as ops
from .fs import sandboxed
from .fs.walk import WalkOptions, WalkOutcome, walk, walk_under_policy
from .paths import parse_path, to_file_uri

if TYPE_CHECKING:
    from .sandbox.policy import Policy

MAX_ROOTS = 128
MAX_FILE_BYTES = 1024 * 1024
MAX_BUNDLE_BYTES = 16 * 1024 * 1024
SCAN = WalkOptions(
    max_depth=6,
    max_directories=2_000,
    max_entries=20_000,
    follow_directory_symlinks=True,
    prune_hidden_directories=False,
)
"""The reference's per-root bounds (its ``capability_discovery.rs``)."""

MANIFEST_PATHS = (
    ".codex-plugin/plugin.json",
    ".claude-plugin/plugin.json",
    ".cursor-plugin/plugin.json",
)
MANIFEST_FOLDERS = tuple(posixpath.dirname(path) for path in MANIFEST_PATHS)
SKILL_FILE = "SKILL.md"
SKILL_METADATA = "agents/openai.yaml"
DEFAULT_MCP_CONFIG = ".mcp.json"


@dataclass(frozen=True, slots=True)
class TextFile:
    path: str
    contents: str


@dataclass(frozen=True, slots=True)
class PluginFiles:
    manifest: TextFile
    mcp_config: TextFile | None
    apps_config: TextFile | None


@dataclass(frozen=True, slots=True)
class SkillFiles:
    instructions: TextFile
    metadata: TextFile | None


@dataclass(slots=True)
class RootDiscovery:
    """What one root holds; ``path`` is the root's ``file://`` URI."""

    id: str
    path: str
    plugin: PluginFiles | None = None
    skills: list[SkillFiles] = field(default_factory=list)
    namespace_manifests: list[TextFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


def check_root_count(count: int) -> None:
    if count > MAX_ROOTS:
        raise invalid_request(f"capability root discovery accepts at most {MAX_ROOTS} roots")


def discover(root_id: str, root: str, policy: Policy | None) -> RootDiscovery:
    """Discover one root (a normalised absolute path) under ``policy`` (None: unsandboxed)."""
    return _Discovery(Disk(policy), root_id, root).run()


@dataclass(frozen=True, slots=True)
class Disk:
    """The three filesystem operations discovery needs, plain or under a policy (the
    guarded ``fs/*`` paths, :mod:`.fs.sandboxed`)."""

    policy: Policy | None

    def metadata(self, path: str) -> ops.Metadata:
        if self.policy is None:
            return ops.get_metadata(path)
        return sandboxed.get_metadata(self.policy, path)

    def read(self, path: str, limit: int) -> bytes:
        if self.policy is None:
            return ops.read_file(path, limit)
        return sandboxed.read_file(self.policy, path, limit)

    def walk(self, path: str, options: WalkOptions = SCAN) -> WalkOutcome:
        if self.policy is None:
            return walk(path, options)
        return walk_under_policy(self.policy, path, options)


class _Discovery:
    def __init__(self, disk: Disk, root_id: str, root: str) -> None:
        self.disk = disk
        self.root = root
        self.uri = to_file_uri(root)
        self.result = RootDiscovery(root_id, self.uri)
        self.bundle_bytes = 0

    def run(self) -> RootDiscovery:
        result = self.result
        try:
            is_directory = self.disk.metadata(self.root).is_directory
        except OSError as exc:
            result.error = f"failed to inspect capability root {self.uri}: {_reason(exc)}"
            return result
        if not is_directory:
            result.error = f"capability root {self.uri} is not a directory"
            return result
        try:
            outcome = self.disk.walk(self.root)
        except OSError as exc:
            result.error = f"failed to scan capability root {self.uri}: {_reason(exc)}"
            return result
        result.warnings += [
            f"failed to scan capability path {path}: {message}" for path, message in outcome.errors
        ]
        if outcome.truncated:
            result.warnings.append(
                f"capability scan reached its traversal limit (root: {self.uri})"
            )
        files = [parse_path(uri, "path") for uri, kind in outcome.entries if kind == "file"]
        skills = sorted((p for p in files if posixpath.basename(p) == SKILL_FILE), key=to_file_uri)
        manifests = sorted(
            (p for p in files if _manifest_rank(p) is not None),
            key=lambda p: (to_file_uri(_plugin_folder(p)), _manifest_rank(p)),
        )
        root_manifest = self._first_manifest(self.root)
        self._namespaces(root_manifest, manifests)
        if root_manifest is not None:
            result.plugin = self._plugin(root_manifest)
        for skill in skills:
            instructions = self._read(skill)
            if instructions is not None:
                metadata = self._read(posixpath.join(posixpath.dirname(skill), SKILL_METADATA))
                result.skills.append(SkillFiles(instructions, metadata))
        return result

    def _first_manifest(self, folder: str) -> TextFile | None:
        for relative in MANIFEST_PATHS:
            found = self._read(posixpath.join(folder, relative))
            if found is not None:
                return found
        return None

    def _namespaces(self, root_manifest: TextFile | None, manifests: list[str]) -> None:
        """The root's (or nearest ancestor's) manifest, then one per other plugin folder."""
        inherited = root_manifest
        ancestor = self.root
        while inherited is None and ancestor != "/":
            ancestor = posixpath.dirname(ancestor)
            inherited = self._first_manifest(ancestor)
        seen: set[str] = set()
        if inherited is not None:
            seen.add(_plugin_folder(parse_path(inherited.path, "path")))
            self.result.namespace_manifests.append(inherited)
        for manifest in manifests:
            folder = _plugin_folder(manifest)
            if folder in seen:
                continue
            seen.add(folder)
            found = self._read(manifest)
            if found is not None:
                self.result.namespace_manifests.append(found)

    def _plugin(self, manifest: TextFile) -> PluginFiles:
        mcp_inline, mcp_path, apps_path = self._declarations(manifest)
        if mcp_path is None and not mcp_inline:
            mcp_path = posixpath.join(self.root, DEFAULT_MCP_CONFIG)
        mcp = self._read(mcp_path) if mcp_path is not None else None
        apps = self._read(apps_path) if apps_path is not None else None
        return PluginFiles(manifest, mcp, apps)

    def _declarations(self, manifest: TextFile) -> tuple[bool, str | None, str | None]:
        """(MCP servers declared inline, declared MCP file, declared apps file); a manifest
        that is not a JSON object declares nothing."""
        try:
            declared: Any = json.loads(manifest.contents)
        except ValueError:
            return False, None, None
        if not isinstance(declared, dict):
            return False, None, None
        mcp = declared.get("mcpServers")
        apps = declared.get("apps")
        return (
            isinstance(mcp, dict),
            self._declared_file("mcpServers", mcp, manifest.path),
            self._declared_file("apps", apps, manifest.path),
        )

    def _declared_file(self, name: str, value: object, manifest: str) -> str | None:
        if not isinstance(value, str):
            return None
        if not value.startswith("./"):
            self.result.warnings.append(f"ignoring {name} in {manifest}: path must start with `./`")
            return None
        relative = value[2:]
        parts = relative.replace("\\", "/").split("/")
        if not relative or ".." in parts:
            self.result.warnings.append(
                f"ignoring {name} in {manifest}: path must remain below the capability root"
            )
            return None
        return posixpath.join(self.root, relative)

    def _read(self, path: str) -> TextFile | None:
        """A capability file's text, or None (absent silently, refused with a warning)."""
        uri = to_file_uri(path)
        warnings = self.result.warnings
        try:
            metadata = self.disk.metadata(path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                warnings.append(f"failed to inspect capability file {uri}: {_reason(exc)}")
            return None
        if not metadata.is_file:
            return None
        if metadata.size > MAX_FILE_BYTES:
            warnings.append(f"capability file {uri} exceeds the {MAX_FILE_BYTES}-byte limit")
            return None
        if self.bundle_bytes + metadata.size > MAX_BUNDLE_BYTES:
            warnings.append(f"capability root bundle exceeds the {MAX_BUNDLE_BYTES}-byte limit")
            return None
        limit = min(MAX_FILE_BYTES, MAX_BUNDLE_BYTES - self.bundle_bytes)
        try:
            data = self.disk.read(path, limit)
        except OSError as exc:
            warnings.append(f"failed to read capability file {uri}: {_reason(exc)}")
            return None
        except RpcError:  # it grew past the limit since it was looked at
            warnings.append(f"capability file {uri} exceeded its read limit")
            return None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            warnings.append(f"capability file {uri} is not UTF-8: {_utf8_error(exc)}")
            return None
        self.bundle_bytes += len(data)
        return TextFile(uri, text)


def _manifest_rank(path: str) -> int | None:
    """Where a ``<folder>/plugin.json`` stands in :data:`MANIFEST_PATHS`, or None."""
    if posixpath.basename(path) != "plugin.json":
        return None
    folder = posixpath.basename(posixpath.dirname(path))
    return MANIFEST_FOLDERS.index(folder) if folder in MANIFEST_FOLDERS else None


def _plugin_folder(manifest: str) -> str:
    return posixpath.dirname(posixpath.dirname(manifest))


def _reason(exc: OSError) -> str:
    return f"{exc.strerror or 'error'} (os error {exc.errno})"


def _utf8_error(exc: UnicodeDecodeError) -> str:
    """The text Rust gives for the same bad bytes (``String::from_utf8``'s error)."""
    if exc.reason == "unexpected end of data":
        return f"incomplete utf-8 byte sequence from index {exc.start}"
    return f"invalid utf-8 sequence of {exc.end - exc.start} bytes from index {exc.start}"
