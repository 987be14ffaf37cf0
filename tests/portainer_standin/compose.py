"""What Portainer's ``docker compose`` does on an agent's Docker engine, in memory.

Portainer 2.21.4 runs docker compose v2.29.2 (``binary-version.json``) through
``pkg/libstack/compose/internal/composeplugin/composeplugin.go``:

* deploy: ``docker compose --host <agent> -f docker-compose.yml --project-name NAME
  [--env-file stack.env] up -d [--force-recreate]``: never ``--remove-orphans``. compose
  (``pkg/compose/create.go``) then only warns about containers of services the file no longer
  has ("Found orphan containers"); they keep running, and keep their ports. compose v2.29 reads
  ``COMPOSE_REMOVE_ORPHANS`` from its own process environment only (``cmd/compose/up.go``), not
  from the env file.
* stop and delete: ``docker compose --project-name NAME down --remove-orphans``: every
  container of the project goes.

Interpolation (compose-go ``interpolation/interpolation.go``): every string of the file, with
the project's environment: compose's own process environment first, then the env file
(``types.Mapping.Merge`` keeps what is set: the process wins). ``${VAR:?msg}`` unset is an error
"error while interpolating <path>: required variable VAR is missing a value: msg"; a plain
unset ``${VAR}`` is a warning and an empty string.

The engine: containers by name, each with its project/service labels, environment, published
ports and state. A second container cannot publish a host port a running one holds ("port is
already allocated"). An image whose name contains ``crashloop`` restarts forever: the hook
tests use for a stack that deploys but does not run.
"""

from __future__ import annotations

import hashlib
import json
import secrets

import yaml

from . import dotenv

PROJECT, SERVICE = "com.docker.compose.project", "com.docker.compose.service"


class ComposeError(Exception):
    """docker compose failed; the text is what it printed on stderr."""


def project_environment(process_env: dict[str, str], env_file: str | None) -> dict[str, str]:
    """cli.WithOsEnv, then WithEnvFiles/WithDotEnv: the env file fills in what the process lacks."""
    env = dict(process_env)
    if env_file is not None:
        try:
            parsed = dotenv.parse(env_file, lambda k: process_env.get(k))
        except (dotenv.DotenvError, dotenv.MissingRequired, dotenv.InvalidTemplate) as err:
            raise ComposeError(f"failed to read stack.env: {err}") from err
        for k, v in parsed.items():
            env.setdefault(k, v)
    return env


def _path(parts: list[str]) -> str:
    return ".".join(parts)


def interpolate(value, env: dict[str, str], warnings: list[str], path: list[str]):
    if isinstance(value, str):
        try:
            return dotenv.substitute(value, lambda k: env.get(k), warnings)
        except dotenv.InvalidTemplate:
            raise ComposeError(f"invalid interpolation format for {_path(path)}.\n"
                               f"You may need to escape any $ with another $.\n{value}") from None
        except dotenv.MissingRequired as err:
            raise ComposeError(f"error while interpolating {_path(path)}: {err}") from err
    if isinstance(value, dict):
        return {k: interpolate(v, env, warnings, path + [str(k)]) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, warnings, path + ["[]"]) for v in value]
    return value


def _environment(svc: dict, env: dict[str, str]) -> list[str]:
    raw = svc.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, None) for item in raw)
    out = []
    for k, v in raw.items():
        if v is None:               # KEY with no value: from the project's environment, if there
            if k in env:
                out.append(f"{k}={env[k]}")
        else:
            out.append(f"{k}={'true' if v is True else 'false' if v is False else v}")
    return out


def _published(svc: dict) -> list[dict]:
    out = []
    for p in svc.get("ports") or []:
        parts = str(p).split(":")
        if len(parts) >= 2:
            out.append({"IP": "0.0.0.0", "PublicPort": int(parts[-2]), "PrivatePort": int(parts[-1].split("/")[0]),
                        "Type": "tcp"})
    return out


def _order(services: dict) -> list[str]:
    """Dependencies first (depends_on), as compose's convergence walks the graph."""
    done: list[str] = []

    def visit(name: str, seen: tuple = ()) -> None:
        if name in done or name in seen:
            return
        deps = services[name].get("depends_on") or []
        for d in (deps if isinstance(deps, list) else list(deps)):
            if d in services:
                visit(d, seen + (name,))
        done.append(name)
    for name in services:
        visit(name)
    return done


class Engine:
    """One agent VM's Docker engine."""

    def __init__(self):
        self.containers: dict[str, dict] = {}

    def of_project(self, project: str) -> list[dict]:
        return [c for c in self.containers.values() if c["Labels"].get(PROJECT) == project]

    def add(self, name: str, image: str, labels: dict, env: list[str], ports: list[dict], config: str) -> dict:
        for c in self.containers.values():
            if c["State"] == "running":
                for p in ports:
                    if any(q["PublicPort"] == p["PublicPort"] for q in c["Ports"]):
                        raise ComposeError(
                            f"Error response from daemon: driver failed programming external connectivity on "
                            f"endpoint {name}: Bind for 0.0.0.0:{p['PublicPort']} failed: port is already allocated")
        if name in self.containers:
            raise ComposeError(f'Error response from daemon: Conflict. The container name "/{name}" is already in '
                               f'use by container "{self.containers[name]["Id"]}". You have to remove (or rename) '
                               "that container to be able to reuse that name.")
        state = "restarting" if "crashloop" in image else "running"
        c = {"Id": secrets.token_hex(32), "Names": [f"/{name}"], "Image": image, "State": state,
             "Status": "Up 1 second" if state == "running" else "Restarting (1) 1 second ago",
             "Labels": labels, "Ports": ports, "Env": env, "config": config}
        self.containers[name] = c
        return c

    def up(self, project: str, text: str, process_env: dict[str, str], env_file: str | None,
           warnings: list[str], force_recreate: bool = False) -> None:
        """``up -d``; what compose warns about goes to ``warnings`` (failed or not); ComposeError
        when it failed."""
        env = project_environment(process_env, env_file)
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ComposeError(f"yaml: {err}") from err
        if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict) or not doc["services"]:
            raise ComposeError("no service selected")
        doc = interpolate(doc, env, warnings, [])
        services = doc["services"]
        orphans = sorted(c["Names"][0][1:] for c in self.of_project(project)
                         if c["Labels"].get(SERVICE) not in services)
        if orphans:
            warnings.append(f"Found orphan containers ({orphans}) for this project. If you removed or renamed this "
                            "service in your compose file, you can run this command with the --remove-orphans flag "
                            "to clean it up.")
        for name in _order(services):
            svc = services[name] or {}
            labels = {**(svc.get("labels") or {}), PROJECT: project, SERVICE: name}
            cname = svc.get("container_name") or f"{project}-{name}-1"
            env_list, ports = _environment(svc, env), _published(svc)
            config = hashlib.sha256(json.dumps([svc, env_list], sort_keys=True, default=str).encode()).hexdigest()
            old = next((c for c in self.of_project(project) if c["Labels"].get(SERVICE) == name), None)
            if old is not None and old["config"] == config and not force_recreate:
                if old["State"] != "running" and "crashloop" not in old["Image"]:
                    old["State"] = "running"
                continue
            if old is not None:
                del self.containers[old["Names"][0][1:]]
            self.add(cname, str(svc.get("image", "")), labels, env_list, ports, config)

    def down(self, project: str) -> None:
        """``down --remove-orphans``."""
        for c in self.of_project(project):
            del self.containers[c["Names"][0][1:]]
