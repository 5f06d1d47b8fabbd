"""``process/start.networkProxy``: the wire side of the managed network (``network/``).

Decodes the launch config into :class:`~..network.managed.ProxySettings` with the
reference's -32602 texts, sends each verdict of the proxy to the session's client as a
``network/policyDecision`` notification, and, when ``policyDecisionTimeoutMs`` is set, asks
that client about allow-list misses with ``network/policyRequest`` (a server request).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING

import msgspec

from ..errors import invalid_params
from ..network.managed import ManagedNetwork, ProxySettings
from ..network.policy import REASON_NOT_ALLOWED, Answer, Mode, NetworkPolicy, PatternError, Protocol
from ..network.proxy import Audit, AuditEvent, Decider
from ..protocol.process import (
    CredentialProviderConfig,
    NetworkPolicyDecision,
    PolicyRequestParams,
    PolicyRequestResult,
    PolicyRequestTarget,
    ProcessStartParams,
    policy_decision_notification,
)
from ..server_requests import ServerRequestError

if TYPE_CHECKING:
    from ..connection import Connection
    from ..network.providers import Provider


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
    providers = _custom_providers(proxy.credential_providers or {})
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
    timeout_ms = launch.policy_decision_timeout_ms
    decider = None if timeout_ms is None else _decider(connection, params.process_id, timeout_ms)
    settings = ProxySettings(
        policy,
        proxy.enable_socks5,
        proxy.allow_local_binding,
        socks5_udp=proxy.enable_socks5_udp,
        decider=decider,
        credential_masking=proxy.credential_masking,
        credential_providers=providers if proxy.credential_masking else (),
    )
    return ManagedNetwork(settings, _audit_sender(connection, params.process_id))


def _custom_providers(configs: Mapping[str, CredentialProviderConfig]) -> tuple[Provider, ...]:
    """``credentialProviders`` checked and compiled; a bad definition is -32602 with the
    reference's words (where the reference logs it and runs the command unmasked)."""
    from ..network.providers import PatternBudget, ProviderError, compile_provider

    budget = PatternBudget()
    providers: list[Provider] = []
    owners: dict[str, str] = {}
    for name, config in configs.items():
        try:
            provider = compile_provider(name, msgspec.structs.asdict(config), budget)
        except ProviderError as error:
            raise invalid_params(f"invalid network proxy config: {error}") from None
        for variable in provider.variables:
            other = owners.setdefault(variable, name)
            if other != name:
                raise invalid_params(
                    f"invalid network proxy config: credential provider `{name}` overlaps the "
                    f"environment source `{variable}` of credential provider `{other}`"
                )
        providers.append(provider)
    return tuple(providers)


MAX_REASON_BYTES = 1024
"""A decider's reason longer than this is cut (the reference's bound on ``reason``)."""


def _decider(connection: Connection, process_id: str, timeout_ms: int) -> Decider:
    """Asks the session's client with ``network/policyRequest``; no client, an error, an
    answer of the wrong shape, the cap of pending requests or the timeout: deny
    ``not_allowed``, as the reference."""
    session = connection.require_session()
    timeout_s = timeout_ms / 1000

    async def decide(protocol: Protocol, host: str, port: int) -> Answer:
        attached = session.connection
        if attached is None:
            return Answer("deny")
        target = PolicyRequestTarget(protocol.value, host, port)
        try:
            async with asyncio.timeout(timeout_s):
                raw = await attached.server_request(
                    "network/policyRequest", PolicyRequestParams(process_id, target)
                )
            decision = msgspec.json.decode(raw, type=PolicyRequestResult).decision
        except (TimeoutError, ServerRequestError, msgspec.MsgspecError):
            return Answer("deny")
        reason = (decision.reason or REASON_NOT_ALLOWED).encode()[:MAX_REASON_BYTES]
        return Answer(decision.type, reason.decode(errors="ignore"))

    return decide


def _audit_sender(connection: Connection, process_id: str) -> Audit:
    """Each verdict as a notification to the session's client; while that client is behind,
    the verdict waits for room (as a process's output does), so a child cannot fill the
    server's memory with notifications nobody reads."""
    session = connection.require_session()

    def send(event: AuditEvent) -> Awaitable[None] | None:
        attached = session.connection
        if attached is None:
            return None
        if attached.send_notification(policy_decision_notification(_wire(process_id, event))):
            return None
        return attached.wait_for_room()

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
