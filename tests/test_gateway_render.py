"""The gateway's files, rendered from the topology (no Pulumi, no servers).

What each shipped stack's gateway would serve, read back from the generated Nginx and
certbot files; shellcheck on the generated scripts; certbot itself parsing the generated
configuration. Real nginx runs on these files in test_gateway_lab.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from conftest import SHIPPED_STACKS, edited, stack_config
from phoenix.model import parse_lab
from phoenix.render import gateway as gw
from phoenix.stackfile import expand_catalog
from phoenix.topology import ROOT_CA_TRUST_PATH, build


def topology(stack):
    return build(parse_lab(expand_catalog(stack.phoenix(), stack.root)))


@pytest.fixture(params=SHIPPED_STACKS)
def topo(request):
    return topology(stack_config(request.param))


def blocks(text: str, kind: str = "server") -> list[str]:
    """The text of every top-level ``kind { ... }`` block (brace-matched)."""
    out = []
    for m in re.finditer(rf"^{kind}\b[^{{]*\{{", text, re.M):
        depth, i = 1, m.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        out.append(text[m.start():i])
    return out


def server_for(text: str, host: str, port: int) -> str:
    found = [b for b in blocks(text) if re.search(rf"^\s*server_name {re.escape(host)};", b, re.M)
             and re.search(rf"^\s*listen {port}\b", b, re.M)]
    assert len(found) == 1, f"{len(found)} server blocks for {host}:{port}"
    return found[0]


# ---- server_blocks: what the gateway proxies where ----------------------------------------
def test_server_blocks_follow_the_topology(topo):
    servers = gw.server_blocks(topo)
    assert [s.host for s in servers] == topo.public_hosts
    ep = topo.entrypoints["gateway"]
    for s in servers:
        svc = topo.service(s.service)
        assert (s.upstream_address, s.upstream_port, s.entrypoint) == (str(topo.mesh.address), ep.port, ep.name)
        assert (s.scheme, s.ssl_name, s.verify, s.client_certificate) == ("https", topo.mesh_name, True, True)
        assert (s.streaming, s.websocket, s.timeout, s.max_body_size) == (
            svc.streaming, svc.websocket, svc.timeout, svc.max_body_size)


def test_one_tls_server_per_public_host_proxying_to_the_mesh(topo):
    text = gw.render_sites(topo)
    for s in gw.server_blocks(topo):
        block = server_for(text, s.host, 443)
        assert "listen 443 ssl http2;" in block
        assert f"proxy_pass https://{s.upstream};" in block
        for line in ("proxy_ssl_verify on;", f"proxy_ssl_name {s.ssl_name};", "proxy_ssl_server_name on;",
                     f"proxy_ssl_trusted_certificate {ROOT_CA_TRUST_PATH};",
                     f"proxy_ssl_certificate {gw.CLIENT_TLS.cert};", f"proxy_ssl_certificate_key {gw.CLIENT_TLS.key};",
                     f"client_max_body_size {s.max_body_size};", f"proxy_read_timeout {s.timeout}s;",
                     f"ssl_certificate {gw.PUBLIC_CERT_LINK}/fullchain.pem;",
                     f"include {gw.SNIPPETS}/phoenix-proxy-headers.conf;", "limit_req zone="):
            assert line in block, (s.host, line)
        assert ("proxy_buffering off;" in block) == s.streaming
        assert ("proxy_set_header Connection $connection_upgrade;" in block) == s.websocket
        assert ('proxy_set_header Connection "";' in block) != s.websocket   # keepalive to the mesh
        redirect = server_for(text, s.host, 80)
        assert "return 301 https://$host$request_uri;" in redirect
        assert "phoenix-acme-challenge.conf" in redirect
    upstreams = blocks(text, "upstream")
    assert len(upstreams) == 1
    ep = topo.entrypoints["gateway"]
    assert f"server {topo.mesh.address}:{ep.port};" in upstreams[0] and "keepalive " in upstreams[0]


def test_default_servers_refuse_unknown_names_and_nothing_uses_http2_on(topo):
    text = gw.render_sites(topo)
    default80 = [b for b in blocks(text) if "listen 80 default_server;" in b]
    default443 = [b for b in blocks(text) if "listen 443 ssl http2 default_server;" in b]
    assert len(default80) == len(default443) == 1
    assert "return 444;" in default80[0] and "ssl_reject_handshake on;" in default443[0]
    assert "http2 on" not in text      # nginx 1.22 (Debian 12) has no such directive


def test_the_gateways_internal_name_gets_no_server_block(topo):
    """The gateway's client certificate is the program's, not Step-CA's: no HTTP-01 for it here,
    so its internal name is answered by the default server (444) like any unknown name."""
    text = gw.render_sites(topo)
    for name in gw.client_certificate_names(topo):
        assert not [b for b in blocks(text) if re.search(rf"server_name [^;]*\b{re.escape(name)}\b", b)]


def test_nginx_conf_owns_the_defaults():
    topo = topology(stack_config("dev"))
    conf = gw.render_nginx_conf(topo)
    assert "include /etc/nginx/conf.d/*.conf;" in conf
    assert "sites-enabled" not in conf.replace("sites-enabled/ is NOT", "").split("user www-data;")[1]
    assert re.search(r"^\s*ssl_protocols TLSv1.2 TLSv1.3;$", conf, re.M)
    assert f"rate={topo.lab.gateway.rate_limit_per_second}r/s" in conf
    assert f"resolver {topo.dns.address} " in conf
    for timing in ("$upstream_connect_time", "$upstream_header_time", "$upstream_response_time"):
        assert timing in conf
    headers = dict(line.split(" ", 2)[1:] for line in gw.nginx_files(topo)[4].content.splitlines()
                   if line.startswith("add_header"))
    hsts = f'"max-age={topo.lab.gateway.hsts_max_age}; includeSubDomains" always;'
    assert headers["Strict-Transport-Security"] == hsts


def test_the_mesh_port_is_never_typed_twice():
    def move(raw):
        raw.setdefault("mesh", {})["gatewayPort"] = 9555
    topo = topology(edited("dev", move))
    assert {s.upstream_port for s in gw.server_blocks(topo)} == {9555}
    assert f"server {topo.mesh.address}:9555;" in gw.render_sites(topo)


def test_no_public_service_means_only_the_default_servers():
    def private(raw):
        for s in raw["services"]:
            s["public"] = False
            s.pop("publicHost", None)
    topo = topology(edited("dev", private))
    assert gw.server_blocks(topo) == [] and gw.certificate_names(topo) == []
    text = gw.render_sites(topo)
    assert "upstream" not in text and len(blocks(text)) == 2   # the two defaults
    assert gw.health_command(topo).count("curl") == 1


# ---- certbot --------------------------------------------------------------------------------
def test_certificate_names_per_challenge():
    dev, cluster = topology(stack_config("dev")), topology(stack_config("cluster"))
    assert gw.certificate_names(dev) == dev.public_hosts
    assert gw.certificate_names(cluster) == ["ai.example.org", "*.ai.example.org"]

    def deeper(raw):
        raw["services"][0]["publicHost"] = "llm.eu.ai.example.org"
    assert gw.certificate_names(topology(edited("cluster", deeper))) == [
        "ai.example.org", "*.ai.example.org", "llm.eu.ai.example.org"]


def test_certbot_configuration_per_stack():
    dev = gw.render_certbot_ini(topology(stack_config("dev")))
    assert "server = https://acme-staging-v02.api.letsencrypt.org/directory" in dev
    assert f"authenticator = webroot\nwebroot-path = {gw.ACME_WEBROOT}" in dev
    assert f"deploy-hook = {gw.DEPLOY_HOOK}" in dev
    cluster = gw.render_certbot_ini(topology(stack_config("cluster")))
    assert "server = https://acme-v02.api.letsencrypt.org/directory" in cluster
    assert f"authenticator = dns-rfc2136\ndns-rfc2136-credentials = {gw.RFC2136_CREDENTIALS}" in cluster


def test_dns01_credentials_are_root_only_and_name_our_dns():
    topo = topology(stack_config("cluster"))
    files = {f.path: f for f in gw.certbot_files(topo, "c2VjcmV0LXRzaWc=")}
    creds = files[gw.RFC2136_CREDENTIALS]
    assert (creds.mode, creds.owner, creds.group) == (0o600, "root", "root")
    values = dict(line.split(" = ") for line in creds.content.splitlines() if " = " in line)
    assert values == {"dns_rfc2136_server": str(topo.dns.address), "dns_rfc2136_port": "53",
                      "dns_rfc2136_name": topo.acme_tsig_key_name, "dns_rfc2136_secret": "c2VjcmV0LXRzaWc=",
                      "dns_rfc2136_algorithm": topo.acme_tsig_algorithm.upper()}
    with pytest.raises(ValueError):
        gw.certbot_files(topo, None)
    assert gw.RFC2136_CREDENTIALS not in {f.path for f in gw.certbot_files(topology(stack_config("dev")), None)}


@pytest.mark.parametrize("stack", SHIPPED_STACKS)
def test_certbot_accepts_the_configuration(stack, tmp_path):
    """certbot itself parses the generated file (unknown keys or a missing plugin fail here)."""
    if shutil.which("certbot") is None:
        pytest.skip("certbot is not installed: run `make deps` as root")
    topo = topology(stack_config(stack))
    ini = tmp_path / "phoenix-public.ini"
    # certbot checks that the webroot and the hook exist: the guest's paths, under tmp_path
    text = gw.render_certbot_ini(topo)
    for f in gw.certbot_files(topo, "c2VjcmV0LXRzaWc="):
        (tmp_path / f.path.strip("/").replace("/", "_")).write_text(f.content)
        (tmp_path / f.path.strip("/").replace("/", "_")).chmod(f.mode)
        text = text.replace(f.path, str(tmp_path / f.path.strip("/").replace("/", "_")))
    (tmp_path / "webroot").mkdir()
    ini.write_text(text.replace(gw.ACME_WEBROOT, str(tmp_path / "webroot")))
    dirs = [f"--{d}-dir={tmp_path / d}" for d in ("config", "work", "logs")]
    # (the dns-rfc2136 options are unknown to certbot unless python3-certbot-dns-rfc2136 is installed)
    out = subprocess.run(["certbot", "certificates", "-c", str(ini), *dirs], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stderr


# ---- scripts ------------------------------------------------------------------------------
@pytest.mark.parametrize("stack", SHIPPED_STACKS)
def test_generated_scripts_pass_shellcheck(stack, tmp_path):
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed: run `make deps` as root")
    topo = topology(stack_config(stack))
    scripts = {"install.sh": gw.render_install_script(topo), "placeholder.sh": gw.render_placeholder_script(topo),
               "public-cert.sh": gw.render_public_cert_script(topo), "deploy-hook.sh": gw.render_deploy_hook(topo)}
    for name, text in scripts.items():
        (tmp_path / name).write_text(text)
    out = subprocess.run(["shellcheck", "-s", "bash", *sorted(str(p) for p in tmp_path.iterdir())],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout


def test_install_script_adds_the_rfc2136_plugin_only_for_dns01():
    assert "python3-certbot-dns-rfc2136" not in gw.render_install_script(topology(stack_config("dev")))
    assert "python3-certbot-dns-rfc2136" in gw.render_install_script(topology(stack_config("cluster")))


def test_deploy_hook_tests_before_reloading_and_never_chmods():
    hook = gw.render_deploy_hook(topology(stack_config("dev")))
    # the check, then the reload that waits until nginx serves the new certificate
    assert hook.index("nginx -t") < hook.index("/usr/local/sbin/phoenix-nginx-reload")
    code = "\n".join(line for line in hook.splitlines() if not line.lstrip().startswith("#"))
    assert "chmod" not in code and "chown" not in code
