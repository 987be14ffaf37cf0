"""Compose stacks on the agent VMs: the compose file, its TLS sidecar's nginx config, the body
Portainer's stacks API takes, and the deploy script that runs on the Portainer VM. Pure:
topology (and secret values, for the request that carries them) in, text and ``GuestFile`` out.

One stack per (catalog service with ``compose``, agent VM in its ``guests``). A stack whose
service speaks ``https`` (the default) is two containers: the application, reachable only on
the stack's own network, and an nginx sidecar that serves the catalog port with the agent's
Step-CA certificate (bind-mounted read-only) and proxies to it. Every image can be deployed
unchanged that way, whether or not it can serve TLS itself, and the TLS settings are one
generated file that real nginx tests. ``protocol: http`` deploys the application alone,
published on the catalog port (plain HTTP from the mesh, as the catalog says).
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex

import yaml

from phoenix.bundle import GuestFile
from phoenix.model import Guest, Service

#: Pulumi config key -> the services whose stacks need it (the model's list; the secrets travel
#: only in the deploy step's bundle).
from phoenix.model import stack_secrets as required_secrets  # noqa: F401  (re-exported)
from phoenix.render import SCRIPTS, render, yaml_block
from phoenix.render.workloads import PORTAINER_API_LIB, PORTAINER_DIR, SIDECAR_CIPHERS, agent_url
from phoenix.topology import Topology, tls_paths

#: on the Portainer VM: the request (compose file and environment, secrets included) per stack.
REQUEST_DIR = f"{PORTAINER_DIR}/stacks"
APP, SIDECAR = "app", "tls"
#: where the sidecar container finds the agent's certificate and key (single files, read-only).
SIDECAR_CERT, SIDECAR_KEY = "/run/phoenix/tls/cert.pem", "/run/phoenix/tls/key.pem"
SIDECAR_CONF = "/etc/nginx/conf.d/default.conf"
#: Docker's embedded DNS in a user-defined network: the sidecar finds the app by service name.
DOCKER_DNS = "127.0.0.11"
#: Portainer stack environment entries Phoenix adds: what it compares to leave a stack alone.
DIGEST_VAR, AGENT_VAR = "PHOENIX_COMPOSE_SHA256", "PHOENIX_AGENT_VM"
#: seconds the deploy waits for the agent's environment in Portainer (when it is not yet
#: registered), for Portainer to create or update a stack (it pulls the images first), and for
#: the stack's containers to run after that.
REGISTRATION_WAIT, DEPLOY_TIMEOUT, START_WAIT = 600, 900, 180


def _q(value) -> str:
    """A shell word, always quoted (shellcheck never reads a value as a command)."""
    return "'" + str(value).replace("'", "'\\''") + "'"


def _compose_escape(value: str) -> str:
    """A literal value in a compose file: ``$`` would start an interpolation."""
    return value.replace("$", "$$")


#: values compose's dotenv parser gives back as written when unquoted.
_DOTENV_PLAIN = re.compile(r"[A-Za-z0-9_@%+=:,./-]*")


def dotenv_value(value: str) -> str:
    """A stack ``Env`` value as Portainer must get it for a container to see ``value`` byte for byte.

    Portainer 2.21 writes ``Env`` into ``stack.env`` as unquoted ``name=value`` lines
    (``api/exec/compose_stack.go`` ``createEnvFile``) and docker compose reads that file with
    compose-go's dotenv parser (``dotenv/parser.go``), which cuts an unquoted value at `` #``,
    drops trailing white space, interpolates ``$NAME`` and strips quotes. So anything beyond
    plain characters goes double-quoted, with ``\\``, ``"`` and ``$`` escaped and line breaks
    as ``\\n``/``\\r``: the parser expands exactly those escapes back (``expandEscapes``), and
    ``\\$`` becomes ``$$``, which interpolation turns into ``$``.
    """
    if _DOTENV_PLAIN.fullmatch(value):
        return value
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
               .replace("\n", "\\n").replace("\r", "\\r"))
    return f'"{escaped}"'


# -- what runs where ---------------------------------------------------------------------------
def compose_services(topo: Topology) -> list[Service]:
    return [s for s in topo.lab.services if s.compose is not None]


def stacks(topo: Topology) -> list[tuple[Service, Guest]]:
    """Every (service, agent) pair: one stack each."""
    return [(s, topo.lab.guest(g)) for s in compose_services(topo) for g in s.guests]


def stack_name(service: Service) -> str:
    """The stack's name in Portainer (and its compose project on the agent)."""
    return f"phoenix-{service.name}"


def serves_tls(service: Service) -> bool:
    return service.protocol == "https"


def step_name(service: Service, agent: Guest) -> str:
    return f"stack-{service.name}-{agent.name}"


def script_path(service: Service, agent: Guest) -> str:
    return f"{SCRIPTS}/{step_name(service, agent)}.sh"


def request_path(service: Service, agent: Guest) -> str:
    return f"{REQUEST_DIR}/{agent.name}/{service.name}.json"


def delete_command(service: Service, agent: Guest) -> str:
    path = script_path(service, agent)
    return f"[ ! -f {path} ] || bash {path} delete"


def certificate_name(service: Service) -> str:
    """The agent's certificate for the stack, at ``tls_paths(name)`` on the agent VM."""
    return service.name


def sidecar_container(service: Service) -> str:
    return f"{stack_name(service)}-{SIDECAR}"


def certificate_reload(service: Service) -> str:
    """After a renewal: restart the sidecar, which binds the new files (single-file bind mounts
    keep the old inode until the container starts again). Nothing to do without the stack."""
    c = sidecar_container(service)
    return f"if docker inspect {c} >/dev/null 2>&1; then docker restart {c} >/dev/null; fi"


# -- the files ---------------------------------------------------------------------------------
def sidecar_config(service: Service, *, upstream: str | None = None,
                   resolver: str = DOCKER_DNS, cert: str = SIDECAR_CERT, key: str = SIDECAR_KEY) -> str:
    """nginx in front of the app: TLS on the catalog port, everything proxied to the app.

    The upstream is named through a variable so nginx asks Docker's DNS again when the app's
    container is recreated with a new address (and starts even before the app resolves).
    """
    return render("stacks/tls-sidecar.conf.j2", service=service, port=service.port,
                  upstream=upstream or f"{APP}:{service.require_compose().container_port}", resolver=resolver,
                  cert=cert, key=key, ciphers=SIDECAR_CIPHERS)


def compose_doc(topo: Topology, service: Service, agent: Guest) -> dict:
    c = service.require_compose()
    app: dict = {"image": c.image, "restart": "unless-stopped", "init": True,
                 "labels": {"org.phoenix.service": service.name, "org.phoenix.guest": agent.name}}
    if c.command:
        app["command"] = [_compose_escape(w) for w in shlex.split(c.command)]
    env = {k: _compose_escape(v) for k, v in sorted(c.environment.items())}
    # Secrets are interpolated from the stack's environment in Portainer, never written here.
    env.update({k: "${" + k + "}" for k in sorted(c.secret_environment)})
    if env:
        app["environment"] = env
    if c.volumes:
        app["volumes"] = list(c.volumes)
    services = {APP: app}
    if serves_tls(service):
        app["expose"] = [str(c.container_port)]
        tls = tls_paths(certificate_name(service))
        services[SIDECAR] = {
            "image": topo.lab.portainer.stack_tls_image,
            "container_name": sidecar_container(service),
            "restart": "unless-stopped",
            "depends_on": [APP],
            "ports": [f"{service.port}:{service.port}"],
            "environment": {"PHOENIX_NGINX_CONF": _compose_escape(sidecar_config(service))},
            # The config travels in the compose file itself (one reviewed unit per stack).
            "command": ["/bin/sh", "-c",
                        f'printf "%s" "$$PHOENIX_NGINX_CONF" > {SIDECAR_CONF} && exec nginx -g "daemon off;"'],
            "volumes": [f"{tls.cert}:{SIDECAR_CERT}:ro", f"{tls.key}:{SIDECAR_KEY}:ro"],
            "labels": {"org.phoenix.service": service.name, "org.phoenix.guest": agent.name},
        }
    else:
        app["ports"] = [f"{service.port}:{c.container_port}"]
    doc: dict = {"services": services}
    named = [v.split(":", 1)[0] for v in c.volumes if not v.startswith("/")]
    if named:
        doc["volumes"] = {v: {} for v in dict.fromkeys(named)}
    return doc


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the sidecar's config) as literal blocks, readable in a review."""


def _str(dumper: yaml.SafeDumper, data: str):
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def compose_text(topo: Topology, service: Service, agent: Guest) -> str:
    secrets = ", ".join(sorted(service.require_compose().secret_environment)) or "none"
    header = (f"Compose stack {stack_name(service)} of service {service.name} on {agent.name}, generated by "
              "Phoenix.\nSecrets come from the stack's environment in Portainer "
              f"({secrets}), never from this file.")
    body = yaml_block.dump(compose_doc(topo, service, agent), width=1000, dumper=_Dumper)
    return "".join(f"# {line}\n" for line in header.splitlines()) + body


def request_body(topo: Topology, service: Service, agent: Guest, secret_values: dict[str, str],
                 agent_vm_id: str) -> dict:
    """What ``POST /api/stacks/create/standalone/string`` takes. ``Env`` holds the secrets
    (by the variable names the compose file interpolates; as ``dotenv_value`` writes them),
    the compose file's digest and the agent VM's id: a change in any of them, and only that,
    makes the deploy update the stack (a replaced agent VM gets its stack again)."""
    text = compose_text(topo, service, agent)
    env = [{"name": var, "value": dotenv_value(secret_values[ref.partition(":")[2]])}
           for var, ref in service.require_compose().secret_environment.items()]
    env += [{"name": DIGEST_VAR, "value": hashlib.sha256(text.encode()).hexdigest()},
            {"name": AGENT_VAR, "value": agent_vm_id}]
    return {"Name": stack_name(service), "StackFileContent": text, "Env": sorted(env, key=lambda e: e["name"])}


def deploy_script(topo: Topology, service: Service, agent: Guest) -> str:
    return render("stacks/stack-deploy.sh.j2", q=_q, stack=stack_name(service), service=service.name,
                  agent=agent.name, url=agent_url(topo, agent), api_lib=PORTAINER_API_LIB,
                  request=request_path(service, agent), containers=2 if serves_tls(service) else 1,
                  services=" ".join(compose_doc(topo, service, agent)["services"]),
                  registration_wait=REGISTRATION_WAIT, deploy_timeout=DEPLOY_TIMEOUT, start_wait=START_WAIT)


def stack_files(topo: Topology, service: Service, agent: Guest, secret_values: dict[str, str],
                agent_vm_id: str) -> list[GuestFile]:
    """What the deploy step pushes to the Portainer VM: the request (root-only, it carries the
    secrets) and the script that sends it."""
    body = request_body(topo, service, agent, secret_values, agent_vm_id)
    return [GuestFile(request_path(service, agent), json.dumps(body, indent=2) + "\n", 0o600),
            GuestFile(script_path(service, agent), deploy_script(topo, service, agent), 0o700)]
