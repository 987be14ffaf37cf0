"""Dual-horizon DNS: BIND9 with two views, rendered from the topology.

One list of zones (``zones``) is the single source for the zone files, ``views.conf``,
the reload and health scripts and ``view_answers`` (what each view must answer, for the
route audit). Nothing here types a name or an address: records come from the topology.

Views. The internal view matches the internal networks and loopback, recurses for them
through the upstream resolvers, and serves the internal zone plus the public zone with
internal addresses. The external view matches everyone else: no recursion, rate limited,
only the public zone with the public address and an empty internal zone, so internal
names get NXDOMAIN and reveal nothing. A message signed with the ACME TSIG key always
reaches the external view, whose public zone is the one RFC 2136 updates must change.

Serials. A zone's serial is a hash of its rendered content (everything but the serial):
re-running renders the same bytes, so nothing re-runs; any content change gives another
serial. A pure function of content cannot be monotonic (content A, then B, then A again
must reuse A's serial), and monotonic serials matter only to secondaries, which this
server has none of (transfers denied, notify off). Resolvers cache by TTL, not serial. The
dynamic zone's serial moves on with updates; when a new file replaces it the journal is
dropped (see dns-reload.sh), so a serial that goes "back" confuses nothing.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import dataclass

from phoenix.bundle import GuestFile
from phoenix.render import SCRIPTS, render
from phoenix.topology import Record, Topology

NAMED_CONF = "/etc/bind/named.conf"
OPTIONS_CONF = "/etc/bind/named.conf.options"
PHOENIX_DIR = "/etc/bind/phoenix"
VIEWS_CONF = f"{PHOENIX_DIR}/views.conf"
ZONE_DIR = f"{PHOENIX_DIR}/zones"
#: named writes here (journals, dumps of dynamic zones); Debian's bind9 makes it root:bind 0775.
DYNAMIC_DIR = "/var/lib/bind"
#: where phoenix steps keep their scripts (components.base.SCRIPTS; the core does not import the shell).
RELOAD_SCRIPT = f"{SCRIPTS}/dns-reload.sh"
HEALTH_SCRIPT = f"{SCRIPTS}/dns-health.sh"
INSTALL_STEP = "bind-install"
VIEWS = ("internal", "external")


@dataclass(frozen=True)
class Zone:
    name: str                          # origin, no trailing dot
    view: str                          # "internal" or "external"
    nameserver: str                    # SOA MNAME and the apex NS, fully qualified
    contact: str                       # SOA RNAME
    records: tuple[Record, ...]
    file: str                          # the pushed, checked zone file on the guest
    live: str | None = None         # dynamic zones: named's own copy (journal beside it)
    update_names: tuple[str, ...] = () # names the TSIG key may set TXT records on
    comment: str = ""

    @property
    def dynamic(self) -> bool:
        return self.live is not None


def public_nameserver(topo: Topology) -> str:
    """The public zone's name server; both views answer it (externally: the public address)."""
    return f"{topo.lab.dns.nameserver}.{topo.lab.domains.public}"


def tsig_key_file(topo: Topology) -> str:
    return f"{PHOENIX_DIR}/{topo.acme_tsig_key_name}.key"


def acme_challenge_names(topo: Topology) -> tuple[str, ...]:
    """``_acme-challenge`` names DNS-01 needs: one per public host, the apex for a wildcard."""
    hosts = list(topo.public_hosts)
    if topo.lab.acme.wildcard:
        hosts.insert(0, topo.lab.domains.public)
    return tuple(f"_acme-challenge.{h}" for h in dict.fromkeys(hosts))


def zones(topo: Topology) -> list[Zone]:
    lab = topo.lab
    pub, internal = lab.domains.public, lab.domains.internal
    ns_pub, ns_int = public_nameserver(topo), topo.guest_fqdn(topo.dns)
    return [
        Zone(internal, "internal", ns_int, f"hostmaster.{internal}", tuple(topo.internal_records),
             f"{ZONE_DIR}/db.{internal}.internal"),
        Zone(pub, "internal", ns_pub, f"hostmaster.{pub}",
             (Record(ns_pub, "A", str(topo.dns.address)), *topo.public_records_internal_view),
             f"{ZONE_DIR}/db.{pub}.internal"),
        Zone(pub, "external", ns_pub, f"hostmaster.{pub}",
             (Record(ns_pub, "A", str(lab.network.public_address)), *topo.public_records_external_view),
             f"{ZONE_DIR}/db.{pub}.external", live=f"{DYNAMIC_DIR}/db.{pub}.external",
             update_names=acme_challenge_names(topo)),
        # Empty, so the world gets NXDOMAIN (not REFUSED) for internal names, and nothing else.
        Zone(internal, "external", ns_pub, f"hostmaster.{pub}", (), f"{ZONE_DIR}/db.{internal}.external",
             comment="Empty: NXDOMAIN for every internal name, no record, no address."),
    ]


def _value(r: Record) -> str:
    if r.type == "CNAME":
        return r.value + "."
    if r.type == "TXT":
        return '"' + r.value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return r.value


def serial_of(body: str) -> int:
    """A serial from content: 1 .. 2**31-1, so it is valid however a tool reads it."""
    return int.from_bytes(hashlib.sha256(body.encode()).digest()[:8], "big") % (2**31 - 1) + 1


#: what a zone file line may hold: names of letters, digits, '-' and '_' (``_acme-challenge``)
#: joined by dots, addresses, and TXT strings without line breaks. The model refuses anything
#: else long before; this keeps a line a line whatever reaches the renderer.
_ZONE_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}))*")
_ZONE_TYPES = {"A": re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}"), "CNAME": _ZONE_NAME,
               "TXT": re.compile(r"[ -~]{0,255}")}


def _check_zone(zone: Zone) -> None:
    names = [zone.name, zone.nameserver, zone.contact, *(r.name for r in zone.records)]
    bad = [n for n in names if not _ZONE_NAME.fullmatch(n)]
    bad += [f"{r.type} {r.value}" for r in zone.records
            if r.type not in _ZONE_TYPES or not _ZONE_TYPES[r.type].fullmatch(r.value)]
    if bad:
        raise ValueError(f"zone {zone.name!r} ({zone.view}): {', '.join(map(repr, bad))} cannot be written as "
                         "one zone file line")


def _rendered(topo: Topology, zone: Zone) -> tuple[int, str]:
    _check_zone(zone)
    records = [Record(r.name, r.type, _value(r)) for r in zone.records]
    ctx = dict(zone=zone, records=records, ttl=topo.lab.dns.ttl, contact=zone.contact)
    serial = serial_of(render("dns/zone.j2", serial="SERIAL", **ctx))
    return serial, render("dns/zone.j2", serial=serial, **ctx)


def zone_text(topo: Topology, zone: Zone) -> str:
    return _rendered(topo, zone)[1]


def zone_serial(topo: Topology, zone: Zone) -> int:
    return _rendered(topo, zone)[0]


def view_answers(topo: Topology, zs: list[Zone] | None = None) -> dict[str, dict[str, list[tuple[str, str]]]]:
    """What each view answers: view -> FQDN (no trailing dot) -> [(rtype, value)], from ``zones``.

    The records of the zones (A, CNAME), not their apex SOA and NS; CNAME values are FQDNs
    without the trailing dot. The external view's empty internal zone contributes nothing.
    """
    out: dict[str, dict[str, list[tuple[str, str]]]] = {v: {} for v in VIEWS}
    for z in zones(topo) if zs is None else zs:
        names = out[z.view]
        for r in z.records:
            names.setdefault(r.name, []).append((r.type, r.value))
    return out


# -- configuration files -------------------------------------------------------------------
def _common(topo: Topology) -> dict:
    return dict(dns_fqdn=topo.guest_fqdn(topo.dns), tsig_key_name=topo.acme_tsig_key_name,
                tsig_key_file=tsig_key_file(topo), options_conf=OPTIONS_CONF, views_conf=VIEWS_CONF)


def named_conf(topo: Topology) -> str:
    return render("dns/named.conf.j2", internal_networks=topo.internal_networks, **_common(topo))


def options_conf(topo: Topology) -> str:
    return render("dns/named.conf.options.j2", **_common(topo))


def views_conf(topo: Topology, zs: list[Zone] | None = None) -> str:
    zs = zones(topo) if zs is None else zs
    return render("dns/views.conf.j2",
                  internal_zones=[z for z in zs if z.view == "internal"],
                  external_zones=[z for z in zs if z.view == "external"],
                  forwarders=[str(r) for r in topo.lab.network.upstream_resolvers],
                  rrl_responses_per_second=topo.lab.dns.rrl_responses_per_second, **_common(topo))


def tsig_key_text(topo: Topology, secret: str) -> str:
    return render("dns/tsig.key.j2", name=topo.acme_tsig_key_name, algorithm=topo.acme_tsig_algorithm,
                  secret=secret)


# -- apply hooks ---------------------------------------------------------------------------
def check_command(topo: Topology, zs: list[Zone] | None = None) -> str:
    """Every zone file by named-checkzone (its message names the file and line), then the
    whole config with its zones as named would load it."""
    q = shlex.quote
    zs = zones(topo) if zs is None else zs
    checks = [f"named-checkzone -k fail {q(z.name)} {q(z.file)}" for z in zs]
    # named-checkconf -z loads a dynamic zone from named's own copy, which the reload makes;
    # on the first push there is none yet: seed it with the pushed file just checked.
    checks += [f"{{ test -e {q(z.live)} || install -o bind -g bind -m 0644 {q(z.file)} {q(z.live)}; }}"
               for z in zs if z.live is not None]          # the dynamic zones
    return " && ".join(checks + [f"named-checkconf -z {NAMED_CONF}"])


# The hook ships in the step's own bundle: when a first push is rolled back it goes with the
# rest, and named (which loaded the new files) is reloaded onto the package's config by hand.
RELOAD_COMMAND = f"if [ -e {RELOAD_SCRIPT} ]; then bash {RELOAD_SCRIPT}; else rndc reload; fi"
HEALTH_COMMAND = f"bash {HEALTH_SCRIPT}"


def reload_script(topo: Topology, zs: list[Zone] | None = None) -> str:
    rows = [dict(name=z.name, view=z.view, file=z.file, live=z.live, serial=zone_serial(topo, z))
            for z in (zones(topo) if zs is None else zs)]
    return render("dns/dns-reload.sh.j2", dynamic_zones=[r for r in rows if r["live"]],
                  static_zones=[r for r in rows if not r["live"]], **_common(topo))


def health_script(topo: Topology, zs: list[Zone] | None = None) -> str:
    """Known records of both views, and the static zones' serials (proof the new files are live)."""
    dns, ns_pub = topo.dns, public_nameserver(topo)
    q = shlex.quote
    checks = [dict(what=f"internal view: {topo.guest_fqdn(dns)} A", expected=str(dns.address),
                   command=f"ask {q(topo.guest_fqdn(dns))} A")]
    for z in zones(topo) if zs is None else zs:
        if z.view == "internal":
            checks.append(dict(what=f"internal view: serial of {z.name}", expected=str(zone_serial(topo, z)),
                               command=f"serial {q(z.name)}"))
    # Signed with the TSIG key, a query reaches the external view from here too.
    checks.append(dict(what=f"external view: {ns_pub} A", expected=str(topo.lab.network.public_address),
                       command=f"ask -k {q(tsig_key_file(topo))} {q(ns_pub)} A"))
    checks = [dict(c, what=q(c["what"]), expected=q(c["expected"])) for c in checks]
    return render("dns/dns-health.sh.j2", checks=checks, **_common(topo))


def install_script(topo: Topology) -> str:
    return render("dns/dns-install.sh.j2", upstream_resolvers=[str(r) for r in topo.lab.network.upstream_resolvers],
                  **_common(topo))


def _conf(path: str, text: str, mode: int = 0o644) -> GuestFile:
    return GuestFile(path, text, mode, "root", "bind")


def plain_config_files(topo: Topology, zs: list[Zone] | None = None) -> list[GuestFile]:
    """Everything the DNS guest's config push installs but the TSIG key file (``zs``: the zones
    the route audit read, so the pushed zone files are the records it proved)."""
    zs = zones(topo) if zs is None else zs
    files = [_conf(NAMED_CONF, named_conf(topo)), _conf(OPTIONS_CONF, options_conf(topo)),
             _conf(VIEWS_CONF, views_conf(topo, zs))]
    files += [_conf(z.file, zone_text(topo, z)) for z in zs]
    files += [GuestFile(RELOAD_SCRIPT, reload_script(topo, zs), 0o700),
              GuestFile(HEALTH_SCRIPT, health_script(topo, zs), 0o700)]
    return files


def key_file(topo: Topology, tsig_secret: str) -> GuestFile:
    """The TSIG key (root and bind only): the one secret of the config push."""
    return _conf(tsig_key_file(topo), tsig_key_text(topo, tsig_secret), 0o640)


def config_files(topo: Topology, tsig_secret: str, zs: list[Zone] | None = None) -> list[GuestFile]:
    """Everything the DNS guest's config push installs; only the key file holds a secret."""
    return [*plain_config_files(topo, zs), key_file(topo, tsig_secret)]
