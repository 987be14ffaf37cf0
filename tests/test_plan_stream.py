"""files/ written while the program runs (phoenix.plan.stream): the same bytes and modes as
writing it afterwards, nothing half-written left by a failed or refused plan, and a previous
plan untouched until the new one is complete."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import SHIPPED_STACKS, stack_config
from phoenix.bundle import GuestFile, pack
from phoenix.errors import ConfigError, Failed
from phoenix.loader import load_stack
from phoenix.plan import plan_loaded
from phoenix.plan.engine import Recorded
from phoenix.plan.outdir import MARKER, STAGING, check
from phoenix.plan.stream import FileStream
from phoenix.resource_types import COMMAND


def tree(root: Path) -> dict[str, tuple[int, bytes]]:
    """path -> (mode, bytes) of every file under ``root``."""
    return {str(p.relative_to(root)): (p.stat().st_mode & 0o7777, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", SHIPPED_STACKS)
@pytest.mark.parametrize("with_secrets", [False, True], ids=["redacted", "with-secrets"])
def test_streamed_files_are_the_files_a_plan_writes_afterwards(tmp_path, name, with_secrets):
    stack = stack_config(name)
    loaded = load_stack(stack)
    streamed = plan_loaded(stack, loaded, stream_to=tmp_path / "streamed", with_secrets=with_secrets)
    streamed.write(tmp_path / "streamed", with_secrets=with_secrets)
    afterwards = plan_loaded(stack, loaded)
    afterwards.write(tmp_path / "after", with_secrets=with_secrets)
    got, want = tree(tmp_path / "streamed" / "files"), tree(tmp_path / "after" / "files")
    assert len(want) > 100
    assert got == want
    assert {mode for mode, _ in got.values()} == ({0o600} if with_secrets else {0o644})
    assert not (tmp_path / "streamed" / STAGING).exists()


def previous_plan(out: Path) -> dict:
    plan_loaded(stack_config("dev"), load_stack(stack_config("dev"))).write(out)
    return tree(out)


def test_a_run_that_fails_leaves_the_previous_plan_as_it_was(tmp_path, monkeypatch):
    out = tmp_path / "out"
    before = previous_plan(out)
    import phoenix.program

    real = phoenix.program.deploy

    def half_then_fail(loaded):
        real(loaded)
        raise RuntimeError("the program failed half way")

    monkeypatch.setattr(phoenix.program, "deploy", half_then_fail)
    with pytest.raises(RuntimeError, match="half way"):
        plan_loaded(stack_config("dev"), load_stack(stack_config("dev")), stream_to=out)
    assert not (out / STAGING).exists()
    assert tree(out) == before


def test_a_refused_plan_removes_what_was_streamed_and_keeps_the_previous_plan(tmp_path, monkeypatch):
    out = tmp_path / "out"
    before = previous_plan(out)
    plan = plan_loaded(stack_config("dev"), load_stack(stack_config("dev")), stream_to=out)
    assert (out / STAGING).is_dir()

    def clash(*_args):
        raise ConfigError(["phoenix:dns:/etc/x: pushed by both step a and step b"])

    monkeypatch.setattr("phoenix.plan.writer.pushed_files", clash)
    with pytest.raises(ConfigError):
        plan.write(out)
    assert not (out / STAGING).exists()
    assert tree(out) == before


def test_a_plan_written_elsewhere_than_it_streamed_to_writes_its_files_there(tmp_path):
    plan = plan_loaded(stack_config("dev"), load_stack(stack_config("dev")), stream_to=tmp_path / "a")
    plan.write(tmp_path / "b")
    assert not (tmp_path / "a" / STAGING).exists()
    assert len(tree(tmp_path / "b" / "files")) > 100


def step(name: str, files: list[GuestFile], host: str = "10.0.0.5") -> Recorded:
    return Recorded(urn=f"urn:{name}", type=COMMAND, name=name, parent="", custom=True,
                    inputs={"stdin": pack(files), "connection": {"host": host}}, outputs={}, dependencies=[],
                    property_dependencies={}, secret_outputs=[], replace_on_changes=[], ignore_changes=[],
                    protect=False, provider="", delete_before_replace=False)


def secret(name: str, value: str) -> Recorded:
    return Recorded(urn=f"urn:{name}", type="random:index/randomPassword:RandomPassword", name=name, parent="",
                    custom=True, inputs={}, outputs={"result": value}, dependencies=[], property_dependencies={},
                    secret_outputs=["result"], replace_on_changes=[], ignore_changes=[], protect=False,
                    provider="", delete_before_replace=False)


def test_a_secret_recorded_after_the_file_that_holds_it_is_still_redacted(tmp_path):
    stream = FileStream(tmp_path / "out", "t", {"10.0.0.5": "web"}, {"phoenix:token": "config-secret-1"}, False)
    stream.feed(step("push", [GuestFile("/etc/app.conf", "token=config-secret-1\npassword=late-secret-value\n")]))
    stream.feed(secret("app-password", "late-secret-value"))
    stream.finish()
    text = (tmp_path / "out" / STAGING / "web" / "etc" / "app.conf").read_text()
    assert text == "token=<<secret:phoenix:token>>\npassword=<<secret:app-password.result>>\n"


def test_a_step_on_no_guest_or_without_a_bundle_writes_nothing(tmp_path):
    stream = FileStream(tmp_path / "out", "t", {"10.0.0.5": "web"}, {}, False)
    stream.feed(step("elsewhere", [GuestFile("/etc/a", "x")], host="192.0.2.1"))
    stream.feed(Recorded(urn="urn:plain", type=COMMAND, name="plain", parent="", custom=True,
                         inputs={"stdin": "not a bundle", "connection": {"host": "10.0.0.5"}}, outputs={},
                         dependencies=[], property_dependencies={}, secret_outputs=[], replace_on_changes=[],
                         ignore_changes=[], protect=False, provider="", delete_before_replace=False))
    stream.finish()
    assert tree(tmp_path / "out" / STAGING) == {}


def test_a_writer_that_fails_is_reported_and_leaves_nothing(tmp_path):
    stream = FileStream(tmp_path / "out", "t", {"10.0.0.5": "web"}, {}, False)
    stream.feed(step("one", [GuestFile("/etc/app", "a file")]))
    stream.feed(step("two", [GuestFile("/etc/app/inside", "needs /etc/app to be a folder")]))
    with pytest.raises(Failed, match="writing the plan's files/ failed: .*Error"):
        stream.finish()
    assert not (tmp_path / "out" / STAGING).exists()


def test_a_stream_refuses_a_directory_that_is_not_a_plan_and_touches_nothing(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="--out"):
        FileStream(tmp_path, "t", {}, {}, False)
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_what_an_interrupted_plan_left_is_a_plan_and_the_next_plan_clears_it(tmp_path):
    out = tmp_path / "out"
    (out / STAGING / "web").mkdir(parents=True)           # a plan killed while it ran
    (out / MARKER).write_text("a plan\n")
    check(out)                                             # still recognised: not refused
    plan_loaded(stack_config("dev"), load_stack(stack_config("dev")), stream_to=out).write(out)
    assert sorted(os.listdir(out)) == [MARKER, "files", "plan.json", "topology.mmd"]
