"""The one error type for bad input: every problem is one line naming the key path."""

from __future__ import annotations


class ConfigError(Exception):
    """Bad stack configuration, found before any resource exists.

    ``problems`` holds one line per problem, each ``<key path>: <what is wrong>``.
    """

    def __init__(self, problems: list[str]):
        self.problems = sorted(dict.fromkeys(problems))
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:  # one line per problem, never a traceback
        return "\n".join(self.problems)


def problem(path: str, message: str) -> str:
    return f"{path}: {message}"


class Failed(Exception):
    """The command could not do its job (not the input's fault): one line, exit 1."""
