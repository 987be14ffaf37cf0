"""Outputs the recording engine gives resources that compute something.

pulumi-tls: real keys and certificates that honour the inputs (algorithm, subject, SANs,
CA flag, path length, key usages, validity). pulumi-random: real random values. Remote
commands that read a fact from a node (marked ``# phoenix-fact: NAME``) answer from
``facts``. Everything else echoes its inputs, as Pulumi's own mocks do.

Guests (ContainerLegacy, VmLegacy) get the MAC address Proxmox generates for each network
interface at create time (the provider reads it back: ``mac_address`` is Optional+Computed). A
fact ``rebuilt:<guest>`` (a count) plays a guest rebuilt outside Pulumi that a refresh then reads:
it has a new MAC address. A fact ``replaced:<name>`` (a count) plays `pulumi up --replace` of a
pulumi-random or pulumi-tls resource: new values.

Values are deterministic for the same stack, resource and inputs (keys derived from a seed,
ECDSA signed deterministically, validity starting at the current UTC day), so two plans of
the same config are byte-identical and a plan diff shows only what really changed, as
Pulumi's state keeps generated values stable between runs.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import random
import re
import string

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from phoenix import resource_types as t
from phoenix.render.workloads import DRIVER_FACT

DEFAULT_FACTS = {
    # What `nvidia-smi --query-gpu=driver_version` prints on a node, for planning.
    DRIVER_FACT: "550.127.05",
}
FACT = re.compile(r"#\s*phoenix-fact:\s*([\w-]+)")

_CURVES = {"P224": ec.SECP224R1(), "P256": ec.SECP256R1(), "P384": ec.SECP384R1(), "P521": ec.SECP521R1()}
#: the key types pulumi-tls makes, each of which can sign
SigningKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey


def _pem_private(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def seed(*parts) -> bytes:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()


def signing_key(pem: str) -> SigningKey:
    """A private key pulumi-tls made (PEM), refusing one that cannot sign."""
    key = serialization.load_pem_private_key(pem.encode(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"a {type(key).__name__} cannot sign certificates")
    return key


def private_key(inputs: dict, salt: bytes) -> dict:
    algorithm = inputs.get("algorithm", "RSA")
    key: SigningKey
    if algorithm == "ECDSA":
        curve = _CURVES[inputs.get("ecdsaCurve", "P224")]
        order = {"secp224r1": 2**224, "secp256r1": 2**256, "secp384r1": 2**384, "secp521r1": 2**521}[curve.name]
        scalar = int.from_bytes(hashlib.shake_256(salt).digest(80), "big") % (order // 2) + 1
        key = ec.derive_private_key(scalar, curve)
    elif algorithm == "ED25519":
        key = ed25519.Ed25519PrivateKey.from_private_bytes(salt[:32])
    else:
        # RSA keys cannot be derived from a seed; they differ between plans.
        key = rsa.generate_private_key(65537, int(inputs.get("rsaBits", 2048)))
    pub = key.public_key()
    openssh_pub = pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    digest = hashes.Hash(hashes.SHA256())
    digest.update(base64.b64decode(openssh_pub.split()[1]))
    return {
        "privateKeyPem": _pem_private(key),
        "privateKeyOpenssh": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                               serialization.NoEncryption()).decode(),
        "privateKeyPemPkcs8": _pem_private(key),
        "publicKeyPem": pub.public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
        "publicKeyOpenssh": openssh_pub + "\n",
        "publicKeyFingerprintSha256": "SHA256:" + base64.b64encode(digest.finalize()).decode().rstrip("="),
        "publicKeyFingerprintMd5": "",
    }


def _name(subject: dict | None) -> x509.Name:
    subject = subject or {}
    attrs = []
    for key, oid in (("country", NameOID.COUNTRY_NAME), ("province", NameOID.STATE_OR_PROVINCE_NAME),
                     ("locality", NameOID.LOCALITY_NAME), ("organization", NameOID.ORGANIZATION_NAME),
                     ("organizationalUnit", NameOID.ORGANIZATIONAL_UNIT_NAME),
                     ("commonName", NameOID.COMMON_NAME)):
        if subject.get(key):
            attrs.append(x509.NameAttribute(oid, subject[key]))
    return x509.Name(attrs)


_KEY_USAGE = {"digital_signature": "digital_signature", "content_commitment": "content_commitment",
              "key_encipherment": "key_encipherment", "data_encipherment": "data_encipherment",
              "key_agreement": "key_agreement", "cert_signing": "key_cert_sign",
              "crl_signing": "crl_sign", "encipher_only": "encipher_only", "decipher_only": "decipher_only"}
_EXT_USAGE = {"server_auth": ExtendedKeyUsageOID.SERVER_AUTH, "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH,
              "code_signing": ExtendedKeyUsageOID.CODE_SIGNING,
              "email_protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
              "ocsp_signing": ExtendedKeyUsageOID.OCSP_SIGNING,
              "timestamping": ExtendedKeyUsageOID.TIME_STAMPING}


def _sign(inputs: dict, subject: x509.Name, public_key, issuer: x509.Name, signer,
          sans: list, salt: bytes, issuer_key=None) -> dict:
    now = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    hours = int(inputs.get("validityPeriodHours", 24))
    uses = inputs.get("allowedUses") or []
    is_ca = bool(inputs.get("isCaCertificate", False))
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
               .serial_number(int.from_bytes(salt[:19], "big") >> 1 or 1).not_valid_before(now)
               .not_valid_after(now + dt.timedelta(hours=hours)))
    path_len = inputs.get("maxPathLength")
    builder = builder.add_extension(
        x509.BasicConstraints(ca=is_ca, path_length=int(path_len) if is_ca and path_len not in (None, -1) else None),
        critical=True)
    flags = {v: False for v in _KEY_USAGE.values()}
    for use in uses:
        if use in _KEY_USAGE:
            flags[_KEY_USAGE[use]] = True
    if any(flags.values()):
        builder = builder.add_extension(x509.KeyUsage(**flags), critical=True)
    ext = [_EXT_USAGE[u] for u in uses if u in _EXT_USAGE]
    if ext:
        builder = builder.add_extension(x509.ExtendedKeyUsage(ext), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    if issuer_key is not None:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key),
                                        critical=False)
    algo = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    deterministic = True if isinstance(signer, ec.EllipticCurvePrivateKey) else None
    cert = builder.sign(signer, algo, ecdsa_deterministic=deterministic)
    return {"certPem": cert.public_bytes(serialization.Encoding.PEM).decode(),
            "validityStartTime": now.isoformat(), "validityEndTime": (now + dt.timedelta(hours=hours)).isoformat(),
            "readyForRenewal": False}


def _sans(inputs: dict) -> list:
    return ([x509.DNSName(d) for d in inputs.get("dnsNames") or []]
            + [x509.IPAddress(ipaddress.ip_address(a)) for a in inputs.get("ipAddresses") or []]
            + [x509.UniformResourceIdentifier(u) for u in inputs.get("uris") or []])


def self_signed_cert(inputs: dict, salt: bytes) -> dict:
    key = signing_key(inputs["privateKeyPem"])
    name = _name(inputs.get("subject"))
    return _sign(inputs, name, key.public_key(), name, key, _sans(inputs), salt, issuer_key=key.public_key())


def cert_request(inputs: dict) -> dict:
    key = signing_key(inputs["privateKeyPem"])
    builder = x509.CertificateSigningRequestBuilder().subject_name(_name(inputs.get("subject")))
    sans = _sans(inputs)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    algo = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    det = True if isinstance(key, ec.EllipticCurvePrivateKey) else None
    return {"certRequestPem": builder.sign(key, algo, ecdsa_deterministic=det)
            .public_bytes(serialization.Encoding.PEM).decode()}


def locally_signed_cert(inputs: dict, salt: bytes) -> dict:
    csr = x509.load_pem_x509_csr(inputs["certRequestPem"].encode())
    ca_key = signing_key(inputs["caPrivateKeyPem"])
    ca_cert = x509.load_pem_x509_certificate(inputs["caCertPem"].encode())
    try:
        sans = list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        sans = []
    return _sign(inputs, csr.subject, csr.public_key(), ca_cert.subject, ca_key, sans, salt,
                 issuer_key=ca_key.public_key())


def random_password(inputs: dict, salt: bytes) -> dict:
    rng = random.Random(salt)
    alphabet = string.ascii_letters + string.digits
    if inputs.get("special", True):
        alphabet += inputs.get("overrideSpecial") or "!@#$%&*()-_=+[]{}<>:?"
    value = "".join(rng.choice(alphabet) for _ in range(int(inputs.get("length", 16))))
    # A real bcrypt hash (as pulumi-random gives), with a salt from the seed so plans stay stable.
    salt_chars = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    bcrypt_salt = "".join(rng.choice(salt_chars) for _ in range(21)) + "."
    hashed = bcrypt.hashpw(value.encode()[:72], f"$2b$04${bcrypt_salt}".encode()).decode()
    return {"result": value, "bcryptHash": hashed}


def random_bytes(inputs: dict, salt: bytes) -> dict:
    raw = hashlib.shake_256(salt).digest(int(inputs.get("length", 32)))
    return {"base64": base64.b64encode(raw).decode(), "hex": raw.hex()}


#: the OUI Proxmox VE (8.1 and later) gives the MAC addresses it generates: BC:24:11 (Proxmox
#: Server Solutions GmbH), so a planned address looks like a real one.
PROXMOX_OUI = "BC:24:11"
#: where each guest type keeps its network interfaces, and the path of their MAC addresses.
GUEST_NICS = {t.CONTAINER: "networkInterfaces", t.VM: "networkDevices"}
REBUILT = "rebuilt:"
REPLACED = "replaced:"


def guest_mac(name: str, index: int = 0, generation: int = 0) -> str:
    """The MAC address the plan gives interface ``index`` of guest ``name`` (its ``generation``-th
    build: each rebuild outside Pulumi gets a new one, as Proxmox generates a new address)."""
    digest = hashlib.sha256(f"{name}\0{index}\0{generation}".encode()).digest()
    return PROXMOX_OUI + "".join(f":{b:02X}" for b in digest[:3])


def guest_outputs(type_: str, name: str, inputs: dict, facts: dict[str, str]) -> dict:
    key = GUEST_NICS[type_]
    generation = int(facts.get(REBUILT + name, "0") or 0)
    nics = [{**nic, "macAddress": nic.get("macAddress") or guest_mac(name, i, generation)}
            for i, nic in enumerate(inputs.get(key) or [])]
    out: dict = {key: nics}
    if type_ == t.VM:
        out["macAddresses"] = [nic["macAddress"] for nic in nics]
    return out


def computed_outputs(type_: str, state: dict) -> dict:
    """Outputs a provider computes at create time, by path: what a replacement (or a rebuild a
    refresh reads) changes for every input that holds one of them."""
    if type_ not in GUEST_NICS:
        return {}
    key = GUEST_NICS[type_]
    return {f"{key}[{i}].macAddress": nic["macAddress"] for i, nic in enumerate(state.get(key) or [])}


def outputs_for(type_: str, name: str, inputs: dict, facts: dict[str, str], stack: str = "") -> dict:
    if type_ in GUEST_NICS:
        return guest_outputs(type_, name, inputs, facts)
    if type_ in (t.COMMAND, t.LOCAL_COMMAND):
        found = FACT.search(inputs.get("create") or "")
        return {"stdout": facts.get(found.group(1), "") if found else "", "stderr": ""}
    if not type_.startswith(("tls:", "random:")):
        return {}
    # Only generated values need the seed (a hash of every input; commands carry whole bundles).
    # ``replaced:<name>`` (a count) plays `pulumi up --replace` of it: new values, as Pulumi would make.
    again = facts.get(REPLACED + name)
    salt = seed(stack, type_, name, inputs, *([again] if again else []))
    if type_ == t.PRIVATE_KEY:
        return private_key(inputs, salt)
    if type_ == t.SELF_SIGNED_CERT:
        return self_signed_cert(inputs, salt)
    if type_ == t.CERT_REQUEST:
        return cert_request(inputs)
    if type_ == t.LOCALLY_SIGNED_CERT:
        return locally_signed_cert(inputs, salt)
    if type_ == t.RANDOM_PASSWORD:
        return random_password(inputs, salt)
    if type_ == t.RANDOM_BYTES:
        return random_bytes(inputs, salt)
    return {}


def invoke(token: str, args: dict, facts: dict[str, str]) -> dict:
    return {}
