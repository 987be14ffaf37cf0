"""The benchmarks' generated stacks are stacks a user could plan: the model accepts them as it
accepts any stack file (a rule added to the model must not leave bench/plan_bench.py and
bench/blast_radius.py measuring nothing)."""

from __future__ import annotations

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT))

from bench.large_stack import large_stack, sized_stack, write_stack_file
from phoenix.loader import load_stack
from phoenix.stackfile import read_stack_file


def test_the_generated_large_stack_is_valid_and_has_its_declared_shape(tmp_path):
    stack = read_stack_file(write_stack_file(large_stack(), tmp_path))
    lab = load_stack(stack).lab        # what `phoenix plan --config-file` loads: refused stacks raise
    assert (len(lab.role("gpu")), len(lab.role("agent")), len(lab.services)) == (40, 30, 300)
    assert len(lab.proxmox.nodes) == 4


def test_a_scaled_stack_grows_with_the_size_asked_for():
    small, big = (sized_stack(n).phoenix() for n in (1000, 4000))
    assert len(big["guests"]) > 3 * len(small["guests"])
    assert len(big["services"]) > 3 * len(small["services"])
