"""A stand-in for Portainer CE 2.21.4 (and its agent), following Portainer's own handlers.

No Portainer binary or Docker engine exists here, so the labs run this instead: one HTTPS
server with Portainer's state (users, JWTs, the login rate limit and its ban, environments,
stacks with the ``stack.env`` Portainer writes, the agents' Docker engines in memory), and,
for each agent VM a test plays, a TLS server that answers as the agent does (``/ping``, the
signed Docker API with the ``AGENT_SECRET`` check). Each module cites the Portainer source it
follows (github.com/portainer/portainer, tag 2.21.4; portainer/agent 2.21.4; compose-go
v2.1.6 for ``docker compose``'s env-file parser):

* ``auth``: ``/api/auth``, the rate limiter and ban, users, password rules, JWTs;
* ``endpoints``: environments, the agent ping and signature check at registration;
* ``stacks`` and ``compose``: compose stacks, ``stack.env``, ``up``/``down`` on the agent;
* ``dotenv``: compose-go's dotenv parser and interpolation, ported (checked against the
  real Go code's answers in ``dotenv_cases.json``);
* ``agent``: the agent, and the ECDSA signature Portainer signs its requests with;
* ``api`` and ``server``: errors, JSON and form decoding, routing, the process.

Start one with ``start_portainer`` (what the end-to-end harness needs: the admin password,
certificate, key, address and port) and agents with ``start_agent``; ``ScriptLab`` is the
Portainer VM as the plan's scripts see it.
"""

from __future__ import annotations

__all__ = ["StandIn", "start_portainer", "start_agent", "ScriptLab"]


def __getattr__(name: str):
    # Lazily: the child processes import this package too, and need none of the test helpers.
    if name in ("StandIn", "start_portainer", "start_agent"):
        from . import launch
        return getattr(launch, name)
    if name == "ScriptLab":
        from .scriptlab import ScriptLab
        return ScriptLab
    raise AttributeError(name)
