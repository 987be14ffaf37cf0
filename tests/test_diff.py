"""`phoenix diff`: which resources a change creates, updates, replaces or deletes, and why.

The central test plans the dev stack, adds one public service to a copy and plans again: the
diff must list exactly the steps that service needs. "Exactly" is checked against the plan's
own content, not a list typed here: the remote steps that change are the ones whose pushed
files name the new service, the firewall rule sets that change are those of the guests whose
flows (from the topology) change, nothing else moves and no guest is replaced.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, edited, shipped_plan, stack_config
from phoenix import diff
from phoenix.model import parse_lab
from phoenix.plan import make_plan
from phoenix.resource_types import FIREWALL_RULES
from phoenix.stackfile import expand_catalog

PROBE = "nbx-probe"       # a name no shipped file mentions, so "mentions it" means "is about it"


@pytest.fixture(scope="module")
def base():
    return diff.snapshot(shipped_plan("dev"))


def add_probe(raw: dict) -> None:
    """One public service on an existing agent guest, on a port nothing else there uses."""
    lab = parse_lab(raw)
    guest = lab.role("agent")[0].name
    used = {s.port for s in lab.services if guest in s.guests}
    port = next(p for p in range(18080, 18200) if p not in used)
    raw["services"].append({"name": PROBE, "guests": [guest], "port": port, "public": True,
                            "publicHost": f"{PROBE}.{lab.domains.public}", "health": "/healthz"})


@pytest.fixture(scope="module")
def probe():
    stack = edited("dev", add_probe)
    plan = make_plan(stack)
    return plan, diff.snapshot(plan)


def tier_is_built(snap: diff.Snapshot, tier: str) -> bool:
    """A tier that registers resources (a stub registers only its component)."""
    parents = {r["urn"] for r in snap.resources.values() if r["type"] == f"phoenix:tier:{tier}"}
    return any(r.get("parent") in parents for r in snap.resources.values())


def command_files(snap: diff.Snapshot, entry: dict) -> list[str]:
    guest = diff._guest_of(entry, diff.guest_index(snap))
    bundle = (entry["inputs"].get("stdin") or {}).get("phoenix:bundle") or {}
    return [snap.files.get(guest, {}).get(p, "") for p in bundle.get("files", [])]


def test_the_same_config_plans_to_no_change(base):
    again = diff.snapshot(make_plan(stack_config("dev")))
    result = diff.diff(base, again)
    assert result.empty, result.render()
    assert "no changes" in result.render()


def test_adding_a_public_service_touches_exactly_its_steps(base, probe):
    plan, new = probe
    result = diff.diff(base, new)
    print(result.render(files=False))
    assert not result.by_kind("replace") and not result.by_kind("delete"), result.render(files=False)
    assert result.replaced_guests == []

    # Remote steps: those whose pushed files name the new service, and new steps on its guest
    # (a guest that starts serving gets what every serving guest has). Nothing else.
    host_guest = plan.topo.service(PROBE).guests[0]
    mentioning = {e["name"] for e in new.resources.values()
                  if e["type"] == diff.COMMAND and any(PROBE in text for text in command_files(new, e))}
    joining = {c.name for c in result.changes if c.type == diff.COMMAND and c.kind == "create"
               and c.guest == host_guest}
    changed_steps = {c.name for c in result.changes if c.type == diff.COMMAND}
    assert changed_steps == mentioning | joining
    assert mentioning, "no step names the new service"
    for c in result.changes:
        if c.type == diff.COMMAND and c.kind == "update":
            assert c.files and c.fields == ["stdin"], (c.name, c.fields)   # only its files changed

    # Firewall: the rule sets of exactly the guests whose allowed flows change.
    old_topo = shipped_plan("dev").topo
    new_flows = set(plan.topo.flows) ^ set(old_topo.flows)
    affected = {f.target for f in new_flows if f.target != "any"} | {f.source for f in new_flows
                                                                      if f.target == "any"}
    fw_guests = {c.guest for c in result.changes if c.type == FIREWALL_RULES}
    if tier_is_built(base, "Firewall"):
        assert fw_guests == affected and affected
        assert all(c.kind == "update" for c in result.changes if c.tier == "Firewall")

    # Nothing else moves: every change is a remote step or a firewall rule set.
    others = [c for c in result.changes if c.type not in (diff.COMMAND, FIREWALL_RULES)]
    assert others == [], [(c.name, c.fields) for c in others]

    # Every tier that exists does its part.
    for tier in ("Dns", "Mesh", "Gateway", "Firewall"):
        if tier_is_built(base, tier):
            assert any(c.tier == tier for c in result.changes), f"{tier} did not change"
        else:
            print(f"tier {tier} registers no resources yet: not checked")

    # The file diff holds the new server block (gateway) and the new router (mesh).
    host = f"{PROBE}.{plan.topo.lab.domains.public}"
    added = {g: "\n".join(line for f in result.files if f.guest == g for line in f.diff.splitlines()
                          if line.startswith("+")) for g in {f.guest for f in result.files}}
    if tier_is_built(base, "Gateway"):
        assert any("server_name" in line and host in line for line in added[plan.topo.gateway.name].splitlines())
    if tier_is_built(base, "Mesh"):
        assert f"Host(`{host}`)" in added[plan.topo.mesh.name]


def test_a_new_guest_id_replaces_the_guest_and_the_steps_that_follow_it(base):
    def renumber(raw):
        next(g for g in raw["guests"] if g["name"] == "mesh")["id"] = 150
    result = diff.diff(base, diff.snapshot(make_plan(edited("dev", renumber))))
    mesh = next(c for c in result.changes if c.name == "mesh")
    assert mesh.kind == "replace" and mesh.is_guest
    assert any(r.startswith("vmId changed") and "provider" in r for r in mesh.reasons)
    followers = [c for c in result.changes if c.kind == "replace" and c.type == diff.COMMAND]
    assert followers and all(c.guest == "mesh" for c in followers)
    assert all(any("follows mesh, which is replaced" in r for r in c.reasons) for c in followers)
    assert [c.name for c in result.replaced_guests] == ["mesh"]
    assert "GUESTS REPLACED OR DELETED: mesh" in result.render()


def test_disks_grow_in_place_and_never_shrink(base):
    def disks(size_lxc, size_vm):
        def edit(raw):
            next(g for g in raw["guests"] if g["role"] == "gateway")["disk"] = size_lxc
            next(g for g in raw["guests"] if g["role"] == "portainer")["disk"] = size_vm
        return diff.diff(base, diff.snapshot(make_plan(edited("dev", edit))))
    grown = disks(64, 256)      # dev: gateway 8 GB, portainer 32 GB
    kinds = {c.name: c.kind for c in grown.changes if c.is_guest}
    assert kinds == {"gateway": "update", "portainer": "update"}
    shrunk = disks(2, 4)
    kinds = {c.name: c.kind for c in shrunk.changes if c.is_guest}
    assert kinds == {"gateway": "replace", "portainer": "replace"}
    assert all("cannot shrink" in " ".join(c.reasons) for c in shrunk.changes if c.is_guest)


def test_a_new_image_url_replaces_the_download_but_no_guest(base):
    def new_images(raw):
        for image in raw["images"].values():
            image["url"] = image["url"].replace("https://", "https://mirror.example.org/")
            image["url"] = image["url"].replace("http://", "https://mirror.example.org/")
    result = diff.diff(base, diff.snapshot(make_plan(edited("dev", new_images))))
    downloads = [c for c in result.changes if c.type == "proxmoxve:download/file:File"]
    assert downloads and all(c.kind == "replace" and "url changed" in c.reasons[0] for c in downloads)
    assert result.replaced_guests == []
    # VMs take the image's new id in disks[].importFrom (an update); LXCs ignore operatingSystem.
    vm_changes = [c for c in result.changes if c.type.endswith("VmLegacy")]
    assert vm_changes and all(c.kind == "update" and any("importFrom" in f for f in c.fields) for c in vm_changes)
    assert not [c for c in result.changes if c.type.endswith("ContainerLegacy")]


@pytest.mark.parametrize("path, pattern, expected", [
    ("triggers[0]", "triggers[*]", True),
    ("triggers", "triggers[*]", False),
    ("initialization.userAccount.keys[0]", "initialization.userAccount", True),
    ("initialization.userAccountX", "initialization.userAccount", False),
    ("disk.size", "disk.datastoreId", False),
    ("vmIdx", "vmId", False),
    ("disks[1].fileId", "disks[*].fileId", True),
])
def test_property_paths_match_like_pulumi(path, pattern, expected):
    assert diff.path_matches(path, pattern) is expected


def test_markdown_is_a_pull_request_comment(base):
    """A changed step and its file, as a reviewer sees them in the comment."""
    import copy
    changed = copy.deepcopy(base)
    key, step = next((k, e) for k, e in changed.resources.items()
                     if e["type"] == diff.COMMAND and e["name"] == "gateway-bootstrap")
    step["inputs"]["stdin"]["phoenix:bundle"]["digest"] = "0" * 64
    path = step["inputs"]["stdin"]["phoenix:bundle"]["files"][0]
    changed.files["gateway"][path] += "# one more line\n"
    result = diff.diff(base, changed)
    text = result.render("markdown")
    assert text.startswith("### Phoenix plan diff: `dev`")
    assert "**0 to create, 1 to update, 0 to replace, 0 to delete; 1 pushed files changed; no guest replaced**" in text
    assert "| | action | resource | type | tier | guest | why |" in text
    assert (f"| `~` | update | `gateway-bootstrap` | `command:remote:Command` | Guests | gateway | files: {path} |"
            in text)
    assert "<details><summary><b>gateway</b>: 1 file(s) changed</summary>" in text
    assert "```diff" in text and "+# one more line" in text
    plain = result.render()
    assert "~  update   gateway-bootstrap" in plain and "=== gateway: 1 file(s) changed" in plain
    assert "No changes" in diff.diff(base, base).render("markdown")


def test_markdown_stays_under_the_comment_limit():
    big = "\n".join(f"line {i} " + "x" * 80 for i in range(2000)) + "\n"
    a = diff.Snapshot("dev", {}, {"gateway": {"/etc/big.conf": ""}})
    b = diff.Snapshot("dev", {}, {"gateway": {"/etc/big.conf": big}})
    text = diff.diff(a, b).render("markdown")
    assert len(text) < 65536 and "diff too long for a comment" in text


def test_cli_diff_of_two_plan_directories(tmp_path, base, probe):
    plan, _ = probe
    shipped_plan("dev").write(tmp_path / "base")
    plan.write(tmp_path / "new")
    done = subprocess.run([sys.executable, "-m", "phoenix.cli", "diff", str(tmp_path / "base"), str(tmp_path / "new")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    # The directories give the same diff as the plans in memory.
    assert done.stdout == diff.diff(base, probe[1]).render()
    assert done.stdout.startswith("Phoenix plan diff (dev): ") and "serviceUrls" in done.stdout
    (tmp_path / "empty").mkdir()
    for argv, needle in (([str(tmp_path / "base"), str(tmp_path / "nope")], "NEW: no such directory"),
                         ([str(tmp_path / "empty"), str(tmp_path / "new")], "not a Phoenix plan")):
        done = subprocess.run([sys.executable, "-m", "phoenix.cli", "diff", *argv], cwd=ROOT,
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 2 and needle in done.stderr and "Traceback" not in done.stderr


def test_plan_against_a_git_ref_diffs_the_working_tree_from_it(tmp_path, base):
    """In a scratch clone: commit the project, add the probe service, `plan --against HEAD`."""
    import shutil
    repo = tmp_path / "repo"
    shutil.copytree(ROOT, repo, ignore=shutil.ignore_patterns(".venv", ".git", "build", "__pycache__",
                                                              ".pytest_cache", "*.egg-info"))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "commit.gpgsign=false"]
    for argv in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "base"]):
        subprocess.run([*git, *argv], cwd=repo, check=True, capture_output=True)
    import yaml
    catalog = repo / "configs" / "catalog" / "dev.yaml"
    doc = yaml.safe_load(catalog.read_text())
    raw = expand_catalog(stack_config("dev").phoenix(), ROOT)
    add_probe(raw)
    doc["services"].append(raw["services"][-1])
    catalog.write_text(yaml.safe_dump(doc, sort_keys=False))
    env = {"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "phoenix.cli", "plan", "--stack", "dev", "--out",
                           str(tmp_path / "out"),
                           "--against", "HEAD", "--format", "markdown"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    # Exactly the diff from the committed stack to the working tree's.
    assert done.stdout == diff.diff(base, diff.load(tmp_path / "out")).render("markdown")
    assert "0 to replace" in done.stdout and "`serviceUrls`" in done.stdout
    # The temporary worktree is gone again.
    listed = subprocess.run(["git", "worktree", "list"], cwd=repo, capture_output=True, text=True, check=False).stdout
    assert len(listed.strip().splitlines()) == 1
    bad = subprocess.run([sys.executable, "-m", "phoenix.cli", "plan", "--stack", "dev", "--out", str(tmp_path / "o2"),
                          "--against", "no-such-branch"], cwd=repo, env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert bad.returncode == 2 and "--against" in bad.stderr and "Traceback" not in bad.stderr


def test_plan_json_written_by_plan_is_what_diff_reads(tmp_path):
    shipped_plan("dev").write(tmp_path / "p")
    doc = json.loads((tmp_path / "p" / "plan.json").read_text())
    loaded = diff.load(tmp_path / "p")
    assert len(loaded.resources) == len(doc["resources"])
    assert set(loaded.files) == {g.name for g in shipped_plan("dev").topo.lab.guests}
