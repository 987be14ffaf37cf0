"""The ``phoenix`` command: offline plans and checks of a stack, and its deployment through Pulumi.

Every command takes the stack as ``--stack NAME`` (``Pulumi.<NAME>.yaml`` in this project, ``dev``
when not given) or ``--config-file PATH`` (any stack file; its catalog path is relative to it),
and ends with a code of ``phoenix.exits.TABLE``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from phoenix import collector
from phoenix.errors import ConfigError, Failed, problem
from phoenix.exits import Exit, run
from phoenix.stackfile import DEFAULT_STACK, PROJECT_ROOT, add_stack_arguments, read_stack_file, stack_file, stack_name
from phoenix.verify import add_verify_parser

__all__ = ["main", "parser", "Failed", "PROJECT_ROOT"]


def _stack(args):
    return read_stack_file(stack_file(args.stack, args.config_file), stack_name(args.stack, args.config_file))


def _load(args):
    """The stack and its one load (model, artifacts, audit), or ConfigError."""
    from phoenix.loader import load_stack
    stack = _stack(args)
    return stack, load_stack(stack)


def cmd_plan(args) -> int:
    from phoenix.loader import load_stack
    from phoenix.plan import plan_loaded
    from phoenix.plan.outdir import check
    stack = _stack(args)
    out = Path(args.out or f"build/{stack.name}")
    check(out)                  # before the work: a directory that is not a plan is refused
    if args.against:
        _check_ref(args.against)
    loaded = load_stack(stack)              # the one load: what is audited and printed is what is planned
    # files/ is written while the program runs, by a second process (phoenix.plan.stream).
    # The work starts with the engine's run (phoenix.collector.batch_gc): the imports and the
    # model above are start-up.
    plan = plan_loaded(stack, loaded, stream_to=out, with_secrets=args.with_secrets)
    written = plan.write(out, with_secrets=args.with_secrets)
    # With --against the diff is the output (a PR comment, say); the summary goes to stderr.
    say = (lambda line: print(line, file=sys.stderr)) if args.against else print
    say(plan.summary())
    for line in loaded.audit.lines:
        say(line)
    say(f"plan written to {out}/ (plan.json, files/, topology.mmd)")
    if args.with_secrets:
        say(f"warning: {out}/secrets/ and files/ hold secret material; do not share or commit them")
    from phoenix import diff
    # Hazards are errors (exit 2), after the plan and the diff are out for review.
    found = diff.static_hazards(written["resources"])
    if args.against:
        base = plan_at_ref(args.against, args)
        result = diff.diff(base, diff.load(out))
        print(result.render(args.format), end="")
        found += result.hazards
    if found:
        raise ConfigError([h.line() for h in found])
    return Exit.OK


def cmd_validate(args) -> int:
    stack, loaded = _load(args)
    for line in loaded.audit.lines:
        print(line)
    lab = loaded.lab
    print(f"stack {stack.name!r} is valid: {len(lab.guests)} guests, {len(lab.services)} services")
    return Exit.OK


# -- plan --against REF: the same stack at another commit, in a temporary worktree -------------
def _git(*argv: str, cwd: Path = PROJECT_ROOT, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["git", *argv], cwd=cwd, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise Failed(f"git {' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")
    return done


def _check_ref(ref: str) -> None:
    if shutil.which("git") is None:
        raise Failed("--against needs git, which is not installed")
    if _git("rev-parse", "--is-inside-work-tree", check=False).returncode != 0:
        raise Failed(f"--against needs a git checkout; {PROJECT_ROOT} is not one")
    if _git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False).returncode != 0:
        raise ConfigError([problem("--against", f"{ref!r} is not a commit, branch or tag of this repository")])


def plan_at_ref(ref: str, args):
    """Plan the stack as it is at ``ref`` (its code and its stack file) and load that plan."""
    from phoenix import diff
    top = Path(_git("rev-parse", "--show-toplevel").stdout.strip())
    subdir = PROJECT_ROOT.relative_to(top)
    scratch = Path(tempfile.mkdtemp(prefix="phoenix-against-"))
    tree = scratch / "tree"
    _git("worktree", "add", "--detach", "--quiet", str(tree), ref)
    try:
        project = tree / subdir
        if args.config_file:
            given = Path(args.config_file).resolve()
            inside = given.is_relative_to(PROJECT_ROOT)
            stack_args = ["--config-file", str(project / given.relative_to(PROJECT_ROOT) if inside else given)]
            path = Path(stack_args[1])
        else:
            name = args.stack or DEFAULT_STACK
            stack_args, path = ["--stack", name], project / f"Pulumi.{name}.yaml"
        if not path.exists():
            print(f"note: {path.name} does not exist at {ref}: every resource is new", file=sys.stderr)
            return diff.Snapshot(stack_name(args.stack, args.config_file), {}, {})
        out = scratch / "plan"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(project), *filter(None, [os.environ.get("PYTHONPATH")])])}
        # `-m phoenix.cli`, not `-m phoenix`: older commits have no phoenix/__main__.py.
        done = subprocess.run([sys.executable, "-m", "phoenix.cli", "plan", *stack_args, "--out", str(out)],
                              cwd=project, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            lines = (done.stderr.strip() or done.stdout.strip()).splitlines()
            raise Failed(f"planning {ref} failed (exit {done.returncode}): " + " | ".join(lines[-5:]))
        return diff.load(out)
    finally:
        _git("worktree", "remove", "--force", str(tree), check=False)
        _git("worktree", "prune", check=False)
        shutil.rmtree(scratch, ignore_errors=True)


def cmd_diff(args) -> int:
    from phoenix import diff
    problems = [problem(name, f"no such directory {path}") for name, path in (("BASE", args.base), ("NEW", args.new))
                if not Path(path).is_dir()]
    if problems:
        raise ConfigError(problems)
    result = diff.diff(diff.load(args.base), diff.load(args.new))
    text = result.render(args.format, files=not args.no_files)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text, end="")
    if result.hazards:
        raise ConfigError([h.line() for h in result.hazards])
    return Exit.OK


def cmd_graph(args) -> int:
    from phoenix.graph import GraphvizMissing, render
    if args.format == "png" and not args.out:
        raise ConfigError([problem("--out", "a PNG picture needs --out FILE")])
    stack, loaded = _load(args)
    try:
        data = render(loaded.topo, args.format)
    except GraphvizMissing as err:
        raise Failed(str(err)) from None
    if args.out:
        Path(args.out).write_bytes(data)
        print(f"{args.format} picture of stack {stack.name!r} written to {args.out}")
    else:
        sys.stdout.write(data.decode())
    return Exit.OK


def cmd_docs(args) -> int:
    from phoenix import docs
    path = Path(args.out) if args.out else docs.REFERENCE
    if args.check:
        if not docs.is_current(path):
            raise Failed(f"{path} is stale: regenerate it with `phoenix docs`")
        print(f"{path} is current")
        return Exit.OK
    docs.write(path)
    print(f"config reference written to {path}")
    return Exit.OK


# -- Automation API: preview, up, refresh, destroy, drift -----------------------------------------
def _secrets_from_env(pairs: list[str]) -> dict[str, str]:
    out, problems = {}, []
    for pair in pairs or []:
        key, sep, var = pair.partition("=")
        if not sep or not key or not var:
            problems.append(problem("--secret-env", f"{pair!r} is not KEY=ENVVAR"))
        elif not os.environ.get(var):
            problems.append(problem("--secret-env", f"environment variable {var} (for {key}) is not set"))
        else:
            out[key] = os.environ[var]
    if problems:
        raise ConfigError(problems)
    return out


def cmd_operation(args) -> int:
    from phoenix import automation
    op = args.command
    work_dir = Path(args.cwd) if args.cwd else PROJECT_ROOT
    args.stack = args.stack or DEFAULT_STACK
    if op in ("up", "destroy") and not args.yes:
        raise ConfigError([problem(op, f"`phoenix {op}` changes the lab: pass --yes "
                                   "(see what it would do with `phoenix preview` first)")])
    secrets = _secrets_from_env(args.secret_env)
    if op in ("preview", "up", "drift"):
        # Refuse a bad config here, with the key named, before the CLI is even started.
        args.config_file = str(work_dir / f"Pulumi.{args.stack}.yaml")
        _load(args)
    try:
        # The engine's own output streams as it comes: to stderr when stdout carries the JSON result.
        stream = None if args.quiet else (lambda line: print(line, file=sys.stderr)) if args.json else print
        # Only `up` may create the stack (its first deployment); a typo elsewhere is an error.
        stack = automation.PhoenixStack(args.stack, work_dir, on_output=stream, create=op == "up")
        if secrets:
            stack.set_config(secrets=secrets)
        result = stack.drift() if op == "drift" else (
            stack.up(reveal=args.reveal) if op == "up" else getattr(stack, op)())
    except automation.PulumiMissing as err:
        raise Failed(str(err)) from None
    except stack_errors() as err:
        raise Failed(f"pulumi {op} failed: {_last_lines(err)}") from None
    if args.json:
        print(json.dumps({"operation": result.operation, "stack": result.stack, "changes": dict(result.changes),
                          "steps": [s.__dict__ for s in result.steps], "outputs": dict(result.outputs),
                          "secretOutputs": sorted(result.secret_outputs)}, indent=2, default=str))
    else:
        print(result.summary())
        for step in result.steps:
            print(f"  {step.op:<10} {step.name} ({step.type})" + (f": {', '.join(step.diffs)}" if step.diffs else ""))
    if op == "drift" and result.has_changes:
        print(f"drift: stack {args.stack!r} differs from what the program wants "
              f"({len(result.steps)} resources); `phoenix up` converges it", file=sys.stderr)
        return Exit.DRIFT
    return Exit.OK


def cmd_state_export(args) -> int:
    """The stack's state, secrets encrypted, in a new 0600 file (phoenix.state_export)."""
    from phoenix import automation
    from phoenix.state_export import export
    out = Path(args.out)
    if out.exists() or out.is_symlink():
        raise ConfigError([problem("--out", f"{out} exists; an export never overwrites a file")])
    if not out.parent.is_dir():
        raise ConfigError([problem("--out", f"no such directory {out.parent}")])
    work_dir = Path(args.cwd) if args.cwd else PROJECT_ROOT
    try:
        stack = automation.PhoenixStack(args.stack or DEFAULT_STACK, work_dir)
        done = export(stack, out)
    except automation.PulumiMissing as err:
        raise Failed(str(err)) from None
    except stack_errors() as err:
        raise Failed(f"pulumi stack export failed: {_last_lines(err)}") from None
    print(f"state of stack {stack.name!r} written to {done.path} (mode 0600): {done.resources} resources, "
          f"{done.secrets} secrets, all encrypted by the stack's secrets provider ({done.provider})")
    if done.provider == "passphrase":
        print("restoring it needs this stack's passphrase (PULUMI_CONFIG_PASSPHRASE) and its Pulumi."
              f"{stack.name}.yaml (its encryptionsalt): keep the passphrase apart from this file")
    return Exit.OK


def stack_errors() -> tuple:
    from pulumi.automation import CommandError
    return (CommandError,)


def _last_lines(err: Exception, n: int = 3) -> str:
    text = (getattr(err, "stderr", "") or str(err)).strip().splitlines()
    return " | ".join(line.strip() for line in text[-n:]) or type(err).__name__


# -- the parser ---------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="phoenix", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stack_args = add_stack_arguments

    sp = sub.add_parser("plan", help="offline plan: evaluate the program under the mock runtime")
    stack_args(sp)
    sp.add_argument("--out", help="output directory (default build/<stack>)")
    sp.add_argument("--with-secrets", action="store_true",
                    help="also write generated key material (local experiments only)")
    sp.add_argument("--against", metavar="REF",
                    help="also plan git REF (in a temporary worktree) and print the diff from it")
    sp.add_argument("--format", choices=("plain", "markdown"), default="plain",
                    help="format of the --against diff (markdown: for a pull-request comment)")
    sp.set_defaults(func=cmd_plan)

    sp = sub.add_parser("validate", help="check the model and the route audit only")
    stack_args(sp)
    sp.set_defaults(func=cmd_validate)

    sp = sub.add_parser("diff", help="what changes between two offline plans (directories from `phoenix plan`)")
    sp.add_argument("base", metavar="BASE", help="plan directory of the current state")
    sp.add_argument("new", metavar="NEW", help="plan directory of the proposed change")
    sp.add_argument("--format", choices=("plain", "markdown"), default="plain")
    sp.add_argument("--no-files", action="store_true", help="leave out the pushed-file diffs")
    sp.add_argument("--out", help="write the diff to this file instead of stdout")
    sp.set_defaults(func=cmd_diff)

    sp = sub.add_parser("graph", help="the topology picture: tiers and flows")
    stack_args(sp)
    sp.add_argument("--format", choices=("mermaid", "dot", "svg", "png"), default="mermaid",
                    help="mermaid or dot text, or svg/png rendered by Graphviz")
    sp.add_argument("--out", help="write to this file (required for png)")
    sp.set_defaults(func=cmd_graph)

    sp = sub.add_parser("docs", help="regenerate docs/config-reference.md from the model's JSON Schema")
    sp.add_argument("--check", action="store_true", help="only check that the file is current (exit 1 if not)")
    sp.add_argument("--out", help="path of the reference (default docs/config-reference.md)")
    sp.set_defaults(func=cmd_docs)

    helps = {"preview": "pulumi preview of a stack (Automation API)",
             "up": "pulumi up of a stack (needs --yes)",
             "refresh": "pulumi refresh: read the lab's real state into the stack",
             "destroy": "pulumi destroy of a stack (needs --yes)",
             "drift": "does the lab differ from the program? (preview --refresh --expect-no-changes; "
                      f"exit {int(Exit.DRIFT)} on drift, {int(Exit.FAILED)} when it cannot tell)"}
    for name, text in helps.items():
        sp = sub.add_parser(name, help=text, description=text)
        sp.add_argument("--stack", "-s",
                        help=f"stack name (Pulumi.<stack>.yaml in the project; default {DEFAULT_STACK})")
        sp.add_argument("--cwd", help="the Pulumi project directory (default: this checkout)")
        sp.add_argument("--secret-env", action="append", metavar="KEY=ENVVAR",
                        help="set config secret KEY from environment variable ENVVAR first (repeatable)")
        sp.add_argument("--json", action="store_true", help="print the typed result as JSON")
        sp.add_argument("--quiet", "-q", action="store_true", help="do not stream the engine's output")
        if name in ("up", "destroy"):
            sp.add_argument("--yes", "-y", action="store_true", help="really do it")
        if name == "up":
            sp.add_argument("--reveal", action="store_true", help="show secret stack outputs in clear")
        sp.set_defaults(func=cmd_operation, config_file=None, yes=False, reveal=False)

    text = "export the stack's state (its generated keys and passwords stay encrypted) to a new 0600 file"
    sp = sub.add_parser("state-export", help=text, description=text)
    sp.add_argument("--stack", "-s", help=f"stack name (default {DEFAULT_STACK})")
    sp.add_argument("--cwd", help="the Pulumi project directory (default: this checkout)")
    sp.add_argument("--out", required=True, metavar="FILE", help="the file to create (never overwritten)")
    sp.set_defaults(func=cmd_state_export)

    add_verify_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.func is not cmd_plan:       # a plan's work starts with its engine run (cmd_plan)
        collector.work_starts()
    return run(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
