"""Real BIND with the plan's exact DNS files, queried as guests and as the world.

Inside the isolated namespace (scripts/in-netns.sh): temporary directories are bind-mounted
over /etc/bind (a copy of the Debian package's tree, as on the guest), /var/lib/bind,
/var/cache/bind and /run/named, and an overlay over /usr/local/lib takes the pushed scripts.
named starts with Debian's default config, as the install step leaves it; then the plan's
own config step runs: ``phoenix-apply`` with the step's exact arguments and bundle. Clients
are played with dnspython's ``source=``: a guest address and a management address
(internal), 198.18.0.1 (external, benchmarking range).

Expected answers are computed here from the stack model (lab), not from the renderer. The
external source address sits on this host's lo, so these tests also prove the internal view
does not match BIND's ``localhost`` ACL (every local address), only the listed networks.
"""

from __future__ import annotations

import contextlib
import grp
import ipaddress
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update
import pytest

from conftest import ROOT, SHIPPED_STACKS, edited, shipped_plan
from lab import Processes, add_loopback_addresses, require_isolated, require_tools
from phoenix.bundle import pack, unpack
from phoenix.plan import make_plan
from phoenix.plan.writer import pushed_files
from phoenix.render import dns as render

pytestmark = pytest.mark.lab

CONFIG_STEP = "dns-bind-config"
EXTERNAL = "198.18.0.1"          # TEST-NET (benchmarking), outside every internal network
APPLY = ROOT / "configs" / "common" / "phoenix-apply.sh"
MOUNTED = ("/etc/bind", "/var/lib/bind", "/var/cache/bind", "/run/named")
TIMEOUT = 3.0


def _run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, check=False, **kw)


def _private_mounts() -> bool:
    """Bind mounts only where they cannot reach the machine's own mount namespace: some
    ancestor of this process (the shell that ran in-netns.sh) must be in another one."""
    mine = os.readlink("/proc/self/ns/mnt")
    pid = os.getppid()
    while pid > 1:
        try:
            if os.readlink(f"/proc/{pid}/ns/mnt") != mine:
                return True
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


@dataclass
class Step:
    args: list[str]          # phoenix-apply's arguments (after the program name)
    stdin: str               # the bundle


def config_step(plan) -> Step:
    r = plan.run.named(CONFIG_STEP)
    argv = shlex.split(r.value("create"))
    assert argv[0].endswith("/phoenix-apply"), argv
    return Step(argv[1:], r.value("stdin"))


@dataclass
class Server:
    stack: str
    plan: object
    root: Path
    state: Path
    secret: str
    step: Step
    log: Path
    internal_src: str = ""
    mgmt_src: str = ""

    @property
    def lab(self):
        return self.plan.topo.lab

    @property
    def address(self) -> str:
        return str(self.plan.topo.dns.address)

    def query(self, name: str, rtype: str = "A", source: str | None = None, *, tcp: bool = False,
              rd: bool = False, rdclass: str = "IN", keyring=None) -> dns.message.Message:
        q = dns.message.make_query(name, rtype, rdclass=rdclass)
        if not rd:
            q.flags &= ~dns.flags.RD
        if keyring is not None:
            q.use_tsig(keyring, keyname=self.plan.topo.acme_tsig_key_name, algorithm=dns.tsig.HMAC_SHA256)
        send = dns.query.tcp if tcp else dns.query.udp
        return send(q, self.address, timeout=TIMEOUT, source=source or self.internal_src)

    def apply(self, step: Step) -> subprocess.CompletedProcess:
        env = {**os.environ, "PHOENIX_STATE": str(self.state)}
        return subprocess.run(["bash", str(APPLY), *step.args], input=step.stdin, capture_output=True,
                              text=True, env=env, timeout=120, check=False)

    def keyring(self, secret: str | None = None):
        return dns.tsigkeyring.from_text({self.plan.topo.acme_tsig_key_name: secret or self.secret})


def answers(msg: dns.message.Message, rtype: str) -> set[str]:
    want = dns.rdatatype.from_text(rtype)
    out = set()
    for rrset in msg.answer:
        if rrset.rdtype == want:
            out |= {r.to_text().rstrip(".") if rtype == "CNAME" else r.to_text() for r in rrset}
    return out


def all_text(msg: dns.message.Message) -> str:
    return "\n".join(rr.to_text() for section in (msg.answer, msg.authority, msg.additional) for rr in section)


def _wait_rndc(log: Path, proc, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"named exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        if _run("rndc", "status").returncode == 0:
            return
        time.sleep(0.1)
    raise TimeoutError(f"named did not answer rndc:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def debian_named(stack: str, plan, tmp: Path) -> Iterator[Server]:
    """The DNS guest as its install step leaves it: the package's /etc/bind (rndc.key made per
    host, as its postinst does) bind-mounted over this private mount namespace's, named running
    Debian's default config. The plan's config step is not applied yet (``Server.apply``)."""
    require_isolated()
    require_tools("named", "named-checkconf", "named-checkzone", "rndc", "rndc-confgen", "dig")
    if not _private_mounts():
        pytest.fail("refusing to bind-mount over /etc/bind: not in a private mount namespace "
                    "(run through scripts/in-netns.sh)")
    topo, lab = plan.topo, plan.topo.lab
    trees = {m: tmp / m.strip("/").replace("/", "-") for m in MOUNTED}
    shutil.copytree("/etc/bind", trees["/etc/bind"], symlinks=True,
                    ignore=shutil.ignore_patterns("rndc.key"))
    for m in MOUNTED[1:]:
        trees[m].mkdir()
        shutil.chown(trees[m], "root", "bind")
        trees[m].chmod(0o775)
    upper, work = tmp / "usr-local-lib.upper", tmp / "usr-local-lib.work"
    upper.mkdir(), work.mkdir()
    mounted: list[str] = []
    procs = Processes()
    try:
        for m in MOUNTED:
            subprocess.run(["mount", "--bind", str(trees[m]), m], check=True)
            mounted.append(m)
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir=/usr/local/lib,upperdir={upper},workdir={work}", "/usr/local/lib"], check=True)
        mounted.append("/usr/local/lib")
        subprocess.run(["rndc-confgen", "-a", "-c", "/etc/bind/rndc.key"], check=True, capture_output=True)
        shutil.chown("/etc/bind/rndc.key", "bind", "bind")

        guests = [g for g in lab.guests if g.role != "dns"]
        mgmt = [str(next(n.hosts())) for n in lab.network.management]
        add_loopback_addresses(str(topo.dns.address), *[str(g.address) for g in guests], *mgmt, EXTERNAL)
        log = tmp / "named.log"
        with open(log, "w") as out:
            proc = procs.start(["named", "-g", "-u", "bind"], stdout=out, stderr=subprocess.STDOUT)
        _wait_rndc(log, proc)   # Debian's default config, as the install step leaves it

        # The TSIG secret as the program made it (the RandomBytes resource's output).
        secret = plan.run.named("tsig-key").outputs["base64"]
        yield Server(stack, plan, tmp, tmp / "state", secret, config_step(plan), log,
                     internal_src=str(topo.gateway.address), mgmt_src=mgmt[0] if mgmt else "")
    finally:
        procs.stop_all()
        for m in reversed(mounted):
            subprocess.run(["umount", m], check=False)


@pytest.fixture(scope="module", params=SHIPPED_STACKS)
def server(request, tmp_path_factory):
    plan = shipped_plan(request.param)
    with debian_named(request.param, plan, tmp_path_factory.mktemp(f"dns-{request.param}")) as s:
        result = s.apply(s.step)
        assert result.returncode == 0, f"the plan's config step failed:\n{result.stderr}\n{s.log.read_text()[-3000:]}"
        assert "files applied" in result.stdout
        yield s

def _wait_answer(server: Server, name: str, rtype: str, want: set[str], source: str, timeout=10.0):
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        got = answers(server.query(name, rtype, source, tcp=True), rtype)
        if got == want:
            return
        time.sleep(0.1)
    raise AssertionError(f"{name} {rtype} from {source}: want {want}, got {got}")


# -- the plan's files, exactly ---------------------------------------------------------------
def test_plan_files_are_installed_exactly(server):
    files = pushed_files(server.plan.run, server.plan.topo)["dns"]
    pushed = {p: f for p, (f, step) in files.items() if step == CONFIG_STEP}
    assert "/etc/bind/named.conf" in pushed, "the config step must own named.conf"
    for path, f in pushed.items():
        st = os.stat(path)
        assert Path(path).read_text() == f.content, path
        assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (
            f.mode, _uid(f.owner), _gid(f.group)), f"{path}: owner or mode differs from the plan"
    key = pushed[render.tsig_key_file(server.plan.topo)]
    assert (key.mode, key.owner, key.group) == (0o640, "root", "bind")
    assert server.secret in key.content


def _uid(name):
    return pwd.getpwnam(name).pw_uid


def _gid(name):
    return grp.getgrnam(name).gr_gid


# -- the internal view -----------------------------------------------------------------------
def _internal_sources(server: Server) -> list[str]:
    return [server.internal_src] + ([server.mgmt_src] if server.mgmt_src else [])


def test_internal_clients_get_every_guest(server):
    lab = server.lab
    for source in _internal_sources(server):
        for g in lab.guests:
            msg = server.query(f"{g.name}.{lab.domains.internal}", "A", source)
            assert msg.rcode() == dns.rcode.NOERROR and msg.flags & dns.flags.AA, (g.name, source)
            assert answers(msg, "A") == {str(g.address)}, (g.name, source)


def test_internal_clients_get_the_mesh_for_every_service_and_aliases_as_cname(server):
    """A service's name leads to the mesh (which balances over its replicas), however many there
    are; an alias is a CNAME of it; a guest's own name leads to the guest."""
    lab = server.lab
    mesh = {str(next(g for g in lab.guests if g.role == "mesh").address)}
    for source in _internal_sources(server):
        for s in lab.services:
            fqdn = f"{s.name}.{lab.domains.internal}"
            msg = server.query(fqdn, "A", source)
            assert answers(msg, "A") == mesh and len(msg.answer[0]) == 1, s.name
            for alias in s.aliases:
                msg = server.query(f"{alias}.{lab.domains.internal}", "A", source)
                assert answers(msg, "CNAME") == {fqdn}, alias
                assert answers(msg, "A") == mesh, alias   # the target, from the same answer
            for g in s.guests:
                assert answers(server.query(f"{g}.{lab.domains.internal}", "A", source), "A") == \
                    {str(lab.guest(g).address)}, g


def test_public_names_resolve_to_the_gateway_internally(server):
    lab = server.lab
    gateway = next(g for g in lab.guests if g.role == "gateway")
    public = [s.public_host for s in lab.services if s.public]
    assert public, "the shipped stacks have public services"
    for source in _internal_sources(server) + ["127.0.0.1"]:
        for host in public:
            assert answers(server.query(host, "A", source), "A") == {str(gateway.address)}, (host, source)


def test_internal_clients_may_recurse(server):
    msg = server.query("phoenix-recursion-probe.example.net", "A", server.internal_src, rd=True)
    # No upstream is reachable in the namespace: SERVFAIL, but recursion was attempted for us.
    assert msg.flags & dns.flags.RA
    assert msg.rcode() != dns.rcode.REFUSED


# -- the external view -----------------------------------------------------------------------
def test_external_clients_get_the_public_address_for_public_names(server):
    lab = server.lab
    for s in lab.services:
        if s.public:
            msg = server.query(s.public_host, "A", EXTERNAL, tcp=True)
            assert answers(msg, "A") == {str(lab.network.public_address)}, s.public_host
            assert msg.flags & dns.flags.AA


def test_external_clients_get_nxdomain_for_internal_names_and_nothing_internal(server):
    lab = server.lab
    internal = lab.domains.internal
    names = ([f"{g.name}.{internal}" for g in lab.guests] + [f"{s.name}.{internal}" for s in lab.services]
             + [f"{a}.{internal}" for s in lab.services for a in s.aliases])
    private = [lab.network.cidr, *lab.network.management]
    for name in names:
        for rtype in ("A", "CNAME", "TXT"):
            msg = server.query(name, rtype, EXTERNAL, tcp=True)
            assert msg.rcode() == dns.rcode.NXDOMAIN, (name, rtype, dns.rcode.to_text(msg.rcode()))
            assert not msg.answer
            text = all_text(msg)
            for word in text.split():
                try:
                    addr = ipaddress.ip_address(word)
                except ValueError:
                    continue
                assert not any(addr in net for net in private), f"{name}: leaks {addr}"
            for g in lab.guests:
                assert f"{g.name}.{internal}" not in text, f"{name}: leaks {g.name}"


def test_external_clients_are_refused_recursion(server):
    msg = server.query("phoenix-recursion-probe.example.net", "A", EXTERNAL, tcp=True, rd=True)
    assert msg.rcode() == dns.rcode.REFUSED
    assert not msg.flags & dns.flags.RA


def test_no_zone_transfer_for_anyone(server):
    lab = server.lab
    for source in (EXTERNAL, server.internal_src):
        for zone in (lab.domains.public, lab.domains.internal):
            with pytest.raises(dns.query.TransferError) as err:
                list(dns.query.xfr(server.address, zone, source=source, timeout=TIMEOUT, lifetime=TIMEOUT))
            assert err.value.rcode in (dns.rcode.REFUSED, dns.rcode.NOTAUTH), (zone, source)


def test_version_and_identity_are_hidden(server):
    for qname in ("version.bind", "hostname.bind", "id.server"):
        msg = server.query(qname, "TXT", EXTERNAL, tcp=True, rdclass="CH")
        assert not answers(msg, "TXT"), f"{qname} answered {all_text(msg)}"


def test_view_answers_are_what_the_server_answers(server):
    """The route audit trusts ``view_answers``: every entry is what the live views say."""
    expected = render.view_answers(server.plan.topo)
    sources = {"internal": server.internal_src, "external": EXTERNAL}
    for view, names in expected.items():
        for name, rrs in names.items():
            for rtype in {t for t, _ in rrs}:
                msg = server.query(name, rtype, sources[view], tcp=True)
                assert answers(msg, rtype) == {v for t, v in rrs if t == rtype}, (view, name, rtype)


# -- RFC 2136 (ACME DNS-01) ------------------------------------------------------------------
def _update(server: Server, name: str, rtype: str, value: str, *, keyring=None, delete=False,
            source: str | None = None, zone: str | None = None):
    zone = zone or server.lab.domains.public
    kw = dict(keyring=keyring, keyname=server.plan.topo.acme_tsig_key_name,
              keyalgorithm=dns.tsig.HMAC_SHA256) if keyring is not None else {}
    upd = dns.update.UpdateMessage(zone, **kw)
    if delete:
        upd.delete(dns.name.from_text(name), rtype)
    else:
        upd.add(dns.name.from_text(name), 60, rtype, value)
    return dns.query.tcp(upd, server.address, timeout=TIMEOUT, source=source or server.internal_src)


def test_tsig_signed_update_adds_and_removes_an_acme_challenge(server):
    lab = server.lab
    host = next(s.public_host for s in lab.services if s.public)
    name = f"_acme-challenge.{host}"
    token = "phoenix-dns01-token-" + server.stack
    # certbot on the gateway sends from its internal address; the signature picks the external view.
    resp = _update(server, name, "TXT", f'"{token}"', keyring=server.keyring())
    assert resp.rcode() == dns.rcode.NOERROR
    assert answers(server.query(name, "TXT", EXTERNAL, tcp=True), "TXT") == {f'"{token}"'}
    resp = _update(server, name, "TXT", "", keyring=server.keyring(), delete=True)
    assert resp.rcode() == dns.rcode.NOERROR
    assert server.query(name, "TXT", EXTERNAL, tcp=True).rcode() == dns.rcode.NXDOMAIN


def test_a_signed_message_reaches_the_external_view_from_a_guest(server):
    """certbot-dns-rfc2136 finds the zone with a signed SOA query from the gateway (a guest):
    the signature, not the source, picks the external view, which answers authoritatively."""
    lab, key = server.lab, server.keyring()
    soa = server.query(lab.domains.public, "SOA", server.internal_src, tcp=True, keyring=key)
    assert soa.rcode() == dns.rcode.NOERROR and soa.flags & dns.flags.AA and soa.had_tsig
    host = next(s.public_host for s in lab.services if s.public)
    assert answers(server.query(host, "A", server.internal_src, tcp=True, keyring=key), "A") == \
        {str(lab.network.public_address)}
    guest = f"{server.plan.topo.gateway.name}.{lab.domains.internal}"
    assert server.query(guest, "A", server.internal_src, tcp=True, keyring=key).rcode() == dns.rcode.NXDOMAIN


def test_updates_without_the_key_or_beyond_acme_challenge_are_refused(server):
    lab = server.lab
    host = next(s.public_host for s in lab.services if s.public)
    name = f"_acme-challenge.{host}"
    for source in (server.internal_src, EXTERNAL):
        assert _update(server, name, "TXT", '"x"', source=source).rcode() == dns.rcode.REFUSED, source
    key = server.keyring()
    # The key grants TXT on _acme-challenge names, nothing else.
    assert _update(server, host, "A", "192.0.2.66", keyring=key).rcode() == dns.rcode.REFUSED
    assert _update(server, f"www.{lab.domains.public}", "TXT", '"x"', keyring=key).rcode() == dns.rcode.REFUSED
    assert _update(server, name, "A", "192.0.2.66", keyring=key).rcode() == dns.rcode.REFUSED
    assert _update(server, f"_acme-challenge.gateway.{lab.domains.internal}", "TXT", '"x"', keyring=key,
                   zone=lab.domains.internal).rcode() == dns.rcode.REFUSED
    # A different secret under the same key name is not the key.
    wrong = server.keyring("c2VjcmV0LXRoYXQtaXMtbm90LXRoZS1waG9lbml4LWtleQ==")
    try:
        refused = _update(server, name, "TXT", '"x"', keyring=wrong).rcode() != dns.rcode.NOERROR
    except dns.tsig.PeerError:   # BADSIG: the server says the signature is not its key's
        refused = True
    assert refused
    # Nothing of the above landed.
    assert server.query(name, "TXT", EXTERNAL, tcp=True).rcode() == dns.rcode.NXDOMAIN
    assert server.query(f"www.{lab.domains.public}", "TXT", EXTERNAL, tcp=True).rcode() == dns.rcode.NXDOMAIN
    assert answers(server.query(host, "A", EXTERNAL, tcp=True), "A") == {str(lab.network.public_address)}


# -- response rate limiting (UDP only; it runs last among the read-only checks) --------------
def _burst(server: Server, name: str, source: str, count: int) -> tuple[int, int]:
    """Send ``count`` identical UDP queries at once; (full answers, truncated slips)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    sock.settimeout(0.5)
    wire = []
    for i in range(count):
        q = dns.message.make_query(name, "A", id=i + 1)
        q.flags &= ~dns.flags.RD
        wire.append(q.to_wire())
    for w in wire:
        sock.sendto(w, (server.address, 53))
    full = slipped = 0
    try:
        while True:
            data, _ = sock.recvfrom(4096)
            msg = dns.message.from_wire(data)
            if msg.flags & dns.flags.TC:
                slipped += 1
            elif msg.answer:
                full += 1
    except TimeoutError:
        pass
    finally:
        sock.close()
    return full, slipped


def test_external_view_rate_limits_responses(server):
    lab = server.lab
    host = next(s.public_host for s in lab.services if s.public)
    rps, count = lab.dns.rrl_responses_per_second, 60
    full, slipped = _burst(server, host, EXTERNAL, count)
    assert full <= 2 * rps, f"{full} of {count} identical external responses in one burst (limit {rps}/s)"
    assert slipped > 0, "rate-limited clients get truncated answers (slip) to retry over TCP"
    full_internal, _ = _burst(server, host, server.internal_src, count)
    assert full_internal == count, "guests are not rate limited"


# -- transactional apply against the running server -----------------------------------------
def _probe_service(raw: dict, *, public: bool) -> None:
    portainer = next(g for g in raw["guests"] if g["role"] == "portainer")
    pub = raw["domains"]["public"]
    entry = {"name": "dns-probe", "guests": [portainer["name"]], "port": 8123, "protocol": "http"}
    if public:
        entry.update(public=True, publicHost=f"dns-probe.{pub}")
    raw.setdefault("services", []).append(entry)


def planned_step(server: Server, public: bool) -> Step:
    """The config step of the stack with one more service: from a full plan of the edited stack
    (public), or rendered by the same functions the tier calls (internal only: a faster test)."""
    stack = edited(server.stack, lambda raw: _probe_service(raw, public=public))
    if public:
        return config_step(make_plan(stack))
    topo = topo_of(stack)
    args = [server.step.args[0], "--check", render.check_command(topo), "--reload", render.RELOAD_COMMAND,
            "--health", render.HEALTH_COMMAND]
    assert args == server.step.args, "the tier's hooks do not depend on the catalog"
    return Step(args, pack(render.config_files(topo, server.secret)))


def topo_of(stack):
    from phoenix.model import parse_lab
    from phoenix.stackfile import expand_catalog
    from phoenix.topology import build
    return build(parse_lab(expand_catalog(stack.phoenix(), stack.root)))


def test_apply_of_a_new_service_updates_both_views_and_keeps_challenges_in_flight(server):
    lab = server.lab
    probe_internal = f"dns-probe.{lab.domains.internal}"
    probe_public = f"dns-probe.{lab.domains.public}"
    mesh = str(server.plan.topo.mesh.address)     # a service's name: the mesh, wherever it runs
    host = next(s.public_host for s in lab.services if s.public)
    challenge = f"_acme-challenge.{host}"
    try:
        assert _update(server, challenge, "TXT", '"in-flight"', keyring=server.keyring()).rcode() == 0
        # An internal-only service: the public zones are untouched, the challenge survives.
        result = server.apply(planned_step(server, public=False))
        assert result.returncode == 0, result.stderr
        _wait_answer(server, probe_internal, "A", {mesh}, server.internal_src)
        assert answers(server.query(challenge, "TXT", EXTERNAL, tcp=True), "TXT") == {'"in-flight"'}
        # A public service: the dynamic zone is frozen, replaced and thawed; both views answer it.
        result = server.apply(planned_step(server, public=True))
        assert result.returncode == 0, result.stderr
        _wait_answer(server, probe_public, "A", {str(lab.network.public_address)}, EXTERNAL)
        _wait_answer(server, probe_public, "A", {str(server.plan.topo.gateway.address)}, server.internal_src)
        # Signed updates still land on the replaced zone.
        assert _update(server, f"_acme-challenge.{probe_public}", "TXT", '"new"', keyring=server.keyring()).rcode() == 0
        assert answers(server.query(f"_acme-challenge.{probe_public}", "TXT", EXTERNAL, tcp=True), "TXT") == {'"new"'}
    finally:
        result = server.apply(server.step)
        assert result.returncode == 0, result.stderr
    assert server.query(probe_internal, "A", server.internal_src, tcp=True).rcode() == dns.rcode.NXDOMAIN
    assert server.query(probe_public, "A", EXTERNAL, tcp=True).rcode() == dns.rcode.NXDOMAIN


def _broken_zone(server: Server, files):
    """The internal zone with the gateway moved (to tell old from new) and one bad record."""
    topo = server.plan.topo
    zone = next(z for z in render.zones(topo) if z.view == "internal" and z.name == topo.lab.domains.internal)
    f = next(f for f in files if f.path == zone.file)
    gw = f"{topo.guest_fqdn(topo.gateway)}."
    text = f.content.replace(f"{gw} IN A {topo.gateway.address}", f"{gw} IN A 192.0.2.99")
    text += f"broken.{topo.lab.domains.internal}. IN A 10.0.0.256\n"
    return zone, f, text


def _broken_config(server: Server, files):
    f = next(f for f in files if f.path == render.VIEWS_CONF)
    return None, f, f.content.replace("recursion no;", "recursion no")


@pytest.mark.parametrize("breakage", ["zone", "config"])
def test_a_broken_push_keeps_the_old_answers_and_fails_with_the_checkers_message(server, breakage, tmp_path):
    topo = server.plan.topo
    files = unpack(server.step.stdin)
    zone, target, text = (_broken_zone if breakage == "zone" else _broken_config)(server, files)
    bundle = pack([f if f.path != target.path else type(f)(f.path, text, f.mode, f.owner, f.group)
                   for f in files])
    # What the service's own checker says about the broken file (run here on a copy).
    copy_ = tmp_path / Path(target.path).name
    copy_.write_text(text)
    if zone is not None:
        checked = _run("named-checkzone", "-k", "fail", zone.name, str(copy_))
        expected = [line.replace(str(copy_), target.path) for line in checked.stdout.splitlines()]
        assert checked.returncode != 0 and any("failed" in line for line in expected)
    else:
        expected = [f"{target.path}:"]   # named-checkconf names the file and line of the error

    gateway_fqdn, gateway_addr = topo.guest_fqdn(topo.gateway), str(topo.gateway.address)
    seen: list[set[str] | str] = []
    stop = threading.Event()

    def keep_asking():
        while not stop.is_set():
            try:
                seen.append(answers(server.query(gateway_fqdn, "A", server.internal_src), "A"))
            except dns.exception.DNSException as err:
                seen.append(f"no answer: {err}")
            time.sleep(0.01)

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        result = server.apply(Step(server.step.args, bundle))
        time.sleep(0.3)
    finally:
        stop.set()
        asker.join()
    assert result.returncode != 0
    assert "check failed; previous files restored" in result.stderr
    for line in expected:
        assert line in result.stderr, f"missing the checker's line {line!r} in:\n{result.stderr}"
    assert seen and all(a == {gateway_addr} for a in seen), f"answers during the push: {seen[:5]}..."
    # The previous files are back, byte for byte, and still served.
    assert Path(target.path).read_text() == target.content
    assert answers(server.query(gateway_fqdn, "A", server.internal_src, tcp=True), "A") == {gateway_addr}
