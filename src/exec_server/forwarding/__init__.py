"""Port forwarding: TCP streams the server opens for a client, to a host:port reached from
the server's machine.

:mod:`.dial` makes the connection under the operator's rules (``--confine`` with its network
restricted refuses, ``--http-deny`` networks are never connected to); :mod:`.streams` carries
the bytes both ways under credit-based flow control. Neither knows JSON-RPC:
``methods/forward.py`` maps them to the wire. ``docs/forwarding.md`` describes the protocol.
"""
