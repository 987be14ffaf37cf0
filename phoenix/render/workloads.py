"""Workload files: GPU service units and driver installs, the Portainer server, agents and
their registration. Pure: topology (and secret values, for the files that carry them) in,
``GuestFile`` lists and script text out.
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass

import yaml

from phoenix.bundle import GuestFile
from phoenix.model import Guest, Service
from phoenix.model.catalog import fill_placeholders
from phoenix.model.secrets import PORTAINER_PASSWORD_MIN_BYTES
from phoenix.render import NGINX_RELOAD_HELPER, SCRIPTS, TLS12_CIPHERS, config_text, render, yaml_block
from phoenix.render.gpu_node import (  # noqa: F401
    NODE_DEVICES_SCRIPT,
    NODE_DEVICES_UNIT,
    gpu_boot_unit,
    gpu_probe_command,
    node_device_paths,
)
from phoenix.topology import Topology, gpu_device_paths, tls_paths

WAIT_DEVICES = f"{SCRIPTS}/wait-gpu-devices"
LOOPBACK = "127.0.0.1"
#: how long a GPU service's start waits for its device nodes.
DEVICE_WAIT_SECONDS = 60
#: how long a deploy waits for a GPU service's health (fetching and loading a model is slow).
GPU_START_TIMEOUT = 1800
#: the fact the node probe reports (``# phoenix-fact:`` marker; the plan engine answers it).
DRIVER_FACT = "gpu-driver-version"
#: GPU device nodes in a GPU LXC: read and write for root and the group ``video`` only, which
#: every GPU service's user is in (gpu-service.sysusers.j2). Debian's base-passwd fixes video's
#: id at 44 on every Debian system (/usr/share/base-passwd/group.master), so the node can name it.
GPU_DEVICE_GROUP, GPU_DEVICE_GID, GPU_DEVICE_MODE = "video", 44, "0660"

PORTAINER_DIR = "/etc/phoenix/portainer"
PORTAINER_API_LIB = f"{SCRIPTS}/portainer-api.sh"
PORTAINER_PASSWORD_FILE = f"{PORTAINER_DIR}/admin-password"
#: where Portainer's container reads it (a read-only bind mount of ``PORTAINER_PASSWORD_FILE``).
PORTAINER_PASSWORD_MOUNT = "/run/phoenix/admin-password"
AGENT_ENV_FILE = f"{PORTAINER_DIR}/agent-secret.env"
#: root-only state on the Portainer VM: the previous admin password, and the one API session
#: (a curl config holding the token) every Portainer script shares, with its lock.
PORTAINER_STATE_DIR = "/var/lib/phoenix/portainer"
PORTAINER_SESSION_FILE = f"{PORTAINER_STATE_DIR}/session"
#: the port Portainer CE serves HTTPS on inside its container (a fact of the image).
PORTAINER_HTTPS_PORT = 9443
PORTAINER_PROJECT, AGENT_PROJECT = "portainer", "portainer-agent"
PORTAINER_CONTAINER, AGENT_CONTAINER = "portainer", "portainer_agent"


def _q(value) -> str:
    """A shell word, always quoted (so shellcheck never reads a value as a command)."""
    return "'" + str(value).replace("'", "'\\''") + "'"


# -- GPU services ----------------------------------------------------------------------------
def gpu_lxcs(topo: Topology) -> list[Guest]:
    """The LXCs with GPU devices passed through (the model allows gpus on LXCs only)."""
    return [g for g in topo.lab.guests if g.gpus]


def gpu_nodes(topo: Topology) -> list[str]:
    return list(dict.fromkeys(g.node for g in gpu_lxcs(topo)))


def gpu_driver_script(topo: Topology, guest: Guest, version: str) -> str:
    version = version.strip()
    return render("workloads/gpu-driver.sh.j2", q=_q, guest=guest.name, node=guest.node, version=version,
                  sha256=topo.lab.gpu.driver_sha256.get(version, ""), base_url=topo.lab.gpu.driver_base_url)


def gpu_services_on(topo: Topology, guest: Guest) -> list[Service]:
    return [s for s in topo.lab.services if s.gpu and s.run and guest.name in s.guests]


def service_user(service: Service) -> str:
    """The service's system user (user names stop at 32 characters; long names get a hash)."""
    user = f"svc-{service.name}"
    if len(user) > 32:
        user = f"svc-{service.name[:19]}-{hashlib.sha256(service.name.encode()).hexdigest()[:8]}"
    return user


def unit_name(service: Service) -> str:
    return f"phoenix-{service.name}.service"


def _systemd_word(text: str) -> str:
    """One word as systemd's unquoting reads it: as it is when plain, else double-quoted with
    C escapes (the model refuses control characters, so none reach here)."""
    if text and not any(c in text for c in " \t\n\"'\\;"):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def systemd_quote(arg: str) -> str:
    """One argument of ExecStart= as systemd reads it: no specifier (``%``), no variable (``$``)."""
    return _systemd_word(arg.replace("%", "%%").replace("$", "$$"))


def systemd_environment(name: str, value: str) -> str:
    """One assignment of Environment=: specifiers escaped; ``$`` stays as it is (systemd does not
    expand variables in Environment=, so ``$$`` would reach the service as two dollars)."""
    return _systemd_word(f"{name}={value}".replace("%", "%%"))


def listen_host(service: Service) -> str:
    """Where the service's own process listens: loopback only behind a TLS sidecar."""
    return LOOPBACK if service.tls_termination == "sidecar" else "0.0.0.0"


def service_argv(service: Service) -> list[str]:
    """The catalog's command split into words, each placeholder filled in."""
    tls = tls_paths(service.name)
    run = service.require_run()
    values = {"model": run.model or "", "port": service.app_port, "cert": tls.cert, "key": tls.key,
              "host": listen_host(service)}
    return [fill_placeholders(word, values) for word in shlex.split(run.command)]


def service_url(topo: Topology, service: Service, guest: Guest) -> tuple[str, str]:
    """(URL of the health path as the guest checks itself, curl's TLS options): over TLS by the
    name the mesh verifies on this replica, through the sidecar where there is one."""
    if service.protocol == "https":
        name = topo.replica_tls_name(service, guest.name)
        return (f"https://{name}:{service.port}{service.health}",
                f"--resolve {_q(f'{name}:{service.port}:127.0.0.1')} --cacert {_q(tls_paths(service.name).root)}")
    return f"http://127.0.0.1:{service.port}{service.health}", ""


def gpu_service_files(topo: Topology, service: Service, guest: Guest) -> list[GuestFile]:
    user, unit = service_user(service), unit_name(service)
    url, curl_tls = service_url(topo, service, guest)
    env = [systemd_environment(k, v) for k, v in sorted(service.require_run().environment.items())]
    return [
        GuestFile(f"/etc/systemd/system/{unit}", render(
            "workloads/gpu-service.service.j2", service=service.name, guest=guest.name, port=service.port,
            user=user, environment=env, wait_devices=WAIT_DEVICES, device_wait_seconds=DEVICE_WAIT_SECONDS,
            devices=" ".join(gpu_device_paths(guest)),
            exec_start=" ".join(systemd_quote(w) for w in service_argv(service)))),
        GuestFile(gpu_health_path(service), render(
            "workloads/gpu-health.sh.j2", q=_q, service=service.name, guest=guest.name, unit=unit, url=url,
            curl_tls=curl_tls, timeout=GPU_START_TIMEOUT), 0o755),
    ]


def gpu_guest_files() -> list[GuestFile]:
    """What every GPU service on a guest shares, pushed once per guest (with the driver): one
    step owns each path on a guest, so no two steps can put different files there."""
    return [GuestFile(WAIT_DEVICES, config_text("workloads/wait-gpu-devices.sh"), 0o755)]


def sysusers_path(service: Service) -> str:
    return f"/etc/sysusers.d/phoenix-{service.name}.conf"


def gpu_service_user_file(service: Service) -> GuestFile:
    """The service's system user (sysusers.d: declarative, safe to apply twice)."""
    return GuestFile(sysusers_path(service), render("workloads/gpu-service.sysusers.j2", service=service.name,
                                                     user=service_user(service)))


def gpu_health_path(service: Service) -> str:
    return f"{SCRIPTS}/health-{service.name}.sh"


def state_directory(service: Service) -> str:
    """The unit's ``StateDirectory=``, which systemd creates and hands to the service user."""
    return f"/var/lib/{service.name}"


def state_directory_guard(service: Service) -> str:
    """Refuse to start the unit over a /var/lib directory someone else owns: systemd would chown
    it to the service user (the model reserves the names it knows; this catches the rest)."""
    d, user = state_directory(service), service_user(service)
    return (f'[ ! -e {d} ] || [ "$(stat -c %U {d})" = {user} ] || {{ echo "{d} belongs to '
            f'$(stat -c %U {d}), not {user}: StateDirectory= would hand it to the service; rename the '
            f'service" >&2; exit 1; }}')


def gpu_service_hooks(service: Service) -> dict[str, str]:
    """phoenix-apply's hooks for a service's files: check, reload, health."""
    unit = unit_name(service)
    return {
        "check": f"systemd-analyze verify /etc/systemd/system/{unit} && {state_directory_guard(service)}",
        "reload": f"systemctl daemon-reload && systemctl enable --quiet {unit} && systemctl restart {unit}",
        "health": f"bash {gpu_health_path(service)}",
    }


def gpu_service_delete(service: Service) -> str:
    """What removing a service from the catalog does on its guest (the step's ``delete``): the unit
    stops, is disabled and its files go, so it no longer runs, holds its port or starts at boot.
    Safe when nothing is there (a guest rebuilt outside Pulumi)."""
    unit = unit_name(service)
    return (f"systemctl disable --now {unit} >/dev/null 2>&1 || true; "
            f"rm -f /etc/systemd/system/{unit} {gpu_health_path(service)}; "
            "systemctl daemon-reload || true")


def needs_certificate(service: Service) -> bool:
    """A replica speaking TLS (or naming {cert}/{key}) gets its own certificate from Step-CA."""
    return service.protocol == "https" or bool({"cert", "key"} & service.require_run().placeholders)


def certificate_names(topo: Topology, service: Service, guest: Guest) -> list[str]:
    """What a replica's certificate carries: its guest's name, the one name it can prove by ACME
    HTTP-01 (the service's names resolve to the mesh, which holds their certificate) and the
    one the mesh verifies (``topo.replica_tls_name``)."""
    return [topo.replica_tls_name(service, guest.name)]


# -- the TLS sidecar (run.tls: sidecar) ----------------------------------------------------------
SIDECAR_CONF = "/etc/nginx/nginx.conf"
SIDECAR_HEALTH = f"{SCRIPTS}/tls-sidecar-health.sh"
SIDECAR_PACKAGES = ("nginx", "libnginx-mod-stream")
SIDECAR_CHECK = "nginx -t -q"
#: reload (or start) and wait until the new configuration serves (phoenix-nginx-reload).
SIDECAR_RELOAD = f"systemctl enable --quiet nginx && {NGINX_RELOAD_HELPER}"
#: seconds an idle proxied connection stays open: longer than the mesh keeps idle connections
#: (serversTransport idleConnTimeout 90s), so the mesh closes them first.
SIDECAR_IDLE_SECONDS = 120
#: how long the sidecar's health check waits for its ports after a (re)load.
SIDECAR_HEALTH_WAIT = 30
SIDECAR_CIPHERS = TLS12_CIPHERS


@dataclass(frozen=True)
class Sidecar:
    """One port the TLS sidecar serves on a guest, in front of a service on loopback."""
    service: str
    port: int                  # the catalog port: what the mesh dials
    app_port: int              # where the service listens, on 127.0.0.1
    tls_name: str              # the name the mesh verifies there
    cert: str
    key: str
    idle_timeout: int


def sidecars_on(topo: Topology, guest: Guest) -> list[Sidecar]:
    return [Sidecar(s.name, s.port, s.app_port, topo.replica_tls_name(s, guest.name), tls_paths(s.name).cert,
                    tls_paths(s.name).key, max(s.timeout, SIDECAR_IDLE_SECONDS))
            for s in gpu_services_on(topo, guest) if s.tls_termination == "sidecar"]


def sidecar_conf(topo: Topology, guest: Guest) -> str:
    return render("workloads/tls-sidecar-nginx.conf.j2", guest=guest.name, sidecars=sidecars_on(topo, guest),
                  ciphers=SIDECAR_CIPHERS, loopback=LOOPBACK)


def sidecar_health_script(topo: Topology, guest: Guest) -> str:
    return render("workloads/tls-sidecar-health.sh.j2", q=_q, guest=guest.name, sidecars=sidecars_on(topo, guest),
                  root=tls_paths("phoenix").root, wait=SIDECAR_HEALTH_WAIT)


def sidecar_install_script(guest: Guest) -> str:
    return render("workloads/tls-sidecar-install.sh.j2", guest=guest.name, packages=SIDECAR_PACKAGES)


def sidecar_files(topo: Topology, guest: Guest) -> list[GuestFile]:
    return [GuestFile(SIDECAR_CONF, sidecar_conf(topo, guest)),
            GuestFile(SIDECAR_HEALTH, sidecar_health_script(topo, guest), 0o755)]


def sidecar_hooks() -> dict[str, str]:
    """phoenix-apply's hooks for the sidecar's files: nginx's own test, reload, every port's certificate."""
    return {"check": SIDECAR_CHECK, "reload": SIDECAR_RELOAD, "health": f"bash {SIDECAR_HEALTH}"}


def certificate_hooks(service: Service) -> dict[str, str]:
    """What a renewed certificate runs: the sidecar's config test and reload, or the service's restart."""
    if service.tls_termination == "sidecar":
        return {"group": "root", "check": SIDECAR_CHECK, "reload": NGINX_RELOAD_HELPER}
    return {"group": service_user(service), "check": "", "reload": f"systemctl try-restart {unit_name(service)}"}


# -- Portainer ---------------------------------------------------------------------------------
def portainer_ui(topo: Topology) -> Service | None:
    """The catalog entry that serves Portainer's UI: the service on the Portainer guest."""
    p = topo.portainer
    return next((s for s in topo.lab.services if p and p.name in s.guests), None) if p else None


def portainer_tls_name(topo: Topology) -> str:
    ui = portainer_ui(topo)
    return ui.name if ui else topo.require_portainer().name


def portainer_certificate_names(topo: Topology) -> list[str]:
    ui = portainer_ui(topo)
    p = topo.require_portainer()
    return certificate_names(topo, ui, p) if ui else [topo.guest_fqdn(p)]


def portainer_api_url(topo: Topology) -> tuple[str, str]:
    """(Portainer's API base as the Portainer guest reaches itself, curl's --resolve for it)."""
    ui = portainer_ui(topo)
    name = topo.guest_fqdn(topo.require_portainer())   # the name on Portainer's certificate
    port = ui.port if ui else PORTAINER_HTTPS_PORT
    return f"https://{name}:{port}", f"{name}:{port}:127.0.0.1"


def _yaml(header: str, doc: dict) -> str:
    return "".join(f"# {line}\n" for line in header.splitlines()) + yaml_block.dump(doc, dumper=yaml.SafeDumper)


def portainer_compose(topo: Topology) -> str:
    lab, ui = topo.lab, portainer_ui(topo)
    tls = tls_paths(portainer_tls_name(topo))
    certs = "/certs"
    port = ui.port if ui else PORTAINER_HTTPS_PORT
    service = {
        "image": f"portainer/portainer-ce:{lab.portainer.version}",
        "container_name": PORTAINER_CONTAINER,
        "restart": "always",
        "init": True,   # reaps zombies (trap 18)
        "command": ["--http-disabled",
                    "--admin-password-file", PORTAINER_PASSWORD_MOUNT,
                    "--sslcert", f"{certs}/{tls.cert.rsplit('/', 1)[1]}",
                    "--sslkey", f"{certs}/{tls.key.rsplit('/', 1)[1]}"],
        "env_file": [AGENT_ENV_FILE],
        "ports": [f"{port}:{PORTAINER_HTTPS_PORT}"],
        "volumes": ["portainer_data:/data",
                    f"{PORTAINER_PASSWORD_FILE}:{PORTAINER_PASSWORD_MOUNT}:ro",
                    f"{tls.cert.rsplit('/', 1)[0]}:{certs}:ro"],
    }
    return _yaml(f"Portainer CE on {topo.require_portainer().name}, generated by Phoenix.\n"
                 "AGENT_SECRET comes from a root-only env file; the admin password from a root-only file.",
                 {"services": {"portainer": service}, "volumes": {"portainer_data": {}}})


def agent_compose(topo: Topology, agent: Guest) -> str:
    port = topo.lab.portainer.agent_port
    service = {
        "image": f"portainer/agent:{topo.lab.portainer.agent_version}",
        "container_name": AGENT_CONTAINER,
        "restart": "always",
        "init": True,
        "env_file": [AGENT_ENV_FILE],
        "environment": {"AGENT_PORT": str(port)},
        "ports": [f"{port}:{port}"],
        "volumes": ["/var/run/docker.sock:/var/run/docker.sock",
                    "/var/lib/docker/volumes:/var/lib/docker/volumes",
                    "/:/host"],
    }
    return _yaml(f"Portainer agent on {agent.name}, generated by Phoenix.\n"
                 "AGENT_SECRET comes from a root-only env file shared with the Portainer server.",
                 {"services": {"agent": service}})


def agent_secret_env(agent_secret: str) -> GuestFile:
    return GuestFile(AGENT_ENV_FILE, f"AGENT_SECRET={agent_secret}\n", 0o600)


def portainer_server_files(topo: Topology, admin_password: str, agent_secret: str) -> list[GuestFile]:
    lab = topo.lab
    url, resolve = portainer_api_url(topo)
    compose_file = f"{PORTAINER_DIR}/compose.yaml"
    return [
        GuestFile(compose_file, portainer_compose(topo)),
        GuestFile(PORTAINER_PASSWORD_FILE, admin_password, 0o600),
        agent_secret_env(agent_secret),
        GuestFile(PORTAINER_API_LIB, render(
            "workloads/portainer-api.sh.j2", q=_q, url=url, resolve=resolve,
            root_ca=tls_paths(portainer_tls_name(topo)).root, admin_user=lab.portainer.admin_user,
            password_file=PORTAINER_PASSWORD_FILE, session_file=PORTAINER_SESSION_FILE), 0o700),
    ]


def portainer_server_script(topo: Topology) -> str:
    return render("workloads/portainer-server.sh.j2", q=_q, version=topo.lab.portainer.version,
                  guest=topo.require_portainer().name, api_lib=PORTAINER_API_LIB,
                  compose_file=f"{PORTAINER_DIR}/compose.yaml", project=PORTAINER_PROJECT,
                  current_password=f"{PORTAINER_STATE_DIR}/admin-password.current",
                  min_length=PORTAINER_PASSWORD_MIN_BYTES)


def agent_files(topo: Topology, agent: Guest, agent_secret: str) -> list[GuestFile]:
    return [GuestFile(f"{PORTAINER_DIR}/agent-compose.yaml", agent_compose(topo, agent)),
            agent_secret_env(agent_secret)]


def agent_script(topo: Topology, agent: Guest) -> str:
    return render("workloads/portainer-agent.sh.j2", q=_q, version=topo.lab.portainer.agent_version,
                  guest=agent.name, port=topo.lab.portainer.agent_port, project=AGENT_PROJECT,
                  compose_file=f"{PORTAINER_DIR}/agent-compose.yaml", container=AGENT_CONTAINER)


def agent_url(topo: Topology, agent: Guest) -> str:
    """The environment URL: tcp:// (the agent always serves TLS itself, trap 14)."""
    return f"tcp://{agent.address}:{topo.lab.portainer.agent_port}"


def registration_script(topo: Topology, agent: Guest) -> str:
    return render("workloads/portainer-register.sh.j2", q=_q, agent=agent.name, url=agent_url(topo, agent),
                  api_lib=PORTAINER_API_LIB)
