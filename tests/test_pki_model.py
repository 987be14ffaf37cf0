"""The PKI's bad input, its policy rule, and the key formats Step-CA reads (pure, no Pulumi)."""

from __future__ import annotations

import json
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import edited, stack_config
from phoenix.errors import ConfigError
from phoenix.model import parse_lab
from phoenix.model.readiness import deploy_readiness
from phoenix.pki import ca_policy, domain_permitted, encrypted_jwk, jwk_pair, policy_permits
from phoenix.plan import make_plan
from phoenix.stackfile import expand_catalog
from phoenix.topology import build


def _problems(edit) -> list[str]:
    stack = edited("dev", edit)
    with pytest.raises(ConfigError) as err:
        make_plan(stack)
    return err.value.problems


def _set_pki(**values):
    def edit(raw):
        raw.setdefault("pki", {}).update(values)
    return edit


# -- bad input: one clear line naming the key, before any resource ----------------------------
@pytest.mark.parametrize("values, expected", [
    ({"leafLifetimeHours": 200, "maxLeafLifetimeHours": 100},
     "phoenix:pki: maxLeafLifetimeHours (100) is shorter than leafLifetimeHours (200)"),
    ({"intermediateLifetimeHours": 100, "maxLeafLifetimeHours": 168},
     "phoenix:pki: intermediateLifetimeHours (100) must be longer than a leaf's (168): "
     "a leaf would outlive its issuer"),
    ({"rootLifetimeHours": 100, "intermediateLifetimeHours": 200},
     "phoenix:pki: rootLifetimeHours (100) must be longer than intermediateLifetimeHours (200)"),
    ({"jwkProvisioner": "acme"},
     "phoenix:pki: provisioner name 'acme' is used by both acmeProvisioner and jwkProvisioner"),
    ({"allowedDomains": ["example.org"]},
     "phoenix:pki.allowedDomains: example.org excludes the internal domain lab.internal: "
     "Step-CA could not issue any internal certificate"),
    ({"stepCaSha256": "not-a-checksum"}, "phoenix:pki.stepCaSha256: "),
])
def test_bad_pki_input_is_one_clear_line(values, expected):
    problems = _problems(_set_pki(**values))
    assert any(p.startswith(expected) for p in problems), problems
    assert all("\n" not in p and "Traceback" not in p for p in problems)


def test_a_root_shorter_than_a_leaf_is_refused():
    problems = _problems(_set_pki(rootLifetimeHours=100, intermediateLifetimeHours=43800))
    assert problems == ["phoenix:pki: rootLifetimeHours (100) must be longer than intermediateLifetimeHours (43800)"]


def test_every_lifetime_problem_is_reported_at_once():
    [line] = _problems(_set_pki(rootLifetimeHours=10, intermediateLifetimeHours=20, maxLeafLifetimeHours=168,
                                jwkProvisioner="acme"))
    assert "intermediateLifetimeHours (20)" in line and "rootLifetimeHours (10)" in line
    assert "provisioner name 'acme'" in line


def test_allowed_domains_that_contain_the_internal_domain_pass():
    for allowed in (["lab.internal"], ["other.example", "lab.internal"]):
        raw = expand_catalog(stack_config("dev").phoenix(), stack_config("dev").root)
        raw["pki"] = {"allowedDomains": allowed}
        assert parse_lab(raw).pki.allowed_domains == allowed


def test_missing_step_pins_are_named_for_a_real_deployment():
    lab = parse_lab(expand_catalog(stack_config("dev").phoenix(), stack_config("dev").root))
    lines = [line for line in deploy_readiness(lab) if line.startswith("phoenix:pki.")]
    assert [line.split(":")[0] + ":" + line.split(":")[1] for line in lines] == [
        "phoenix:pki.stepCaSha256", "phoenix:pki.stepCliSha256"]
    assert "never guesses" in lines[0]


# -- the authority policy (Step-CA's name constraints) ---------------------------------------------
def test_domain_rule_matches_step_ca():
    assert domain_permitted("ca.lab.internal", "*.lab.internal")
    assert not domain_permitted("a.b.lab.internal", "*.lab.internal")    # 0.28: exactly one label below
    assert not domain_permitted("lab.internal", "*.lab.internal")
    assert not domain_permitted("evil-lab.internal", "*.lab.internal")
    assert domain_permitted("lab.internal", "lab.internal")
    assert not domain_permitted("lab.example.com", "*.lab.internal")


@pytest.mark.parametrize("name", ["dev", "cluster"])
def test_policy_allows_the_lab_and_the_cas_own_names_only(name):
    stack = stack_config(name)
    lab = parse_lab(expand_catalog(stack.phoenix(), stack.root))
    topo = build(lab)
    policy = ca_policy(lab, topo)
    assert policy["x509"]["allow"] == {"dns": sorted({n for names in topo.step_ca_names.values() for n in names})}
    for san in topo.ca_sans:     # the CA's own names: its certificate is not the policy's to gate
        assert not policy_permits(policy, san), san
    for s in lab.services:       # the mesh holds every service's names
        assert all(policy_permits(policy, n) for n in topo.service_names(s))
    for g in lab.guests:         # a guest's name only where that guest asks for it; no address ever
        assert policy_permits(policy, topo.guest_fqdn(g)) == (g.name in topo.step_ca_names), g.name
        assert not policy_permits(policy, str(g.address))
    for outside in (lab.domains.public, f"www.{lab.domains.public}", "example.org", "8.8.8.8",
                    str(lab.network.public_address), f"nobody.{lab.domains.internal}"):
        assert not policy_permits(policy, outside), outside


# -- key formats -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def p256_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def test_provisioner_jwk_and_its_encrypted_key(p256_pem):
    jwcrypto = pytest.importorskip("jwcrypto", reason="jwcrypto (PyPI) checks the JWE independently")
    from jwcrypto import jwa, jwe, jwk
    public, private = jwk_pair(p256_pem)
    assert set(public) == {"use", "kty", "kid", "crv", "alg", "x", "y"} and private["d"]
    assert jwk.JWK(**public).thumbprint() == public["kid"]              # RFC 7638, as Step-CA computes it
    token = encrypted_jwk(private, "provisioner pw")
    assert token == encrypted_jwk(private, "provisioner pw")
    header = json.loads(jwcrypto.common.base64url_decode(token.split(".")[0]))
    assert header["alg"] == "PBES2-HS256+A128KW" and header["enc"] == "A256GCM" and header["cty"] == "jwk+json"
    jwa.default_max_pbkdf2_iterations = max(jwa.default_max_pbkdf2_iterations, header["p2c"])
    opened = jwe.JWE()
    opened.deserialize(token, key=jwk.JWK.from_password("provisioner pw"))
    assert json.loads(opened.payload) == private
    with pytest.raises(jwe.InvalidJWEData):                         # the wrong password opens nothing
        jwe.JWE().deserialize(token, key=jwk.JWK.from_password("wrong"))


def test_jwk_provisioner_key_must_be_p256():
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    with pytest.raises(ValueError, match="P-256"):
        jwk_pair(pem)


def test_fingerprint_is_sha256_of_der(dev_plan):
    from phoenix.pki import fingerprint_sha256
    root = dev_plan.run.outputs["rootCaCertificate"]
    cert = x509.load_pem_x509_certificate(root.encode())
    out = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256"], input=root,
                         capture_output=True, text=True, check=False).stdout
    assert out.strip().split("=")[1].replace(":", "").lower() == fingerprint_sha256(root)
    assert dev_plan.run.outputs["rootCaFingerprint"] == fingerprint_sha256(root)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
