"""PKI facts and key formats computed from the program's own keys (pure, no Pulumi).

* the root fingerprint clients bootstrap with;
* Step-CA's authority policy (the name constraints pulumi-tls cannot write into the
  intermediate): exactly the names the lab requests, and the matching rule the CA applies, so
  the model can refuse a request the CA would never issue;
* the JWK provisioner's key as Step-CA lists it, and its private half as the JWE Step-CA
  hands to clients (``encryptedKey``), *deterministic* for the same key and password (salt,
  content key and IV derived from them): a re-run of the program produces the same bytes,
  so the CA's config step changes only when a key or password really changes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_wrap
from cryptography.hazmat.primitives.serialization import Encoding

#: PBKDF2 rounds of the provisioner JWE (step's own default; clients decrypt it once per token).
KDF_ROUNDS = 100_000


def fingerprint_sha256(cert_pem: str) -> str:
    """The root fingerprint as ``step ca bootstrap --fingerprint`` wants it: hex of SHA-256 over DER."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


# -- Step-CA's authority policy ----------------------------------------------------------------
def domain_permitted(name: str, constraint: str) -> bool:
    """Step-CA's DNS rule, as the pinned release (0.28) applies ``authority.policy``
    (policy/options.go ``normalizeAndValidateDNSDomainConstraint``, policy/validate.go
    ``matchDomainConstraint``): ``*.d`` permits a name exactly ONE label below ``d`` (not ``d``,
    not deeper: ``a.b.d`` is refused); a bare ``d`` permits ``d`` alone. A literal wildcard name
    (``*.x``) is never permitted (the policy sets ``allowWildcardNames: false``)."""
    name, constraint = name.lower(), constraint.strip().lower()
    if name.startswith("*") or not name or name.endswith("."):
        return False
    if constraint.startswith("*."):
        suffix = constraint[1:]
        return name.endswith(suffix) and len(name) > len(suffix) and "." not in name[:-len(suffix)]
    return name == constraint


def policy_names(topo) -> list[str]:
    """Every name any guest of the lab asks Step-CA for (``Topology.step_ca_names``), sorted."""
    return sorted({n for names in topo.step_ca_names.values() for n in names})


def ca_policy(lab, topo) -> dict:
    """``authority.policy``: exactly the names the lab requests (the mesh's own name and every
    service's names, each other ACME client's guest name), nothing else: no other DNS name, no
    address, no wildcard. A new service or replica changes the policy with the catalog.

    The policy gates what the CA signs for clients (ACME orders, JWK tokens), not the CA's own
    TLS certificate, which the intermediate's name constraints gate instead (0.20 to the pinned
    0.28.1: authority/tls.go ``GetTLSCertificate``): its names (``localhost`` and 127.0.0.1 for
    the local health check among them) stay out of it, so no client can be issued them.
    ``lab.pki.allowedDomains`` bounds these names (``outside_allowed_domains``).
    """
    return {"x509": {"allow": {"dns": policy_names(topo)}, "allowWildcardNames": False}}


def outside_allowed_domains(lab, names) -> list[str]:
    """The names Step-CA may not issue under ``pki.allowedDomains`` (one label below one of
    them; the internal domain by default)."""
    domains = lab.pki.allowed_domains or [lab.domains.internal]
    return [n for n in names if not any(domain_permitted(n, f"*.{d}") for d in domains)]


def policy_permits(policy: dict, name: str) -> bool:
    return policy_matcher(policy)(name)


def policy_matcher(policy: dict):
    """``policy_permits`` for one policy, answering each name by lookup (``domain_permitted``'s
    rule: an exact constraint, or a ``*.d`` one label above the name), for audits of many names."""
    allow = policy["x509"]["allow"]
    constraints = {c.strip().lower() for c in allow.get("dns", [])}
    networks = [ipaddress.ip_network(n) for n in allow.get("ip", [])]

    def permits(name: str) -> bool:
        try:
            addr = ipaddress.ip_address(name)
        except ValueError:
            lowered = name.lower()
            parent = lowered.partition(".")[2]
            return any(c in constraints and domain_permitted(name, c) for c in (lowered, f"*.{parent}"))
        return any(addr in net for net in networks)
    return permits


def _derived(password: str, label: bytes, material: bytes, size: int) -> bytes:
    """Per-key, per-password salt/IV material: stable across runs, unique per key and password."""
    return hashlib.shake_256(hmac.new(password.encode(), label + material, hashlib.sha256).digest()).digest(size)


# -- the JWK provisioner's key -----------------------------------------------------------------
def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def jwk_pair(key_pem: str) -> tuple[dict, dict]:
    """(public JWK, private JWK) of a P-256 key as Step-CA lists it: ``kid`` is the RFC 7638 thumbprint."""
    key = serialization.load_pem_private_key(key_pem.encode(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError("the JWK provisioner key must be ECDSA P-256")
    numbers = key.private_numbers()
    x = b64url(numbers.public_numbers.x.to_bytes(32, "big"))
    y = b64url(numbers.public_numbers.y.to_bytes(32, "big"))
    canonical = json.dumps({"crv": "P-256", "kty": "EC", "x": x, "y": y}, separators=(",", ":"), sort_keys=True)
    kid = b64url(hashlib.sha256(canonical.encode()).digest())
    public = {"use": "sig", "kty": "EC", "kid": kid, "crv": "P-256", "alg": "ES256", "x": x, "y": y}
    return public, {**public, "d": b64url(numbers.private_value.to_bytes(32, "big"))}


def encrypted_jwk(private_jwk: dict, password: str, rounds: int = KDF_ROUNDS) -> str:
    """The provisioner's ``encryptedKey``: a compact JWE (PBES2-HS256+A128KW, A256GCM) of the
    private JWK under the provisioner password, as ``step ca provisioner add`` makes it.

    Step-CA hands it to any client that asks (``/provisioners``); only the password opens it."""
    payload = json.dumps(private_jwk, separators=(",", ":")).encode()
    material = _derived(password, b"phoenix-jwe", payload, 16 + 32 + 12)
    p2s, cek, iv = material[:16], material[16:48], material[48:]
    alg = "PBES2-HS256+A128KW"
    header = {"alg": alg, "cty": "jwk+json", "enc": "A256GCM", "p2c": rounds, "p2s": b64url(p2s)}
    protected = b64url(json.dumps(header, separators=(",", ":")).encode())
    kek = hashlib.pbkdf2_hmac("sha256", password.encode(), alg.encode() + b"\x00" + p2s, rounds, 16)
    sealed = AESGCM(cek).encrypt(iv, payload, protected.encode())
    ciphertext, tag = sealed[:-16], sealed[-16:]
    return ".".join([protected, b64url(aes_key_wrap(kek, cek)), b64url(iv), b64url(ciphertext), b64url(tag)])

