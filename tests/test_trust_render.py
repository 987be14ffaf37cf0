"""The trust tier's generated files checked by the tools that will read them: the real step-ca
boots on the plan's ca.json (the full bring-up by the plan's steps is tests/test_stepca_lab.py),
shellcheck, systemd-analyze, and the install script's checksum gate run against stub package tools."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
from cryptography import x509

from conftest import edited, stack_config
from lab import require_isolated, wait_port
from phoenix.model import parse_lab
from phoenix.render import trust as r
from phoenix.stackfile import expand_catalog
from phoenix.topology import build
from test_trust_support import dev_trust_run, trust_run
from tools import step_ca


def _lab(name="dev", **pki):
    stack = stack_config(name)
    raw = expand_catalog(stack.phoenix(), stack.root)
    if pki:
        raw["pki"] = pki
    return parse_lab(raw)


def ca_config(run) -> dict:
    files = run.files()[run.topo.ca.name]
    return json.loads(files[r.CA_JSON][0].content)


@pytest.fixture(scope="module")
def dev():
    return dev_trust_run()


# -- Step-CA's configuration -------------------------------------------------------------------
def test_ca_json_is_a_complete_step_ca_config(dev):
    topo, lab = dev.topo, dev.topo.lab
    config = ca_config(dev)
    for key in ("root", "crt", "key", "address", "dnsNames", "db", "authority", "tls"):
        assert key in config, key
    assert config["address"] == f":{lab.pki.ca_port}"
    assert set(topo.ca_sans) <= set(config["dnsNames"])                      # trap 5
    assert config["db"]["type"] in ("badgerv2", "bbolt") and config["db"]["dataSource"].startswith("/var/lib/")
    files = dev.files()[topo.ca.name]
    for ref in ("root", "crt", "key"):
        assert config[ref] in files, f"{ref} points at {config[ref]}, which is not pushed"
    assert config["tls"]["minVersion"] == 1.2


def test_ca_provisioners_acme_without_tls_alpn_and_jwk(dev):
    pki = dev.topo.lab.pki
    provisioners = {p["name"]: p for p in ca_config(dev)["authority"]["provisioners"]}
    assert list(provisioners) == [pki.acme_provisioner, pki.jwk_provisioner]
    acme, jwk = provisioners[pki.acme_provisioner], provisioners[pki.jwk_provisioner]
    assert acme["type"] == "ACME" and acme["challenges"] == ["http-01", "dns-01"]    # trap 6: no tls-alpn-01
    assert "tls-alpn-01" not in json.dumps(ca_config(dev))
    assert jwk["type"] == "JWK" and jwk["key"]["kty"] == "EC" and "d" not in jwk["key"]
    assert jwk["encryptedKey"].count(".") == 4
    for p in (acme, jwk):
        assert p["claims"]["defaultTLSCertDuration"] == f"{pki.leaf_lifetime_hours}h"
        assert p["claims"]["maxTLSCertDuration"] == f"{pki.max_leaf_lifetime_hours}h"
    assert dev.topo.acme_directory.endswith(f"/acme/{pki.acme_provisioner}/directory")


def test_ca_policy_is_the_name_constraint(dev):
    lab = dev.topo.lab
    topo = dev.topo
    allow = ca_config(dev)["authority"]["policy"]["x509"]["allow"]
    # exactly the names the lab's guests ask for: the mesh's and every service's (the mesh), and
    # each other ACME client's own name; no wildcard, no public name, no address
    wanted = {topo.mesh_name, *(n for s in lab.services for n in topo.service_names(s)),
              *(topo.guest_fqdn(g) for g in topo.acme_clients)}
    assert allow == {"dns": sorted(wanted)}
    assert not any("*" in d or lab.domains.public in d for d in allow["dns"])


def test_ca_lifetimes_come_from_the_stack():
    run = trust_run(edited("dev", lambda raw: raw.update(pki={"leafLifetimeHours": 12, "maxLeafLifetimeHours": 48})))
    claims = ca_config(run)["authority"]["claims"]
    assert claims["defaultTLSCertDuration"] == "12h" and claims["maxTLSCertDuration"] == "48h"
    cert = run.files()["mesh"]["/usr/local/lib/phoenix/cert-mesh.sh"][0].content
    assert "renew_before_expiry = 4 hours" in cert


@pytest.mark.lab
def test_step_ca_boots_from_the_plan_config(dev, tmp_path, procs):
    """The real step-ca (tests/tools.py: 0.19.0 from Debian's Go sources) on the plan's own
    ca.json, certificates and key, only the paths moved under tmp_path and the listen address
    onto loopback: /health answers over TLS verified against the plan's root for the CA's
    names, /roots is exactly the plan's root, the ACME directory is the plan's provisioner's."""
    require_isolated()
    binary = step_ca()
    files = {path: f for path, (f, _) in dev.files()[dev.topo.ca.name].items()}
    home = tmp_path / "step"
    for path in (r.CA_ROOT, r.CA_INTERMEDIATE, r.CA_KEY):
        target = home / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(files[path].content)
        target.chmod(files[path].mode)
    config = json.loads(files[r.CA_JSON].content)
    port = dev.topo.lab.pki.ca_port
    for key in ("root", "crt", "key"):
        config[key] = str(home / config[key].lstrip("/"))
    config["db"]["dataSource"] = str(home / "db")
    config["address"] = f"127.0.0.1:{port}"
    (home / "ca.json").write_text(json.dumps(config))
    (tmp_path / "root.pem").write_text(files[r.CA_ROOT].content)
    with open(tmp_path / "step-ca.log", "w") as log:     # step-ca writes to its own copy
        proc = procs.start([binary, str(home / "ca.json")], stdout=log, stderr=subprocess.STDOUT,
                           env={"PATH": os.environ["PATH"], "HOME": str(home)})
    try:
        wait_port("127.0.0.1", port, 15)
    except TimeoutError:
        pytest.fail(f"step-ca did not start (exit {proc.poll()}):\n{(tmp_path / 'step-ca.log').read_text()}")
    ctx = ssl.create_default_context(cafile=str(tmp_path / "root.pem"))

    def get(path: str, host: str) -> bytes:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        conn = http.client.HTTPConnection(host, port)
        conn.sock = ctx.wrap_socket(sock, server_hostname=host)
        conn.request("GET", path)
        resp = conn.getresponse()
        assert 200 <= resp.status < 300, (path, resp.status)    # 0.19 answers /roots with 201
        return resp.read()
    for host in dev.topo.ca_sans:                        # every name and address of the CA (trap 5)
        assert json.loads(get("/health", host)) == {"status": "ok"}, host
    root = x509.load_pem_x509_certificate(files[r.CA_ROOT].content.encode())
    crts = json.loads(get("/roots", "localhost"))["crts"]
    assert [x509.load_pem_x509_certificate(c.encode()) for c in crts] == [root]
    directory = json.loads(get(urlparse(dev.topo.acme_directory).path, "localhost"))
    assert directory["newOrder"] == f"https://localhost:{port}/acme/{dev.topo.lab.pki.acme_provisioner}/new-order"


# -- scripts and units ---------------------------------------------------------------------------
def _scripts(run) -> list[tuple[str, str, str]]:
    out = []
    for guest, files in run.files().items():
        for path, (f, _step) in files.items():
            if f.content.startswith("#!/bin/bash") and (path.startswith(r.SCRIPTS) or path.endswith(".sh")):
                out.append((guest, path, f.content))
    return out


def test_every_generated_script_passes_shellcheck(tmp_path, dev):
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck missing: run `make deps` as root")
    pinned = trust_run(edited("dev", lambda raw: raw.update(pki={"stepCaSha256": "a" * 64,
                                                                  "stepCliSha256": "b" * 64})))
    scripts = {(p, c) for _, p, c in _scripts(dev) + _scripts(pinned) if p != "/usr/local/sbin/phoenix-apply"}
    assert any("step-ca-install" in p for p, _ in scripts) and any("acme-deploy" in p for p, _ in scripts)
    failures = []
    for i, (path, content) in enumerate(sorted(scripts)):
        target = tmp_path / f"{i}-{Path(path).name}"
        target.write_text(content)
        out = subprocess.run(["shellcheck", "-s", "bash", str(target)], capture_output=True, text=True, check=False)
        if out.returncode:
            failures.append(f"{path}:\n{out.stdout}")
    assert not failures, "\n".join(failures)


def test_systemd_units_verify(tmp_path, dev):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze missing")
    files = dev.files()
    units = {r.STEP_CA_UNIT: files[dev.topo.ca.name][r.STEP_CA_UNIT][0].content,
             r.RENEW_SERVICE: files["mesh"][r.RENEW_SERVICE][0].content,
             r.RENEW_TIMER: files["mesh"][r.RENEW_TIMER][0].content}
    # Verify against a root holding the binaries the units name (step-ca is not on this machine).
    root = tmp_path / "root"
    for path, content in units.items():
        (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / path.lstrip("/")).write_text(content)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    for binary in ("/usr/bin/step-ca", r.CERTBOT, "/bin/kill", "/usr/bin/flock", "/bin/bash"):
        target = root / binary.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("#!/bin/sh\n")
        target.chmod(0o755)
    out = subprocess.run(["systemd-analyze", "verify", f"--root={root}", *units], capture_output=True, text=True,
                         check=False)
    problems = [x for x in out.stderr.splitlines() if "step-ca" in x or "phoenix-acme" in x]
    assert out.returncode == 0 and not problems, out.stderr
    unit = units[r.STEP_CA_UNIT]
    assert "User=step" in unit and f"ExecStart=/usr/bin/step-ca {r.CA_JSON}\n" in unit
    assert f"REQUESTS_CA_BUNDLE={r.ROOT_PATH}" in units[r.RENEW_SERVICE]
    # The timer and every certificate step share one lock: two certbots would fight over :80 and state.
    assert r.ACME_LOCK in units[r.RENEW_SERVICE]
    assert f"exec 9>{r.ACME_LOCK}" in files["mesh"][f"{r.SCRIPTS}/cert-mesh.sh"][0].content


# -- the install script's checksum gate ------------------------------------------------------------
def _stub(bindir: Path, name: str, body: str) -> None:
    path = bindir / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def stubbed(tmp_path):
    """PATH with stub curl (serves a fixed "package"), dpkg, dpkg-query and apt-get that log."""
    if os.path.exists("/usr/bin/step-ca"):
        pytest.skip("step-ca is installed on this machine; the install script would go on to create users")
    bindir, log = tmp_path / "bin", tmp_path / "log"
    bindir.mkdir()
    package = tmp_path / "package.deb"
    package.write_bytes(b"not really a deb\n")
    _stub(bindir, "curl", f'out=""; while [ $# -gt 0 ]; do [ "$1" = -o ] && out=$2; shift; done\n'
                          f'echo "curl" >> {log}; cp {package} "$out"\n')
    _stub(bindir, "dpkg", f'echo "dpkg $*" >> {log}\n')
    _stub(bindir, "dpkg-query", "exit 1\n")
    _stub(bindir, "apt-get", f'echo "apt-get $*" >> {log}; exit 1\n')
    import hashlib
    return bindir, log, hashlib.sha256(package.read_bytes()).hexdigest()


def _run_install(text: str, bindir: Path, tmp_path: Path):
    script = tmp_path / "install.sh"
    script.write_text(text)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    return subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=30, check=False)


def test_install_refuses_without_a_pinned_checksum(stubbed, tmp_path):
    bindir, log, _ = stubbed
    out = _run_install(r.ca_install_script(_lab()), bindir, tmp_path)
    assert out.returncode != 0
    assert "refusing to install step-ca 0.28.1: phoenix:pki.stepCaSha256 is not set" in out.stderr
    assert not log.exists(), "nothing may be downloaded or installed without a pin"


def test_install_refuses_a_package_that_does_not_match_its_pin(stubbed, tmp_path):
    bindir, log, real = stubbed
    out = _run_install(r.ca_install_script(_lab(stepCaSha256="0" * 64, stepCliSha256=real)), bindir, tmp_path)
    assert out.returncode != 0
    assert "does not match its pinned sha256 " + "0" * 64 in out.stderr
    installed = [x for x in log.read_text().splitlines() if x.startswith("dpkg")]
    assert len(installed) == 1 and "step-cli" in installed[0], "only the matching step-cli may be installed"


def test_install_installs_packages_that_match_their_pins(stubbed, tmp_path):
    bindir, log, real = stubbed
    out = _run_install(r.ca_install_script(_lab(stepCaSha256=real, stepCliSha256=real)), bindir, tmp_path)
    installed = [x for x in log.read_text().splitlines() if x.startswith("dpkg")]
    assert [("step-cli" in installed[0]), ("step-ca" in installed[1])] == [True, True]
    # The stub installed nothing real, so the script stops at its own post-install check.
    assert out.returncode != 0 and "did not install /usr/bin/step-ca" in out.stderr


def test_deb_urls_follow_the_pinned_versions():
    ca, cli = r.deb_urls(_lab(stepCaVersion="0.28.3", stepCliVersion="0.28.6"))
    assert ca.endswith("/v0.28.3/step-ca_0.28.3-1_amd64.deb") and cli.endswith("/v0.28.6/step-cli_0.28.6-1_amd64.deb")
    own = "https://mirror.example/step-ca.deb"
    assert r.deb_urls(_lab(stepCaDebUrl=own))[0] == own


# -- per-guest trust files ---------------------------------------------------------------------------
def test_trust_files_install_the_programs_root(dev_plan_root=None):
    lab = _lab()
    topo = build(lab)
    files = {f.path: f for f in r.trust_files(topo, "ROOT-PEM", "ab" * 32)}
    system_store = files["/usr/local/share/ca-certificates/phoenix-root.crt"]
    assert files[r.ROOT_PATH].content == system_store.content == "ROOT-PEM"
    defaults = json.loads(files["/root/.step/config/defaults.json"].content)
    assert defaults == {"ca-url": topo.ca_url, "fingerprint": "ab" * 32, "root": "/root/.step/certs/root_ca.crt"}
    assert topo.ca_url.startswith(f"https://{topo.ca.address}:")        # by address: no DNS needed (trap 4)


# -- the CA's config check (phoenix-apply's --check), run on the plan's files -----------------------
@pytest.fixture
def ca_tree(tmp_path, dev):
    """The plan's CA files under tmp_path (paths rebased), and its check script pointing there."""
    if shutil.which("jq") is None:
        pytest.skip("jq missing: the CA guest installs it; here run `apt-get install jq`")
    files = dev.files()[dev.topo.ca.name]
    root = tmp_path / "guest"

    def rebase(text: str) -> str:
        return text.replace(r.STEP_HOME, f"{root}{r.STEP_HOME}").replace(r.CA_DATA, f"{root}{r.CA_DATA}")
    for path, (f, _) in files.items():
        if path.startswith((r.STEP_HOME, r.CA_CHECK)):
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(rebase(f.content) if path == r.CA_CHECK else f.content)
            target.chmod(f.mode)
    (root / r.CA_DB.lstrip("/")).mkdir(parents=True)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    # No user "step" on this machine: runuser runs the test as the current user instead.
    _stub(bindir, "runuser", 'while [ "$1" != "--" ]; do shift; done; shift; exec "$@"\n')
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    return root, lambda: subprocess.run(["bash", str(root / r.CA_CHECK.lstrip("/"))], capture_output=True,
                                        text=True, env=env, check=False)


def test_ca_check_accepts_the_plans_files(ca_tree):
    _, check = ca_tree
    out = check()
    assert out.returncode == 0, out.stderr


def test_ca_check_refuses_a_key_others_could_read(ca_tree):
    root, check = ca_tree
    (root / r.CA_KEY.lstrip("/")).chmod(0o644)
    out = check()
    assert out.returncode != 0 and "must be mode 0400" in out.stderr


def test_ca_check_refuses_a_key_that_is_not_the_intermediates(ca_tree, dev):
    root, check = ca_tree
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    (root / r.CA_KEY.lstrip("/")).write_text(other)
    out = check()
    assert out.returncode != 0 and "is not the key of" in out.stderr


def test_ca_check_refuses_an_intermediate_from_another_root(ca_tree, dev):
    root, check = ca_tree
    (root / r.CA_ROOT.lstrip("/")).write_text((root / r.CA_INTERMEDIATE.lstrip("/")).read_text())
    out = check()
    assert out.returncode != 0 and "does not chain to" in out.stderr


def test_ca_check_refuses_a_config_that_is_not_step_cas(ca_tree):
    root, check = ca_tree
    (root / r.CA_JSON.lstrip("/")).write_text('{"root": "x"}')
    out = check()
    assert out.returncode != 0 and "is not a Step-CA config" in out.stderr
