"""Images: every node gets the same bytes (HTTPS, a fixed URL, the publisher's checksum).

A template or cloud image is downloaded by each node that needs it. A "latest" URL gives nodes
that download it on different days different images; plain HTTP lets anything on the path
change it; without a checksum nothing notices either. The model refuses all three; the shipped
stacks carry a placeholder (the checksum cannot be known offline) that the plan shows as a
warning and a deployment refuses, like the release pins.
"""

from __future__ import annotations

import pytest

from conftest import edited, shipped_plan, stack_config
from phoenix.errors import ConfigError
from phoenix.loader import Mode, load_stack
from phoenix.model import parse_lab
from phoenix.model.lab import UNPINNED
from phoenix.model.readiness import deploy_readiness
from phoenix.plan import make_plan

DOWNLOAD = "proxmoxve:download/file:File"


def problems_of(stack) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_stack(stack)
    return info.value.problems


def set_image(key: str, **values):
    def edit(raw):
        raw["images"][key].update(values)
    return edit


@pytest.mark.parametrize("url, expected", [
    ("http://download.proxmox.com/images/system/debian-12-standard_12.7-1_amd64.tar.zst", "an https:// URL"),
    ("https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2",
     "names a moving release ('latest')"),
    ("https://example.org/debian-12-genericcloud-amd64-latest.qcow2", "names a moving release ('latest')"),
])
def test_an_image_url_must_be_https_and_fixed(url, expected):
    lines = problems_of(edited("dev", set_image("debian-12-cloud", url=url)))
    assert len(lines) == 1 and lines[0].startswith("phoenix:images.debian-12-cloud")
    assert expected in lines[0]


def test_an_image_without_a_checksum_is_refused_naming_the_key():
    def drop(raw):
        del raw["images"]["debian-12-lxc"]["checksum"]
    assert problems_of(edited("dev", drop)) == ["phoenix:images.debian-12-lxc.checksum: required key is missing"]


def test_a_checksum_must_fit_its_algorithm():
    lines = problems_of(edited("dev", set_image("debian-12-lxc", checksum="a" * 64, checksumAlgorithm="sha512")))
    assert len(lines) == 1 and "64 hex digits, but checksumAlgorithm sha512 makes 128" in lines[0]


def test_the_shipped_stacks_carry_only_dated_https_urls_and_the_marked_placeholder():
    for name in ("dev", "cluster"):
        lab = parse_lab(stack_config(name).phoenix())
        for image in lab.images.values():
            assert image.url.startswith("https://") and "latest" not in image.url
            assert image.checksum == UNPINNED       # replaced by the operator before a deployment
        assert {line.split(":")[1].split(".")[1] for line in deploy_readiness(lab)
                if line.startswith("phoenix:images.")} == set(lab.images)


def test_the_placeholder_is_a_plan_warning_and_refused_by_a_deployment():
    plan = shipped_plan("dev")
    warned = [w for w in plan.warnings if w.startswith("phoenix:images.")]
    assert len(warned) == 2 and all("a real deployment refuses to start without it" in w for w in warned)
    with pytest.raises(ConfigError) as info:
        load_stack(stack_config("dev"), Mode.DEPLOY)
    assert {p.split(":", 2)[1] for p in info.value.problems if p.startswith("phoenix:images.")} == {
        "images.debian-12-cloud.checksum", "images.debian-12-lxc.checksum"}


def test_a_pinned_checksum_reaches_every_download_and_the_placeholder_none():
    digest = "0123456789abcdef" * 8
    plan_pinned = make_plan(
        edited("dev", set_image("debian-12-cloud", checksum=digest)))
    downloads = {r.name: r for r in plan_pinned.run.by_type(DOWNLOAD)}
    assert downloads["image-debian-12-cloud-pve"].value("checksum") == digest
    assert downloads["image-debian-12-cloud-pve"].value("checksumAlgorithm") == "sha512"
    assert downloads["image-debian-12-lxc-pve"].value("checksum") is None     # planned only
    for r in downloads.values():
        assert r.value("url").startswith("https://")
        assert r.value("overwrite") is False         # a changed upstream size never replaces it
        assert r.delete_before_replace                # its identity is its file name on the node
