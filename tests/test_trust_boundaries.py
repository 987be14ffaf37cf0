"""Who may reach, read or claim what, as the plan sets it: forwarding headers the gateway owns,
the gateway's health location, one owner per pushed path, secret files, GPU device nodes, the
Portainer agent secret. The behaviour with real nginx and Traefik: tests/test_edge_lab.py."""

from __future__ import annotations

import dataclasses
import re
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, shipped_plan
from lab import require_tools
from phoenix.errors import ConfigError
from phoenix.render import config_text
from phoenix.render import gateway as gw
from phoenix.render import workloads as wl

#: forwarding headers a client could send to make a backend believe another client, scheme,
#: host, port or path (RFC 7239, the X-Forwarded-* family Traefik knows, the URL rewrite headers).
FORWARDING = ("Forwarded", "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Port",
              "X-Forwarded-Prefix", "X-Forwarded-Server", "X-Forwarded-Uri", "X-Forwarded-Ssl", "X-Forwarded-Method",
              "X-Forwarded-Tls-Client-Cert", "X-Forwarded-Tls-Client-Cert-Info", "X-Original-URL",
              "X-Rewrite-URL", "X-Real-IP", "X-Original-Host", "True-Client-IP", "X-Client-IP")


def test_the_gateway_sets_or_clears_every_forwarding_header():
    snippet = config_text("gateway/snippets/phoenix-proxy-headers.conf")
    owned = {m.group(1).lower(): m.group(2) for m in re.finditer(r"^proxy_set_header (\S+) (.*);$", snippet, re.M)}
    missing = [h for h in FORWARDING if h.lower() not in owned]
    assert missing == []
    # set from nginx's own variables, or cleared (""): never passed on from the client ($http_...)
    assert all(v == '""' or re.fullmatch(r"\$(remote_addr|scheme|host|server_port)", v) for v in owned.values())


def test_every_proxied_location_includes_the_header_snippet(any_plan):
    from phoenix.plan.writer import pushed_files
    sites = pushed_files(any_plan.run, any_plan.topo)[any_plan.topo.gateway.name][gw.SITES_CONF][0].content
    blocks = re.findall(r"location / \{(.*?)\n    \}", sites, re.S)
    proxied = [b for b in blocks if "proxy_pass" in b]
    # in the location itself: nginx inherits proxy_set_header from an outer level only where a
    # location sets none, and these locations set Connection (and Upgrade) themselves
    assert proxied and all(f"include {gw.SNIPPETS}/phoenix-proxy-headers.conf;" in b for b in proxied)


def test_the_mesh_trusts_forwarding_headers_from_the_gateway_only(any_plan):
    from phoenix.artifacts import render_all
    static = render_all(any_plan.topo).mesh_static
    trusted = {name: ep.get("forwardedHeaders") for name, ep in static["entryPoints"].items()}
    assert trusted.pop("gateway") == {"trustedIPs": [f"{any_plan.topo.gateway.address}"]}
    # nowhere else: no trustedIPs, never insecure (Traefik then strips X-Forwarded-* it is sent)
    assert all(not (t or {}).get("trustedIPs") and not (t or {}).get("insecure") for t in trusted.values()), trusted


def test_the_health_location_lets_allow_deny_run_before_it_answers(any_plan):
    """nginx runs `return` in the rewrite phase, before allow/deny (access phase): a location
    that returns answers everyone. The answer must come after the access phase."""
    from phoenix.plan.writer import pushed_files
    sites = pushed_files(any_plan.run, any_plan.topo)[any_plan.topo.gateway.name][gw.SITES_CONF][0].content
    blocks = re.findall(r"location = " + re.escape(gw.HEALTH_PATH) + r" \{(.*?)\}", sites, re.S)
    assert len(blocks) == 1 + len(any_plan.topo.public_hosts)   # port 80's default server, each 443 server
    for block in blocks:
        assert "deny all;" in block and "return" not in block and "try_files" in block


# -- one owner per path on a guest -----------------------------------------------------------------
def test_two_steps_pushing_one_path_is_refused_naming_both(dev_plan):
    from phoenix.plan.writer import pushed_files
    run = dev_plan.run
    unit_step = run.named("gpu-llm-svc-llm")
    twin = dataclasses.replace(unit_step, urn=unit_step.urn + "-twin", name="gpu-llm-svc-other")
    clone = dataclasses.replace(run, resources=[*run.resources, twin])
    with pytest.raises(ConfigError) as err:
        pushed_files(clone, dev_plan.topo)
    assert "gpu-llm:/etc/systemd/system/phoenix-llm.service: pushed by both step gpu-llm-svc-llm and step " \
           "gpu-llm-svc-other" in err.value.problems
    assert pushed_files(run, dev_plan.topo)              # the plan itself: one owner per path


def test_no_shipped_plan_has_a_path_two_steps_push(any_plan):
    from phoenix.plan.writer import bundle_of, command_guest
    owners: dict[tuple[str, str], str] = {}
    for r in any_plan.run.by_type("command:remote:Command"):
        guest = command_guest(r, any_plan.topo)
        for f in bundle_of(r) or []:
            assert owners.setdefault((guest, f.path), r.name) == r.name, (guest, f.path, owners[(guest, f.path)])


def test_a_deploy_refuses_a_second_owner_before_the_step_exists():
    from components.base import GuestHandle, claim
    from phoenix.bundle import GuestFile
    handle = GuestHandle(guest=shipped_plan("dev").topo.lab.guest("gpu-llm"), resource=None, connection=None)
    claim(handle, "trust", [GuestFile("/etc/phoenix/tls/phoenix-root.crt", "root")])
    claim(handle, "trust", [GuestFile("/etc/phoenix/tls/phoenix-root.crt", "root")])      # its own again: fine
    with pytest.raises(ConfigError, match=r"gpu-llm:/etc/phoenix/tls/phoenix-root.crt: pushed by both step "
                                          r"gpu-llm-trust and step gpu-llm-svc-x"):
        claim(handle, "svc-x", [GuestFile("/etc/phoenix/tls/phoenix-root.crt", "evil")])


# -- secrets and devices ---------------------------------------------------------------------------
def test_with_secrets_every_secret_file_is_owner_only(tmp_path):
    plan = shipped_plan("dev")
    plan.write(tmp_path / "s", with_secrets=True)
    files = [p for p in (tmp_path / "s" / "secrets").iterdir()]
    assert files
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {"0o600"}
    pushed = [p for p in (tmp_path / "s" / "files").rglob("*") if p.is_file()]   # they hold secrets in clear too
    assert pushed and {oct(stat.S_IMODE(p.stat().st_mode)) for p in pushed} == {"0o600"}


def test_gpu_device_nodes_belong_to_the_services_group_only(any_plan):
    """Not 0666 (every user in the container): read and write for root and a group every GPU
    service's user is in, by the id Debian fixes for it."""
    lines = Path("/usr/share/base-passwd/group.master").read_text().splitlines()
    group_master = {line.split(":")[0]: int(line.split(":")[2]) for line in lines if line.count(":") >= 3}
    from phoenix.plan.writer import pushed_files
    files = pushed_files(any_plan.run, any_plan.topo)
    for g in any_plan.topo.lab.guests:
        if not g.gpus:
            continue
        devices = any_plan.run.named(g.name).value("devicePassthroughs")
        assert devices and all(d["mode"] == "0660" for d in devices), devices
        [gid] = {d["gid"] for d in devices}
        [group] = [name for name, number in group_master.items() if number == gid]
        for s in wl.gpu_services_on(any_plan.topo, g):
            sysusers = files[g.name][wl.sysusers_path(s)][0].content
            assert f"m {wl.service_user(s)} {group}" in sysusers.splitlines(), sysusers


def test_the_agent_secret_is_guarded_where_it_must_stay_an_environment_variable(tmp_path):
    """portainer/agent 2.21.4 reads AGENT_SECRET or --secret only (os/options.go), so the variable
    stays; docker inspect shows it to the docker group, so the scripts refuse a docker group with
    members (here: a getent that reports one), before Docker is even asked."""
    require_tools("bash")
    plan = shipped_plan("dev")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "getent").write_text("#!/bin/sh\n[ \"$1 $2\" = 'group docker' ] && echo 'docker:x:999:alice,bob'\n")
    (bin_dir / "docker").write_text("#!/bin/sh\necho 'docker must not run' >&2\nexit 3\n")
    for p in bin_dir.iterdir():
        p.chmod(0o755)
    for text in (wl.agent_script(plan.topo, plan.topo.agents[0]), wl.portainer_server_script(plan.topo)):
        script = tmp_path / "script.sh"
        script.write_text(text.replace(". '/usr/local/lib/phoenix/portainer-api.sh'", ":"))
        done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30,
                              env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, check=False)
        assert done.returncode == 1 and "docker group" in done.stderr and "alice,bob" in done.stderr, done.stderr
        assert "docker must not run" not in done.stderr
    compose = wl.agent_compose(plan.topo, plan.topo.agents[0])
    assert "AGENT_SECRET" not in compose.split("services:", 1)[1]      # from the root-only env_file only
    assert (ROOT / "docs" / "deploying.md").read_text().count("AGENT_SECRET") >= 1


def test_a_unit_never_takes_over_a_state_directory_someone_else_owns(tmp_path):
    """systemd chowns a unit's StateDirectory= to its User=: the step's check refuses a /var/lib
    directory that exists and is not the service user's (here in a mount namespace of its own,
    with a tmpfs over /var/lib)."""
    import os
    import shutil
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare (run the tests through scripts/in-netns.sh)")
    service = shipped_plan("dev").topo.service("llm")
    guard = wl.state_directory_guard(service)
    assert guard in wl.gpu_service_hooks(service)["check"]
    d = wl.state_directory(service)

    def check(setup: str) -> subprocess.CompletedProcess:
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "bash", "-c",
                               f"mount -t tmpfs none /var/lib && {setup} && bash -c {guard!r}"],
                              capture_output=True, text=True, timeout=30, check=False)
    assert check("true").returncode == 0                                    # a new service: nothing there
    taken = check(f"mkdir {d} && chown root {d}")
    assert taken.returncode == 1 and f"{d} belongs to root, not {wl.service_user(service)}" in taken.stderr
