"""PKI facts computed from certificates (pure, no Pulumi)."""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding


def fingerprint_sha256(cert_pem: str) -> str:
    """The root fingerprint as ``step ca bootstrap --fingerprint`` wants it: hex of SHA-256 over DER."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
