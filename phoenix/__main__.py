"""The ``phoenix`` executable (``python -m phoenix`` too): ``phoenix.cli`` in a process of its own.

The process ends with its command, so it starts with the collector off and turns it on when the
command's work starts (``phoenix.collector``): its imports and the stack model are not walked by
collections that can free none of them.
"""

from __future__ import annotations

import sys

from phoenix import collector


def main() -> int:
    collector.start_up()
    from phoenix.cli import main as command
    return command()


if __name__ == "__main__":
    sys.exit(main())
