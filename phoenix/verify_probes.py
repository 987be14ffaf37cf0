"""The probes behind ``phoenix verify``: one function per kind of check, network I/O only.

Every probe takes a planned ``Check`` (where to connect, what to expect) and returns
``(ok, detail)``. Every socket operation is bounded by the run's timeout; bodies are read up
to a cap, so a slow or chatty peer cannot stall the run. Nothing here decides *what* to
check: that is ``phoenix.verify.plan_checks``, a pure function of the topology.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import socket
import ssl
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

#: a health answer bigger than this is cut; we only look at the status and the start of the body.
MAX_BODY = 64 * 1024
#: seconds to wait for an answer over UDP before asking again over TCP.
UDP_TRY = 1.0

Outcome = tuple[bool, str]


@dataclass
class Probes:
    """What every probe of one run shares: trust, credentials, limits."""
    timeout: float
    internal_networks: list[str]
    public_trust: ssl.SSLContext
    phoenix_trust: ssl.SSLContext
    root_given: bool = True   # False: the Phoenix checks fall back to the system store
    portainer_user: str = "admin"
    portainer_password: str | None = None
    portainer_api_key: str | None = None
    root_ca: str | None = None   # the Phoenix root's file (--root-ca), for chains read from files
    proxmox_token_file: str | None = None   # --proxmox-token-file (phoenix.verify_ha)
    _memo: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def context(self, trust: str | None) -> ssl.SSLContext | None:
        """``public``, ``phoenix``, or None for plain HTTP."""
        if trust is None:
            return None
        return {"public": self.public_trust, "phoenix": self.phoenix_trust}.get(trust)

    # -- shared -------------------------------------------------------------------------
    def _once(self, key, fn: Callable):
        """Run ``fn`` once per key for the whole run (Portainer's list serves every agent check)."""
        with self._lock:
            slot = self._memo.setdefault(key, {"lock": threading.Lock()})
        with slot["lock"]:
            if "value" not in slot:
                try:
                    slot["value"] = (True, fn())
                except Exception as err:
                    slot["value"] = (False, err)
        ok, value = slot["value"]
        if not ok:
            raise value
        return value

    def _in_internal(self, address: str) -> bool:
        ip = ipaddress.ip_address(address)
        return any(ip in ipaddress.ip_network(n) for n in self.internal_networks)

    # -- DNS ----------------------------------------------------------------------------
    def view_problem(self, check) -> str | None:
        """Would this query reach the view the check means? (None when it would.)"""
        source = check.source or source_toward(check.address, check.port)
        inside = self._in_internal(source)
        if check.check.startswith("dns/internal") and not inside:
            return (f"this query leaves from {source}, outside the internal networks "
                    f"({', '.join(self.internal_networks)}): the internal view would not answer it; "
                    "run from a guest or give --inside-source")
        if not check.check.startswith("dns/internal") and inside:
            return (f"this query leaves from {source}, inside the internal networks: the external view "
                    "would not answer it; give --outside-source")
        return None

    def dns_answer(self, check) -> Outcome:
        wrong_view = self.view_problem(check)
        if wrong_view:
            return False, wrong_view
        rcode, addresses = query_a(check.address, check.port, check.target, check.source, self.timeout)
        if check.check == "dns/external-nxdomain":
            if rcode == "NXDOMAIN":
                return True, f"-> NXDOMAIN from {check.address}"
            shown = ", ".join(addresses) or "no address"
            return False, f"{rcode} ({shown}) from {check.address}, expected NXDOMAIN: the name leaks outside"
        want = sorted(check.expect)
        if rcode != "NOERROR":
            return False, f"{rcode} from {check.address}, expected {', '.join(want)}"
        if sorted(set(addresses)) != want:
            return False, f"got {', '.join(sorted(set(addresses))) or 'no address'}, expected {', '.join(want)}"
        return True, f"-> {', '.join(want)}"

    # -- HTTPS --------------------------------------------------------------------------
    def https_health(self, check) -> Outcome:
        resp = https_request(check.address, check.port, check.server_name, check.host, check.path,
                             self.context(check.trust), self.timeout)
        where = f"{check.address}:{check.port}"
        if not 200 <= resp.status < 300:
            return False, f"HTTP {resp.status} for {check.path} from {where} ({resp.tls})"
        if check.expect:   # e.g. Step-CA's {"status": "ok"} or Traefik's "OK"
            text = resp.body.decode("utf-8", "replace").strip()
            if not any(e in text for e in check.expect):
                return False, f"HTTP {resp.status} but the body {text[:80]!r} lacks {check.expect[0]!r}"
        shown = resp.tls if resp.tls == "plain HTTP" else f"{resp.tls}, {resp.issuer}"
        return True, f"-> HTTP {resp.status} {check.path} via {where} ({shown})"

    def tls_refuses_old(self, check) -> Outcome:
        """A handshake that offers at most TLS 1.1 must fail, and the server must be the one refusing."""
        try:
            sock = socket.create_connection((check.address, check.port), timeout=self.timeout)
        except OSError as err:
            return False, f"cannot connect to {check.address}:{check.port}: {reason(err)}"
        with sock:
            try:
                with old_tls_client().wrap_socket(sock, server_hostname=check.server_name) as tls:
                    cipher = (tls.cipher() or ("?",))[0]      # None only before a handshake
                    return False, f"{check.address}:{check.port} accepted {tls.version()} ({cipher})"
            except ssl.SSLError as err:
                if err.reason in ("NO_PROTOCOLS_AVAILABLE", "NO_CIPHERS_AVAILABLE"):
                    return False, f"this machine's OpenSSL cannot offer TLS 1.1 ({err.reason}); not tested"
                return True, f"-> refused by {check.address}:{check.port} ({err.reason or err})"
            except ConnectionError as err:
                return True, f"-> refused by {check.address}:{check.port} (connection closed: {reason(err)})"
            except TimeoutError:
                return False, f"{check.address}:{check.port} did not answer a TLS 1.1 handshake in time"

    # -- Portainer ------------------------------------------------------------------------
    def portainer_agent(self, check) -> Outcome:
        environments = self._once(("portainer", check.address, check.port, check.host),
                                  lambda: self._portainer_environments(check))
        wanted = set(check.expect)
        for env in environments:
            if env.get("URL") in wanted:
                name, url, status = env.get("Name"), env.get("URL"), env.get("Status")
                if status == 1:
                    return True, f"-> environment {name!r} up ({url})"
                return False, f"environment {name!r} ({url}) is down (Portainer status {status})"
        known = ", ".join(f"{e.get('Name')}={e.get('URL')}" for e in environments) or "none"
        return False, f"Portainer has no environment for {' or '.join(sorted(wanted))} (it has: {known})"

    def _portainer_environments(self, check) -> list[dict]:
        ctx = self.context(check.trust)
        if self.portainer_api_key:
            headers = {"X-API-Key": self.portainer_api_key}
        else:
            login = json.dumps({"username": self.portainer_user, "password": self.portainer_password})
            resp = https_request(check.address, check.port, check.server_name, check.host, "/api/auth",
                                 ctx, self.timeout, method="POST", body=login.encode(),
                                 headers={"Content-Type": "application/json"})
            if resp.status != 200:
                raise ProbeError(f"Portainer login as {self.portainer_user!r} answered HTTP {resp.status}")
            headers = {"Authorization": f"Bearer {json.loads(resp.body)['jwt']}"}
        resp = https_request(check.address, check.port, check.server_name, check.host, check.path,
                             ctx, self.timeout, headers=headers)
        if resp.status != 200:
            raise ProbeError(f"GET {check.path} answered HTTP {resp.status}")
        return json.loads(resp.body)

    # -- PKI ------------------------------------------------------------------------------
    def root_fingerprint(self, check) -> Outcome:
        from phoenix.pki import fingerprint_sha256
        with open(check.target) as f:
            got = fingerprint_sha256(f.read())
        want = check.expect[0]
        if got != want:
            return False, f"the root's SHA-256 fingerprint is {got}, expected {want}"
        return True, f"-> sha256 {got}"


    def gateway_client_cert(self, check) -> Outcome:
        """The gateway's client certificate chain (leaf, then the gateway client CA): for the
        gateway's name, for client authentication, under the Phoenix root, and how long it has.
        Due (inside its early-renewal window) or expired is a failure: ``pulumi up`` re-issues it."""
        import datetime as dt

        from cryptography import x509
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        from phoenix.render.trust import GATEWAY_CLIENT_RENEW_HOURS
        with open(check.target, "rb") as f:
            chain = x509.load_pem_x509_certificates(f.read())
        leaf, issuers = chain[0], chain[1:]
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName)
        if names != list(check.expect):
            return False, f"it is for {', '.join(names) or 'no name'}, not the gateway ({check.expect[0]})"
        if ExtendedKeyUsageOID.CLIENT_AUTH not in leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value:
            return False, "it is not a client certificate (no clientAuth key usage)"
        if not issuers:
            return False, "the file holds the leaf alone; give the chain (leaf, then the gateway client CA)"
        leaf.verify_directly_issued_by(issuers[0])
        if self.root_ca:
            with open(self.root_ca, "rb") as f:
                issuers[0].verify_directly_issued_by(x509.load_pem_x509_certificate(f.read()))
        cn = issuers[0].subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ca = cn[0].value if cn and isinstance(cn[0].value, str) else "?"   # a CN is text
        now = dt.datetime.now(dt.UTC)
        end, due = leaf.not_valid_after_utc, leaf.not_valid_after_utc - dt.timedelta(hours=GATEWAY_CLIENT_RENEW_HOURS)
        when = f"expires {end:%Y-%m-%d %H:%M} UTC"
        if now >= end:
            return False, f"{when}: expired; the mesh refuses the gateway (run pulumi up: it re-issues it)"
        if now >= due:
            return False, (f"{when}, in {(end - now).days} days: due for renewal since {due:%Y-%m-%d} "
                           "(run pulumi up: it re-issues it and pushes it to the gateway)")
        return True, f"-> {names[0]}, signed by {ca}; {when}, in {(end - now).days} days (renewal due {due:%Y-%m-%d})"


    def ha_status(self, check):
        """Where Proxmox HA runs a guest, and whether the cluster is quorate (``phoenix.verify_ha``)."""
        from phoenix.verify_ha import ha_status
        return ha_status(self, check)

    def certificate_expiry(self, check):
        """A certificate's days left against the model's threshold (``phoenix.verify_expiry``)."""
        from phoenix.verify_expiry import certificate_expiry
        return certificate_expiry(self, check)


class ProbeError(Exception):
    """A probe's own finding (as opposed to a socket or TLS error)."""


@dataclass
class Response:
    status: int
    body: bytes
    tls: str
    issuer: str


def https_request(address: str, port: int, server_name: str | None, host: str, path: str,
                  context: ssl.SSLContext | None, timeout: float, method: str = "GET",
                  body: bytes | None = None, headers: dict | None = None) -> Response:
    """One request to ``address`` with ``Host: host``: over TLS with SNI and verification for
    ``server_name`` when a context is given, plain HTTP without one."""
    sock = socket.create_connection((address, port), timeout=timeout)
    try:
        tls = context.wrap_socket(sock, server_hostname=server_name) if context else sock
    except BaseException:
        sock.close()
        raise
    with tls:
        if isinstance(tls, ssl.SSLSocket):   # read now: the connection closes the socket once the response is in
            issuer: dict[str, str] = {}
            for rdn in (tls.getpeercert() or {}).get("issuer", ()):     # ((("commonName", "..."),), ...)
                first = rdn[0]
                if isinstance(first, tuple):
                    issuer[first[0]] = first[1]
            shown = (tls.version() or "?", f"issuer {issuer.get('commonName', '?')}")
        else:
            shown = ("plain HTTP", "no TLS")
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.sock = tls
        # What a browser sends: the port only when it is not HTTPS's own.
        sent = {"Host": host if port == 443 else f"{host}:{port}", "User-Agent": "phoenix-verify",
                "Connection": "close", **(headers or {})}
        conn.request(method, path, body=body, headers=sent)
        resp = conn.getresponse()
        data = resp.read(MAX_BODY)
        return Response(resp.status, data, *shown)


def query_a(server: str, port: int, name: str, source: str | None, timeout: float) -> tuple[str, list[str]]:
    """Ask ``server`` for ``name``'s A records, as a stub resolver would: (rcode, addresses)."""
    query = dns.message.make_query(name, "A")
    try:
        resp, _ = dns.query.udp_with_fallback(query, server, timeout=min(timeout, UDP_TRY), port=port,
                                              source=source)
    except dns.exception.Timeout:
        # Response rate limiting (the external view has it) drops some UDP answers to a burst
        # like ours and truncates others; TCP is never limited. A resolver would retry too.
        resp = dns.query.tcp(query, server, timeout=timeout, port=port, source=source)
    addresses = [rd.address for rrset in resp.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset]
    return dns.rcode.to_text(resp.rcode()), addresses


def source_toward(address: str, port: int) -> str:
    """The source address the OS would pick toward ``address`` (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((address, port))
        return s.getsockname()[0]


def old_tls_client() -> ssl.SSLContext:
    """A client that offers TLS 1.1 at most (OpenSSL 3 needs security level 0 to offer it at all)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE   # the handshake itself is what is tested, not the chain
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def trust_context(cafile: str | None, client_cert: str | None = None,
                  client_key: str | None = None) -> ssl.SSLContext:
    """Verify against ``cafile`` only (or the system store without one), TLS 1.2 at least."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if client_cert:
        ctx.load_cert_chain(client_cert, client_key)
    return ctx


def reason(err: BaseException) -> str:
    """A one-line reason for a probe's exception."""
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"certificate not trusted: {err.verify_message}"
    if isinstance(err, ssl.SSLError):
        return f"TLS handshake failed: {err.reason or err}"
    if isinstance(err, dns.exception.Timeout):
        return "no DNS answer in time"
    if isinstance(err, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    if isinstance(err, (json.JSONDecodeError, KeyError, TypeError)):
        return f"unexpected answer ({type(err).__name__}: {err})"
    return str(err) or type(err).__name__


__all__ = ["Probes", "ProbeError", "https_request", "query_a", "source_toward", "trust_context",
           "old_tls_client", "reason"]
