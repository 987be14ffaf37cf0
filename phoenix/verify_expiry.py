"""``phoenix verify``'s certificate report: every certificate it meets, and how many days it has left.

Planned like every other check (``certificate_checks``, a pure function of the topology and the
command line): the public certificate of each public name (at the public address, by SNI), the
mesh's certificate for each internal name and its own, Step-CA's TLS certificate and the
intermediate it sends with it, the gateway's client certificate and its CA (from
``--gateway-client-cert``), and the Phoenix root (from ``--root-ca``). Each is one ``cert/<kind>``
line; ``phoenix verify`` prints them last, sorted by days left, and ``--format json`` gives the
number as ``days``.

A certificate fails when it has less than ``resilience.certificateMinDays`` left (14 by default),
or, when it lives shorter than four times that, less than a quarter of its lifetime: a Step-CA
leaf of 24 hours renews with 8 hours left (every hour), so 6 hours left means renewals failed.

Reading the chain. Python's ssl module (before 3.13) gives a client the peer's leaf only, and a
TLS 1.3 server sends its certificates encrypted. The probe therefore shakes hands in TLS 1.2,
where the server's Certificate message is plaintext, and reads the chain from the bytes it
received (RFC 5246 7.4.2). It verifies nothing: an expired or untrusted certificate must still be
reported with its date (the other checks say whether a chain is trusted). A server that refuses
TLS 1.2 is asked again with any version, for its leaf only.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.x509.oid import NameOID

from phoenix.verify_checks import HTTPS_PORT, Check, VerifyOptions

if TYPE_CHECKING:
    from phoenix.topology import Topology

#: every kind of certificate check, in the order they are planned.
KINDS = ("cert/public", "cert/internal", "cert/intermediate", "cert/client", "cert/client-ca", "cert/root")
#: the share of a certificate's lifetime below which a short-lived one fails (see above).
LIFETIME_SHARE = 4
_HANDSHAKE, _CHANGE_CIPHER_SPEC, _ALERT = 22, 20, 21
_CERTIFICATE = 11


def is_certificate_check(check: str) -> bool:
    return check.startswith("cert/")


def certificate_checks(topo: Topology, options: VerifyOptions = VerifyOptions()) -> list[Check]:
    lab = topo.lab
    limit = (str(lab.resilience.certificate_min_days),)
    public = str(lab.network.public_address)
    mesh_at, ca_at = str(topo.mesh.address), str(topo.ca.address)
    out = [Check("cert/public", host, public, HTTPS_PORT, limit, server_name=host) for host in topo.public_hosts]
    internal = topo.entrypoints["internal"].port
    for s in lab.services:
        out += [Check("cert/internal", name, mesh_at, internal, limit, server_name=name)
                for name in topo.service_names(s)]
    # the mesh's own certificate, on the gateway's entrypoint (it asks for a client certificate
    # after sending its own, so the chain is read before the handshake would fail)
    out.append(Check("cert/internal", topo.mesh_name, mesh_at, topo.entrypoints["gateway"].port, limit,
                     server_name=topo.mesh_name))
    out.append(Check("cert/internal", topo.ca_name, ca_at, lab.pki.ca_port, limit, server_name=topo.ca_name))
    out.append(Check("cert/intermediate", topo.ca_name, ca_at, lab.pki.ca_port, limit, server_name=topo.ca_name))
    if options.gateway_client_cert:
        out += [Check("cert/client", options.gateway_client_cert, expect=limit),
                Check("cert/client-ca", options.gateway_client_cert, expect=limit)]
    if options.root_ca:
        out.append(Check("cert/root", options.root_ca, expect=limit))
    return out


# -- reading certificates ---------------------------------------------------------------------
def certificates_in(received: bytes) -> list[x509.Certificate]:
    """The server's Certificate message among TLS 1.2 records as received (empty if none)."""
    handshake, at = bytearray(), 0
    while at + 5 <= len(received):
        kind, length = received[at], int.from_bytes(received[at + 3:at + 5], "big")
        fragment = received[at + 5:at + 5 + length]
        at += 5 + length
        if kind == _CHANGE_CIPHER_SPEC:
            break                   # what follows is encrypted
        if kind == _HANDSHAKE:
            handshake += fragment
    at = 0
    while at + 4 <= len(handshake):
        kind, length = handshake[at], int.from_bytes(handshake[at + 1:at + 4], "big")
        body = bytes(handshake[at + 4:at + 4 + length])
        at += 4 + length
        if kind != _CERTIFICATE or len(body) < length:
            continue
        certs, pos, end = [], 3, 3 + int.from_bytes(body[:3], "big")
        while pos + 3 <= end:
            size = int.from_bytes(body[pos:pos + 3], "big")
            certs.append(x509.load_der_x509_certificate(body[pos + 3:pos + 3 + size]))
            pos += 3 + size
        return certs
    return []


def _unverified(maximum: ssl.TLSVersion | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE   # report, never judge trust here
    if maximum is not None:
        ctx.minimum_version = ctx.maximum_version = maximum
    return ctx


def served_chain(address: str, port: int, server_name: str | None, timeout: float) -> list[x509.Certificate]:
    """The certificates the server sends for ``server_name``, leaf first."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = _unverified(ssl.TLSVersion.TLSv1_2).wrap_bio(incoming, outgoing, server_hostname=server_name)
    received = bytearray()
    with socket.create_connection((address, port), timeout=timeout) as sock:
        try:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    if outgoing.pending:
                        sock.sendall(outgoing.read())
                    data = sock.recv(65536)
                    if not data:
                        break
                    received += data
                    incoming.write(data)
            if outgoing.pending:
                sock.sendall(outgoing.read())
        except ssl.SSLError:
            pass    # no TLS 1.2, or it wants a client certificate (after sending its own): judged below
    found = certificates_in(bytes(received))
    if found:
        return found
    with socket.create_connection((address, port), timeout=timeout) as sock, \
            _unverified(None).wrap_socket(sock, server_hostname=server_name) as tls13:
        der = tls13.getpeercert(binary_form=True)
    return [x509.load_der_x509_certificate(der)] if der else []


def _name(cert: x509.Certificate) -> str:
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if cn:
        return str(cn[0].value)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return ", ".join(names.get_values_for_type(x509.DNSName)) or "?"
    except x509.ExtensionNotFound:
        return "?"


def _issuer(cert: x509.Certificate) -> str:
    cn = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cn[0].value) if cn else "?"


# -- judging one -------------------------------------------------------------------------------
def expiry(cert: x509.Certificate, min_days: int, now: dt.datetime | None = None) -> tuple[bool, str, float]:
    """(ok, detail, days left) for one certificate against the model's threshold."""
    now = now or dt.datetime.now(dt.UTC)
    end, lifetime = cert.not_valid_after_utc, cert.not_valid_after_utc - cert.not_valid_before_utc
    left = end - now
    days = round(left.total_seconds() / 86400, 2)
    by_days = dt.timedelta(days=min_days)
    share = lifetime / LIFETIME_SHARE
    limit, why = (by_days, f"{min_days} days (resilience.certificateMinDays)") if share >= by_days else (
        share, f"a quarter of its {_span(lifetime)} lifetime, {_span(share)}")
    what = f"{_name(cert)}, issued by {_issuer(cert)}; until {end:%Y-%m-%d %H:%M} UTC"
    if left <= dt.timedelta(0):
        return False, f"expired {_span(-left)} ago ({what})", days
    if left < limit:
        return False, f"{_span(left)} left, below {why} ({what})", days
    return True, f"-> {days:.2f} days left ({what})", days


def _span(delta: dt.timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:.1f} hours" if hours < 48 else f"{hours / 24:.1f} days"


def certificate_expiry(probes, check: Check) -> tuple[bool, str, float | None]:
    """The probe of a ``cert/*`` check (``Probes.certificate_expiry`` delegates here)."""
    if check.address:
        chain = served_chain(check.address, check.port, check.server_name, probes.timeout)
    else:
        with open(check.target, "rb") as f:
            chain = x509.load_pem_x509_certificates(f.read())
    index = 1 if check.check in ("cert/intermediate", "cert/client-ca") else 0
    if len(chain) <= index:
        where = f"{check.address}:{check.port}" if check.address else check.target
        return False, (f"{where} has no certificate at position {index + 1} of its chain "
                       f"({len(chain)} found; the issuer must be sent with the leaf)"), None
    return expiry(chain[index], int(check.expect[0]))
