#!/bin/bash
# phoenix-apply: install a bundle of config files transactionally.
#
# Reads a base64 gzip tar of files (paths relative to /, with owner and mode) on stdin,
# backs up the files it replaces, swaps each one in by rename, runs the service's own
# checker, reloads, runs a health check, and on any failure restores the previous files
# (and reloads them) and exits non-zero with the checker's message. The running service
# keeps its old config until a checked new one is in place.
#
# usage: phoenix-apply NAME [--check CMD] [--reload CMD] [--health CMD] [--root DIR]
set -euo pipefail

name=${1:?usage: phoenix-apply NAME [--check CMD] [--reload CMD] [--health CMD] [--root DIR]}
shift
check="" reload="" health="" root="/"
while [ $# -gt 0 ]; do
  case "$1" in
    --check) check=$2; shift 2 ;;
    --reload) reload=$2; shift 2 ;;
    --health) health=$2; shift 2 ;;
    --root) root=$2; shift 2 ;;
    *) echo "phoenix-apply: unknown option $1" >&2; exit 2 ;;
  esac
done

state=${PHOENIX_STATE:-/var/lib/phoenix}/$name
mkdir -p "$state"
exec 9>"$state/.lock"
flock 9

stage=$(mktemp -d "$state/stage.XXXXXX")
backup=$(mktemp -d "$state/backup.XXXXXX")
trap 'rm -rf "$stage" "$backup"' EXIT

base64 -d | tar -xz -C "$stage" --same-owner --same-permissions --no-overwrite-dir
(cd "$stage" && find . -type f -o -type l | sort) > "$state/incoming"

# Back up what will be replaced; remember what is new so a rollback removes it.
: > "$state/created"
while IFS= read -r rel; do
  target="$root/${rel#./}"
  if [ -e "$target" ] || [ -L "$target" ]; then
    mkdir -p "$backup/$(dirname "$rel")"
    cp -a "$target" "$backup/$rel"
  else
    echo "$rel" >> "$state/created"
  fi
done < "$state/incoming"

restore() {
  while IFS= read -r rel; do
    target="$root/${rel#./}"
    if [ -e "$backup/$rel" ] || [ -L "$backup/$rel" ]; then
      cp -a "$backup/$rel" "$target.phoenix-restore"
      mv -f "$target.phoenix-restore" "$target"
    fi
  done < "$state/incoming"
  while IFS= read -r rel; do rm -f "$root/${rel#./}"; done < "$state/created"
}

# Swap each file in by rename, so a reader sees the old file or the new one, never half.
while IFS= read -r rel; do
  target="$root/${rel#./}"
  mkdir -p "$(dirname "$target")"
  cp -a "$stage/$rel" "$target.phoenix-new"
  mv -f "$target.phoenix-new" "$target"
done < "$state/incoming"

run() {  # run a hook, keeping its output for the error message
  local what=$1 cmd=$2
  [ -n "$cmd" ] || return 0
  if ! out=$(bash -c "$cmd" 2>&1); then
    echo "phoenix-apply $name: $what failed; previous files restored" >&2
    printf '%s\n' "$out" >&2
    return 1
  fi
}

if ! run check "$check"; then
  restore
  exit 1
fi
if ! run reload "$reload" || ! run health "$health"; then
  restore
  run "reload of the previous files" "$reload" || true
  exit 1
fi
echo "phoenix-apply $name: $(wc -l < "$state/incoming") files applied"
