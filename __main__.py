"""Phoenix: the Pulumi program entry point (``pulumi up -s <stack>``).

The project directory is this file's: the stack's ``phoenix:catalog`` path is relative to it,
as it is to ``Pulumi.<stack>.yaml`` beside it.
"""

from pathlib import Path

from phoenix.program import main

main(Path(__file__).resolve().parent)
