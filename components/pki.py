"""PkiTier: the Phoenix root of trust, made by the program (DESIGN: root of trust by construction).

The root key never leaves the stack state: it signs one intermediate, which is the only key
Step-CA holds. Guests get the root certificate from this tier's output, never from the CA.
"""

from __future__ import annotations

import pulumi
import pulumi_tls as tls

from components.base import Context
from phoenix.pki import fingerprint_sha256


class PkiTier(pulumi.ComponentResource):
    root_cert_pem: pulumi.Output[str]
    root_fingerprint: pulumi.Output[str]
    intermediate_cert_pem: pulumi.Output[str]
    intermediate_key_pem: pulumi.Output[str]

    def __init__(self, name: str, ctx: Context, opts: pulumi.ResourceOptions | None = None):
        super().__init__("phoenix:tier:Pki", name, None, opts)
        pki = ctx.lab.pki
        keep = pulumi.ResourceOptions(parent=self, protect=True)
        subject = lambda cn: tls.SelfSignedCertSubjectArgs(common_name=cn, organization=pki.organization)
        self.root_key = tls.PrivateKey("root-ca-key", tls.PrivateKeyArgs(algorithm="ECDSA", ecdsa_curve="P384"),
                                       opts=keep)
        self.root_cert = tls.SelfSignedCert(
            "root-ca-cert",
            tls.SelfSignedCertArgs(
                private_key_pem=self.root_key.private_key_pem,
                subject=subject(f"{pki.organization} Root CA"),
                is_ca_certificate=True, validity_period_hours=pki.root_lifetime_hours,
                early_renewal_hours=pki.root_lifetime_hours // 10,
                allowed_uses=["cert_signing", "crl_signing", "digital_signature"],
                set_subject_key_id=True),
            opts=keep)
        self.intermediate_key = tls.PrivateKey(
            "intermediate-ca-key", tls.PrivateKeyArgs(algorithm="ECDSA", ecdsa_curve="P256"),
            opts=pulumi.ResourceOptions(parent=self))
        csr = tls.CertRequest(
            "intermediate-ca-csr",
            tls.CertRequestArgs(private_key_pem=self.intermediate_key.private_key_pem,
                                subject=tls.CertRequestSubjectArgs(
                                    common_name=f"{pki.organization} Intermediate CA",
                                    organization=pki.organization)),
            opts=pulumi.ResourceOptions(parent=self))
        self.intermediate_cert = tls.LocallySignedCert(
            "intermediate-ca-cert",
            tls.LocallySignedCertArgs(
                cert_request_pem=csr.cert_request_pem,
                ca_private_key_pem=self.root_key.private_key_pem, ca_cert_pem=self.root_cert.cert_pem,
                is_ca_certificate=True, max_path_length=0,
                validity_period_hours=pki.intermediate_lifetime_hours,
                early_renewal_hours=pki.intermediate_lifetime_hours // 10,
                allowed_uses=["cert_signing", "crl_signing", "digital_signature"],
                set_subject_key_id=True),
            opts=pulumi.ResourceOptions(parent=self))
        self.root_cert_pem = self.root_cert.cert_pem
        self.root_fingerprint = self.root_cert.cert_pem.apply(fingerprint_sha256)
        self.intermediate_cert_pem = self.intermediate_cert.cert_pem
        self.intermediate_key_pem = pulumi.Output.secret(self.intermediate_key.private_key_pem)
        ctx.root_cert_pem, ctx.root_fingerprint = self.root_cert_pem, self.root_fingerprint
        ctx.facts["pki"] = self
        self.register_outputs({"root_cert_pem": self.root_cert_pem, "root_fingerprint": self.root_fingerprint,
                               "intermediate_cert_pem": self.intermediate_cert_pem})
