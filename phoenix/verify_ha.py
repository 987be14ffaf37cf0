"""``phoenix verify``'s HA report: where Proxmox HA runs each highly available guest right now.

Given ``--proxmox-token-file`` (an API token, ``USER@REALM!TOKENID=SECRET``; the PVEAuditor role
is enough), verify asks the cluster's HA manager (``GET /api2/json/cluster/ha/status/current``,
pve-ha-manager src/PVE/API2/HA/Status.pm ``status_current``) once, and plans:

* ``ha/quorum``: the node that answered is in a quorate cluster (else nothing fails over);
* ``ha/guest <name>`` per HA guest of the model: its HA resource (``ct:<vmid>``/``vm:<vmid>``)
  exists, is ``started``, and runs on one of the nodes its placement allows. On another node than
  its own it passes, saying so: it failed over, and failback brings it home when its node is back
  (until then, do not refresh the stack: docs/restore-drill.md).

Without the token nothing here is planned: the stack's HA is then only in ``phoenix plan``.
"""

from __future__ import annotations

import http.client
import json
import ssl
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from phoenix.model.resilience import plan_resilience
from phoenix.verify_checks import Check, VerifyOptions

if TYPE_CHECKING:
    from phoenix.topology import Topology

STATUS_PATH = "/api2/json/cluster/ha/status/current"
KINDS = ("ha/quorum", "ha/guest")


def endpoint(topo: Topology) -> tuple[str, int]:
    url = urlsplit(topo.lab.proxmox.endpoint)
    return url.hostname or "", url.port or 8006


def ha_checks(topo: Topology, options: VerifyOptions = VerifyOptions()) -> list[Check]:
    if not getattr(options, "proxmox_token_file", None):
        return []
    host, port = endpoint(topo)
    insecure = "insecure" if topo.lab.proxmox.insecure else "verified"
    out = [Check("ha/quorum", host, host, port, (), path=STATUS_PATH, trust=insecure)]
    for p in plan_resilience(topo.lab).ha_guests:
        out.append(Check("ha/guest", p.guest, host, port, (p.sid, *p.placement), path=STATUS_PATH, trust=insecure))
    return out


def _status(probes, check: Check) -> list[dict]:
    with open(probes.proxmox_token_file) as f:
        token = f.read().strip()
    ctx = ssl.create_default_context()
    if check.trust == "insecure":      # the stack's proxmox.insecure: a self-signed node certificate
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    conn = http.client.HTTPSConnection(check.address, check.port, timeout=probes.timeout, context=ctx)
    try:
        conn.request("GET", STATUS_PATH, headers={"Authorization": f"PVEAPIToken={token}",
                                                  "User-Agent": "phoenix-verify"})
        resp = conn.getresponse()
        body = resp.read(1 << 20)
    finally:
        conn.close()
    if resp.status != 200:
        raise RuntimeError(f"GET {STATUS_PATH} answered HTTP {resp.status} {resp.reason}")
    return json.loads(body)["data"]


def ha_status(probes, check: Check) -> tuple[bool, str]:
    """The probe of ``ha/*`` checks (``Probes.ha_status`` delegates here)."""
    entries = probes._once(("proxmox-ha", check.address, check.port), lambda: _status(probes, check))
    if check.check == "ha/quorum":
        quorum = next((e for e in entries if e.get("type") == "quorum"), None)
        if quorum is None:
            return False, "the HA status has no quorum entry"
        if not quorum.get("quorate"):
            return False, f"{quorum.get('status', 'no quorum')}: HA moves nothing without quorum"
        return True, f"-> quorate (asked {quorum.get('node', '?')})"
    sid, own, *others = check.expect
    found = next((e for e in entries if e.get("type") == "service" and e.get("sid") == sid), None)
    if found is None:
        return False, f"{sid} is not an HA resource (pulumi up makes it)"
    node, state = found.get("node", "?"), found.get("state", "?")
    if state != "started":
        return False, f"{sid} is {state} on {node} (requested {found.get('request_state', '?')})"
    if node == own:
        return True, f"-> {sid} started on {node}"
    if node in others:
        return True, (f"-> {sid} started on {node}, not on its own node {own}: failed over; failback brings "
                      f"it home when {own} is back (do not refresh the stack until then)")
    return False, f"{sid} runs on {node}, which its placement ({', '.join((own, *others))}) does not allow"
