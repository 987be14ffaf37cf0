#!/bin/bash
# The test command: the whole pytest process tree runs inside an isolated network namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PY:-.venv/bin/python}
exec bash scripts/in-netns.sh "$py" -m pytest -q "$@"
