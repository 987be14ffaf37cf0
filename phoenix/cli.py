"""The ``phoenix`` command. Exit codes: 0 ok, 1 failed, 2 bad input (one line per problem)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from phoenix.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _stack_file(args) -> Path:
    if getattr(args, "config_file", None):
        return Path(args.config_file)
    return PROJECT_ROOT / f"Pulumi.{args.stack}.yaml"


def _stack_name(args) -> str:
    if args.stack:
        return args.stack
    return Path(args.config_file).name.removeprefix("Pulumi.").removesuffix(".yaml")


def cmd_plan(args) -> int:
    from phoenix.plan import make_plan
    from phoenix.stackfile import read_stack_file
    stack = read_stack_file(_stack_file(args), _stack_name(args))
    plan = make_plan(stack)
    out = Path(args.out or f"build/{stack.name}")
    plan.write(out, with_secrets=args.with_secrets)
    print(plan.summary())
    from phoenix.audit import route_audit
    for line in route_audit(plan.topo).lines:
        print(line)
    print(f"plan written to {out}/ (plan.json, files/, topology.mmd)")
    if args.with_secrets:
        print(f"warning: {out}/secrets/ and files/ hold secret material; do not share or commit them")
    return EXIT_OK


def cmd_validate(args) -> int:
    from phoenix.audit import route_audit
    from phoenix.model import parse_lab
    from phoenix.stackfile import expand_catalog, read_stack_file
    from phoenix.topology import build
    stack = read_stack_file(_stack_file(args), _stack_name(args))
    topo = build(parse_lab(expand_catalog(stack.phoenix(), stack.root)))
    report = route_audit(topo)
    if report.problems:
        raise ConfigError(report.problems)
    for line in report.lines:
        print(line)
    print(f"stack {stack.name!r} is valid: {len(topo.lab.guests)} guests, {len(topo.lab.services)} services")
    return EXIT_OK


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
    sp.set_defaults(func=cmd_plan)

    sp = sub.add_parser("validate", help="check the model and the route audit only")
    stack_args(sp)
    sp.set_defaults(func=cmd_validate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        for line in err.problems:
            print(f"error: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
