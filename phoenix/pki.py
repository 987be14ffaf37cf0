"""PKI facts and key formats computed from the program's own keys (pure, no Pulumi).

* the root fingerprint clients bootstrap with;
* Step-CA's authority policy (the name constraints pulumi-tls cannot write into the
  intermediate) and the matching rule it applies, so the model can refuse a domain the CA
  would never issue for;
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
    """Step-CA's DNS rule (Go's x509 name-constraint match): ``*.d`` or ``.d`` permits names
    strictly below ``d``; a bare ``d`` permits ``d`` and every name below it."""
    name, constraint = name.lower().rstrip("."), constraint.lower()
    if constraint.startswith("*."):
        constraint = constraint[1:]
    if constraint.startswith("."):
        return name.endswith(constraint) and len(name) > len(constraint)
    return name == constraint or name.endswith("." + constraint)


def ca_policy(lab, topo) -> dict:
    """``authority.policy``: DNS names in the allowed domains, IPs in the lab network.

    ``localhost`` and 127.0.0.1 are allowed too because they are SANs of the CA's own
    certificate (its local health check uses them): depending on the release, Step-CA runs
    its own TLS certificate through the same policy and would refuse to start otherwise.
    """
    domains = lab.pki.allowed_domains or [lab.domains.internal]
    dns = [f"*.{d}" for d in domains]
    ips = [str(lab.network.cidr)]
    for san in topo.ca_sans:
        try:
            addr = ipaddress.ip_address(san)
        except ValueError:
            if not any(domain_permitted(san, c) for c in dns):
                dns.append(san)
            continue
        if not any(addr in ipaddress.ip_network(n) for n in ips):
            ips.append(f"{addr}/{addr.max_prefixlen}")
    return {"x509": {"allow": {"dns": dns, "ip": ips}, "allowWildcardNames": False}}


def policy_permits(policy: dict, name: str) -> bool:
    allow = policy["x509"]["allow"]
    try:
        addr = ipaddress.ip_address(name)
    except ValueError:
        return any(domain_permitted(name, c) for c in allow.get("dns", []))
    return any(addr in ipaddress.ip_network(n) for n in allow.get("ip", []))


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


# -- what a real deployment needs that a plan does not ----------------------------------------
def deploy_problems(lab) -> list[str]:
    """Pins the install step refuses to run without (a plan shows the refusal instead)."""
    from .errors import problem
    pki, out = lab.pki, []
    if not pki.step_ca_sha256:
        out.append(problem("phoenix:pki.stepCaSha256",
                           f"required to install step-ca {pki.step_ca_version}: the sha256 of its amd64 .deb "
                           "from the release's checksums.txt (Phoenix never guesses a checksum)"))
    if not pki.step_cli_sha256:
        out.append(problem("phoenix:pki.stepCliSha256",
                           f"required to install step-cli {pki.step_cli_version}: the sha256 of its amd64 .deb "
                           "from the release's checksums.txt"))
    return out
