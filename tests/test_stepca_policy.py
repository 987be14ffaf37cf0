"""The plan's ca.json against the rules of the step-ca release the stacks pin (0.28.1), for the
fields the lab's step-ca (0.19.0) ignores.

Which release enforces what:
* step-ca 0.19.0 (the lab, tests/test_stepca_lab.py) reads ca.json's paths, address, dnsNames,
  db, claims (certificate lifetimes), forceCN and the provisioners, and validates HTTP-01 at
  the address the requested name resolves to; it ignores ``authority.policy`` (read since 0.20)
  and an ACME provisioner's ``challenges`` (since 0.23), offering every ACME client dns-01,
  http-01 and tls-alpn-01 whatever the list says;
* step-ca 0.28.1 (deployed) also refuses, at new-order, any name outside ``authority.policy``
  (exactly the names the plan's steps request: ``Topology.step_ca_names``),
  and offers only the listed challenges. Its rules are ported in tests/stepca_rules.py from the
  tag's sources (authority/policy, policy/, acme/api/order.go, authority/provisioner/acme.go);
  these tests evaluate the plan's ca.json with that port: every name a plan's step requests is
  allowed, foreign names, literal wildcards, names two labels deep and out-of-network addresses
  are refused, the challenge list is valid and leaves out tls-alpn-01 (trap 6). The model's own
  rule (phoenix/pki.py, used to refuse a certificate request before anything is deployed) must
  agree with the port.
"""

from __future__ import annotations

import json
import shlex

import pytest
import yaml

from conftest import shipped_plan, stack_config
from phoenix.errors import ConfigError
from phoenix.model import parse_lab
from phoenix.pki import ca_policy, policy_permits
from phoenix.plan.writer import pushed_files
from phoenix.render import trust as r
from phoenix.stackfile import expand_catalog
from stepca_rules import ConfigRefused, X509Policy, authority_policy, offered_challenges, order_refusal

TRAEFIK_DYNAMIC = "/etc/traefik/dynamic/phoenix.yaml"


def ca_json(plan) -> dict:
    files = pushed_files(plan.run, plan.topo)[plan.topo.ca.name]
    return json.loads(files[r.CA_JSON][0].content)


def requested_names(plan) -> dict[str, list[str]]:
    """Every ACME order a plan's steps make: "<guest>/<cert>" -> its names, from the certbot
    commands of the certificate scripts and the domains of Traefik's resolver."""
    out = {}
    for guest, files in pushed_files(plan.run, plan.topo).items():
        for path, (f, _step) in files.items():
            for line in f.content.splitlines():
                argv = shlex.split(line) if " certonly " in line and line.startswith(r.CERTBOT) else []
                if argv:
                    out[f"{guest}/{argv[argv.index('--cert-name') + 1]}"] = \
                        [argv[i + 1] for i, a in enumerate(argv) if a == "-d"]
            if path == TRAEFIK_DYNAMIC:
                for name, router in yaml.safe_load(f.content)["http"]["routers"].items():
                    if (router.get("tls") or {}).get("certResolver"):
                        for d in router["tls"].get("domains", []):
                            out[f"{guest}/traefik:{name}"] = [d["main"], *d.get("sans", [])]
    return out


@pytest.fixture(params=["dev", "cluster"])
def plan(request):
    return shipped_plan(request.param)


def test_every_name_a_plans_step_requests_is_allowed_by_the_pinned_policy(plan):
    config = ca_json(plan)
    orders = requested_names(plan)
    topo = plan.topo
    # the mesh orders every service's names (they resolve to it); the replicas their guests' names
    traefik = {n for k, names in orders.items() if "/traefik:" in k for n in names}
    assert traefik == {topo.mesh_name} | {n for s in topo.lab.services for n in topo.service_names(s)}
    refused = {order: order_refusal(config, names) for order, names in orders.items()}
    assert {k: v for k, v in refused.items() if v} == {}
    for names in orders.values():
        assert all(policy_permits(ca_policy(topo.lab, topo), n) for n in names)
    # ...and the policy allows exactly those names: nothing a step does not request.
    requested = {n for names in orders.values() for n in names}
    assert set(config["authority"]["policy"]["x509"]["allow"]["dns"]) == requested
    assert "ip" not in config["authority"]["policy"]["x509"]["allow"]


def foreign_names(topo) -> list[str]:
    lab = topo.lab
    internal, public = lab.domains.internal, lab.domains.public
    return [public, f"www.{public}", *(s.public_host for s in lab.services if s.public_host),
            "example.org", f"{internal}.example.org", f"evil-{internal}", internal,
            f"*.{internal}", f"a.b.{internal}", f"x.{topo.mesh_name}",
            "localhost", "127.0.0.1", "8.8.8.8", str(lab.network.public_address), "10.99.0.1", "::1"]


def test_foreign_names_wildcards_and_outside_addresses_are_refused(plan):
    config, topo = ca_json(plan), plan.topo
    policy = authority_policy(config)
    for name in foreign_names(topo):
        assert policy.refusal(name), f"the pinned step-ca would issue for {name}"
    # nothing requests an address, a guest's name that no step asks for, or a name nobody has
    for g in topo.lab.guests:
        assert policy.refusal(str(g.address)), g.address
    for g in (topo.gateway, topo.dns, topo.ca):
        assert policy.refusal(topo.guest_fqdn(g)), g.name
    assert policy.refusal(f"nobody.{topo.lab.domains.internal}")


def test_the_models_rule_agrees_with_the_pinned_release(plan):
    """phoenix/pki.py refuses a request at plan time exactly when step-ca 0.28 would refuse it."""
    topo = plan.topo
    policy, port = ca_policy(topo.lab, topo), authority_policy(ca_json(plan))
    names = foreign_names(topo) + [n for names in requested_names(plan).values() for n in names] + \
        [topo.guest_fqdn(g) for g in topo.lab.guests] + list(topo.ca_sans)
    disagree = {n: (policy_permits(policy, n), port.refusal(n)) for n in names
                if policy_permits(policy, n) != (port.refusal(n) is None)}
    assert disagree == {}


def test_the_acme_provisioner_offers_http_and_dns_only(plan):
    config = ca_json(plan)
    [acme] = [p for p in config["authority"]["provisioners"] if p["type"] == "ACME"]
    for names in requested_names(plan).values():
        for name in names:
            assert offered_challenges(acme, name) == ["dns-01", "http-01"]       # trap 6: no tls-alpn-01
    assert offered_challenges(acme, f"*.{plan.topo.lab.domains.internal}") == ["dns-01"]
    assert offered_challenges({"type": "ACME"}, "a.b") == ["dns-01", "http-01", "tls-alpn-01"]   # the default


def test_the_pinned_release_would_start_with_the_policy_and_refuse_a_broken_one(plan):
    authority_policy(ca_json(plan))                                      # no ConfigRefused
    for bad in (".lab.internal", "*.*.lab.internal", "a.*.lab.internal", "lab..internal", "*lab.internal"):
        with pytest.raises(ConfigRefused):
            X509Policy({"allow": {"dns": [bad]}})
    with pytest.raises(ConfigRefused):
        offered_challenges({"challenges": ["http-01", "http-02"]}, "a.b")


def test_the_port_follows_the_sources_rules():
    """Cases read off policy/validate.go: one label below ``*.d``, a bare ``d`` alone, wildcard
    names only when allowed, the common name checked as a name, deny before allow."""
    p = X509Policy({"allow": {"dns": ["*.lab.internal", "ca.example.org"], "ip": ["10.0.0.0/8"]},
                    "deny": {"dns": ["bad.lab.internal"]}})
    assert p.refusal("a.lab.internal") is None and p.refusal("ca.example.org") is None
    assert p.refusal("a.b.lab.internal") and p.refusal("lab.internal") and p.refusal("x.ca.example.org")
    assert p.refusal("bad.lab.internal") == "dns bad.lab.internal is excluded"
    assert p.refusal("*.lab.internal") and p.refusal("10.1.2.3") is None and p.refusal("11.0.0.1")
    wildcards = X509Policy({"allow": {"dns": ["*.lab.internal"]}, "allowWildcardNames": True})
    assert wildcards.refusal("*.lab.internal") is None
    assert X509Policy({"allow": {"ip": ["10.0.0.0/8"]}}).refusal("a.lab.internal")   # DNS not explicitly permitted
    assert X509Policy({}).refusal("anything.example") is None                          # no policy: everything
    assert p.common_name_refusal("a.b.lab.internal")


def test_the_model_refuses_allowed_domains_the_ca_could_not_issue_the_internal_names_under():
    """``allowedDomains: [internal]`` becomes ``*.internal``: one label below ``internal``, so no
    ``<guest>.lab.internal`` (two below): the pinned CA would refuse every internal certificate."""
    stack = stack_config("dev")
    raw = expand_catalog(stack.phoenix(), stack.root)
    parent = raw["domains"]["internal"].split(".", 1)[1]
    raw["pki"] = {"allowedDomains": [parent]}
    with pytest.raises(ConfigError) as refused:
        parse_lab(raw)
    assert "phoenix:pki.allowedDomains" in str(refused.value)


def test_a_certificate_two_labels_below_the_internal_domain_is_refused_at_plan_time():
    """A request the pinned CA would refuse never reaches a guest: the plan refuses it."""
    from types import SimpleNamespace

    from components.trust import certificate_problems
    from test_trust_support import dev_trust_run
    run = dev_trust_run()
    deep = f"a.b.{run.topo.lab.domains.internal}"
    assert order_refusal(ca_json(run), [deep])
    issuer = SimpleNamespace(topo=run.topo, lab=run.topo.lab, acme_clients={})
    problems = certificate_problems(issuer, run.topo.mesh.name, "deep", [deep], None)
    assert any("outside the CA's allowed domains" in p for p in problems), problems
