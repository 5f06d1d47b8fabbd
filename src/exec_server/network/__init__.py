"""Managed networking: a per-process egress proxy (HTTP and SOCKS5) with a domain policy and
audit events, enforced by giving the child a network namespace where only its proxy is
reachable. Knows nothing of JSON-RPC: ``methods/process.py`` maps it to the wire."""
