"""The stand-in's process: Portainer's state, its routes and the TLS server.

Run as ``python -m portainer_standin.server`` with the configuration as JSON on stdin (the
admin password and the agent secret are secrets: never on a command line), or as
``... agent`` for an agent. Besides Portainer's own routes it answers a few test hooks under
``/_`` (never under ``/api``): ``GET /_state`` (everything it holds, passwords included),
``POST /_unban`` (the hour of a login ban has passed), ``POST /_engine/<host:port>/containers``
(a container someone started by hand on that agent VM: ``{name, image, ports}``) and
``POST /_engine/<host:port>/remove`` (``{name}``: removed by hand again).
"""

from __future__ import annotations

import json
import ssl
import sys
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

from . import auth, endpoints, stacks
from .agent import Signer, serve_agent
from .api import HandlerError, Request, Router, split_url
from .compose import Engine

VERSION = "2.21.4"


class State:
    def __init__(self, config: dict):
        self.users = auth.Users(config["admin_password"])
        self.limiter = auth.RateLimiter()
        self.signer = Signer(config.get("agent_secret", ""))
        #: compose's own environment inside the Portainer container: Docker's defaults and the
        #: env_file (AGENT_SECRET); it wins over stack.env (compose.project_environment).
        self.process_env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                            "HOSTNAME": "portainer", "HOME": "/", "AGENT_SECRET": config.get("agent_secret", "")}
        self.endpoints: dict[int, dict] = {e["Id"]: e for e in config.get("endpoints", [])}
        self.stacks: dict[int, dict] = {}
        self.engines: dict[str, Engine] = {}
        self.ids = {"endpoint": max(self.endpoints, default=0), "stack": 0}
        self.log: list[str] = []
        self.compose_log: list[dict] = []
        self.compose_warnings: list[str] = []
        self.instance = str(uuid.uuid4())

    def next_id(self, kind: str) -> int:
        self.ids[kind] += 1
        return self.ids[kind]

    def engine(self, ep: dict) -> Engine:
        """The Docker engine of the agent VM an environment points at (by its URL's host:port)."""
        host, port = endpoints._host_port(ep["URL"])
        return self.engines.setdefault(f"{host}:{port}", Engine())

    def log_compose(self, stack: dict, note) -> None:
        self.compose_log.append({"stack": stack["Name"], "endpoint": stack["EndpointId"], "pull": note == "pull",
                                 "stack_env": stack["_stack_env"]})

    def snapshot(self) -> dict:
        return {"users": list(self.users.users.values()), "logins": self.users.logins,
                "endpoints": list(self.endpoints.values()), "stacks": list(self.stacks.values()),
                "engines": {k: list(e.containers.values()) for k, e in self.engines.items()},
                "log": self.log, "compose": self.compose_log, "warnings": self.compose_warnings}


def build(config: dict) -> tuple[State, Router]:
    state, router = State(config), Router()
    auth.register(router, state.users, state.limiter)
    endpoints.register(router, state)
    stacks.register(router, state)

    @router.add("GET", "/api/system/status", "public")
    def status(req: Request):    # system/status.go: portainer.Status and the demo details
        return 200, {"Version": VERSION, "InstanceID": state.instance,
                     "DemoEnvironment": {"Enabled": False, "Users": [], "Environments": []}}
    return state, router


def handler_class(state: State, router: Router):
    class Api(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def send(self, code: int, body) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(code)
            if body is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def hook(self, path: str, body: bytes):
            if path == "/_state" and self.command == "GET":
                return 200, state.snapshot()
            if path == "/_unban" and self.command == "POST":
                state.limiter.lift()
                return 200, {}
            if path.startswith("/_engine/") and path.endswith("/remove") and self.command == "POST":
                engine = state.engines.setdefault(unquote(path.split("/")[2]), Engine())
                return 200, engine.containers.pop(json.loads(body)["name"], None)
            if path.startswith("/_engine/") and path.endswith("/containers") and self.command == "POST":
                spec = json.loads(body)
                ports = [{"IP": "0.0.0.0", "PublicPort": p, "PrivatePort": p, "Type": "tcp"} for p in spec["ports"]]
                engine = state.engines.setdefault(unquote(path.split("/")[2]), Engine())
                return 200, engine.add(spec["name"], spec["image"], spec.get("labels", {}), [], ports, "by hand")
            return 404, {"message": "no such test hook"}

        def handle_any(self):
            path, query = split_url(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            ctype = (self.headers.get("Content-Type") or "").split(";")[0]
            with router.lock:
                if path.startswith("/_"):
                    code, reply = self.hook(path, body)
                else:
                    req = Request(self.command, path, query, self.headers, body, self.client_address[0])
                    try:
                        route, req.match = router.find(self.command, path)
                        if route is None:
                            raise HandlerError(404, "404 page not found", "")
                        if route.access != "public":
                            req.token = state.users.verify(req)
                        code, reply = route.handler(req)
                    except HandlerError as err:
                        code, reply = err.status, err.body()
                    except Exception:            # a bug of the stand-in: say so, loudly
                        code, reply = 500, {"message": "stand-in failure", "details": traceback.format_exc()}
                    state.log.append(f"{self.command} {self.path} {ctype} -> {code}")
            self.send(code, reply)

        do_GET = do_POST = do_PUT = do_DELETE = handle_any
    return Api


def serve(config: dict) -> None:  # pragma: no cover - child process
    state, router = build(config)
    server = ThreadingHTTPServer((config.get("address", "127.0.0.1"), config.get("port", 9443)),
                                 handler_class(state, router))
    server.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(config["cert"], config["key"])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":  # pragma: no cover - child process
    conf = json.load(sys.stdin)
    if sys.argv[1:] == ["agent"]:
        serve_agent(conf["address"], conf["port"], conf["secret"], conf["cert"], conf["key"])
    else:
        serve(conf)
