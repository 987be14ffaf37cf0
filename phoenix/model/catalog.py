"""The service catalog: what runs where (``phoenix:services`` or the file ``phoenix:catalog`` names).

A ``Service`` is routed by the mesh (and the gateway, if public); ``run`` makes Phoenix run it as
a systemd unit in a GPU LXC, ``compose`` as a Docker compose stack on agent VMs through Portainer.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from phoenix.model.fields import MAX_TEXT, Domain, Label, Port, Strict, pinned_image, shown
from phoenix.model.names import RESERVED_SERVICE_NAMES
from phoenix.model.secrets import OPERATOR_SECRETS

#: what ``run.command`` may name: the catalog's model and port, the service's certificate and key,
#: and the address it listens on (0.0.0.0, or 127.0.0.1 behind a TLS sidecar).
RUN_PLACEHOLDERS = ("model", "port", "cert", "key", "host")
#: behind a TLS sidecar the service listens on loopback at its catalog port plus this (run.internalPort overrides).
SIDECAR_PORT_OFFSET = 10000


#: ``{{`` and ``}}`` (literal braces), ``{name}`` (a placeholder), and anything else in braces.
_BRACES = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
#: the first word: an absolute path (no systemd prefix such as ``+``, ``!`` or ``-``: ``+`` would
#: run the command as root whatever ``User=`` says) and no placeholder.
_EXECUTABLE = re.compile(r"/[A-Za-z0-9._+-][A-Za-z0-9._/+-]{0,254}")
#: what ``run.model`` may be: a model id (org/name), a path, a tag (name:tag).
_MODEL = re.compile(r"[A-Za-z0-9/][A-Za-z0-9._/:@+=-]{0,511}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
MAX_ENVIRONMENT = 256


def placeholder_names(command: str) -> list[str]:
    """The placeholders of ``run.command`` in order, or ValueError naming the first that is not
    one: only ``{name}`` of ``RUN_PLACEHOLDERS``, no format spec or conversion (``{port:q}``
    raised in str.format; ``{model:>2000000000}`` made a 2 GB string), ``{{``/``}}`` for braces."""
    names = []
    for m in _BRACES.finditer(command):
        token = m.group(0)
        if token in ("{{", "}}"):
            continue
        if token in ("{", "}"):
            raise ValueError(f"{token!r} pairs with nothing (write a literal brace as {{{{ or }}}})")
        if m.group(1) not in RUN_PLACEHOLDERS:
            known = ", ".join("{" + n + "}" for n in RUN_PLACEHOLDERS)
            raise ValueError(f"{shown(token)} is not a placeholder (known: {known}; no format spec or "
                             "conversion; write a literal brace as {{ or }})")
        names.append(m.group(1))
    return names


def fill_placeholders(word: str, values: dict[str, object]) -> str:
    """``word`` with each ``{name}`` replaced by ``values[name]`` and ``{{``/``}}`` by a brace;
    nothing else is interpreted (``placeholder_names`` has accepted the command)."""
    def one(m: re.Match) -> str:
        token = m.group(0)
        return {"{{": "{", "}}": "}"}.get(token) or str(values[m.group(1)])
    return _BRACES.sub(one, word)


def _environment(env: dict[str, str]) -> dict[str, str]:
    if len(env) > MAX_ENVIRONMENT:
        raise ValueError(f"has {len(env)} variables; at most {MAX_ENVIRONMENT}")
    bad = [k for k in env if not _ENV_NAME.fullmatch(k)]
    if bad:
        raise ValueError(f"environment variable name(s) {', '.join(map(shown, bad))} are not valid "
                         "(letters, digits and '_', not starting with a digit, at most 128 characters)")
    ours = [k for k in env if k.upper().startswith("PHOENIX_")]
    if ours:
        raise ValueError(f"{', '.join(map(repr, ours))}: names starting with PHOENIX_ are Phoenix's own")
    return env


def _run_command(command: str) -> str:
    import shlex
    try:
        words = shlex.split(command)   # the unit runs it word by word
    except ValueError as err:
        raise ValueError(f"{shown(command)} does not split into words: {err}") from None
    placeholder_names(command)
    if not words or not _EXECUTABLE.fullmatch(words[0]):
        raise ValueError("must start with the program's absolute path (/opt/app/bin/serve), "
                         f"not {shown(words[0] if words else '')}")
    return command


Environment = Annotated[dict[str, Annotated[str, Field(max_length=MAX_TEXT)]], AfterValidator(_environment)]


class Run(Strict):
    """How a GPU service runs: a systemd unit in its LXC."""
    #: the program and its arguments, split into words like a shell would (no shell runs it):
    #: an absolute path first, then words that may name {model}, {port}, {cert}, {key}, {host}.
    command: Annotated[str, Field(min_length=1, max_length=MAX_TEXT), AfterValidator(_run_command)]
    model: Annotated[str, Field(max_length=512)] | None = None
    environment: Environment = Field(default_factory=dict)
    #: who serves the service's TLS: ``native`` (the command uses {cert} and {key}; the default
    #: when it does) or ``sidecar`` (a TLS terminator on the guest serves the catalog port and the
    #: service listens on 127.0.0.1 at ``internalPort``; for programs that cannot serve TLS).
    tls: Literal["native", "sidecar"] | None = None
    #: the loopback port behind a sidecar (default: the catalog port + 10000).
    internal_port: Port | None = None

    @property
    def placeholders(self) -> set[str]:
        return set(placeholder_names(self.command))

    @model_validator(mode="after")
    def _command(self) -> Run:
        names = set(placeholder_names(self.command))
        if "model" in names and not self.model:
            raise ValueError("command uses {model} but run.model is not set")
        if self.model is not None and not _MODEL.fullmatch(self.model):
            raise ValueError(f"model {shown(self.model)} is not a model name or path (letters, digits and "
                             "._/:@+=-, starting with a letter, digit or '/')")
        return self


def replica_name(service: str, guest: str) -> str:
    """A replicated service's name for its replica on ``guest`` (its own load balancer and servers
    transport in the mesh, which verifies each replica by its guest's name)."""
    return f"{service}-{guest}"


#: where a compose stack may bind-mount host paths on its agent VM (named volumes need none).
STACK_HOST_ROOT = "/srv/phoenix"


def _stack_volume(value: str) -> str:
    import posixpath
    parts = value.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        raise ValueError(f"volume {value!r} is not SOURCE:TARGET or SOURCE:TARGET:ro")
    source, target = parts[0], parts[1]
    if not target.startswith("/") or posixpath.normpath(target) != target:
        raise ValueError(f"volume {value!r}: the target {target!r} must be a plain absolute path in the container")
    if source.startswith("/"):
        if posixpath.normpath(source) != source or not source.startswith(STACK_HOST_ROOT + "/"):
            raise ValueError(f"volume {value!r}: a host path must be under {STACK_HOST_ROOT}/ "
                             "(or use a named volume)")
    elif not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", source):
        raise ValueError(f"volume {value!r}: {source!r} is neither a volume name nor a host path "
                         f"under {STACK_HOST_ROOT}/")
    return value


def _secret_refs(env: dict[str, str]) -> dict[str, str]:
    _environment(env)
    for var, ref in env.items():
        key = ref.partition(":")[2]
        if not re.fullmatch(r"phoenix:[A-Za-z][A-Za-z0-9_-]*", ref):
            raise ValueError(f"{var}: {ref!r} must name a Pulumi config secret as phoenix:<key>")
        if key in OPERATOR_SECRETS:
            raise ValueError(f"{var}: {ref} is Phoenix's own credential; give the stack a secret of its own")
    return env


class Compose(Strict):
    """A service that runs as a Docker compose stack on agent VMs, deployed through Portainer.

    Its certificate, DNS names, mesh router and (if public) gateway server block come from the
    service entry like any other service's; this block says only what the container is.
    """
    #: pinned: ``name:tag`` (not ``latest``) or ``name@sha256:<digest>``.
    image: Annotated[str, AfterValidator(pinned_image)]
    #: the port the application listens on inside its container (the catalog ``port`` is
    #: what the agent VM serves, with TLS unless ``protocol: http``).
    container_port: Port
    #: ``NAME:/path[:ro]`` (a named volume) or ``/srv/phoenix/...:/path[:ro]`` (a host path).
    volumes: list[Annotated[str, Field(max_length=1024), AfterValidator(_stack_volume)]] = Field(default_factory=list)
    #: plain values (they show in plans and in Portainer).
    environment: Environment = Field(default_factory=dict)
    #: variable -> ``phoenix:<key>``, a Pulumi config secret (``pulumi config set --secret``).
    secret_environment: Annotated[dict[str, str], AfterValidator(_secret_refs)] = Field(default_factory=dict)
    #: the container's command, split into words like a shell would (no shell runs it).
    command: Annotated[str, Field(max_length=MAX_TEXT)] | None = None

    @model_validator(mode="after")
    def _compose(self) -> Compose:
        import shlex
        both = sorted(set(self.environment) & set(self.secret_environment))
        if both:
            raise ValueError(f"{', '.join(both)} given in both environment and secretEnvironment")
        if self.command is not None:
            try:
                if not shlex.split(self.command):
                    raise ValueError("command is empty")
            except ValueError as err:
                raise ValueError(f"command {shown(self.command)} does not split into words: {err}") from err
        return self

    @property
    def secret_keys(self) -> list[str]:
        """The Pulumi config keys (without ``phoenix:``) the stack's secrets come from."""
        return sorted({ref.partition(":")[2] for ref in self.secret_environment.values()})


def _service_name(name: str) -> str:
    why = RESERVED_SERVICE_NAMES.get(name)
    if why:
        raise ValueError(f"{name!r} is reserved: {why}; a service's name becomes its unit, user, state "
                         "directory and certificate on its guests, so pick another name")
    return name


#: a path segment of a health check: unreserved URL characters, not "." or "..".
_SEGMENT = re.compile(r"[A-Za-z0-9._~-]{1,64}")
_QUERY = re.compile(r"[A-Za-z0-9._~=&-]{0,128}")
MAX_HEALTH_PATH = 256


def _health_path(value: str) -> str:
    """What the mesh, the guest's own check and ``phoenix verify`` request: a plain absolute path
    (it lands in Traefik's YAML, a shell script and a URL), with an optional simple query."""
    path, mark, query = value.partition("?")
    segments = path.split("/")[1:]
    problem = None
    if len(value) > MAX_HEALTH_PATH:
        problem = f"is {len(value)} characters long; at most {MAX_HEALTH_PATH}"
    elif not path.startswith("/"):
        problem = "must start with '/'"
    elif path != "/" and not all(_SEGMENT.fullmatch(seg) and seg not in (".", "..") for seg in segments[:-1]):
        problem = "has an empty, '.' or '..' segment, or a character other than letters, digits and ._~-"
    elif segments[-1] and (not _SEGMENT.fullmatch(segments[-1]) or segments[-1] in (".", "..")):
        problem = "has a '.' or '..' segment, or a character other than letters, digits and ._~-"
    elif mark and not _QUERY.fullmatch(query):
        problem = "has a query with characters other than letters, digits and ._~=&-"
    if problem:
        raise ValueError(f"health path {shown(value) if len(value) <= MAX_HEALTH_PATH else ''} {problem}"
                         .replace("  ", " "))
    return value


_BODY_SIZE = re.compile(r"([1-9][0-9]{0,5})([kmg]?)")


def _body_size(value: str) -> str:
    """nginx's client_max_body_size: a size (``0`` would turn the limit off)."""
    if value == "0":
        raise ValueError("0 turns nginx's request size limit off; give a size such as 10m")
    if not _BODY_SIZE.fullmatch(value):
        raise ValueError(f"{shown(value)} is not a size: 1 to 999999, optionally followed by k, m or g "
                         "(ASCII digits, no leading zero)")
    return value


class Service(Strict):
    name: Annotated[Label, AfterValidator(_service_name)]
    #: the guests that run a replica each (one entry per replica).
    guests: Annotated[list[Label], Field(min_length=1, max_length=256)]
    port: Port
    #: what the backend itself speaks.
    protocol: Literal["http", "https"] = "https"
    #: what the mesh's health check requests: /segment/segment (letters, digits, ._~-) and an optional query.
    health: Annotated[str, AfterValidator(_health_path)] = "/health"
    public: bool = False
    public_host: Domain | None = None
    #: more internal names (<alias>.<internal domain>), each a CNAME to the service's name.
    aliases: Annotated[list[Label], Field(max_length=32)] = Field(default_factory=list)
    streaming: bool = False
    websocket: bool = False
    timeout: Annotated[int, Field(ge=1, le=86400)] = 60
    #: the largest request body the gateway accepts: 1 to 999999, optionally k, m or g.
    max_body_size: Annotated[str, AfterValidator(_body_size)] = "10m"
    sticky: bool = False
    gpu: bool = False
    run: Run | None = None
    #: a Docker compose stack on each of ``guests`` (agent VMs), deployed through Portainer.
    compose: Compose | None = None

    @property
    def tls_termination(self) -> str | None:
        """Who serves the TLS of a service Phoenix runs: ``native``, ``sidecar``, or None (plain
        HTTP, or a service deployed by other means)."""
        if self.run is None or self.protocol != "https":
            return None
        return self.run.tls or ("native" if {"cert", "key"} & self.run.placeholders else None)

    @property
    def app_port(self) -> int:
        """The port the service's own process listens on: the catalog port, or behind a TLS
        sidecar a loopback port (``run.internalPort``, default the catalog port + 10000)."""
        if self.run is not None and self.tls_termination == "sidecar":
            return self.run.internal_port or self.port + SIDECAR_PORT_OFFSET
        return self.port

    def require_run(self) -> Run:
        """``run``, for what only a service Phoenix runs on a GPU guest has (unit, argv, certificate)."""
        if self.run is None:
            raise LookupError(f"service {self.name!r} has no run: Phoenix does not run it on a GPU guest")
        return self.run

    def require_compose(self) -> Compose:
        """``compose``, for what only a compose stack deployed through Portainer has."""
        if self.compose is None:
            raise LookupError(f"service {self.name!r} has no compose: it is not a compose stack")
        return self.compose

