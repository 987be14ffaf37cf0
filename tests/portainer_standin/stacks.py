"""Compose stacks, as Portainer 2.21.4's ``api/http/handler/stacks`` handles them.

* ``POST /api/stacks/create/standalone/string?endpointId=N`` (``stack_create.go``,
  ``create_compose_stack.go``): JSON ``{Name, StackFileContent, Env: [{name, value}]}``; the
  name is normalized (lower case, only ``[-_a-z0-9]``: ``api/exec/compose_stack.go``); 409 "A
  stack with the normalized name '...' already exists" when a stack of that name is on the
  environment (or its containers are, and a compose stack of that name exists:
  ``checkUniqueStackNameInDocker``); then deploy; a failed deploy is 500 with compose's message
  and the stack is not kept.
* Deploy (``api/stacks/deployments/deployer.go`` ``DeployComposeStack``): with ``Env``, the env
  file ``stack.env`` is written as ``name=value`` lines, unquoted (``api/exec/compose_stack.go``
  ``createEnvFile``) and handed to ``docker compose up -d`` (``compose.py``); a failed ``up``
  is followed by ``down``: the stack's containers are gone.
* ``PUT /api/stacks/{id}?endpointId=N`` (``stack_update.go``): for a compose stack the payload is
  ``{StackFileContent, Env, PullImage}`` (``updateComposeStackPayload``): there is no ``Prune``
  (only the swarm payload has it) and nothing removes services the new file no longer has.
  ``PullImage`` pulls first. On failure the file is rolled back and the stored ``Env`` is left
  as it was; on success the stack is active.
* ``POST /api/stacks/{id}/stop`` (``stack_stop.go``): 400 when already inactive, else ``down``.
  ``POST /api/stacks/{id}/start`` (``stack_start.go``): 409 while containers of the project
  run, 400 when active, else ``up`` with the stored file and Env.
* ``DELETE /api/stacks/{id}?endpointId=N`` (``stack_delete.go``): ``down``, then the record.
* ``GET /api/endpoints/{id}/docker/containers/json``: the Docker API through Portainer's proxy
  (``all``, ``filters`` with ``label``).
"""

from __future__ import annotations

import json
import re
import time

from .api import HandlerError, Request, Router, decode, pairs
from .compose import ComposeError

COMPOSE_STACK, ACTIVE, INACTIVE = 2, 1, 2
ENTRY_POINT = "docker-compose.yml"


def normalize(name: str) -> str:
    return re.sub(r"[^-_a-z0-9]+", "", name.lower())


def env_file(env: list[dict]) -> str | None:
    """createEnvFile: nothing without Env, else ``name=value`` per line, as they are."""
    if not env:
        return None
    return "".join(f"{e['name']}={e['value']}\n" for e in env)


def register(router: Router, state) -> None:
    def endpoint(eid: int) -> dict:
        ep = state.endpoints.get(eid)
        if ep is None:
            raise HandlerError(404, "Unable to find an environment with the specified identifier inside the database",
                               "Object not found inside the database")
        return ep

    def stack_of(req: Request) -> dict:
        s = state.stacks.get(int(req.match["id"]))
        if s is None:
            raise HandlerError(404, "Unable to find a stack with the specified identifier inside the database",
                               "Object not found inside the database")
        return s

    def public(s: dict) -> dict:
        return {k: v for k, v in s.items() if not k.startswith("_")}

    def up(s: dict, ep: dict, pull: bool = False) -> None:
        """DeployComposeStack (pull first when asked); a failed up is followed by down."""
        engine = state.engine(ep)
        s["_stack_env"] = env_file(s["Env"])
        try:
            state.log_compose(s, "pull" if pull else None)
            engine.up(s["Name"], s["_file"], state.process_env, s["_stack_env"], state.compose_warnings)
        except ComposeError as err:
            engine.down(s["Name"])
            raise HandlerError(500, f"failed to deploy a stack: {err}") from err

    @router.add("GET", "/api/stacks")
    def stack_list(req: Request):
        return 200, [public(s) for s in state.stacks.values()]

    @router.add("GET", r"/api/stacks/(?P<id>\d+)")
    def stack_inspect(req: Request):
        return 200, public(stack_of(req))

    @router.add("GET", r"/api/stacks/(?P<id>\d+)/file")
    def stack_file(req: Request):
        return 200, {"StackFileContent": stack_of(req)["_file"]}

    @router.add("POST", r"/api/stacks/create/(?P<type>[^/]+)/(?P<method>[^/]+)")
    def stack_create(req: Request):
        eid = req.query_int("endpointId")
        ep = endpoint(eid)
        if (req.match["type"], req.match["method"]) != ("standalone", "string"):
            raise HandlerError(501, "Not implemented by the stand-in", "only standalone stacks from a string")
        p = decode(req.body, {"Name": str, "StackFileContent": str, "Env": list, "FromAppTemplate": bool},
                   "stacks.composeStackFromFileContentPayload")
        if not p["Name"]:
            raise HandlerError(400, "Invalid request payload", "Invalid stack name")
        if not p["StackFileContent"]:
            raise HandlerError(400, "Invalid request payload", "Invalid stack file content")
        name = normalize(p["Name"])
        on_endpoint = any(s["Name"].lower() == name and s["EndpointId"] == eid for s in state.stacks.values())
        running = bool(state.engine(ep).of_project(name))
        if on_endpoint or running:
            for s in [s for s in state.stacks.values() if s["Name"] == name]:
                if s["Type"] == COMPOSE_STACK or s["EndpointId"] != eid:
                    msg = f"A stack with the normalized name '{name}' already exists"
                    raise HandlerError(409, msg, msg)
        sid = state.next_id("stack")
        s = {"Id": sid, "Name": name, "Type": COMPOSE_STACK, "EndpointId": eid, "SwarmId": "",
             "EntryPoint": ENTRY_POINT, "Env": pairs(p["Env"]), "Status": ACTIVE,
             "ProjectPath": f"/data/compose/{sid}", "CreationDate": int(time.time()),
             "CreatedBy": req.token["username"],
             "UpdateDate": 0, "UpdatedBy": "", "FromAppTemplate": p["FromAppTemplate"],
             "ResourceControl": {"ResourceId": f"{eid}_{name}", "Type": 6, "AdministratorsOnly": True},
             "_file": p["StackFileContent"]}
        up(s, ep)
        state.stacks[sid] = s
        return 200, public(s)

    @router.add("PUT", r"/api/stacks/(?P<id>\d+)")
    def stack_update(req: Request):
        s = stack_of(req)
        eid = req.query_int("endpointId")
        ep = endpoint(eid)
        p = decode(req.body, {"StackFileContent": str, "Env": list, "PullImage": bool},
                   "stacks.updateComposeStackPayload")
        if not p["StackFileContent"]:
            raise HandlerError(400, "Invalid request payload", "Invalid stack file content")
        trial = {**s, "EndpointId": eid, "Env": pairs(p["Env"]), "_file": p["StackFileContent"]}
        up(trial, ep, pull=p["PullImage"])        # on failure: file rolled back, Env not stored
        s.update(trial, UpdatedBy=req.token["username"], UpdateDate=int(time.time()), Status=ACTIVE)
        return 200, public(s)

    @router.add("POST", r"/api/stacks/(?P<id>\d+)/stop")
    def stack_stop(req: Request):
        s = stack_of(req)
        ep = endpoint(req.query_int("endpointId"))
        if s["Status"] == INACTIVE:
            raise HandlerError(400, "Stack is already inactive")
        state.engine(ep).down(s["Name"])
        s["Status"] = INACTIVE
        return 200, public(s)

    @router.add("POST", r"/api/stacks/(?P<id>\d+)/start")
    def stack_start(req: Request):
        s = stack_of(req)
        ep = endpoint(req.query_int("endpointId"))
        if state.engine(ep).of_project(s["Name"]) or any(
                o["Name"].lower() == s["Name"].lower() and o["EndpointId"] == ep["Id"] and o["Id"] != s["Id"]
                for o in state.stacks.values()):
            msg = f"A stack with the name '{s['Name']}' is already running"
            raise HandlerError(409, msg, msg)
        if s["Status"] == ACTIVE:
            raise HandlerError(400, "Stack is already active")
        try:
            state.engine(ep).up(s["Name"], s["_file"], state.process_env, env_file(s["Env"]), state.compose_warnings)
        except ComposeError as err:
            raise HandlerError(500, "Unable to start stack", str(err)) from err
        s["Status"] = ACTIVE
        return 200, public(s)

    @router.add("DELETE", r"/api/stacks/(?P<id>\d+)")
    def stack_delete(req: Request):
        s = stack_of(req)
        eid = req.query_int("endpointId", optional=True)
        ep = endpoint(eid)
        state.engine(ep).down(s["Name"])
        del state.stacks[s["Id"]]
        return 204, None

    @router.add("GET", r"/api/endpoints/(?P<id>\d+)/docker/containers/json")
    def containers(req: Request):
        ep = endpoint(int(req.match["id"]))
        every = (req.query.get("all") or ["0"])[0] in ("1", "true")
        labels = json.loads((req.query.get("filters") or ["{}"])[0] or "{}").get("label", [])
        out = []
        for c in state.engine(ep).containers.values():
            if not every and c["State"] != "running":
                continue
            if all(c["Labels"].get(lbl.split("=", 1)[0]) == lbl.split("=", 1)[1] if "=" in lbl
                   else lbl in c["Labels"] for lbl in labels):
                out.append({k: v for k, v in c.items() if k not in ("Env", "config")})
        return 200, out

