"""The ``phoenix`` command. Exit codes: 0 ok, 1 failed, 2 bad input (one line per problem)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from phoenix.errors import ConfigError, problem

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class Failed(Exception):
    """The command could not do its job (not the input's fault): one line, exit 1."""


def _stack_file(args) -> Path:
    if getattr(args, "config_file", None):
        return Path(args.config_file)
    return PROJECT_ROOT / f"Pulumi.{args.stack}.yaml"


def _stack_name(args) -> str:
    if args.stack:
        return args.stack
    return Path(args.config_file).name.removeprefix("Pulumi.").removesuffix(".yaml")


def _topology(args):
    from phoenix.audit import route_audit
    from phoenix.model import parse_lab
    from phoenix.stackfile import expand_catalog, read_stack_file
    from phoenix.topology import build
    stack = read_stack_file(_stack_file(args), _stack_name(args))
    topo = build(parse_lab(expand_catalog(stack.phoenix(), stack.root)))
    report = route_audit(topo)
    if report.problems:
        raise ConfigError(report.problems)
    return stack, topo, report


def cmd_plan(args) -> int:
    from phoenix.plan import make_plan
    from phoenix.stackfile import read_stack_file
    stack = read_stack_file(_stack_file(args), _stack_name(args))
    if args.against:
        _check_ref(args.against)
    plan = make_plan(stack)
    out = Path(args.out or f"build/{stack.name}")
    plan.write(out, with_secrets=args.with_secrets)
    # With --against the diff is the output (a PR comment, say); the summary goes to stderr.
    say = (lambda line: print(line, file=sys.stderr)) if args.against else print
    say(plan.summary())
    from phoenix.audit import route_audit
    for line in route_audit(plan.topo).lines:
        say(line)
    say(f"plan written to {out}/ (plan.json, files/, topology.mmd)")
    if args.with_secrets:
        say(f"warning: {out}/secrets/ and files/ hold secret material; do not share or commit them")
    if args.against:
        from phoenix import diff
        base = plan_at_ref(args.against, args)
        print(diff.diff(base, diff.load(out)).render(args.format), end="")
    return EXIT_OK


def cmd_validate(args) -> int:
    stack, topo, report = _topology(args)
    for line in report.lines:
        print(line)
    print(f"stack {stack.name!r} is valid: {len(topo.lab.guests)} guests, {len(topo.lab.services)} services")
    return EXIT_OK


# -- plan --against REF: the same stack at another commit, in a temporary worktree -------------
def _git(*argv: str, cwd: Path = PROJECT_ROOT, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["git", *argv], cwd=cwd, capture_output=True, text=True)
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
            stack_file = Path(stack_args[1])
        else:
            stack_args, stack_file = ["--stack", args.stack], project / f"Pulumi.{args.stack}.yaml"
        if not stack_file.exists():
            print(f"note: {stack_file.name} does not exist at {ref}: every resource is new", file=sys.stderr)
            return diff.Snapshot(_stack_name(args), {}, {})
        out = scratch / "plan"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(project), *filter(None, [os.environ.get("PYTHONPATH")])])}
        done = subprocess.run([sys.executable, "-m", "phoenix.cli", "plan", *stack_args, "--out", str(out)],
                              cwd=project, env=env, capture_output=True, text=True)
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
    return EXIT_OK


def cmd_graph(args) -> int:
    from phoenix.graph import GraphvizMissing, render
    if args.format == "png" and not args.out:
        raise ConfigError([problem("--out", "a PNG picture needs --out FILE")])
    _, topo, _ = _topology(args)
    try:
        data = render(topo, args.format)
    except GraphvizMissing as err:
        raise Failed(str(err)) from None
    if args.out:
        Path(args.out).write_bytes(data)
        print(f"{args.format} picture of stack {_stack_name(args)!r} written to {args.out}")
    else:
        sys.stdout.write(data.decode())
    return EXIT_OK


def cmd_docs(args) -> int:
    from phoenix import docs
    path = Path(args.out) if args.out else docs.REFERENCE
    if args.check:
        if not docs.is_current(path):
            raise Failed(f"{path} is stale: regenerate it with `phoenix docs`")
        print(f"{path} is current")
        return EXIT_OK
    docs.write(path)
    print(f"config reference written to {path}")
    return EXIT_OK


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
    if op in ("up", "destroy") and not args.yes:
        raise ConfigError([problem(op, f"`phoenix {op}` changes the lab: pass --yes "
                                   "(see what it would do with `phoenix preview` first)")])
    secrets = _secrets_from_env(args.secret_env)
    if op in ("preview", "up", "drift"):
        # Refuse a bad config here, with the key named, before the CLI is even started.
        args.config_file = str(work_dir / f"Pulumi.{args.stack}.yaml")
        _topology(args)
    try:
        # The engine's own output streams as it comes: to stderr when stdout carries the JSON result.
        stream = None if args.quiet else (lambda line: print(line, file=sys.stderr)) if args.json else print
        stack = automation.PhoenixStack(args.stack, work_dir, on_output=stream)
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
        return EXIT_FAILED
    return EXIT_OK


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

    def stack_args(sp):
        g = sp.add_mutually_exclusive_group(required=True)
        g.add_argument("--stack", "-s", help="stack name (reads Pulumi.<stack>.yaml)")
        g.add_argument("--config-file", help="path of any stack file")

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
             "drift": "does the lab differ from the program? (preview --refresh --expect-no-changes; exit 1 on drift)"}
    for name, text in helps.items():
        sp = sub.add_parser(name, help=text, description=text)
        sp.add_argument("--stack", "-s", required=True, help="stack name (Pulumi.<stack>.yaml in the project)")
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

    from phoenix.verify import add_verify_parser
    add_verify_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        for line in err.problems:
            print(f"error: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Failed as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
