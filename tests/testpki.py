"""A small test PKI for the lab tests: CAs that issue leaf certificates for a list of names.

``TestCA(name)`` is a fresh root, ``TestCA(name, parent=root)`` an intermediate under it, and
``TestCA.from_pem(cert, key)`` an existing CA (the plan's intermediate, made by pulumi-tls).
``issue(names)`` gives (chain PEM, key PEM) for a leaf whose common name is ``names[0]`` and
whose SANs are all ``names`` (addresses as IP SANs); an intermediate's certificate follows the
leaf in the chain, as Step-CA and certbot serve it. Every certificate carries what OpenSSL's
strict verification asks for (key usage, key identifiers).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def sans(names) -> list[x509.GeneralName]:
    """Subject alternative names for ``names``: an address is an IP SAN, anything else a DNS one."""
    out: list[x509.GeneralName] = []
    for n in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return out


def pem(obj) -> str:
    """A certificate or a private key (PKCS#8, unencrypted) as PEM text."""
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM).decode()
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def save(pair: tuple[str, str], cert_path: Path, key_path: Path) -> tuple[Path, Path]:
    """Write an issued (chain, key) pair to two files; returns their paths."""
    cert_path.write_text(pair[0])
    key_path.write_text(pair[1])
    return cert_path, key_path


def _subject(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class TestCA:
    """A certificate authority for tests (see the module docstring)."""

    __test__ = False   # a helper, not a pytest test class

    def __init__(self, name: str = "Test Root", parent: TestCA | None = None, days: int = 2):
        self.key = ec.generate_private_key(ec.SECP256R1())
        issuer = parent or self
        subject = _subject(name)
        now = dt.datetime.now(dt.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(subject)
                     .issuer_name(parent.cert.subject if parent else subject)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=days))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0 if parent else None), True)
                     .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), True)
                     .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), False)
                     .add_extension(parent._authority_key_id() if parent else
                                    x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False)
                     .sign(issuer.key, hashes.SHA256()))

    @classmethod
    def from_pem(cls, cert_pem: str, key_pem: str) -> TestCA:
        """An existing CA, e.g. the plan's intermediate (its certificate and key as PEM)."""
        ca = cls.__new__(cls)
        ca.cert = x509.load_pem_x509_certificate(cert_pem.encode())
        ca.key = serialization.load_pem_private_key(key_pem.encode(), None)
        return ca

    @property
    def name(self) -> str:
        return self.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value

    @property
    def cert_pem(self) -> str:
        return pem(self.cert)

    def write_cert(self, path: Path) -> Path:
        """This CA's certificate as a file (what a client is told to trust); returns the path."""
        path.write_text(self.cert_pem)
        return path

    @property
    def is_root(self) -> bool:
        return self.cert.issuer == self.cert.subject

    def _authority_key_id(self) -> x509.AuthorityKeyIdentifier:
        """What a certificate this CA signs names as its issuer's key (its SKI when it has one)."""
        try:
            ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        except x509.ExtensionNotFound:
            return x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)

    def issue(self, names, client: bool = False, days: int = 1) -> tuple[str, str]:
        """(leaf PEM, followed by this CA's when it is an intermediate; key PEM) for ``names``:
        a server certificate, or a client one when ``client``."""
        names = list(names)
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(_subject(names[0])).issuer_name(self.cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=days))
                .add_extension(x509.SubjectAlternativeName(sans(names)), False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
                .add_extension(x509.ExtendedKeyUsage([usage]), False)
                .add_extension(self._authority_key_id(), False)
                .sign(self.key, hashes.SHA256()))
        return pem(cert) + ("" if self.is_root else self.cert_pem), pem(key)
