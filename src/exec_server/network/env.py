"""The variables that point a proxied child's tools at its proxies (the reference's set)."""

from __future__ import annotations

_HTTP_KEYS = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "WS_PROXY",
    "WSS_PROXY",
    "http_proxy",
    "https_proxy",
    "ws_proxy",
    "wss_proxy",
    "NPM_CONFIG_PROXY",
    "NPM_CONFIG_HTTP_PROXY",
    "NPM_CONFIG_HTTPS_PROXY",
    "npm_config_proxy",
    "npm_config_http_proxy",
    "npm_config_https_proxy",
    "YARN_HTTP_PROXY",
    "YARN_HTTPS_PROXY",
    "BUNDLE_HTTP_PROXY",
    "BUNDLE_HTTPS_PROXY",
    "DOCKER_HTTP_PROXY",
    "DOCKER_HTTPS_PROXY",
    "PIP_PROXY",
)
_SOCKS_KEYS = ("ALL_PROXY", "FTP_PROXY", "all_proxy", "ftp_proxy")
_EMPTY_KEYS = (
    "NO_PROXY",
    "no_proxy",
    "NPM_CONFIG_NOPROXY",
    "npm_config_noproxy",
    "BUNDLE_NO_PROXY",
)
"""Cleared: nothing bypasses the proxy (inside the sandbox nothing else is reachable)."""

LOOPBACK = "127.0.0.1"


def proxy_environment(
    http_port: int, socks_port: int | None, allow_local_binding: bool
) -> dict[str, str]:
    """The variables to add to the child's environment (they replace the request's own)."""
    http = f"http://{LOOPBACK}:{http_port}"
    env = dict.fromkeys(_HTTP_KEYS, http)
    if socks_port is not None:
        env.update(dict.fromkeys(_SOCKS_KEYS, f"socks5h://{LOOPBACK}:{socks_port}"))
    env.update(dict.fromkeys(_EMPTY_KEYS, ""))
    env["ELECTRON_GET_USE_PROXY"] = "true"
    env["NODE_USE_ENV_PROXY"] = "1"
    env["CODEX_NETWORK_PROXY_ACTIVE"] = "1"
    env["CODEX_NETWORK_ALLOW_LOCAL_BINDING"] = "1" if allow_local_binding else "0"
    return env
