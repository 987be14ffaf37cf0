"""The exit codes of every ``phoenix`` command, in one table, and the one way a command ends.

README.md prints this table and .github/workflows/deploy.yml branches on it; tests check both
against ``TABLE``. A command returns an ``Exit`` (or raises ``ConfigError``/``Failed``, which
``run`` turns into one ``error:`` line per problem and the matching code, never a traceback).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from enum import IntEnum

from phoenix.errors import ConfigError, Failed


class Exit(IntEnum):
    OK = 0
    FAILED = 1
    BAD_INPUT = 2
    DRIFT = 3


#: what each code means, as README.md shows it.
TABLE: dict[Exit, str] = {
    Exit.OK: "done; for `drift`: the lab matches the program; for `verify`: every check holds",
    Exit.FAILED: "the command could not do its job (a check failed, a tool such as `pulumi`, `git` or "
                 "Graphviz is missing, `pulumi` itself failed)",
    Exit.BAD_INPUT: "bad input, refused before anything is touched (one `error:` line per problem, "
                    "naming the key or flag)",
    Exit.DRIFT: "`drift` only: the lab differs from what the program wants (`phoenix up` converges it)",
}


def run(command: Callable[[], int]) -> int:
    """Run one command: its own code, or the table's code for what it raised."""
    try:
        return int(command())
    except ConfigError as err:
        for line in err.problems:
            print(f"error: {line}", file=sys.stderr)
        return Exit.BAD_INPUT
    except Failed as err:
        print(f"error: {err}", file=sys.stderr)
        return Exit.FAILED
    except KeyboardInterrupt:
        return Exit.FAILED
