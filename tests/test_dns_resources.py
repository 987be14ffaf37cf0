"""The DNS tier under the mock runtime (the recording plan engine): steps, order, secrecy, churn."""

from __future__ import annotations

import ipaddress
import json
import shlex

import pytest

from conftest import edited, shipped_plan
from phoenix.bundle import unpack
from phoenix.plan import make_plan
from phoenix.plan.engine import is_secret
from phoenix.plan.writer import COMMAND
from phoenix.render import dns as render

DNS_TIER = "phoenix:tier:Dns"
GUEST_TYPES = ("proxmoxve:index/containerLegacy:ContainerLegacy", "proxmoxve:index/vmLegacy:VmLegacy")
INSTALL, CONFIG = "dns-bind-install", "dns-bind-config"


def tier_children(plan, tier_type: str):
    tier = next(r for r in plan.run.resources if r.type == tier_type)
    return [r for r in plan.run.resources if r.parent == tier.urn]


def tsig_secret(plan) -> str:
    return plan.run.named("tsig-key").outputs["base64"]


def test_the_dns_tier_is_an_install_then_a_transactional_config_push(any_plan):
    plan, topo = any_plan, any_plan.topo
    steps = {r.name: r for r in tier_children(plan, DNS_TIER)}
    assert set(steps) == {INSTALL, CONFIG}
    assert all(r.type == COMMAND for r in steps.values())
    for r in steps.values():
        assert r.value("connection")["host"] == str(topo.dns.address)
        # replaced with its guest (its id, and the MAC address a new guest gets), not otherwise
        mac = next(iter(plan.run.guest(topo.dns.name).computed.values()))
        assert r.value("triggers") == [f"{topo.dns.name}-id", mac], "replaced with its guest, not otherwise"
    bootstrap = plan.run.urn_of(f"{topo.dns.name}-bootstrap")
    install, config = steps[INSTALL], steps[CONFIG]
    assert bootstrap in install.dependencies
    assert {bootstrap, install.urn} <= set(config.dependencies)
    installed = {f.path: f for f in unpack(install.value("stdin"))}
    script = installed[f"{render.SCRIPTS}/{render.INSTALL_STEP}.sh"].content
    assert "apt-get install" in script and "bind9 bind9-utils dnsutils" in script
    create = config.value("create")
    assert f"--check {shlex.quote(render.check_command(topo))}" in create
    assert "named-checkconf -z /etc/bind/named.conf" in create
    assert render.RELOAD_COMMAND in create and render.HEALTH_COMMAND in create


def test_the_tsig_key_travels_only_in_the_config_steps_secret_stdin(any_plan):
    plan = any_plan
    secret = tsig_secret(plan)
    config = plan.run.named(CONFIG)
    assert is_secret(config.inputs["stdin"]), "the bundle holds the key: it must be a secret input"
    files = {f.path: f for f in unpack(config.value("stdin"))}
    key = files[render.tsig_key_file(plan.topo)]
    assert secret in key.content and (key.mode, key.owner, key.group) == (0o640, "root", "bind")
    assert [p for p, f in files.items() if secret in f.content] == [key.path]
    for r in plan.run.resources:
        for field in ("create", "update", "delete"):
            text = r.value(field)
            if isinstance(text, str):
                for value in plan.secrets.values:
                    assert value not in text, f"{r.name}.{field} carries the secret {plan.secrets.values[value]}"
    document = json.dumps(plan.document())
    assert secret not in document
    assert "tsig-key.base64" in plan.document()["secrets"]


def test_every_guest_resolves_through_the_internal_view(any_plan):
    plan, topo = any_plan, any_plan.topo
    lab = topo.lab
    guests = [r for r in plan.run.resources if r.type in GUEST_TYPES]
    assert {r.name for r in guests} == {g.name for g in lab.guests}
    internal_acl = render.named_conf(topo)
    for r in guests:
        init = r.value("initialization")
        servers = init["dns"]["servers"]
        want = ["127.0.0.1"] if r.name == topo.dns.name else [str(topo.dns.address)]
        assert servers == want, r.name
        assert init["dns"]["domain"] == lab.domains.internal
        # ... and the guest's own address is a client of the internal view.
        address = str(lab.guest(r.name).address)
        assert any(ipaddress.ip_address(address) in ipaddress.ip_network(n)
                   for n in topo.internal_networks), r.name
    assert "127.0.0.0/8;" in internal_acl   # the DNS guest asks itself


def _add_service(raw):
    guest = next(g for g in raw["guests"] if g["role"] == "portainer")["name"]
    raw["services"].append({"name": "search", "guests": [guest], "port": 8123, "protocol": "http",
                            "public": True, "publicHost": f"search.{raw['domains']['public']}"})


@pytest.fixture(scope="module")
def plans_with_a_new_service():
    return shipped_plan("dev"), make_plan(edited("dev", _add_service))


def test_a_new_service_changes_only_the_dns_config_step_and_replaces_no_guest(plans_with_a_new_service):
    before, after = plans_with_a_new_service
    old = {e["urn"]: e for e in before.document()["resources"]}
    new = {e["urn"]: e for e in after.document()["resources"]}
    dns_urns = {r.urn for r in tier_children(before, DNS_TIER)}
    assert dns_urns == {r.urn for r in tier_children(after, DNS_TIER)}, "no DNS step added or removed"
    changed = {urn for urn in dns_urns if old[urn]["inputs"] != new[urn]["inputs"]}
    assert changed == {before.run.urn_of(CONFIG)}
    guest_urns = {u for u, e in old.items() if e["type"] in GUEST_TYPES}
    assert guest_urns == {u for u, e in new.items() if e["type"] in GUEST_TYPES}
    for urn in guest_urns:
        assert old[urn]["inputs"] == new[urn]["inputs"], f"{urn} would change"
        assert old[urn]["dependencies"] == new[urn]["dependencies"]
    # The config step is updated in place (same triggers), so named reloads; nothing is replaced.
    c_old, c_new = old[before.run.urn_of(CONFIG)], new[after.run.urn_of(CONFIG)]
    assert c_old["inputs"]["triggers"] == c_new["inputs"]["triggers"]
    files = {f.path: f.content for f in unpack(after.run.named(CONFIG).value("stdin"))}
    internal = after.topo.lab.domains.internal
    assert f"search.{internal}. IN A" in files[f"{render.ZONE_DIR}/db.{internal}.internal"]


def test_the_wildcard_stack_grants_the_apex_challenge():
    plan = shipped_plan("cluster")
    lab = plan.topo.lab
    assert lab.acme.wildcard
    views = next(f for f in unpack(plan.run.named(CONFIG).value("stdin")) if f.path == render.VIEWS_CONF)
    assert f'grant "{plan.topo.acme_tsig_key_name}" name _acme-challenge.{lab.domains.public}. TXT;' in views.content


def test_the_dns_tier_exports_where_to_ask(any_plan):
    out = any_plan.run.outputs["dns"]
    assert out["server"] == str(any_plan.topo.dns.address)
    assert out["nameserver"] == render.public_nameserver(any_plan.topo)
