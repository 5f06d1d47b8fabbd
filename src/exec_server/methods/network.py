"""``process/start.networkProxy``: the wire side of the managed network (``network/``).

Decodes the launch config into :class:`~..network.managed.ProxySettings` with the
reference's -32602 texts, and sends each verdict of the proxy to the session's client as a
``network/policyDecision`` notification.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import invalid_params
from ..network.managed import ManagedNetwork, ProxySettings
from ..network.policy import Mode, NetworkPolicy, PatternError
from ..network.proxy import Audit, AuditEvent
from ..protocol import NetworkPolicyDecision, ProcessStartParams, policy_decision_notification

if TYPE_CHECKING:
    from ..connection import Connection


def requested_network(connection: Connection, params: ProcessStartParams) -> ManagedNetwork | None:
    """The managed network this start asks for (None: none), or -32602 saying why not."""
    launch = params.network_proxy
    if params.managed_network is not None and launch is not None:
        raise invalid_params(
            "`managedNetwork` sandbox facts and `networkProxy` launch config are mutually exclusive"
        )
    if launch is None:
        if params.enforce_managed_network or params.managed_network is not None:
            raise invalid_params(
                "a managed network hosted by the client (`managedNetwork`, or "
                "`enforceManagedNetwork` without `networkProxy`) is not supported: send "
                "`networkProxy` to have this executor run the proxy"
            )
        return None
    proxy = launch.proxy
    if not proxy.enabled:
        raise invalid_params(
            "invalid network proxy config: executor-local network proxy launch requires an "
            "enabled proxy"
        )
    if launch.policy_decision_timeout_ms == 0:
        raise invalid_params("network policy decision callback timeout must be nonzero")
    if proxy.credential_masking:
        raise invalid_params(
            "credential masking is not supported by this executor (credentialMasking is false)"
        )
    confinement = connection.server.guards.confinement
    if confinement is not None and not confinement.allows_network:
        raise invalid_params(
            "cannot start a managed network proxy: the server's confinement (--confine) "
            "allows no network"
        )
    try:
        policy = NetworkPolicy.from_domains(
            proxy.domains,
            Mode(proxy.mode),
            proxy.allow_local_binding,
            review=proxy.review_domains or (),
        )
    except PatternError as error:
        raise invalid_params(f"invalid network proxy config: {error}") from None
    settings = ProxySettings(policy, proxy.enable_socks5, proxy.allow_local_binding)
    return ManagedNetwork(settings, _audit_sender(connection, params.process_id))


def _audit_sender(connection: Connection, process_id: str) -> Audit:
    session = connection.require_session()

    def send(event: AuditEvent) -> None:
        attached = session.connection
        if attached is not None:
            attached.send_notification(policy_decision_notification(_wire(process_id, event)))

    return send


def _wire(process_id: str, event: AuditEvent) -> NetworkPolicyDecision:
    return NetworkPolicyDecision(
        process_id=process_id,
        timestamp=event.timestamp,
        scope=event.scope,
        decision=event.decision,
        source=event.source,
        reason=event.reason,
        protocol=event.protocol,
        host=event.host,
        port=event.port,
        method=event.method,
        client=event.client,
        policy_override=event.policy_override,
    )
