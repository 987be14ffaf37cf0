"""How GPU services serve TLS, under the mock runtime: certificates only for names a replica can
prove, the TLS sidecar for services that cannot serve TLS themselves (steps, order, files,
renewal hooks), and the catalog rules that keep plain HTTP explicit."""

from __future__ import annotations

import re
import shlex

import pytest

from conftest import edited
from phoenix.errors import ConfigError
from phoenix.model import parse_lab
from phoenix.plan.writer import pushed_files
from phoenix.render import workloads as wl
from phoenix.stackfile import expand_catalog

SCRIPTS = "/usr/local/lib/phoenix"


def requested_sans(plan, guest: str, cert: str) -> list[str]:
    script = pushed_files(plan.run, plan.topo)[guest][f"{SCRIPTS}/cert-{cert}.sh"][0].content
    words = shlex.split(next(x for x in script.splitlines() if " certonly " in x))
    return [words[i + 1] for i, w in enumerate(words) if w == "-d"]


def names(plan, urns) -> set[str]:
    by_urn = {r.urn: r.name for r in plan.run.resources}
    return {by_urn[u] for u in urns}


# -- certificates: names the replica can prove -------------------------------------------------
def test_replicas_of_a_replicated_service_ask_only_for_their_own_guests_name(cluster_plan):
    for guest in ("gpu-a", "gpu-b"):
        assert requested_sans(cluster_plan, guest, "llm") == [f"{guest}.ai.internal"]


def test_a_service_that_runs_once_asks_only_for_its_guests_name_too(dev_plan, cluster_plan):
    """A service's own name and aliases resolve to the mesh (which holds their certificate): a
    replica could not prove them by HTTP-01, so it never asks for them."""
    assert requested_sans(dev_plan, "gpu-llm", "llm") == ["gpu-llm.lab.internal"]
    assert requested_sans(cluster_plan, "gpu-c", "embed") == ["gpu-c.ai.internal"]
    assert requested_sans(cluster_plan, "portainer", "portainer-ui") == ["portainer.ai.internal"]


def test_an_alias_of_a_replicated_service_is_not_asked_for():
    """An alias is a CNAME to the shared name: HTTP-01 for it could reach the other replica too."""
    def alias(raw):
        next(s for s in raw["services"] if s["name"] == "llm")["aliases"] = ["chat"]
    stack = edited("cluster", alias)
    from phoenix.topology import build
    topo = build(parse_lab(expand_catalog(stack.phoenix(), stack.root)))
    llm = topo.service("llm")
    assert wl.certificate_names(topo, llm, topo.lab.guest("gpu-a")) == ["gpu-a.ai.internal"]


def test_each_replicas_health_check_verifies_the_name_the_mesh_verifies(cluster_plan):
    files = pushed_files(cluster_plan.run, cluster_plan.topo)
    for guest, name, port in (("gpu-a", "gpu-a.ai.internal", 8000), ("gpu-b", "gpu-b.ai.internal", 8000),
                              ("gpu-c", "gpu-c.ai.internal", 8001)):
        service = "llm" if port == 8000 else "embed"
        health = files[guest][f"{SCRIPTS}/health-{service}.sh"][0].content
        assert f"url='https://{name}:{port}/health'" in health
        assert f"--resolve '{name}:{port}:127.0.0.1' --cacert '/etc/phoenix/tls/phoenix-root.crt'" in health


# -- the TLS sidecar ----------------------------------------------------------------------------
def test_services_behind_the_sidecar_listen_on_loopback_at_the_derived_port(cluster_plan):
    files = pushed_files(cluster_plan.run, cluster_plan.topo)["gpu-c"]
    for name, flags, app_port in (("embed", "--hostname 127.0.0.1 --port 18001", 18001),
                                  ("whisper", "--host 127.0.0.1 --port 18002", 18002)):
        s = cluster_plan.topo.service(name)
        assert (s.tls_termination, s.app_port) == ("sidecar", app_port)
        start = next(x for x in files[f"/etc/systemd/system/phoenix-{name}.service"][0].content.splitlines()
                     if x.startswith("ExecStart="))
        assert start.endswith(flags) and "/etc/phoenix/tls" not in start
        conf = files[wl.SIDECAR_CONF][0].content
        assert (f"        listen {s.port} ssl;\n        ssl_certificate /etc/phoenix/tls/{name}.crt;\n"
                f"        ssl_certificate_key /etc/phoenix/tls/{name}.key;\n"
                f"        proxy_pass 127.0.0.1:{app_port};\n") in conf
    # a service serving TLS itself listens on every address at its catalog port, with its files
    unit = pushed_files(cluster_plan.run, cluster_plan.topo)["gpu-a"]["/etc/systemd/system/phoenix-llm.service"]
    assert "--host 0.0.0.0 --port 8000 --ssl-certfile /etc/phoenix/tls/llm.crt" in unit[0].content


def test_the_sidecar_conf_is_nginx_stream_only_and_never_binds_port_80(cluster_plan):
    conf = pushed_files(cluster_plan.run, cluster_plan.topo)["gpu-c"][wl.SIDECAR_CONF][0].content
    assert "stream {" in conf and "http {" not in conf
    assert "include /etc/nginx/modules-enabled/*.conf;" in conf      # Debian's stream module
    assert "sites-enabled" not in conf                                 # Debian's default :80 site is not read
    assert not re.search(r"listen (\S+:)?80[ ;]", conf)
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in conf


def test_sidecar_steps_run_after_the_certificates_and_before_the_services(cluster_plan):
    run = cluster_plan.run
    sidecar, install = run.named("gpu-c-tls-sidecar"), run.named("gpu-c-tls-sidecar-install")
    assert {"gpu-c-tls-sidecar-install", "gpu-c-cert-embed", "gpu-c-cert-whisper"} <= names(cluster_plan,
                                                                                          sidecar.dependencies)
    assert {"gpu-c-bootstrap", "gpu-c-trust"} <= names(cluster_plan, install.dependencies)
    create = sidecar.value("create")
    assert "--check 'nginx -t -q'" in create
    # the reload returns once the new configuration serves (phoenix-nginx-reload)
    assert "--reload 'systemctl enable --quiet nginx && /usr/local/sbin/phoenix-nginx-reload'" in create
    assert f"--health 'bash {wl.SIDECAR_HEALTH}'" in create
    for name in ("embed", "whisper"):
        assert "gpu-c-tls-sidecar" in names(cluster_plan, run.named(f"gpu-c-svc-{name}").dependencies)
    # only gpu-c has services that cannot serve TLS
    assert [r.name for r in run.resources if r.name.endswith("-tls-sidecar")] == ["gpu-c-tls-sidecar"]


def test_a_renewed_sidecar_certificate_is_tested_by_nginx_then_reloaded(cluster_plan):
    files = pushed_files(cluster_plan.run, cluster_plan.topo)
    hook = files["gpu-c"][f"{SCRIPTS}/acme-deploy-embed.sh"][0].content
    assert "check='nginx -t -q'" in hook and "reload=/usr/local/sbin/phoenix-nginx-reload" in hook
    assert "-g root" in hook                     # nginx's master reads the key as root
    native = files["gpu-a"][f"{SCRIPTS}/acme-deploy-llm.sh"][0].content
    assert "reload='systemctl try-restart phoenix-llm.service'" in native and "-g svc-llm" in native


def test_the_sidecar_install_keeps_debians_default_site_off_port_80(cluster_plan):
    text = pushed_files(cluster_plan.run, cluster_plan.topo)["gpu-c"][f"{SCRIPTS}/tls-sidecar-install.sh"][0].content
    assert "for package in nginx libnginx-mod-stream; do" in text
    assert text.index("exit 101") < text.index("apt-get install")     # policy-rc.d: not started by dpkg
    assert "rm -f /etc/nginx/sites-enabled/default" in text


# -- the catalog: TLS explicit, plain HTTP only when said ---------------------------------------------
def problems(edit) -> list[str]:
    def apply(raw):
        edit(next(s for s in raw["services"] if s["name"] == "embed"))
    stack = edited("cluster", apply)
    with pytest.raises(ConfigError) as err:
        parse_lab(expand_catalog(stack.phoenix(), stack.root))
    return err.value.problems


EMBED = "phoenix:services[1].run"


@pytest.mark.parametrize("edit, expected", [
    (lambda s: s["run"].pop("tls"),
     f"{EMBED}.tls: service 'embed' has protocol https but its command names no {{cert}}/{{key}}, so it cannot "
     "serve TLS itself: set run.tls: sidecar (a TLS terminator on its guest), or protocol: http for plain HTTP "
     "from the mesh"),
    (lambda s: s["run"].update(tls="native"),
     f"{EMBED}.tls: native TLS needs both {{cert}} and {{key}} in the command"),
    (lambda s: s["run"].update(command=s["run"]["command"] + " --cert {cert}"),
     f"{EMBED}.tls: the sidecar serves TLS; the command must not use {{cert}}/{{key}}"),
    (lambda s: s["run"].update(command="/opt/tei/bin/text-embeddings-router --model-id {model} --port {port}"),
     f"{EMBED}.command: behind a TLS sidecar the service listens on loopback only: the command must pass "
     "{host} and {port} to its listen options"),
    (lambda s: s.update(protocol="http"),
     f"{EMBED}.tls: is sidecar but protocol is http (the mesh would speak plain HTTP to it): remove run.tls, or "
     "set protocol: https"),
    (lambda s: s["run"].update(internalPort=8002),
     f"{EMBED}.internalPort: loopback port 8002 on guest 'gpu-c' is already used by service 'whisper'"),
    (lambda s: s["run"].update(internalPort=22),
     f"{EMBED}.internalPort: loopback port 22 on guest 'gpu-c' is already used by the lab itself (SSH)"),
    (lambda s: s.update(port=60000),
     f"{EMBED}.internalPort: the default 60000 + 10000 is not a port: set run.internalPort"),
])
def test_bad_tls_settings_are_refused_with_the_key(edit, expected):
    assert expected in problems(edit)


def test_the_whisper_default_internal_port_clashing_is_refused():
    def clash(raw):
        whisper = next(s for s in raw["services"] if s["name"] == "whisper")
        whisper["run"]["internalPort"] = 18001              # embed's derived loopback port
    stack = edited("cluster", clash)
    with pytest.raises(ConfigError) as err:
        parse_lab(expand_catalog(stack.phoenix(), stack.root))
    assert err.value.problems == ["phoenix:services[2].run.internalPort: loopback port 18001 on guest 'gpu-c' is "
                                  "already used by service 'embed'"]


def test_an_explicit_internal_port_is_used():
    def pick(raw):
        next(s for s in raw["services"] if s["name"] == "embed")["run"]["internalPort"] = 7001
    stack = edited("cluster", pick)
    lab = parse_lab(expand_catalog(stack.phoenix(), stack.root))
    embed = next(s for s in lab.services if s.name == "embed")
    assert embed.app_port == 7001
    assert wl.service_argv(embed)[-4:] == ["--hostname", "127.0.0.1", "--port", "7001"]
