"""Looking inside a CONNECT tunnel to a host a masked credential is for (issue 18 C).

The server makes one CA per run (``cryptography``; the key never leaves this process's
private directory) and, per host, a leaf certificate it signs, cached. The child trusts the
CA through a bundle (the system roots plus this CA) that the CA variables point at. In the
tunnel the proxy ends the child's TLS, reads one request, swaps a dummy bearer for the real
credential (:meth:`~.credentials.MaskedEnvironment.rewrite`), and sends the request on
over its own TLS connection to the checked address, verifying the origin against the system
roots (or the operator's ``EXEC_SERVER_PROXY_UPSTREAM_CA``); the answer comes back as it is,
and the tunnel ends with it (``Connection: close``).

TLS runs on the raw sockets through ``ssl.SSLObject`` and memory BIOs (no transports).
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import functools
import ipaddress
import os
import socket
import ssl
import tempfile
import threading
from pathlib import Path
from typing import Any

import h11

from . import pump
from .credentials import MaskedEnvironment

UPSTREAM_CA_ENV = "EXEC_SERVER_PROXY_UPSTREAM_CA"
"""The operator's CA file for the origins the proxy talks TLS to (default: the system's)."""

CA_ENV_KEYS = (
    "BUNDLE_SSL_CA_CERT",
    "CARGO_HTTP_CAINFO",
    "CODEX_CA_CERTIFICATE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "NODE_EXTRA_CA_CERTS",
    "NPM_CONFIG_CAFILE",
    "PIP_CERT",
    "REQUESTS_CA_BUNDLE",
    "SSL_CERT_FILE",
)
"""The variables the 0.169 reference points at its bundle with credential masking on
(recorded from `codex exec`)."""

MAX_LEAF_CONTEXTS = 256
"""Leaf certificates kept, least recently used out: a masked provider's destination may be
a wildcard (``*.ghe.com``), so the hosts a child can name are not bounded by the policy."""

_READ = 64 * 1024
_lock = threading.Lock()
_authority: _Authority | None = None


class _Authority:
    """This run's CA and the leaf certificates it signed (their TLS contexts, per host)."""

    def __init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self._x509, self._hashes, self._ec, self._oid = x509, hashes, ec, NameOID
        self._serialization = serialization
        self.directory = Path(tempfile.mkdtemp(prefix="exec-server-mitm-"))
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "exec-server network proxy CA")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)
        self._contexts: collections.OrderedDict[str, ssl.SSLContext] = collections.OrderedDict()
        self._leaves_made = 0

    def context_for(self, host: str) -> ssl.SSLContext:
        """A server-side TLS context presenting a leaf certificate for ``host``."""
        with _lock:
            context = self._contexts.get(host)
            if context is None:
                context = self._contexts[host] = self._leaf_context(host)
                if len(self._contexts) > MAX_LEAF_CONTEXTS:
                    self._contexts.popitem(last=False)
            else:
                self._contexts.move_to_end(host)
            return context

    def _leaf_context(self, host: str) -> ssl.SSLContext:
        x509, ec, ser = self._x509, self._ec, self._serialization
        key = ec.generate_private_key(ec.SECP256R1())
        try:
            alt: Any = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            alt = x509.DNSName(host)
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(self._oid.COMMON_NAME, host[:64])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, self._hashes.SHA256())
        )
        self._leaves_made += 1
        stem = self.directory / f"leaf-{self._leaves_made}"
        key_path, cert_path = stem.with_suffix(".key"), stem.with_suffix(".pem")
        key_pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
        key_path.write_bytes(key_pem)
        os.chmod(key_path, 0o600)
        cert_path.write_bytes(cert.public_bytes(ser.Encoding.PEM) + self.pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(cert_path, key_path)
        finally:  # loaded: no key stays on disk (a child's profile may read /tmp)
            key_path.unlink(missing_ok=True)
            cert_path.unlink(missing_ok=True)
        return context


def authority() -> _Authority:
    """This run's CA (made on first use)."""
    global _authority
    with _lock:
        if _authority is None:
            _authority = _Authority()
        return _authority


def write_bundle(path: str) -> None:
    """The system's roots and this run's CA, in one PEM file the child can read."""
    system = ssl.get_default_verify_paths().cafile
    roots = b""
    if system:
        try:
            roots = Path(system).read_bytes()
        except OSError:
            roots = b""
    Path(path).write_bytes(roots.rstrip(b"\n") + b"\n" + authority().pem)
    os.chmod(path, 0o644)


def upstream_context() -> ssl.SSLContext:
    """How the proxy checks the origins it talks TLS to: one context per operator CA file,
    shared by every connection (building one reads the system's roots: tens of
    milliseconds of the event loop)."""
    return _upstream_context(os.environ.get(UPSTREAM_CA_ENV) or None)


@functools.lru_cache(maxsize=4)
def _upstream_context(extra: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if extra:
        context.load_verify_locations(cafile=extra)
    return context


class TlsStream:
    """TLS over a non-blocking socket, driven by the event loop through memory BIOs."""

    def __init__(
        self,
        sock: socket.socket,
        tls: ssl.SSLObject,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
    ) -> None:
        self._sock = sock
        self._tls = tls
        self._in = incoming
        self._out = outgoing

    @classmethod
    def wrap(
        cls, sock: socket.socket, context: ssl.SSLContext, *, server_hostname: str | None
    ) -> TlsStream:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        server_side = server_hostname is None
        tls = context.wrap_bio(
            incoming, outgoing, server_side=server_side, server_hostname=server_hostname
        )
        return cls(sock, tls, incoming, outgoing)

    async def _flush(self) -> None:
        data = self._out.read()
        if data:
            await pump.send(self._sock, data)

    async def _fill(self) -> bool:
        data = await pump.recv(self._sock, _READ)
        if not data:
            self._in.write_eof()
            return False
        self._in.write(data)
        return True

    async def handshake(self) -> None:
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill():
                    raise EOFError("the TLS handshake was cut short") from None
        await self._flush()

    async def recv(self) -> bytes:
        """Some plaintext; ``b""`` at the end."""
        while True:
            try:
                return self._tls.read(_READ)
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill():
                    return b""
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""

    async def send(self, data: bytes) -> None:
        if data:
            self._tls.write(data)
            await self._flush()

    async def close(self) -> None:
        with contextlib.suppress(ssl.SSLError, ValueError):
            self._tls.unwrap()
        with contextlib.suppress(OSError):
            await self._flush()


async def intercept(
    conn: socket.socket, upstream: socket.socket, host: str, port: int, masked: MaskedEnvironment
) -> None:
    """The tunnel to ``host:port`` (already connected as ``upstream``), looked into: one
    request, its dummies swapped for the real credentials (:meth:`~.credentials.
    MaskedEnvironment.rewrite`), its answer passed back."""
    inside = TlsStream.wrap(conn, authority().context_for(host), server_hostname=None)
    await inside.handshake()
    outside = TlsStream.wrap(upstream, upstream_context(), server_hostname=host)
    await outside.handshake()
    parser = h11.Connection(h11.SERVER)
    outgoing = h11.Connection(h11.CLIENT)
    request = await _next(parser, inside)
    if not isinstance(request, h11.Request):
        return
    kept = [
        (name, value)
        for name, value in request.headers
        if name.lower() not in (b"connection", b"keep-alive", b"proxy-connection")
    ]
    headers = masked.rewrite("https", host, port, request.target, kept)
    headers.append((b"connection", b"close"))
    head = h11.Request(method=request.method, target=request.target, headers=headers)
    await outside.send(outgoing.send(head) or b"")
    while True:
        event = await _next(parser, inside)
        if isinstance(event, h11.Data):
            await outside.send(outgoing.send(h11.Data(data=event.data)) or b"")
        elif isinstance(event, h11.EndOfMessage):
            await outside.send(outgoing.send(h11.EndOfMessage()) or b"")
            break
        else:
            return
    while data := await outside.recv():
        await inside.send(data)
    await inside.close()


async def _next(parser: h11.Connection, stream: TlsStream) -> object:
    while True:
        event = parser.next_event()
        if event is not h11.NEED_DATA:
            return event
        parser.receive_data(await stream.recv())
