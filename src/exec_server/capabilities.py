"""``environmentInfo.capabilities``: the optional codex 0.169 features this server offers.

A client sends a newer request, or a newer field of an older one, only when the matching
flag is true (a missing flag counts as false), so a flag is true here only for what is
implemented. ``docs/codex-0.169-methods.md`` says what each flag gates and why it is off.
"""

from __future__ import annotations

import os
import sys


def _has_inotify() -> bool:
    """Linux with inotify (its limits are in procfs); checked without loading libc."""
    return sys.platform.startswith("linux") and os.path.isdir("/proc/sys/fs/inotify")


def capabilities() -> dict[str, bool]:
    """All fifteen flags the 0.169 reference announces, in its order."""
    return {
        "networkProxyLaunch": True,  # process/start networkProxy: network/ (needs bubblewrap)
        "networkProxyReviewDomains": True,  # network/policyRequest: a server request
        "credentialMasking": True,  # networkProxy.proxy.credentialMasking: network/credentials.py
        "credentialMaskingCustomProviders": False,
        "capabilityDiscoverySandbox": False,  # capabilities/discoverV2 is not served
        "fsWatchMissing": _has_inotify(),  # fs/watchMissing + fs/missingChanged
        "capabilityDiscoveryV2": False,  # capabilities/discoverV2 is not served
        "environmentConfigRead": True,  # environmentConfig/read
        "httpHeaderEnvVars": False,  # http/request header values from executor env vars
        "sandboxedFileStreaming": True,  # fs/open honours the sandbox profile it carries
        "fileWriteStreaming": True,  # fs/open mode "replace" and fs/writeBlock
        "shellSnapshotV2": False,  # process/start shellSnapshot
        "windowsMxc": False,  # Windows only
        "linuxRootWritePreservesDevices": False,  # these two describe a Linux sandbox
        "linuxApprovedRootWritePreservesRestrictions": False,
    }
