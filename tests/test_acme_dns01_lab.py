"""A whole ACME DNS-01 order for the gateway's public certificate, from the plan alone.

The cluster stack asks for DNS-01 with a wildcard. Inside the isolated namespace
(scripts/in-netns.sh), over copy-on-write copies of /etc, /var, /run and /usr/local
(gateway_harness.GuestRoot):

- the gateway guest comes up from the plan's steps (gateway_harness.GatewayLab: Debian's nginx,
  then the install, placeholder and nginx steps);
- the real BIND starts with Debian's default config and the plan's own DNS config step then runs
  (phoenix-apply with the step's exact arguments and bundle: named.conf, the two views, the TSIG
  key), as tests/test_dns_lab.py does;
- the real Pebble plays Let's Encrypt and asks the lab's public address for DNS, as the world
  does (on a real site, the NAT leads it to the DNS guest). That address is outside the internal
  view's networks, so Pebble's queries land in the external view;
- the plan's public-cert step runs (public-cert.sh, the certbot ini, the rfc2136 credentials
  file) with one edit: its certbot ini names Pebble as the ACME server (the test's copy only).

Certbot sends its signed messages from an address of the internal networks (here the kernel
picks the DNS address itself as the source; on the guest it is the gateway's): the TSIG
signature, not the source, must pick the external view. Expected names are computed
here from the stack model, not from the renderer.
"""

from __future__ import annotations

import ipaddress
import shutil
import ssl
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.rcode
import pytest
from cryptography import x509

from components.gateway import STEP_PUBLIC_CERT
from conftest import shipped_plan
from gateway_harness import PEBBLE, GatewayLab, file_leaf, run_step, served_leaf, start_pebble, with_file
from lab import Processes, add_loopback_addresses, require_isolated, require_tools
from phoenix.render import gateway as gw
from test_dns_lab import EXTERNAL, Server, _private_mounts, _wait_rndc, answers, config_step

pytestmark = pytest.mark.lab

STACK = "cluster"       # the shipped stack that asks for DNS-01 and a wildcard
WRONG_SECRET = "c2VjcmV0LXRoYXQtaXMtbm90LXRoZS1waG9lbml4LWtleQ=="   # a valid base64, not the key


@dataclass
class ChallengeWatch:
    """Asks both views for the ``_acme-challenge`` TXT records while an order runs (over TCP:
    the external view's rate limit is for UDP), and keeps every non-empty answer it got."""
    server: Server
    names: list[str]
    sources: dict[str, str]
    seen: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    asked: int = 0

    def __post_init__(self):
        self.seen = {view: set() for view in self.sources}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._ask, daemon=True)

    def _ask(self):
        while not self.stop.is_set():
            for view, source in self.sources.items():
                for name in self.names:
                    try:
                        txt = answers(self.server.query(name, "TXT", source, tcp=True), "TXT")
                    except dns.exception.DNSException:
                        continue
                    self.asked += 1
                    self.seen[view] |= {(name, t) for t in txt}
            time.sleep(0.1)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


@dataclass
class Dns01Lab:
    glab: GatewayLab
    server: Server
    pebble_root: Path
    watched: list[str]
    refused: subprocess.CompletedProcess | None = None
    refused_watch: ChallengeWatch | None = None
    refused_log: str = ""
    refused_left_lineage: bool = False
    issued: subprocess.CompletedProcess | None = None
    issued_watch: ChallengeWatch | None = None
    issued_seconds: float = 0.0

    @property
    def lab(self):
        return self.glab.topo.lab

    def watch(self) -> ChallengeWatch:
        return ChallengeWatch(self.server, self.watched,
                              {"internal": self.glab.gateway_address, "external": EXTERNAL})


def start_bind(plan, tmp: Path, procs: Processes, internal_src: str) -> Server:
    """named in the copy-on-write root, as the DNS guest's install step leaves it (Debian's
    default config, rndc key made per host as the package's postinst does), then the plan's
    config step through phoenix-apply."""
    Path("/etc/bind/rndc.key").unlink(missing_ok=True)
    subprocess.run(["rndc-confgen", "-a", "-c", "/etc/bind/rndc.key"], check=True, capture_output=True)
    shutil.chown("/etc/bind/rndc.key", "bind", "bind")
    for d in ("/var/lib/bind", "/var/cache/bind", "/run/named"):
        Path(d).mkdir(parents=True, exist_ok=True)
        shutil.chown(d, "root", "bind")
        Path(d).chmod(0o775)
    log = tmp / "named.log"
    with open(log, "w") as out:
        proc = procs.start(["named", "-g", "-u", "bind"], stdout=out, stderr=subprocess.STDOUT)
    _wait_rndc(log, proc)
    secret = plan.run.named("tsig-key").outputs["base64"]   # the RandomBytes resource's output
    server = Server(STACK, plan, tmp, tmp / "dns-state", secret, config_step(plan), log, internal_src=internal_src)
    result = server.apply(server.step)
    assert result.returncode == 0, f"the plan's DNS config step failed:\n{result.stderr}\n{log.read_text()[-3000:]}"
    return server


def challenge_names(lab) -> list[str]:
    """Where certbot may put DNS-01 tokens: the apex (which the wildcard's authorization uses
    too) and every public host."""
    public = lab.domains.public
    return [f"_acme-challenge.{h}" for h in dict.fromkeys([public, *(s.public_host for s in lab.services if s.public)])]


@pytest.fixture(scope="module")
def dns01(tmp_path_factory):
    """Both orders, in the order a user meets them: first with a wrong TSIG secret (refused),
    then with the plan's own files (issued). The tests below check what each left behind."""
    require_isolated()
    require_tools("named", "named-checkconf", "named-checkzone", "rndc", "rndc-confgen",
                  "nginx", "pebble", "certbot", "openssl", "curl")
    if not Path("/usr/lib/python3/dist-packages/certbot_dns_rfc2136").is_dir():
        pytest.skip("certbot's dns-rfc2136 plugin is missing: run `make deps` (python3-certbot-dns-rfc2136)")
    if not _private_mounts():
        pytest.fail("refusing to mount over /etc: not in a private mount namespace (run through scripts/in-netns.sh)")
    plan = shipped_plan(STACK)
    topo = plan.topo
    assert topo.lab.acme.challenge == "dns-01" and topo.lab.acme.wildcard, f"the {STACK} stack changed its ACME setup"
    public = str(topo.lab.network.public_address)
    assert not any(topo.lab.network.public_address in net for net in [topo.lab.network.cidr,
                                                                      *topo.lab.network.management])
    tmp = tmp_path_factory.mktemp("acme-dns01")
    procs = Processes()
    glab = GatewayLab(plan, tmp, procs)
    try:
        glab.up(mesh=False)
        add_loopback_addresses(str(topo.dns.address), public, EXTERNAL)
        server = start_bind(plan, tmp, procs, glab.gateway_address)
        (tmp / "pebble").mkdir()
        pebble_ca = start_pebble(procs, tmp / "pebble", dnsserver=f"{public}:53")
        with urllib.request.urlopen("https://127.0.0.1:15000/roots/0", timeout=5,
                                    context=ssl.create_default_context(cafile=pebble_ca)) as resp:
            (tmp / "pebble-root.pem").write_bytes(resp.read())
        d = Dns01Lab(glab, server, tmp / "pebble-root.pem", challenge_names(topo.lab))

        step = glab.steps[STEP_PUBLIC_CERT]
        line = f"server = {topo.public_acme_directory}"
        assert line in glab.files[gw.CERTBOT_INI].content
        to_pebble = with_file(step.value("stdin"), gw.CERTBOT_INI, lambda t: t.replace(line, f"server = {PEBBLE}"))
        env = {**glab.env, "REQUESTS_CA_BUNDLE": pebble_ca}

        secret_line = f"dns_rfc2136_secret = {server.secret}"
        assert secret_line in glab.files[gw.RFC2136_CREDENTIALS].content
        wrong_line = f"dns_rfc2136_secret = {WRONG_SECRET}"
        wrong = with_file(to_pebble, gw.RFC2136_CREDENTIALS, lambda t: t.replace(secret_line, wrong_line))
        log_before = server.log.read_text()
        with d.watch() as d.refused_watch:
            d.refused = run_step(step, env, wrong)
        d.refused_log = server.log.read_text()[len(log_before):]
        d.refused_left_lineage = Path(gw.LIVE_DIR).exists()

        start = time.monotonic()
        with d.watch() as d.issued_watch:
            d.issued = run_step(step, env, to_pebble)
        d.issued_seconds = time.monotonic() - start
        yield d
    finally:
        glab.down()


def _sans(pem_path: str) -> set[str]:
    cert = x509.load_pem_x509_certificate(Path(pem_path).read_bytes())
    return set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
               .get_values_for_type(x509.DNSName))


def _covered(host: str, sans: set[str]) -> bool:
    """A TLS client's rule (RFC 6125): an exact name, or ``*.`` for exactly one leftmost label."""
    return host in sans or ("." in host and f"*.{host.split('.', 1)[1]}" in sans)


# ---- the order with the plan's files -----------------------------------------------------------
def test_certbot_obtains_the_certificate_by_dns01(dns01):
    result = dns01.issued
    assert result.returncode == 0, f"the public-cert step failed:\n{result.stdout}\n{result.stderr}"
    assert Path(gw.LIVE_DIR, "fullchain.pem").exists()
    print(f"DNS-01 order with the plan's files: {dns01.issued_seconds:.1f} s")


def test_certificate_names_the_public_domain_its_wildcard_and_every_public_host(dns01):
    lab = dns01.lab
    sans = _sans(f"{gw.LIVE_DIR}/cert.pem")
    public = lab.domains.public
    assert {public, f"*.{public}"} <= sans, sans
    hosts = [s.public_host for s in lab.services if s.public]
    assert hosts and all(_covered(h, sans) for h in hosts), (hosts, sans)


def test_certificate_chains_to_pebbles_root_and_nginx_serves_it(dns01):
    check = subprocess.run(["openssl", "verify", "-CAfile", str(dns01.pebble_root), "-untrusted",
                            f"{gw.LIVE_DIR}/chain.pem", f"{gw.LIVE_DIR}/cert.pem"],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    host = next(s.public_host for s in dns01.lab.services if s.public)
    assert served_leaf(host, dns01.glab.gateway_address) == file_leaf(f"{gw.LIVE_DIR}/cert.pem")


def test_signed_updates_landed_in_the_external_view_only(dns01):
    """named's log says which view took each of certbot's updates, and from which address."""
    log = dns01.server.log.read_text()
    added = [line for line in log.splitlines() if "updating zone" in line and "_acme-challenge" in line]
    assert added, "named logged no update of an _acme-challenge name"
    assert all("view external:" in line for line in added), "\n".join(added)
    # ... although they came from an address the internal view matches: the key chose the view.
    lab = dns01.lab
    internal = [lab.network.cidr, *lab.network.management]
    senders = {ipaddress.ip_address(line.split(" client @", 1)[1].split()[1].split("#")[0]) for line in added}
    assert all(any(a in net for net in internal) for a in senders), senders
    assert dns01.issued_watch.seen["external"], "the external view never served the challenge (watch too slow?)"
    assert {n for n, _ in dns01.issued_watch.seen["external"]} <= set(dns01.watched)


def test_internal_view_never_served_challenge_records(dns01):
    """Guests get the internal view, whose public zone is static (DESIGN.md, views.conf): the
    tokens exist for the world only."""
    watch = dns01.issued_watch
    assert watch.asked > 20, f"too few answers to mean anything ({watch.asked})"
    assert not watch.seen["internal"], watch.seen["internal"]


def test_challenge_records_are_gone_after_the_order(dns01):
    for name in dns01.watched:
        msg = dns01.server.query(name, "TXT", EXTERNAL, tcp=True)
        assert not answers(msg, "TXT"), f"{name} still has {answers(msg, 'TXT')}"
        assert msg.rcode() == dns.rcode.NXDOMAIN, (name, dns.rcode.to_text(msg.rcode()))


# ---- the order with a wrong TSIG secret ---------------------------------------------------------
def test_a_wrong_tsig_secret_fails_the_order_and_named_refuses_it(dns01):
    result = dns01.refused
    assert result.returncode != 0, "certbot succeeded with a wrong TSIG secret"
    out = result.stdout + result.stderr
    assert "check failed; previous files restored" in out, out
    # certbot's own message: its first signed message (the zone's SOA lookup) got BADSIG back
    assert "Encountered error when making query: The peer didn't like the signature we sent" in out, out
    # named's side: the message's signature is not the key's, so nothing is done for it
    assert "tsig verify failure" in dns01.refused_log or "BADSIG" in dns01.refused_log, dns01.refused_log[-2000:]
    assert "updating zone" not in dns01.refused_log, dns01.refused_log[-2000:]
    assert not dns01.refused_watch.seen["external"] and not dns01.refused_watch.seen["internal"]
    assert not dns01.refused_left_lineage, "a certificate lineage appeared although the order failed"
