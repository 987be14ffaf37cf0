"""The docs: the config reference is generated and current, and what the pages name exists
(config keys in the model, files in the repository, the eighteen traps of DESIGN §3)."""

from __future__ import annotations

import re

from conftest import ROOT
from phoenix import docs, model
from phoenix.model import OPERATOR_SECRETS

DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = ("deploying.md", "adding-a-service.md", "upgrading.md", "troubleshooting.md", "config-reference.md")


def text(name: str) -> str:
    return (ROOT / "docs" / name).read_text()


def test_every_page_exists():
    assert {p.name for p in DOCS} >= set(PAGES)


def test_config_reference_is_current():
    assert docs.is_current(), "docs/config-reference.md is stale: run `.venv/bin/phoenix docs`"


def test_config_reference_lists_every_key_of_every_model():
    ref = text("config-reference.md")
    for cls in [model.Lab, *(getattr(model, n) for n in model.json_schema()["$defs"])]:
        section = ref if cls is model.Lab else ref.split(f"\n## {cls.__name__}\n", 1)[1].split("\n## ", 1)[0]
        for name, info in cls.model_fields.items():
            assert f"| `{info.alias or name}` |" in section, (cls.__name__, name)


def _schema_has(path: list[str]) -> bool:
    schema = model.json_schema()
    node = schema
    for part in path:
        while "$ref" in node or "items" in node or "additionalProperties" in node and "properties" not in node:
            if "$ref" in node:
                node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
            elif "items" in node:
                node = node["items"]
            else:
                node = node["additionalProperties"]
        if "anyOf" in node:
            node = next(n for n in node["anyOf"] if n.get("type") != "null")
            if "$ref" in node:
                node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
        props = node.get("properties", {})
        if part not in props:
            return False
        node = props[part]
    return True


def test_every_config_key_the_docs_name_exists():
    named = set()
    for page in DOCS:
        named |= set(re.findall(r"(?<![:\w])phoenix:([a-zA-Z][a-zA-Z0-9]*(?:\.[a-zA-Z][a-zA-Z0-9]*)*)",
                                page.read_text()))
    assert named, "the docs name no config key"
    # Secrets the program reads besides the model: the operator's, and the optional API token.
    import inspect

    from phoenix import program
    secrets = set(OPERATOR_SECRETS)
    assert '"proxmoxApiToken"' in inspect.getsource(program.provider)
    for key in sorted(named):
        parts = key.split(".")
        assert parts[0] in secrets or parts[0] == "catalog" or _schema_has(parts), \
            f"docs name phoenix:{key}, which the model does not have"


def test_every_repository_path_the_docs_name_exists():
    for page in DOCS:
        for path in re.findall(r"`((?:phoenix|components|configs|tests|scripts|bench|docs|\.github)/[^`\s<>*]+)`",
                               page.read_text()):
            assert (ROOT / path).exists(), f"{page.name} names {path}, which does not exist"
        for link in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / link).exists(), f"{page.name} links to {link}, which does not exist"


def test_troubleshooting_covers_each_trap_of_the_design():
    """The design names 18 traps of the system this one replaces; the page has one section
    per trap, in order, each saying how Phoenix makes it impossible."""
    page = text("troubleshooting.md")
    headings = re.findall(r"^## (\d+)\. (.+)$", page, re.M)
    assert [int(n) for n, _ in headings] == list(range(1, 19))
    sections = re.split(r"^## \d+\. .+$", page, flags=re.M)[1:]
    assert all(len(body.strip()) > 80 for body in sections), "a trap section without an explanation"


def test_deploying_covers_credentials_ssh_backends_and_secrets():
    page = text("deploying.md")
    for needle in ("root@pam", "phoenix:proxmoxApiToken", "snippets", "pulumi login --local",
                   "s3://", "--secrets-provider", "PULUMI_CONFIG_PASSPHRASE", "ssh-add", "deployPublicKey"):
        assert needle in page, needle
    for key in OPERATOR_SECRETS:
        assert f"pulumi config set --secret phoenix:{key}" in page, key


def test_adding_a_service_shows_what_the_real_plan_generates():
    """The page's example entry, added to the dev catalog, changes exactly the steps and files
    its table lists (so the page cannot drift from the program)."""
    import yaml

    from conftest import edited, shipped_plan
    from phoenix import diff
    from phoenix.plan import make_plan
    page = text("adding-a-service.md")
    entry = yaml.safe_load(re.search(r"```yaml\n(.*?)```", page, re.S).group(1))[0]
    result = diff.diff(diff.snapshot(shipped_plan("dev")),
                       diff.snapshot(make_plan(edited("dev", lambda raw: raw["services"].append(entry)))))
    table = page.split("## What it generates", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in table.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0].strip("`")] = (cells[1], cells[2], set(re.findall(r"`(/[^`]+)`", cells[3])))
    changes = {c.name: c for c in result.changes}
    assert set(rows) == set(changes), result.render(files=False)
    assert not result.by_kind("replace") and not result.by_kind("delete")
    for name, (guest, tier, paths) in rows.items():
        c = changes[name]
        assert (c.guest, c.tier) == (guest, tier), name
        if c.type == diff.COMMAND:
            assert paths == set(c.files), name
    assert {f.path for f in result.files} == set().union(*(p for _, _, p in rows.values()))
    for output in re.findall(r"`(\w+)`", page.split("No guest is replaced", 1)[1].split("\n\n", 1)[0]):
        assert output in result.outputs, output


def test_the_firewall_matrix_is_generated_from_the_model_and_current():
    """docs/firewall-matrix.md has a row for every rule the dev stack's guests get, and is what
    ``phoenix docs`` would write now."""
    from phoenix.render.firewall import guest_rules
    from phoenix.stackfile import expand_catalog, read_stack_file
    from phoenix.topology import build
    matrix = text(docs.MATRIX_NAME)
    assert matrix == docs.firewall_matrix(), "docs/firewall-matrix.md is stale: run `.venv/bin/phoenix docs`"
    stack = read_stack_file(ROOT / "Pulumi.dev.yaml")
    topo = build(model.parse_lab(expand_catalog(stack.phoenix(), stack.root)))
    rows = [line for line in matrix.splitlines() if line.startswith("| `")]
    for guest, rules in guest_rules(topo).items():
        for r in rules:
            port = f"| {r.dport}/{r.proto} |"
            peer = (r.source if r.direction == "in" else r.dest) or "anywhere"
            assert any(row.startswith(f"| `{guest}` ") and port in row and peer in row for row in rows), (guest, r)
    assert "10.20.0.1/32" not in matrix            # the network's gateway is no admin source
