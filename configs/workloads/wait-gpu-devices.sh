#!/bin/bash
# ExecStartPre of every GPU service: wait, for a bounded time, until the GPU device nodes
# exist and the driver answers, so a service never starts before its devices (trap 17).
# usage: wait-gpu-devices SECONDS DEVICE...
set -euo pipefail
limit=${1:?usage: wait-gpu-devices SECONDS DEVICE...}
shift
deadline=$((SECONDS + limit))
for dev in "$@"; do
  until [ -c "$dev" ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "wait-gpu-devices: $dev did not appear within ${limit}s" >&2
      exit 1
    fi
    sleep 1
  done
done
if ! out=$(nvidia-smi -L 2>&1); then
  echo "wait-gpu-devices: the devices are there but the driver does not answer: $out" >&2
  echo "(after a driver upgrade on the node, re-run the deploy so the container's driver matches)" >&2
  exit 1
fi
