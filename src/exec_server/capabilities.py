"""``environmentInfo.capabilities``: the optional codex 0.169 features this server offers.

A client sends a newer request, or a newer field of an older one, only when the matching
flag is true (a missing flag counts as false), so a flag is true here only for what is
implemented. ``docs/codex-0.169-methods.md`` says what each flag gates and why it is off.
"""

from __future__ import annotations

import os
import sys

EXECUTOR_VERSION = "0.169.0"
"""``environmentInfo.executorVersion``: the reference release whose protocol this server
speaks, not the package's own version (``exec-server --version``). codex 0.169 gates some
requests on it besides the flags: probed, it sends no ``capabilities/discoverV2`` to an
executor that reports 0.1.0, and does to one reporting 0.168.0 or later."""


def _has_inotify() -> bool:
    """Linux with inotify (its limits are in procfs); checked without loading libc."""
    return sys.platform.startswith("linux") and os.path.isdir("/proc/sys/fs/inotify")


def _has_bwrap() -> bool:
    """Linux with a bubblewrap binary (the sandbox these flags describe); whether it can
    run here is probed at the first sandboxed request, which is refused if it cannot."""
    from .sandbox.locate import find_bwrap

    return sys.platform.startswith("linux") and find_bwrap() is not None


def capabilities() -> dict[str, bool]:
    """All fifteen flags the 0.169 reference announces, in its order."""
    return {
        "networkProxyLaunch": True,  # process/start networkProxy: network/ (needs bubblewrap)
        "networkProxyReviewDomains": True,  # network/policyRequest: a server request
        "credentialMasking": True,  # networkProxy.proxy.credentialMasking: network/credentials.py
        "credentialMaskingCustomProviders": True,  # credentialProviders: network/providers.py
        "capabilityDiscoverySandbox": True,  # capabilityRoots/discoverV1 under each root's profile
        "fsWatchMissing": _has_inotify(),  # fs/watchMissing + fs/missingChanged
        "capabilityDiscoveryV2": True,  # capabilities/discoverV2: the executor's skills, plugins
        "environmentConfigRead": True,  # environmentConfig/read
        "httpHeaderEnvVars": True,  # http/request header values from executor env vars
        "sandboxedFileStreaming": True,  # fs/open honours the sandbox profile it carries
        "fileWriteStreaming": True,  # fs/open mode "replace" and fs/writeBlock
        "shellSnapshotV2": True,  # process/start shellSnapshot: bash, zsh, sh
        "windowsMxc": False,  # Windows only
        "linuxRootWritePreservesDevices": _has_bwrap(),  # a fresh /dev under a writable /
        "linuxApprovedRootWritePreservesRestrictions": _has_bwrap(),  # denials and .git kept
    }
