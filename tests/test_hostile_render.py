"""Values the model accepts, at the edges of what it accepts, read by the real parser of each file
they land in: systemd (``systemd-analyze verify``), bash and shellcheck, BIND (``named-checkzone``).
nginx and Traefik read the same edge values in tests/test_edge_lab.py.

The edge stack is the dev stack with a GPU service whose environment, model and command hold
quotes, backslashes, ``$``, ``%``, ``;``, spaces and non-ASCII text, a health path with a query,
the largest body size and timeout, and the longest aliases.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import edited, shipped_plan
from lab import require_tools
from phoenix.plan import make_plan
from phoenix.plan.writer import pushed_files
from phoenix.render import dns as dns_render
from phoenix.render.workloads import unit_name

#: what the environment of the edge service holds, as the catalog says it.
EDGE_ENVIRONMENT = {
    "QUOTES": "it's \"quoted\"",
    "BACKSLASH": "C:\\path\\",
    "DOLLAR": "$HOME and ${USER}",
    "PERCENT": "100% %h %n",
    "SEMICOLON": "a;b",
    "SPACES": "  padded  ",
    "UNICODE": "ünïcødé ✓",
    "EMPTY": "",
}
EDGE_MODEL = "org/Model-1.5:tag@sha=1+x"
EDGE_COMMAND = ("/opt/vllm/bin/vllm serve {model} --host {host} --port {port} --ssl-certfile {cert} "
                "--ssl-keyfile {key} --chat-template '{{\"a\": \"b c\"}}' --x=$HOME --pct=50% \\; ';'")
EDGE_HEALTH = "/v1/health-x.y~z_0?probe=1&x=y"
#: the longest alias the dev stack allows: <alias>.lab.internal is at most 64 characters (a certificate name).
LONG_ALIAS = "a" * (64 - len(".lab.internal"))


def edge(raw: dict) -> None:
    llm = next(s for s in raw["services"] if s["name"] == "llm")
    llm.update(aliases=[LONG_ALIAS, "chat"], health=EDGE_HEALTH, maxBodySize="999999g", timeout=86400)
    llm["run"].update(environment=dict(EDGE_ENVIRONMENT), model=EDGE_MODEL, command=EDGE_COMMAND)


@pytest.fixture(scope="module")
def edge_plan():
    return make_plan(edited("dev", edge))


def _unit(plan) -> str:
    s = plan.topo.service("llm")
    return pushed_files(plan.run, plan.topo)["gpu-llm"][f"/etc/systemd/system/{unit_name(s)}"][0].content


def _directives(unit: str) -> list[str]:
    return [line.split("=", 1)[0] for line in unit.splitlines() if line and not line.startswith(("#", "["))]


def test_the_unit_passes_systemd_analyze_and_gains_no_line(edge_plan, tmp_path):
    require_tools("systemd-analyze")
    unit = _unit(edge_plan)
    stub = tmp_path / "stub"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    # the service's binary and the wait script are not here: a stub, every argument kept as written
    path = tmp_path / "phoenix-llm.service"
    path.write_text(re.sub(r"^(ExecStart(?:Pre)?=)(\S+)", lambda m: m.group(1) + str(stub), unit, flags=re.M))
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0 and "quoting" not in out.stderr and "Ignoring" not in out.stderr, out.stderr
    # the same directives as the shipped service's unit: one Environment= per variable, nothing else
    benign = _directives(_unit(shipped_plan("dev")))
    extra = len(EDGE_ENVIRONMENT) - len(shipped_plan("dev").topo.service("llm").run.environment)
    assert _directives(unit) == benign[:benign.index("Environment") + 1] + ["Environment"] * (
        benign.count("Environment") - 1 + extra) + benign[benign.index("Environment") + benign.count("Environment"):]


def test_environment_values_reach_systemd_unchanged(edge_plan):
    """Environment= expands specifiers (%) but no variables ($): a doubled $ would reach the
    service as two dollars (systemd.exec(5), Environment=)."""
    lines = [line[len("Environment="):] for line in _unit(edge_plan).splitlines() if line.startswith("Environment=")]
    assert '"DOLLAR=$HOME and ${USER}"' in lines
    assert '"PERCENT=100%% %%h %%n"' in lines
    assert '"QUOTES=it\'s \\"quoted\\""' in lines
    assert '"BACKSLASH=C:\\\\path\\\\"' in lines
    assert "$$" not in "\n".join(lines)


def test_exec_start_words_are_quoted_and_escaped_for_systemd(edge_plan):
    [exec_start] = [line for line in _unit(edge_plan).splitlines() if line.startswith("ExecStart=")]
    assert exec_start.startswith("ExecStart=/opt/vllm/bin/vllm serve org/Model-1.5:tag@sha=1+x --host 0.0.0.0 ")
    assert '"{\\"a\\": \\"b c\\"}"' in exec_start          # one word, braces literal
    assert "--x=$$HOME" in exec_start and "--pct=50%%" in exec_start
    assert exec_start.endswith('";" ";"')                  # literal semicolons, never a separator


def test_the_guests_scripts_pass_bash_and_shellcheck(edge_plan, tmp_path):
    require_tools("shellcheck")
    files = pushed_files(edge_plan.run, edge_plan.topo)["gpu-llm"]
    scripts = [(p, f) for p, (f, _) in files.items() if f.content.startswith("#!/bin/bash")]
    assert any("health-llm" in p for p, _ in scripts)
    for i, (path, f) in enumerate(scripts):
        target = tmp_path / f"{i}-{Path(path).name}"
        target.write_text(f.content)
        assert subprocess.run(["bash", "-n", str(target)], capture_output=True, check=False).returncode == 0, path
    out = subprocess.run(["shellcheck", "-s", "bash", "-S", "warning", *sorted(str(p) for p in tmp_path.iterdir())],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout
    health = next(f for p, f in scripts if "health-llm" in p).content
    assert f":{edge_plan.topo.service('llm').port}{EDGE_HEALTH}'" in health    # one quoted word


def test_named_checkzone_accepts_every_zone(edge_plan, tmp_path):
    require_tools("named-checkzone")
    topo = edge_plan.topo
    for z in dns_render.zones(topo):
        path = tmp_path / Path(z.file).name
        path.write_text(dns_render.zone_text(topo, z))
        out = subprocess.run(["named-checkzone", "-k", "fail", z.name, str(path)], capture_output=True, text=True,
                             check=False)
        assert out.returncode == 0, out.stdout + out.stderr
    internal = dns_render.zone_text(topo, dns_render.zones(topo)[0])
    assert f"{LONG_ALIAS}.{topo.lab.domains.internal}. IN CNAME llm.{topo.lab.domains.internal}." in internal


def test_a_zone_line_is_refused_rather_than_split(edge_plan):
    """Past the model, the zone renderer still writes only plain names: a record that would
    break a line is an error, never a second line."""
    from phoenix.topology import Record
    topo = edge_plan.topo
    zone = dns_render.zones(topo)[0]
    bad = zone.__class__(**{**zone.__dict__, "records": (*zone.records, Record("x\ny.lab.internal", "A", "10.0.0.1"))})
    with pytest.raises(ValueError, match="zone"):
        dns_render.zone_text(topo, bad)


def test_the_gateway_config_holds_the_edge_values(edge_plan):
    files = pushed_files(edge_plan.run, edge_plan.topo)["gateway"]
    sites = files["/etc/nginx/conf.d/phoenix-gateway.conf"][0].content
    assert "client_max_body_size 999999g;" in sites and "proxy_read_timeout 86400s;" in sites
    assert shutil.which("nginx")   # nginx -t on these files: tests/test_edge_lab.py
