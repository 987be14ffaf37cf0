"""PkiTier: the Phoenix root of trust, made by the program (DESIGN: root of trust by construction).

The root key never leaves the stack state: it signs one intermediate, which is the only key
Step-CA holds. Guests get the root certificate from this tier's output, never from the CA.

It signs a second intermediate, the gateway client CA, which signs exactly one certificate: the
gateway's client certificate towards the mesh (``components.trust.gateway_client_certificate``).
The mesh's gateway entrypoint trusts that CA alone, so no certificate Step-CA issues (every
other guest's) opens it. Its key stays in the stack state too.
"""

from __future__ import annotations

import pulumi
import pulumi_tls as tls

from components.base import Context, secret
from phoenix.pki import fingerprint_sha256


class PkiTier(pulumi.ComponentResource):
    root_cert_pem: pulumi.Output[str]
    root_fingerprint: pulumi.Output[str]
    intermediate_cert_pem: pulumi.Output[str]
    intermediate_key_pem: pulumi.Output[str]
    gateway_client_ca_pem: pulumi.Output[str]

    def __init__(self, name: str, ctx: Context, opts: pulumi.ResourceOptions | None = None):
        super().__init__("phoenix:tier:Pki", name, None, opts)
        pki = ctx.lab.pki
        keep = pulumi.ResourceOptions(parent=self, protect=True)

        def subject(cn: str) -> tls.SelfSignedCertSubjectArgs:
            return tls.SelfSignedCertSubjectArgs(common_name=cn, organization=pki.organization)

        self.root_key = tls.PrivateKey("root-ca-key", tls.PrivateKeyArgs(algorithm="ECDSA", ecdsa_curve="P384"),
                                       opts=keep)
        self.root_cert = tls.SelfSignedCert(
            "root-ca-cert",
            tls.SelfSignedCertArgs(
                private_key_pem=self.root_key.private_key_pem,
                subject=subject(f"{pki.organization} Root CA"),
                is_ca_certificate=True, validity_period_hours=pki.root_lifetime_hours,
                # No early renewal: pulumi-tls "renews" by replacing the resource, and this one is
                # protected, so the day it became ready Pulumi would be asked to replace a protected
                # resource (every update would fail). The root is rotated by the operator, from the
                # same key (docs/upgrading.md, "Rotating the root certificate"); `phoenix plan`
                # refuses a protected certificate that renews itself (phoenix.diff.hazards).
                early_renewal_hours=0,
                allowed_uses=["cert_signing", "crl_signing", "digital_signature"],
                set_subject_key_id=True),
            opts=keep)
        self.intermediate_key, self.intermediate_cert = self._intermediate(
            "intermediate-ca", f"{pki.organization} Intermediate CA", ctx)
        self.gateway_client_ca_key, self.gateway_client_ca = self._intermediate(
            "gateway-client-ca", f"{pki.organization} Gateway Client CA", ctx)
        self.root_cert_pem = self.root_cert.cert_pem
        self.root_fingerprint = self.root_cert.cert_pem.apply(fingerprint_sha256)
        self.intermediate_cert_pem = self.intermediate_cert.cert_pem
        self.intermediate_key_pem = secret(self.intermediate_key.private_key_pem)
        self.gateway_client_ca_pem = self.gateway_client_ca.cert_pem
        self.register_outputs({"root_cert_pem": self.root_cert_pem, "root_fingerprint": self.root_fingerprint,
                               "intermediate_cert_pem": self.intermediate_cert_pem})

    def _intermediate(self, name: str, common_name: str,
                      ctx: Context) -> tuple[tls.PrivateKey, tls.LocallySignedCert]:
        """A CA signed by the root that signs only leaves (pathlen 0), renewed a tenth before expiry.
        Unlike the root it is not protected: renewing it replaces it, which is how it rotates."""
        pki = ctx.lab.pki
        opts = pulumi.ResourceOptions(parent=self)
        key = tls.PrivateKey(f"{name}-key", tls.PrivateKeyArgs(algorithm="ECDSA", ecdsa_curve="P256"), opts=opts)
        csr = tls.CertRequest(
            f"{name}-csr",
            tls.CertRequestArgs(private_key_pem=key.private_key_pem,
                                subject=tls.CertRequestSubjectArgs(common_name=common_name,
                                                                   organization=pki.organization)),
            opts=opts)
        cert = tls.LocallySignedCert(
            f"{name}-cert",
            tls.LocallySignedCertArgs(
                cert_request_pem=csr.cert_request_pem,
                ca_private_key_pem=self.root_key.private_key_pem, ca_cert_pem=self.root_cert.cert_pem,
                is_ca_certificate=True, max_path_length=0,
                validity_period_hours=pki.intermediate_lifetime_hours,
                early_renewal_hours=pki.intermediate_lifetime_hours // 10,
                allowed_uses=["cert_signing", "crl_signing", "digital_signature"],
                set_subject_key_id=True),
            opts=opts)
        return key, cert
