#!/bin/bash
# Run a command in a fresh network namespace that has only loopback (and a private mount
# namespace, so tests can lay generated files over guest paths like /etc/nginx).
# Nothing started inside can send a packet off this machine.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
  echo "in-netns: not root, cannot create a network namespace; running without servers" >&2
  exec env PHOENIX_NO_NETNS=1 "$@"
fi
exec unshare --net --mount --fork --propagation private -- bash -c 'ip link set lo up && exec "$@"' in-netns "$@"
