"""The gateway's files: Nginx on the gateway LXC, certbot for its public certificate.

Everything here is a pure function of the topology. ``server_blocks`` is the one place that
decides what the gateway proxies where: the Nginx template is rendered from its records and
the route audit reads the same records, so the two cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

from phoenix.bundle import GuestFile
from phoenix.render import NGINX_RELOAD_HELPER, TLS12_CIPHERS, config_text, render
from phoenix.topology import ROOT_CA_TRUST_PATH, TLS_DIR, Topology, tls_paths

# -- where things live on the gateway guest -----------------------------------------------
NGINX_CONF = "/etc/nginx/nginx.conf"
SITES_CONF = "/etc/nginx/conf.d/phoenix-gateway.conf"
SNIPPETS = "/etc/nginx/snippets"
ACME_WEBROOT = "/var/www/letsencrypt"
#: certbot's lineage (``--cert-name``) for every public name of the gateway.
CERT_NAME = "phoenix-public"
LETSENCRYPT = "/etc/letsencrypt"
LIVE_DIR = f"{LETSENCRYPT}/live/{CERT_NAME}"
#: the gateway certificate's certbot flags, passed with ``-c`` (certbot stores them in the
#: lineage's renewal conf, which Debian's timer renews from). Not /etc/letsencrypt/cli.ini:
#: certbot reads that file on every run on this guest, the trust tier's Step-CA runs included.
CERTBOT_INI = f"{LETSENCRYPT}/phoenix-public.ini"
RFC2136_CREDENTIALS = f"{LETSENCRYPT}/phoenix-rfc2136.ini"
#: in certbot's renewal-hooks/deploy (run on every renewal) and named as deploy-hook in
#: cli.ini (run on the first issuance too); certbot runs it once either way.
DEPLOY_HOOK = f"{LETSENCRYPT}/renewal-hooks/deploy/phoenix-nginx.sh"
#: the directory Nginx reads the public certificate from: a link to the placeholder until
#: the first issuance, then to certbot's live lineage (swapped by rename, never missing).
PUBLIC_CERT_LINK = f"{TLS_DIR}/gateway-public"
PLACEHOLDER_DIR = f"{TLS_DIR}/gateway-public-placeholder"
#: the gateway's own copy of each certificate it served (the deploy hook's; certbot rewrites its
#: live lineage in place on renewal, so only a copy can be gone back to)
PUBLIC_CERT_STORE = f"{TLS_DIR}/gateway-public.d"
#: what Debian's certbot timer runs here: certbot's renewal, then the deploy hook on the current
#: lineage (a certificate nginx did not take is installed by the next run); its certbot.service
#: drop-in replaces the unit's ExecStart.
RENEW_SCRIPT = "/usr/local/lib/phoenix/gateway-certbot-renew.sh"
RENEW_DROPIN = "/etc/systemd/system/certbot.service.d/phoenix-gateway.conf"
#: the gateway's client certificate towards the mesh, signed by the program's gateway client CA
#: (components.trust.gateway_client_certificate), the one CA the mesh's gateway entrypoint
#: trusts; a self-signed placeholder until its step pushes it, so nginx can start first.
CLIENT_CERT_NAME = "gateway-client"
CLIENT_TLS = tls_paths(CLIENT_CERT_NAME)
HEALTH_PATH = "/phoenix-health"
#: what the health location's try_files tries first: a path under the server's root that is never
#: a file (the answer comes from the named location after the access phase allowed the request).
HEALTH_NEVER_A_FILE = "/.phoenix-health-is-answered-by-nginx-not-a-file"

RATE_ZONE = "phoenix_per_client"
LOG_FORMAT = "phoenix_upstream_timing"
UPSTREAM_KEEPALIVE = 32
WORKER_CONNECTIONS = 4096
CIPHERS = TLS12_CIPHERS
NGINX_CHECK = "nginx -t"
#: reload, or start nginx if it is not running (a fresh guest, a crash), and return once the new
#: configuration serves: a configuration the running nginx cannot load fails here (and is
#: rolled back), and the health check that follows judges the new one (phoenix-nginx-reload).
NGINX_RELOAD = NGINX_RELOAD_HELPER
DNS01_PROPAGATION_SECONDS = 10


@dataclass(frozen=True)
class GatewayServer:
    """One public host name as the gateway serves it: the 443 server block and its proxy."""
    host: str
    service: str
    upstream: str            # the Nginx upstream group's name
    upstream_address: str    # the mesh guest's address
    upstream_port: int       # the mesh entrypoint's port
    entrypoint: str          # the mesh entrypoint's name
    scheme: str              # what the gateway speaks to the mesh ("https")
    ssl_name: str            # proxy_ssl_name: the name on the mesh's certificate
    verify: bool             # proxy_ssl_verify against the Phoenix root
    client_certificate: bool  # the gateway presents its Step-CA certificate
    streaming: bool
    websocket: bool
    timeout: int             # seconds, proxy read/send timeout
    max_body_size: str       # client_max_body_size


@dataclass(frozen=True)
class Upstream:
    name: str
    address: str
    port: int
    scheme: str
    entrypoint: str
    client_certificate: bool


def upstream_name(entrypoint: str) -> str:
    return f"phoenix_mesh_{entrypoint}"


def server_blocks(topo: Topology) -> list[GatewayServer]:
    """Every public host name the gateway serves, and where it proxies it (the route audit reads this)."""
    out = []
    for route in topo.public_routes:
        svc = topo.service(route.service)
        ep = route.entrypoint
        out.append(GatewayServer(
            host=route.host, service=svc.name, upstream=upstream_name(ep.name),
            upstream_address=str(topo.mesh.address), upstream_port=ep.port, entrypoint=ep.name,
            scheme=ep.scheme, ssl_name=topo.mesh_name, verify=ep.scheme == "https",
            client_certificate=ep.client_auth, streaming=svc.streaming, websocket=svc.websocket,
            timeout=svc.timeout, max_body_size=svc.max_body_size))
    return out


def upstreams(servers: list[GatewayServer]) -> list[Upstream]:
    found: dict[str, Upstream] = {}
    for s in servers:
        found.setdefault(s.upstream, Upstream(s.upstream, s.upstream_address, s.upstream_port,
                                              s.scheme, s.entrypoint, s.client_certificate))
    return list(found.values())


def client_certificate_names(topo: Topology) -> list[str]:
    """The SANs of the gateway's client certificate (and of its placeholder): the gateway's name."""
    return [topo.guest_fqdn(topo.gateway)]


def client_certificate_files(chain_pem: str, key_pem: str) -> list[GuestFile]:
    """What the client-certificate step pushes: the chain nginx presents to the mesh (leaf, then
    the gateway client CA) and its key, root's only (nginx's master reads it)."""
    return [GuestFile(CLIENT_TLS.cert, chain_pem, 0o644), GuestFile(CLIENT_TLS.key, key_pem, 0o600)]


# -- Nginx ---------------------------------------------------------------------------------
def render_nginx_conf(topo: Topology) -> str:
    gw = topo.lab.gateway
    return render("gateway/nginx.conf.j2", sites_conf=SITES_CONF, worker_connections=WORKER_CONNECTIONS,
                  ciphers=CIPHERS, resolver=str(topo.dns.address), rate_zone=RATE_ZONE,
                  rate=gw.rate_limit_per_second, log_format=LOG_FORMAT)


def render_sites(topo: Topology, servers: list[GatewayServer] | None = None) -> str:
    """The server blocks as nginx reads them (``servers``: the blocks the route audit proved)."""
    servers = server_blocks(topo) if servers is None else servers
    return render("gateway/phoenix-gateway.conf.j2", servers=servers, upstreams=upstreams(servers),
                  keepalive=UPSTREAM_KEEPALIVE, health_path=HEALTH_PATH, snippets=SNIPPETS,
                  health_never_a_file=HEALTH_NEVER_A_FILE,
                  public_cert=f"{PUBLIC_CERT_LINK}/fullchain.pem",
                  public_key=f"{PUBLIC_CERT_LINK}/privkey.pem",
                  rate_zone=RATE_ZONE, burst=topo.lab.gateway.rate_limit_burst,
                  trusted_root=ROOT_CA_TRUST_PATH, client_cert=CLIENT_TLS.cert, client_key=CLIENT_TLS.key)


def nginx_files(topo: Topology, servers: list[GatewayServer] | None = None) -> list[GuestFile]:
    """What the ``nginx`` step pushes (checked by ``nginx -t`` before nginx reloads)."""
    return [
        GuestFile(NGINX_CONF, render_nginx_conf(topo)),
        GuestFile(SITES_CONF, render_sites(topo, servers)),
        GuestFile(f"{SNIPPETS}/phoenix-proxy-headers.conf", config_text("gateway/snippets/phoenix-proxy-headers.conf")),
        GuestFile(f"{SNIPPETS}/phoenix-acme-challenge.conf",
                  render("gateway/snippets/phoenix-acme-challenge.conf.j2", webroot=ACME_WEBROOT)),
        GuestFile(f"{SNIPPETS}/phoenix-security-headers.conf",
                  render("gateway/snippets/phoenix-security-headers.conf.j2",
                         hsts_max_age=topo.lab.gateway.hsts_max_age)),
    ]


def health_command(topo: Topology) -> str:
    """Port 80 answers, and so does the TLS listener of the first public host (trap 11).

    ``nginx -s reload`` (what ``systemctl reload`` runs) returns before the new workers
    answer, so curl retries for a few seconds instead of judging the old configuration.
    """
    curl = "curl -fsS -o /dev/null --max-time 5 --retry 10 --retry-delay 1 --retry-all-errors"
    cmd = f"{curl} http://127.0.0.1{HEALTH_PATH}"
    hosts = topo.public_hosts
    if hosts:
        cmd += f" && {curl} -k --resolve {hosts[0]}:443:127.0.0.1 https://{hosts[0]}{HEALTH_PATH}"
    return cmd


# -- certbot -------------------------------------------------------------------------------
def certificate_names(topo: Topology) -> list[str]:
    """The names on the gateway's certificate: every public host, or the wildcard for DNS-01."""
    acme, public = topo.lab.acme, topo.lab.domains.public
    hosts = list(dict.fromkeys(topo.public_hosts))
    if not acme.wildcard:
        return hosts
    # *.public covers one label below the domain; deeper names are listed as they are.
    covered = [h for h in hosts if h == public or h.count(".") == public.count(".") + 1]
    return [public, f"*.{public}"] + [h for h in hosts if h not in covered]


def _server_label(topo: Topology) -> str:
    server = topo.lab.acme.server
    return {"staging": "Let's Encrypt staging", "production": "Let's Encrypt"}.get(server, server)


def render_certbot_ini(topo: Topology) -> str:
    acme = topo.lab.acme
    return render("gateway/certbot.ini.j2", cert_name=CERT_NAME, server=topo.public_acme_directory,
                  server_label=_server_label(topo),
                  email=acme.email, deploy_hook=DEPLOY_HOOK, challenge=acme.challenge, webroot=ACME_WEBROOT,
                  credentials=RFC2136_CREDENTIALS, tsig_key_name=topo.acme_tsig_key_name,
                  propagation_seconds=DNS01_PROPAGATION_SECONDS)


def render_rfc2136_credentials(topo: Topology, tsig_secret: str) -> str:
    return render("gateway/rfc2136.ini.j2", server=str(topo.dns.address), key_name=topo.acme_tsig_key_name,
                  secret=tsig_secret, algorithm=topo.acme_tsig_algorithm.upper())


def render_deploy_hook(topo: Topology) -> str:
    return render("gateway/deploy-hook.sh.j2", cert_name=CERT_NAME, link=PUBLIC_CERT_LINK, store=PUBLIC_CERT_STORE,
                  reload=NGINX_RELOAD, check=NGINX_CHECK, renew=RENEW_SCRIPT)


def render_renew_script(topo: Topology) -> str:
    return render("gateway/certbot-renew.sh.j2", dropin=RENEW_DROPIN, live=LIVE_DIR, deploy_hook=DEPLOY_HOOK)


def render_public_cert_script(topo: Topology) -> str:
    return render("gateway/public-cert.sh.j2", names=certificate_names(topo), cert_name=CERT_NAME,
                  server_label=_server_label(topo), challenge=topo.lab.acme.challenge, certbot_ini=CERTBOT_INI,
                  link=PUBLIC_CERT_LINK, live=LIVE_DIR, deploy_hook=DEPLOY_HOOK)


def certbot_files(topo: Topology, tsig_secret: str | None) -> list[GuestFile]:
    """certbot's configuration and hook (and, for DNS-01, the TSIG credentials, root only)."""
    files = [GuestFile(CERTBOT_INI, render_certbot_ini(topo)),
             GuestFile(DEPLOY_HOOK, render_deploy_hook(topo), 0o755),
             GuestFile(RENEW_SCRIPT, render_renew_script(topo), 0o755),
             GuestFile(RENEW_DROPIN, render("gateway/certbot-renew.conf.j2", renew=RENEW_SCRIPT))]
    if topo.lab.acme.challenge == "dns-01":
        if not tsig_secret:
            raise ValueError("DNS-01 needs the TSIG secret")
        files.append(GuestFile(RFC2136_CREDENTIALS, render_rfc2136_credentials(topo, tsig_secret), 0o600))
    return files


# -- scripts -------------------------------------------------------------------------------
def packages(topo: Topology) -> list[str]:
    extra = ["python3-certbot-dns-rfc2136"] if topo.lab.acme.challenge == "dns-01" else []
    return ["nginx", "certbot", *extra, "openssl", "curl", "ca-certificates"]


def render_install_script(topo: Topology) -> str:
    return render("gateway/install.sh.j2", packages=packages(topo), webroot=ACME_WEBROOT)


def render_placeholder_script(topo: Topology) -> str:

    def san(names) -> str:
        return ",".join(f"DNS:{n}" for n in names) or "DNS:localhost"

    return render("gateway/placeholder-cert.sh.j2", link=PUBLIC_CERT_LINK, placeholder=PLACEHOLDER_DIR,
                  san=san(certificate_names(topo)), client=CLIENT_TLS,
                  client_san=san(client_certificate_names(topo)))
