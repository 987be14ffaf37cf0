"""Environments (endpoints), as Portainer 2.21.4's ``api/http/handler/endpoints`` handles them.

``POST /api/endpoints`` (``endpoint_create.go``) reads form fields, never JSON:
``Name`` (required, else 400 "invalid environment name"), ``EndpointCreationType`` (1-5, else
400), ``URL``, ``GroupID`` (0 -> 1), ``TLS``/``TLSSkipVerify``/``TLSSkipClientVerify`` ("true");
with TLS and without the skips, the CA, certificate and key files must be uploaded. A name
already taken is 409 "Name is not unique" (``unique_name.go``). For an agent
(``EndpointCreationType=2``) Portainer first asks the agent (``api/agent/version.go``
``GetAgentVersionAndPlatform``): ``GET https://<URL host>/ping`` with a 3 s timeout, over the
form's TLS settings (no TLS: Go's default client, which does not trust the agent's own
certificate), expecting 204 and the agent's headers; any failure is 500 "Unable to get
environment type". Then the first snapshot (``snapshotAndPersistEndpoint``) talks to the
Docker API through the agent with a signed request: an agent with another ``AGENT_SECRET``
answers "Invalid request signature", which Portainer reports as 500 "Unable to initiate
communications with environment" / "agent already paired with another Portainer instance".

``PUT /api/endpoints/{id}`` (``endpoint_update.go``) is JSON, does not ask the agent, and
still refuses a name another environment has (409). ``DELETE /api/endpoints/{id}``
(``endpoint_delete.go``): 204, or 404 for an unknown id.
"""

from __future__ import annotations

import http.client
import json
import ssl
from urllib.parse import urlsplit

from .agent import Signer
from .api import HandlerError, Request, Router, decode

AGENT_ON_DOCKER = 2          # portainer.AgentOnDockerEnvironment
PING_TIMEOUT = 3.0           # agent/version.go: http.Client{Timeout: 3 * time.Second}


def _host_port(url: str) -> tuple[str, int]:
    """``url.ParseURL(endpointURL + "/ping")`` with the scheme forced to https."""
    if not url.startswith(("http", "tcp", "//", "unix:", "npipe:")):
        url = "//" + url
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or 443


def _get(url: str, path: str, tls: ssl.SSLContext, headers: dict) -> http.client.HTTPResponse:
    host, port = _host_port(url)
    target = f"https://{host}:{port}{path}"
    conn = http.client.HTTPSConnection(host, port, timeout=PING_TIMEOUT, context=tls)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        resp.body = resp.read()
        return resp
    except ssl.SSLCertVerificationError as err:
        raise OSError(f'Get "{target}": tls: failed to verify certificate: x509: {err.verify_message}') from err
    except ConnectionRefusedError:
        raise OSError(f'Get "{target}": dial tcp {host}:{port}: connect: connection refused') from None
    except TimeoutError:
        raise OSError(f'Get "{target}": context deadline exceeded '
                      "(Client.Timeout exceeded while awaiting headers)") from None
    except OSError as err:
        raise OSError(f'Get "{target}": {err}') from err
    finally:
        conn.close()


def agent_version(url: str, tls: ssl.SSLContext) -> str:
    """GetAgentVersionAndPlatform: the agent's version, or an error as Go words it."""
    resp = _get(url, "/ping", tls, {})
    if resp.status != 204:
        raise OSError(f"Failed request with status {resp.status}")
    version = resp.getheader("Portainer-Agent")
    if not version:
        raise OSError("Version Header is missing")
    if not resp.getheader("Portainer-Agent-Platform"):
        raise OSError("Agent Platform Header is missing")
    return version


def _tls_context(form: dict) -> ssl.SSLContext:
    if form["TLS"] and form["TLSSkipVerify"]:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        return ctx
    return ssl.create_default_context()     # Go's default: the system's roots only


def register(router: Router, state) -> None:
    signer: Signer = state.signer

    def find(req: Request) -> dict:
        ep = state.endpoints.get(int(req.match["id"]))
        if ep is None:
            raise HandlerError(404, "Unable to find an environment with the specified identifier inside the database",
                               "Object not found inside the database")
        return ep

    def unique(name: str, own: int = 0) -> None:
        if any(e["Name"] == name and (own == 0 or e["Id"] != own) for e in state.endpoints.values()):
            raise HandlerError(409, "Name is not unique", "")

    @router.add("GET", "/api/endpoints")
    def endpoint_list(req: Request):
        return 200, list(state.endpoints.values())

    @router.add("GET", r"/api/endpoints/(?P<id>\d+)")
    def endpoint_inspect(req: Request):
        return 200, find(req)

    @router.add("POST", "/api/endpoints")
    def endpoint_create(req: Request):
        raw = req.form()
        if not raw.get("Name"):
            raise HandlerError(400, "Invalid request payload", "invalid environment name")
        try:
            kind = int(raw.get("EndpointCreationType") or "")
        except ValueError:
            kind = 0
        if not 1 <= kind <= 5:
            raise HandlerError(400, "Invalid request payload", "invalid environment type value. Value must be one "
                               "of: 1 (Docker environment), 2 (Agent environment), 3 (Azure environment), "
                               "4 (Edge Agent environment) or 5 (Local Kubernetes environment)")
        form = {"Name": raw["Name"], "URL": raw.get("URL", ""), "GroupID": int(raw.get("GroupID") or 0) or 1,
                "TLS": raw.get("TLS") == "true"}
        form["TLSSkipVerify"] = form["TLS"] and raw.get("TLSSkipVerify") == "true"
        form["TLSSkipClientVerify"] = form["TLS"] and raw.get("TLSSkipClientVerify") == "true"
        if form["TLS"] and not form["TLSSkipVerify"] and req.file("TLSCACertFile") is None:
            raise HandlerError(400, "Invalid request payload",
                               "invalid CA certificate file. Ensure that the file is uploaded correctly")
        if form["TLS"] and not form["TLSSkipClientVerify"] and req.file("TLSCertFile") is None:
            raise HandlerError(400, "Invalid request payload",
                               "invalid certificate file. Ensure that the file is uploaded correctly")
        if kind != 2:
            raise HandlerError(501, "Not implemented by the stand-in", "only agent environments (type 2)")
        unique(form["Name"])
        tls = _tls_context(form)
        try:
            version = agent_version(form["URL"], tls)
        except OSError as err:
            raise HandlerError(500, "Unable to get environment type", str(err)) from err
        try:      # SnapshotEndpoint: the ping again, then the Docker API through the agent, signed
            agent_version(form["URL"], tls)
            resp = _get(form["URL"], "/_ping", tls, signer.headers())
            if resp.status >= 400:
                raise OSError(f"Error response from daemon: {_message(resp.body)}")
        except OSError as err:
            detail = str(err)
            if "Invalid request signature" in detail:
                detail = "agent already paired with another Portainer instance"
            raise HandlerError(500, "Unable to initiate communications with environment", detail) from err
        eid = state.next_id("endpoint")
        state.endpoints[eid] = {
            "Id": eid, "Name": form["Name"], "Type": AGENT_ON_DOCKER, "URL": form["URL"],
            "GroupId": form["GroupID"], "PublicURL": raw.get("PublicURL", ""), "Status": 1, "TagIds": [],
            "TLSConfig": {"TLS": form["TLS"], "TLSSkipVerify": form["TLSSkipVerify"]},
            "Agent": {"Version": version}}
        return 200, state.endpoints[eid]

    @router.add("PUT", r"/api/endpoints/(?P<id>\d+)")
    def endpoint_update(req: Request):
        p = decode(req.body, {"Name": str, "URL": str, "PublicURL": str, "GroupID": int, "TLS": bool,
                              "TLSSkipVerify": bool, "TLSSkipClientVerify": bool}, "endpoints.endpointUpdatePayload")
        ep = find(req)
        sent = {k.lower() for k in _keys(req.body)}
        if "name" in sent:
            unique(p["Name"], ep["Id"])
            ep["Name"] = p["Name"]
        if "url" in sent:
            ep["URL"] = p["URL"]
        if "publicurl" in sent:
            ep["PublicURL"] = p["PublicURL"]
        if "groupid" in sent:
            ep["GroupId"] = p["GroupID"]
        if "tls" in sent:
            ep["TLSConfig"]["TLS"] = p["TLS"]
            ep["TLSConfig"]["TLSSkipVerify"] = p["TLS"] and p["TLSSkipVerify"] if "tlsskipverify" in sent \
                else (p["TLS"] and ep["TLSConfig"]["TLSSkipVerify"])
        return 200, ep

    @router.add("DELETE", r"/api/endpoints/(?P<id>\d+)")
    def endpoint_delete(req: Request):
        ep = find(req)
        del state.endpoints[ep["Id"]]       # the agent's containers run on (they are the agent VM's)
        return 204, None


def _keys(body: bytes) -> list[str]:
    """The JSON fields a request sent (Go decodes into pointers: a field sent is a field set)."""
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        return []
    return list(doc) if isinstance(doc, dict) else []


def _message(body: bytes) -> str:
    try:
        return json.loads(body).get("message", "")
    except (ValueError, AttributeError):
        return body.decode(errors="replace").strip()
