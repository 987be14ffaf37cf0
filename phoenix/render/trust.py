"""Trust tier files: the root of trust in every guest, Step-CA's configuration, and the ACME
client (certbot) every internal certificate comes from. Pure: values in, ``GuestFile`` out.

Paths are the guests' real paths; the offline plan shows them under ``files/<guest>/``.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from phoenix.bundle import GuestFile
from phoenix.model import Lab
from phoenix.pki import ca_policy, encrypted_jwk, jwk_pair
from phoenix.render import SCRIPTS, render
from phoenix.topology import CA_HEALTH_PATH, ROOT_CA_TRUST_PATH, TLS_DIR, Topology, tls_paths

ROOT_PATH = tls_paths("phoenix").root

# -- Step-CA on its guest ------------------------------------------------------------------
STEP_USER = "step"
STEP_HOME = "/etc/step-ca"
CA_JSON = f"{STEP_HOME}/config/ca.json"
CA_DEFAULTS = f"{STEP_HOME}/config/defaults.json"
CA_ROOT = f"{STEP_HOME}/certs/root_ca.crt"
CA_INTERMEDIATE = f"{STEP_HOME}/certs/intermediate_ca.crt"
CA_KEY = f"{STEP_HOME}/secrets/intermediate_ca_key"
CA_DATA = "/var/lib/step-ca"
CA_DB = f"{CA_DATA}/db"
STEP_CA_UNIT = "/etc/systemd/system/step-ca.service"
CA_CHECK = f"{SCRIPTS}/step-ca-check.sh"
CA_HEALTH = f"{SCRIPTS}/step-ca-health.sh"
#: seconds the health check waits for Step-CA to answer after a (re)start.
CA_HEALTH_WAIT = 30

# -- the step CLI's bootstrap on every guest (what `step ca bootstrap` would write) ----------
STEP_CLIENT_HOME = "/root/.step"
TRUST_CHECK = f"{SCRIPTS}/trust-check.sh"

# -- certbot against Step-CA's ACME directory ---------------------------------------------
ACME_CONFIG_DIR = "/etc/phoenix/acme"
ACME_WORK_DIR = "/var/lib/phoenix-acme"
ACME_LOGS_DIR = "/var/log/phoenix-acme"
ACME_CLI_INI = f"{ACME_CONFIG_DIR}/cli.ini"
RENEW_UNIT = "phoenix-acme-renew"
RENEW_SERVICE = f"/etc/systemd/system/{RENEW_UNIT}.service"
RENEW_TIMER = f"/etc/systemd/system/{RENEW_UNIT}.timer"
#: what the timer's service runs: certbot renew, then every certificate's deploy hook again.
RENEW_SCRIPT = f"{SCRIPTS}/acme-renew.sh"
CERTBOT = "/usr/bin/certbot"
#: one certbot at a time per guest (several certificates, and the timer, share its state dirs).
ACME_LOCK = "/run/lock/phoenix-acme.lock"
ACME_LOCK_WAIT = 600


# -- the gateway's client certificate towards the mesh ----------------------------------------
#: signed by the program (pulumi-tls) with the gateway client CA, the one CA the mesh's gateway
#: entrypoint trusts: a year, re-issued by the first ``pulumi up`` in its last 60 days
#: (``early_renewal_hours``), pushed by the gateway's client-certificate step (nginx -t, reload);
#: ``phoenix verify --gateway-client-cert`` fails once it is that close to expiry.
GATEWAY_CLIENT_LIFETIME_HOURS = 365 * 24
GATEWAY_CLIENT_RENEW_HOURS = 60 * 24


def deb_urls(lab: Lab) -> tuple[str, str]:
    """(step-ca, step-cli) .deb URLs: the stack's, or the release assets for the pinned versions."""
    p = lab.pki
    ca = p.step_ca_deb_url or (f"https://github.com/smallstep/certificates/releases/download/"
                               f"v{p.step_ca_version}/step-ca_{p.step_ca_version}-1_amd64.deb")
    cli = p.step_cli_deb_url or (f"https://github.com/smallstep/cli/releases/download/"
                                 f"v{p.step_cli_version}/step-cli_{p.step_cli_version}-1_amd64.deb")
    return ca, cli


# -- trust in every guest ------------------------------------------------------------------
def trust_files(topo: Topology, root_pem: str, fingerprint: str) -> list[GuestFile]:
    """The Phoenix root from the program's own output, in the system store and the TLS dir, and
    the step CLI's bootstrap config (CA by address plus fingerprint; nothing fetched)."""
    step_root = f"{STEP_CLIENT_HOME}/certs/root_ca.crt"
    defaults = {"ca-url": topo.ca_url, "fingerprint": fingerprint, "root": step_root}
    check = render("trust/trust-check.sh.j2", fingerprint=fingerprint,
                   roots=[ROOT_CA_TRUST_PATH, ROOT_PATH, step_root], root=ROOT_PATH)
    return [GuestFile(ROOT_CA_TRUST_PATH, root_pem, 0o644),
            GuestFile(ROOT_PATH, root_pem, 0o644),
            GuestFile(step_root, root_pem, 0o644),
            GuestFile(f"{STEP_CLIENT_HOME}/config/defaults.json", _json(defaults), 0o644),
            GuestFile(TRUST_CHECK, check, 0o700)]


TRUST_CHECK_CMD = f"bash {TRUST_CHECK}"
TRUST_RELOAD_CMD = "update-ca-certificates >/dev/null"
TRUST_HEALTH_CMD = f"bash {TRUST_CHECK} --installed"


# -- Step-CA --------------------------------------------------------------------------------
def ca_json(lab: Lab, topo: Topology, provisioner_public_jwk: dict, provisioner_encrypted_key: str) -> dict:
    pki = lab.pki
    claims = {"minTLSCertDuration": "5m",
              "maxTLSCertDuration": f"{pki.max_leaf_lifetime_hours}h",
              "defaultTLSCertDuration": f"{pki.leaf_lifetime_hours}h",
              "disableRenewal": False}
    return {
        "root": CA_ROOT,
        "crt": CA_INTERMEDIATE,
        "key": CA_KEY,
        "address": f":{pki.ca_port}",
        "insecureAddress": "",
        "dnsNames": list(topo.ca_sans),
        "logger": {"format": "text"},
        "db": {"type": "badgerv2", "dataSource": CA_DB, "badgerFileLoadingMode": ""},
        "authority": {
            "claims": claims,
            # pulumi-tls cannot write name constraints into the intermediate: the authority
            # policy is where Step-CA enforces them (DNS in the allowed domains, IPs in the lab).
            "policy": ca_policy(lab, topo),
            "provisioners": [
                # No tls-alpn-01: it cannot work behind a gateway that terminates TLS (trap 6).
                {"type": "ACME", "name": pki.acme_provisioner, "forceCN": True,
                 "challenges": ["http-01", "dns-01"], "claims": claims},
                {"type": "JWK", "name": pki.jwk_provisioner, "key": provisioner_public_jwk,
                 "encryptedKey": provisioner_encrypted_key, "claims": claims},
            ],
        },
        "tls": {"cipherSuites": ["TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
                                 "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                                 "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"],
                "minVersion": 1.2, "maxVersion": 1.3, "renegotiation": False},
    }


@dataclass(frozen=True)
class Provisioner:
    """The JWK provisioner's key as ``ca.json`` lists it: the public JWK, and the private one sealed
    under the provisioner password (``phoenix.pki.encrypted_jwk``)."""
    public_jwk: dict
    encrypted_key: str


def provisioner(jwk_key_pem: str, password: str) -> Provisioner:
    """Seal the provisioner's key: PBKDF2 at step's 100,000 rounds, the costliest step of the CA's files."""
    public_jwk, private_jwk = jwk_pair(jwk_key_pem)
    return Provisioner(public_jwk, encrypted_jwk(private_jwk, password))


def ca_files(lab: Lab, topo: Topology, *, root_pem: str, fingerprint: str, intermediate_pem: str,
             intermediate_key_pem: str, provisioner: Provisioner) -> list[GuestFile]:
    """Everything Step-CA reads.

    The intermediate key is stored as it is, readable by user ``step`` only (0400 in a 0700
    directory), not encrypted: Step-CA starts unattended, so a password would have to sit on
    the same disk for ``--password-file`` and would protect nothing from whoever can read
    step's files, while the key's ciphertext would end up in plans and diffs. The key stays a
    Pulumi secret end to end (stdin of the push, redacted in the plan).
    """
    config = ca_json(lab, topo, provisioner.public_jwk, provisioner.encrypted_key)
    defaults = {"ca-url": topo.ca_url, "ca-config": CA_JSON, "fingerprint": fingerprint, "root": CA_ROOT}
    secret = dict(owner=STEP_USER, group=STEP_USER)
    return [
        GuestFile(CA_JSON, _json(config), 0o640, "root", STEP_USER),
        GuestFile(CA_DEFAULTS, _json(defaults), 0o644),
        GuestFile(CA_ROOT, root_pem, 0o644),
        GuestFile(CA_INTERMEDIATE, intermediate_pem, 0o644),
        GuestFile(CA_KEY, intermediate_key_pem, 0o400, **secret),
        GuestFile(STEP_CA_UNIT, step_ca_unit(lab), 0o644),
        GuestFile(CA_CHECK, render("trust/step-ca-check.sh.j2", **_ca_paths()), 0o700),
    ]


def _ca_paths() -> dict:
    return dict(ca_json=CA_JSON, root=CA_ROOT, intermediate=CA_INTERMEDIATE, key=CA_KEY, user=STEP_USER, db=CA_DB,
                db_parent=CA_DATA, step_home=STEP_HOME)


def step_ca_unit(lab: Lab) -> str:
    return render("trust/step-ca.service.j2", **_ca_paths(), port=lab.pki.ca_port)


CA_CHECK_CMD = f"bash {CA_CHECK}"
CA_RELOAD_CMD = "systemctl daemon-reload && systemctl enable --quiet step-ca && systemctl restart step-ca"
CA_HEALTH_CMD = f"bash {CA_HEALTH}"


def ca_health_script(topo: Topology, config_digest: str = "") -> str:
    """/health over TLS verified against the root, once per SAN (names pinned with --resolve
    to the CA's address, localhost to loopback: the check needs no DNS and fails on any
    missing SAN)."""
    port = topo.lab.pki.ca_port
    targets = []
    for san in topo.ca_sans:
        host = f"[{san}]" if ":" in san else san
        address = "127.0.0.1" if san == "localhost" else topo.ca.address
        pin = "" if is_ip(san) else f"{san}:{port}:{address}"
        targets.append((f"https://{host}:{port}{CA_HEALTH_PATH}", pin))
    return render("trust/step-ca-health.sh.j2", root=ROOT_PATH, targets=targets, wait=CA_HEALTH_WAIT,
                  digest=config_digest)


def ca_install_script(lab: Lab) -> str:
    """Fetch the pinned step-cli and step-ca .debs, verify their sha256, install; the user and dirs."""
    ca_url, cli_url = deb_urls(lab)
    p = lab.pki
    return render("trust/step-ca-install.sh.j2",
                  debs=[("step-cli", p.step_cli_version, cli_url, p.step_cli_sha256 or "", "stepCliSha256"),
                        ("step-ca", p.step_ca_version, ca_url, p.step_ca_sha256 or "", "stepCaSha256")],
                  **_ca_paths())


# -- certbot against Step-CA -----------------------------------------------------------------
def renew_before(lab: Lab) -> str:
    """Renew when a third of the leaf lifetime is left (certbot's 30-day default would renew a
    24-hour certificate on every run)."""
    return f"{max(1, lab.pki.leaf_lifetime_hours // 3)} hours"


def acme_client_files(topo: Topology) -> list[GuestFile]:
    """Per ACME-client guest: certbot's settings for Step-CA and the renewal timer."""
    cli_ini = render("trust/acme-cli.ini.j2", server=topo.acme_directory)
    service = render("trust/phoenix-acme-renew.service.j2", root=ROOT_PATH, command=renew_command())
    timer = render("trust/phoenix-acme-renew.timer.j2")
    renew = render("trust/acme-renew.sh.j2", renew=shlex.join(certbot_renew()), scripts=SCRIPTS,
                   config_dir=ACME_CONFIG_DIR, directory=shlex.quote(topo.acme_directory),
                   show_account=shlex.join([CERTBOT, "show_account", *certbot_base()]))
    return [GuestFile(ACME_CLI_INI, cli_ini, 0o644), GuestFile(RENEW_SERVICE, service, 0o644),
            GuestFile(RENEW_TIMER, timer, 0o644), GuestFile(RENEW_SCRIPT, renew, 0o700)]


def acme_client_script() -> str:
    return render("trust/acme-client-setup.sh.j2", config_dir=ACME_CONFIG_DIR, work_dir=ACME_WORK_DIR,
                  logs_dir=ACME_LOGS_DIR, tls_dir=TLS_DIR, unit=RENEW_UNIT, certbot=CERTBOT)


def certbot_base() -> list[str]:
    """The flags every certbot run for Phoenix certificates uses (obtain and renew alike)."""
    return ["-c", ACME_CLI_INI, "--config-dir", ACME_CONFIG_DIR, "--work-dir", ACME_WORK_DIR,
            "--logs-dir", ACME_LOGS_DIR]


def certbot_renew() -> list[str]:
    # The timer already spreads runs (RandomizedDelaySec); certbot's own random sleep of up to
    # 8 minutes on non-interactive renewals would only delay a due renewal.
    return [CERTBOT, "renew", *certbot_base(), "--no-random-sleep-on-renew", "--quiet"]


def renew_command() -> str:
    """The timer's ExecStart: the renewal script (certbot renew, then every deploy hook on its
    current lineage), under the lock every certificate step takes."""
    return shlex.join(["/usr/bin/flock", "-w", str(ACME_LOCK_WAIT), ACME_LOCK, "/bin/bash", RENEW_SCRIPT])


@dataclass(frozen=True)
class CertRequest:
    """One internal certificate: where it goes and who may read it."""
    name: str
    sans: tuple[str, ...]
    owner: str = "root"
    group: str = "root"
    reload: str = ""
    check: str = ""
    webroot: str | None = None

    @property
    def hook_path(self) -> str:
        return f"{SCRIPTS}/acme-deploy-{self.name}.sh"

    @property
    def live(self) -> str:
        return f"{ACME_CONFIG_DIR}/live/{self.name}"


def obtain_command(req: CertRequest) -> list[str]:
    args = [CERTBOT, "certonly", *certbot_base(), "--cert-name", req.name]
    for san in req.sans:
        args += ["-d", san]
    if req.webroot:
        args += ["--webroot", "-w", req.webroot]
    else:
        args += ["--standalone", "--http-01-port", "80"]
    return args + ["--deploy-hook", req.hook_path, "--keep-until-expiring", "--expand"]


def certificate_files(lab: Lab, req: CertRequest) -> tuple[str, list[GuestFile]]:
    """(obtain script, [deploy hook]) for one certificate."""
    paths = tls_paths(req.name)
    hook = render("trust/acme-deploy-hook.sh.j2", req=req, paths=paths, tls_dir=TLS_DIR,
                  check=shlex.quote(req.check), reload=shlex.quote(req.reload))
    obtain = render("trust/acme-cert.sh.j2", req=req, root=ROOT_PATH, command=shlex.join(obtain_command(req)),
                    config_dir=ACME_CONFIG_DIR, renew_before=renew_before(lab), tls_dir=TLS_DIR,
                    paths=paths, lock=ACME_LOCK, lock_wait=ACME_LOCK_WAIT)
    return obtain, [GuestFile(req.hook_path, hook, 0o700)]


def shared_sans(topo: Topology, guest: str, sans: Sequence[str]) -> list[str]:
    """SANs that the internal view answers with another guest's address: HTTP-01 for them
    could be answered by the wrong guest, so this guest cannot prove them."""
    mine = str(topo.lab.guest(guest).address)
    out = []
    for san in sans:
        found = topo.internal_addresses.get(san.lower().rstrip("."))
        if found is not None and found != {mine}:
            out.append(san)
    return out


def is_ip(value: str) -> bool:
    import ipaddress
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


def _json(doc: dict) -> str:
    return json.dumps(doc, indent=2) + "\n"
