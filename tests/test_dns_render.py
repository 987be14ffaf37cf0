"""The DNS renderer, without Pulumi: zones, views, serials, grants, scripts.

The generated config is checked by BIND's own tools (named-checkconf -z in a chroot that
holds the Debian package's /etc/bind with our files laid over it, named-checkzone per zone),
the scripts by shellcheck. Expected records come from the stack model, not the renderer.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from pathlib import Path

import dns.rdatatype
import dns.zone
import pytest

from conftest import SHIPPED_STACKS, edited, stack_config
from lab import require_tools
from phoenix.errors import ConfigError
from phoenix.model import parse_lab
from phoenix.render import dns as render
from phoenix.stackfile import expand_catalog
from phoenix.topology import build

SECRET = "dGVzdC1zZWNyZXQtb2YtdGhpcnR5LXR3by1ieXRlcyE="


def topo_of(stack):
    return build(parse_lab(expand_catalog(stack.phoenix(), stack.root)))


@pytest.fixture(params=SHIPPED_STACKS)
def topo(request):
    return topo_of(stack_config(request.param))


def files_of(topo, secret=SECRET) -> dict[str, object]:
    return {f.path: f for f in render.config_files(topo, secret)}


def zone_records(text: str, origin: str) -> dict[str, set[tuple[str, str]]]:
    """A zone file as BIND's grammar reads it (dnspython): name -> {(type, value)}, apex SOA/NS aside."""
    z = dns.zone.from_text(text, origin=origin, relativize=False, check_origin=True)
    out: dict[str, set[tuple[str, str]]] = {}
    for name, node in z.nodes.items():
        for rds in node.rdatasets:
            rtype = dns.rdatatype.to_text(rds.rdtype)
            if name == z.origin and rtype in ("SOA", "NS"):
                continue
            for rd in rds:
                out.setdefault(name.to_text().rstrip("."), set()).add((rtype, rd.to_text().rstrip(".")))
    return out


# -- what each view answers --------------------------------------------------------------
def test_internal_view_answers_every_guest_service_alias_and_public_name(topo):
    """Guests by their own addresses; every service's name at the mesh (service-to-service traffic
    goes through it), its aliases as CNAMEs of that name; public names at the gateway."""
    lab = topo.lab
    mesh = next(g for g in lab.guests if g.role == "mesh")
    want: dict[str, set] = {}
    for g in lab.guests:
        want.setdefault(f"{g.name}.{lab.domains.internal}", set()).add(("A", str(g.address)))
    for s in lab.services:
        fqdn = f"{s.name}.{lab.domains.internal}"
        want[fqdn] = {("A", str(mesh.address))}
        for a in s.aliases:
            want[f"{a}.{lab.domains.internal}"] = {("CNAME", fqdn)}
        if s.public:
            want[s.public_host] = {("A", str(topo.gateway.address))}
    want[f"{lab.dns.nameserver}.{lab.domains.public}"] = {("A", str(topo.dns.address))}
    got = {name: set(rrs) for name, rrs in render.view_answers(topo)["internal"].items()}
    assert got == want
    # One record, the mesh's, even for a service spread over several guests: the mesh balances.
    assert render.view_answers(topo)["internal"][f"llm.{lab.domains.internal}"] == [("A", str(mesh.address))]


def test_external_view_answers_public_names_with_the_public_address_and_nothing_internal(topo):
    lab = topo.lab
    external = render.view_answers(topo)["external"]
    public = {s.public_host for s in lab.services if s.public} | {f"{lab.dns.nameserver}.{lab.domains.public}"}
    assert set(external) == public
    assert all(rrs == [("A", str(lab.network.public_address))] for rrs in external.values())
    private = [lab.network.cidr, *lab.network.management]
    for name, rrs in external.items():
        assert not name.endswith("." + lab.domains.internal)
        for _, value in rrs:
            assert not any(ipaddress.ip_address(value) in net for net in private)


def test_zone_files_hold_exactly_what_view_answers_says(topo):
    """The route audit reads view_answers; the zone files are what named serves."""
    answers = render.view_answers(topo)
    files = files_of(topo)
    for view in render.VIEWS:
        in_files: dict[str, set] = {}
        for z in render.zones(topo):
            if z.view == view:
                for name, rrs in zone_records(files[z.file].content, z.name).items():
                    in_files.setdefault(name, set()).update(rrs)
        assert in_files == {n: set(rrs) for n, rrs in answers[view].items()}, view


def test_every_external_zone_file_is_free_of_internal_names_and_addresses(topo):
    lab = topo.lab
    files = files_of(topo)
    internal_addrs = {str(g.address) for g in lab.guests}
    for z in render.zones(topo):
        if z.view != "external":
            continue
        text = files[z.file].content
        for g in lab.guests:
            assert f"{g.name}.{lab.domains.internal}" not in text
        assert not internal_addrs & set(re.findall(r"\d+\.\d+\.\d+\.\d+", text)), z.file


# -- serials -------------------------------------------------------------------------------
def _serials(topo) -> dict[tuple[str, str], int]:
    return {(z.view, z.name): render.zone_serial(topo, z) for z in render.zones(topo)}


def _add_service(public: bool):
    def edit(raw):
        guest = next(g for g in raw["guests"] if g["role"] == "portainer")["name"]
        entry = {"name": "search", "guests": [guest], "port": 8123, "protocol": "http"}
        if public:
            entry.update(public=True, publicHost=f"search.{raw['domains']['public']}")
        raw["services"].append(entry)
    return edit


def test_serials_are_stable_for_equal_content_and_change_with_it():
    base = topo_of(stack_config("dev"))
    again = topo_of(stack_config("dev"))
    assert files_of(base) == files_of(again), "rendering twice must give the same bytes"
    s0 = _serials(base)
    assert all(1 <= s < 2**31 for s in s0.values())
    pub, internal = base.lab.domains.public, base.lab.domains.internal
    s1 = _serials(topo_of(edited("dev", _add_service(public=False))))
    assert s1[("internal", internal)] != s0[("internal", internal)]
    assert {k: v for k, v in s1.items() if k != ("internal", internal)} == \
           {k: v for k, v in s0.items() if k != ("internal", internal)}, "only the internal zone changed"
    s2 = _serials(topo_of(edited("dev", _add_service(public=True))))
    for view in render.VIEWS:
        assert s2[(view, pub)] != s0[(view, pub)], view
    assert s2[("external", internal)] == s0[("external", internal)], "the empty zone never changes"


def test_the_serial_in_each_zone_file_is_the_one_the_health_check_expects(topo):
    files = files_of(topo)
    health = files[render.HEALTH_SCRIPT].content
    for z in render.zones(topo):
        serial = render.zone_serial(topo, z)
        soa = dns.zone.from_text(files[z.file].content, origin=z.name, relativize=False).get_soa()
        assert soa.serial == serial
        if z.view == "internal":
            assert f"{serial} serial {z.name}" in health


# -- views, grants, key -----------------------------------------------------------------------
def _view(text: str, name: str) -> str:
    start = text.index(f'view "{name}"')
    depth, i = 0, text.index("{", start)
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[start:j + 1]
    raise AssertionError("unbalanced view")


def test_views_match_clients_recursion_and_hardening(topo):
    files = files_of(topo)
    named, views = files[render.NAMED_CONF].content, files[render.VIEWS_CONF].content
    acl = named[named.index('acl "phoenix-internal"'):]
    acl = acl[:acl.index("};")]
    for net in topo.internal_networks:
        assert f"{net};" in acl
    assert "localhost;" not in acl, "the localhost ACL matches every address of the host"
    internal, external = _view(views, "internal"), _view(views, "external")
    assert 'match-clients { !key "phoenix-acme"; "phoenix-internal"; };' in internal
    assert "recursion yes;" in internal and "forward only;" in internal
    for r in topo.lab.network.upstream_resolvers:
        assert f"{r};" in internal
    assert "match-clients { any; };" in external and "recursion no;" in external
    assert f"responses-per-second {topo.lab.dns.rrl_responses_per_second};" in external
    assert "allow-transfer { none; };" in external and "rate-limit" not in internal
    options = files[render.OPTIONS_CONF].content
    for line in ("version none;", "hostname none;", "server-id none;", "allow-transfer { none; };"):
        assert line in options
    # Debian's default zones sit outside any view: named.conf must not include them.
    assert not re.search(r'include\s+"[^"]*named\.conf\.(default-zones|local)"', named)


def test_the_tsig_key_may_set_only_acme_challenge_txt_in_the_external_public_zone(topo):
    lab = topo.lab
    views = files_of(topo)[render.VIEWS_CONF].content
    grants = re.findall(r'grant "([^"]+)" (\w+) (\S+) (\w+);', views)
    want = {f"_acme-challenge.{s.public_host}." for s in lab.services if s.public}
    if lab.acme.wildcard:
        want.add(f"_acme-challenge.{lab.domains.public}.")
    assert {g[2] for g in grants} == want
    assert all(g[:2] == (topo.acme_tsig_key_name, "name") and g[3] == "TXT" for g in grants)
    assert "update-policy" not in _view(views, "internal")
    assert views.count("update-policy") == 1


def test_only_the_key_file_holds_the_secret_and_it_is_readable_by_bind_only(topo):
    files = files_of(topo)
    key = files[render.tsig_key_file(topo)]
    assert (key.mode, key.owner, key.group) == (0o640, "root", "bind")
    assert SECRET in key.content
    assert [p for p, f in files.items() if SECRET in f.content] == [key.path]
    assert f'include "{key.path}";' in files[render.NAMED_CONF].content


def test_the_check_runs_named_checkzone_on_every_zone_then_named_checkconf(topo):
    check = render.check_command(topo)
    for z in render.zones(topo):
        assert f"named-checkzone -k fail {z.name} {z.file}" in check
    assert check.endswith(f"named-checkconf -z {render.NAMED_CONF}")


# -- BIND's own tools ----------------------------------------------------------------------------
def _lay_out(topo, root: Path) -> None:
    """The Debian package's /etc/bind and /var/lib/bind, our files over them, as on the guest."""
    shutil.copytree("/etc/bind", root / "etc/bind", ignore=shutil.ignore_patterns("rndc.key"))
    (root / "var/lib/bind").mkdir(parents=True)
    (root / "var/cache/bind").mkdir(parents=True)
    subprocess.run(["rndc-confgen", "-a", "-c", str(root / "etc/bind/rndc.key")], check=True, capture_output=True)
    for f in render.config_files(topo, SECRET):
        target = root / f.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f.content)
    for z in render.zones(topo):
        if z.dynamic:   # what the check step seeds on a first push
            shutil.copy(root / z.file.lstrip("/"), root / z.live.lstrip("/"))


def test_named_checkconf_loads_every_zone_over_the_debian_tree(topo, tmp_path):
    require_tools("named-checkconf", "rndc-confgen")
    if os.geteuid() != 0:
        pytest.skip("named-checkconf -t (chroot) needs root")
    _lay_out(topo, tmp_path)
    result = subprocess.run(["named-checkconf", "-t", str(tmp_path), "-z", render.NAMED_CONF],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    loaded = re.findall(r"zone (\S+)/IN: loaded serial (\d+)", result.stdout)
    want = {(z.name, str(render.zone_serial(topo, z))) for z in render.zones(topo)} | {("localhost", "2")}
    assert set(loaded) == want


def test_named_checkzone_accepts_every_zone_and_refuses_a_broken_one(topo, tmp_path):
    require_tools("named-checkzone")
    files = files_of(topo)
    for z in render.zones(topo):
        path = tmp_path / Path(z.file).name
        path.write_text(files[z.file].content)
        result = subprocess.run(["named-checkzone", "-k", "fail", z.name, str(path)], capture_output=True, text=True,
                                check=False)
        assert result.returncode == 0, result.stdout
    path.write_text(files[z.file].content + f"bad.{z.name}. IN CNAME\n")
    assert subprocess.run(["named-checkzone", "-k", "fail", z.name, str(path)], capture_output=True,
                          check=False).returncode != 0


def test_generated_scripts_pass_shellcheck(topo, tmp_path):
    require_tools("shellcheck")
    scripts = {"dns-install.sh": render.install_script(topo),
               "dns-reload.sh": render.reload_script(topo),
               "dns-health.sh": render.health_script(topo)}
    for name, text in scripts.items():
        assert text.startswith("#!/bin/bash\n")
        (tmp_path / name).write_text(text)
    result = subprocess.run(["shellcheck", "--severity=style", *sorted(str(p) for p in tmp_path.iterdir())],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def test_install_script_resolves_through_upstream_until_bind_runs(topo):
    text = render.install_script(topo)
    for pkg in ("bind9", "bind9-utils", "dnsutils"):
        assert pkg in text.split("packages=(")[1].split(")")[0].split()
    for r in topo.lab.network.upstream_resolvers:
        assert str(r) in text


# -- bad input is refused before anything is made ---------------------------------------------
def test_overlapping_domains_are_refused():
    def edit(raw):
        raw["domains"]["internal"] = "int." + raw["domains"]["public"]
    with pytest.raises(ConfigError) as err:
        topo_of(edited("dev", edit))
    assert "phoenix:domains.internal:" in str(err.value) and "inside one another" in str(err.value)


def test_a_public_host_on_the_name_servers_name_is_refused():
    def edit(raw):
        raw["services"][0]["publicHost"] = f"ns.{raw['domains']['public']}"
    with pytest.raises(ConfigError) as err:
        topo_of(edited("dev", edit))
    assert "phoenix:services[0].publicHost:" in str(err.value) and "name server" in str(err.value)


def test_a_stack_without_public_services_still_loads(tmp_path):
    """No public host and no wildcard: an update-policy with no grant, public zones with only the NS."""
    require_tools("named-checkconf", "rndc-confgen")
    if os.geteuid() != 0:
        pytest.skip("named-checkconf -t (chroot) needs root")

    def edit(raw):
        for s in raw["services"]:
            s.pop("public", None), s.pop("publicHost", None)
    topo = topo_of(edited("dev", edit))
    assert not topo.public_hosts and not render.acme_challenge_names(topo)
    _lay_out(topo, tmp_path)
    result = subprocess.run(["named-checkconf", "-t", str(tmp_path), "-z", render.NAMED_CONF],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
