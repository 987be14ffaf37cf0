"""phoenix.render.yaml_block writes what PyYAML writes, byte for byte, and does it itself for the
pushed configurations (the reason it exists: the large lab's Traefik file)."""

from __future__ import annotations

import random
import sys

import pytest
import yaml

from conftest import ROOT, SHIPPED_STACKS, stack_config
from phoenix.loader import load_stack
from phoenix.render import yaml_block
from phoenix.render.stacks import _Dumper as ComposeDumper

C_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

#: strings at every edge of PyYAML's choice between plain and quoted, and of its folding
TRICKY = ["a", "web", "Host(`x.lab`)", "https://10.0.0.1:443", "yes", "No", "on", "OFF", "true", "null", "~", "",
          " lead", "trail ", "a: b", "a:b", "a #b", "a#b", "#x", "-", "- a", "-a", "--- x", "...", "..x", "443",
          "1.5", "0x1F", "1e3", "2001-12-14", "=", "<<", "it's", "'q'", '"q"', "x" * 130, "word " * 30, "?x",
          "? x", ":x", ": x", "x:", "a,b", "[a]", "{a}", "&a", "*a", "!a", "|a", ">a", "%a", "@a", "`a`",
          "a\tb", "é", "a\nb", "line\n", "\\", "a  b", "/path/to", "10s", "PathPrefix(`/v1`) && Host(`a`)",
          "True", ".inf", "-.5", "+1", "0o17", "0b101", "1_000", "12:30:00", "a ? b", "?", ":", "x" * 101]
SCALARS = [*TRICKY, 1, 0, -3, True, False, None, 1.5, 10**20, {}, []]


def random_doc(rng: random.Random):
    def value(depth: int):
        roll = rng.random()
        if depth > 3 or roll < 0.5:
            return rng.choice(SCALARS)
        if roll < 0.75:
            return {rng.choice([*TRICKY, 7]): value(depth + 1) for _ in range(rng.randint(1, 4))}
        return [value(depth + 1) for _ in range(rng.randint(1, 4))]
    if rng.random() < 0.05:
        shared = {"s": "x"}
        return {"a": shared, "b": [shared]}                  # PyYAML anchors it: &id001
    return {rng.choice(TRICKY): value(0) for _ in range(rng.randint(1, 4))} if rng.random() < 0.9 else [value(1)]


@pytest.mark.parametrize("dumper", [C_DUMPER, yaml.SafeDumper, ComposeDumper], ids=["libyaml", "pyyaml", "compose"])
def test_random_documents_come_out_as_pyyaml_writes_them(dumper):
    rng = random.Random(20261127)
    fast = tried = 0
    for _ in range(1200):
        doc = random_doc(rng)
        for width in (80, 120, 1000):
            try:
                want = yaml.dump(doc, Dumper=dumper, sort_keys=False, default_flow_style=False, width=width)
            except yaml.YAMLError:
                continue       # what PyYAML cannot write (an empty key as a simple key, say)
            assert yaml_block.dump(doc, width, dumper) == want, repr(doc)
            tried += 1
            try:
                yaml_block._Writer(width).document(doc)
                fast += 1
            except yaml_block._Unsupported:
                pass
    # Floats, non-ASCII and multi-line strings go to PyYAML; the rest must not.
    assert fast > tried // 4, "the fast path should take a good share of these documents"


def test_what_only_pyyaml_writes_goes_to_pyyaml():
    shared = ["x"]
    for doc in ({"a": shared, "b": shared}, {"f": 1.5}, {"s": "é"}, {"m": "two\nlines"}, {1: "int key"}, {}):
        with pytest.raises(yaml_block._Unsupported):
            yaml_block._Writer(80).document(doc)
        assert yaml_block.dump(doc) == yaml.dump(doc, Dumper=C_DUMPER, sort_keys=False, default_flow_style=False)
    assert "&id001" in yaml_block.dump({"a": shared, "b": shared})


@pytest.mark.parametrize("name", SHIPPED_STACKS)
def test_the_pushed_configurations_take_the_fast_path_and_match_pyyaml(name):
    artifacts = load_stack(stack_config(name)).artifacts
    for doc in (artifacts.mesh_static, artifacts.mesh_dynamic):
        text = yaml_block._Writer(120).document(doc)          # no fallback: the speed is real
        assert text == yaml.dump(doc, Dumper=C_DUMPER, sort_keys=False, default_flow_style=False, width=120)
        assert yaml.safe_load(text) == doc


def test_the_large_labs_traefik_file_takes_the_fast_path():
    sys.path.insert(0, str(ROOT))
    from bench.large_stack import sized_stack
    doc = load_stack(sized_stack(1000)).artifacts.mesh_dynamic
    text = yaml_block._Writer(120).document(doc)
    assert len(text) > 100_000
    assert text == yaml.dump(doc, Dumper=C_DUMPER, sort_keys=False, default_flow_style=False, width=120)
