#!/bin/bash
# phoenix-apply: install a bundle of config files transactionally.
#
# Reads a bundle on stdin: a base64 uncompressed ustar archive of files (paths relative
# to /, with owner and mode; see phoenix/bundle.py),
# backs up the files it replaces, swaps each one in by rename, runs the service's own
# checker, reloads, runs a health check, and on any failure restores the previous files
# (and reloads them) and exits non-zero with the checker's message. The running service
# keeps its old config until a checked new one is in place.
#
# A run that changes nothing (every file already in place, byte for byte with its mode and
# owner, and these files with these hooks the last ones applied in full) runs only the check
# (a step's own idempotent action or validation) and reports "unchanged": no reload, so a
# re-run never restarts a service for nothing. A run cut short after the swap left no record
# of a full apply, so its re-run reloads.
#
# Cut short, it leaves the previous files serving and on disk. Before the swap it writes a
# journal ($PHOENIX_STATE/NAME/journal: the backup, the file lists, the reload hook and how far
# it got); only a proven apply (health passed) removes it. Whatever ends the run first puts the
# previous files back, and reloads them if the new ones may have been loaded:
#   * SIGHUP (a dropped SSH session), SIGTERM, SIGINT: the signal trap;
#   * SIGKILL: a guard process in a session of its own, which outlives this one
#     (`phoenix-apply NAME --recover`);
#   * a power loss: the next run of the same step, and at boot `phoenix-apply --recover-all`
#     (phoenix-apply-recover.service, before the network and so before the services start).
#
# usage: phoenix-apply NAME [--check CMD] [--reload CMD] [--health CMD] [--root DIR]
#        phoenix-apply NAME --recover | phoenix-apply --recover-all
# PHOENIX_APPLY_TRACE=FIFO: report each phase on FIFO and wait on FIFO.go (tests use it to
# interrupt an apply at an exact point).
set -euo pipefail

usage="usage: phoenix-apply NAME [--check CMD] [--reload CMD] [--health CMD] [--root DIR] | NAME --recover | --recover-all"
base=${PHOENIX_STATE:-/var/lib/phoenix}
self=$(readlink -f "$0")

# -- putting previous files back -------------------------------------------------------------
restore_files() {  # $1: a journal; puts its backup back over its files, removes the files it created
  local j=$1 root rel target
  root=$(cat "$j/root")
  while IFS= read -r rel; do
    target="$root/${rel#./}"
    if [ -e "$j/backup/$rel" ] || [ -L "$j/backup/$rel" ]; then
      cp -a "$j/backup/$rel" "$target.phoenix-restore"
      mv -f "$target.phoenix-restore" "$target"
    fi
  done < "$j/incoming"
  while IFS= read -r rel; do rm -f "$root/${rel#./}"; done < "$j/created"
}

loaded() {  # $1: a journal; were its new files (maybe) loaded by the service?
  case "$(cat "$1/phase" 2>/dev/null)" in reloading|reloaded|healthy) return 0 ;; esac
  return 1
}

if [ "${1:-}" = "--recover-all" ]; then
  # At boot, before the services start: files only (nothing runs yet to reload).
  for j in "$base"/*/journal; do
    [ -d "$j" ] || continue
    (
      exec 9>"${j%/journal}/.lock"
      flock 9
      if [ -d "$j" ]; then
        restore_files "$j"
        rm -rf "$j"
        echo "phoenix-apply: restored the previous files of ${j%/journal} (an apply cut short)"
      fi
    )
  done
  exit 0
fi

name=${1:?$usage}
shift
check="" reload="" health="" root="/" recover=0
while [ $# -gt 0 ]; do
  case "$1" in
    --check) check=$2; shift 2 ;;
    --reload) reload=$2; shift 2 ;;
    --health) health=$2; shift 2 ;;
    --root) root=$2; shift 2 ;;
    --recover) recover=1; shift ;;
    *) echo "phoenix-apply: unknown option $1" >&2; exit 2 ;;
  esac
done

state=$base/$name
journal=$state/journal
mkdir -p "$state"
exec 9>"$state/.lock"
flock 9

outcome="previous files restored"
run() {  # run a hook, keeping its output for the error message
  local what=$1 cmd=$2
  [ -n "$cmd" ] || return 0
  if ! out=$(bash -c "$cmd" 2>&1); then
    echo "phoenix-apply $name: $what failed; $outcome" >&2
    printf '%s\n' "$out" >&2
    return 1
  fi
}

restore_previous() {  # the journal's previous files back, reloaded if the new ones may have been loaded
  restore_files "$journal"
  if loaded "$journal"; then
    run "reload of the previous files" "$(cat "$journal/reload")" || true
  fi
}
rollback() {
  [ -d "$journal" ] || return 0
  restore_previous
  rm -rf "$journal"
}

if [ "$recover" -eq 1 ]; then
  if [ -d "$journal" ]; then
    {
      restore_previous
      echo "$(date -u +%FT%TZ) phoenix-apply $name: an apply was cut short; previous files restored"
    } >>"$state/recovered.log" 2>&1
    rm -rf "$journal"
  fi
  exit 0
fi

if [ -d "$journal" ]; then
  echo "phoenix-apply $name: an earlier apply was cut short ($(cat "$journal/phase" 2>/dev/null)); restoring its previous files first" >&2
  rollback
fi

stage=$(mktemp -d "$state/stage.XXXXXX")
rm -rf "$journal.new"
trap 'rm -rf "$stage" "$journal.new"' EXIT

base64 -d | tar -x -C "$stage" --same-owner --same-permissions --no-overwrite-dir
(cd "$stage" && find . -type f -o -type l | sort) > "$state/incoming"

# What this run applies: the files (paths, modes, owners, contents) and the hooks.
fingerprint=$( (cd "$stage" && find . \( -type f -o -type l \) -printf '%p %m %u %g %l\n' | sort \
  && find . -type f -print0 | sort -z | xargs -0 -r sha256sum; printf '%s\0' "$check" "$reload" "$health") \
  | sha256sum | cut -d' ' -f1)
same() {  # staged file, target: same type, mode, owner and bytes
  [ "$(stat -c '%F %a %U %G' "$1")" = "$(stat -c '%F %a %U %G' "$2")" ] && cmp -s "$1" "$2"
}

# Back up what will be replaced (into the journal-to-be); remember what is new so a rollback
# removes it.
mkdir -p "$journal.new/backup"
cp "$state/incoming" "$journal.new/incoming"
: > "$journal.new/created"
unchanged=1
while IFS= read -r rel; do
  target="$root/${rel#./}"
  if [ -e "$target" ] || [ -L "$target" ]; then
    mkdir -p "$journal.new/backup/$(dirname "$rel")"
    cp -a "$target" "$journal.new/backup/$rel"
    same "$stage/$rel" "$target" || unchanged=0
  else
    echo "$rel" >> "$journal.new/created"
    unchanged=0
  fi
done < "$state/incoming"

if [ "$unchanged" -eq 1 ] && [ "$(cat "$state/applied" 2>/dev/null)" = "$fingerprint" ]; then
  outcome="no file was changed"
  run check "$check" || exit 1
  echo "phoenix-apply $name: unchanged ($(wc -l < "$state/incoming") files); not reloaded"
  exit 0
fi
rm -f "$state/applied"

phase() {  # how far the apply got (the journal), reported to a watching test
  echo "$1" > "$journal/phase.new"
  mv -f "$journal/phase.new" "$journal/phase"
  if [ -n "${PHOENIX_APPLY_TRACE:-}" ]; then
    echo "$1" > "$PHOENIX_APPLY_TRACE"
    read -r _ < "$PHOENIX_APPLY_TRACE.go"
  fi
}

interrupted() {  # a signal: put the previous files back, then go
  trap '' PIPE HUP TERM INT         # a dropped session's pipes must not stop the restore
  rollback >/dev/null 2>&1 || true
  { echo "phoenix-apply $name: interrupted by SIG$1; previous files restored"; } >&2 2>/dev/null || true
  exit 1
}

# The journal: from here until the new files are proven, whatever ends this run restores them.
printf '%s' "$reload" > "$journal.new/reload"
printf '%s' "$root" > "$journal.new/root"
echo staged > "$journal.new/phase"
mv "$journal.new" "$journal"
trap 'interrupted HUP' HUP
trap 'interrupted TERM' TERM
trap 'interrupted INT' INT
trap 'interrupted PIPE' PIPE       # the session's output is gone (a dropped connection)
# The guard: in a session of its own (a dropped SSH session's SIGHUP, or a kill of this whole
# process group, does not reach it), without this run's lock or output; if this run dies
# (SIGKILL) with the journal still there, it restores the previous files.
# shellcheck disable=SC2016  # the guard's script expands its own arguments
setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 0.2; done; [ ! -d "$2" ] || exec bash "$3" "$4" --recover' \
  phoenix-apply-guard "$$" "$journal" "$self" "$name" </dev/null >/dev/null 2>&1 9>&- &

# Swap each file in by rename, so a reader sees the old file or the new one, never half.
while IFS= read -r rel; do
  target="$root/${rel#./}"
  mkdir -p "$(dirname "$target")"
  cp -a "$stage/$rel" "$target.phoenix-new"
  mv -f "$target.phoenix-new" "$target"
done < "$state/incoming"
phase swapped

if ! run check "$check"; then
  rollback
  exit 1
fi
phase checked
echo reloading > "$journal/phase"
if ! run reload "$reload"; then
  rollback
  exit 1
fi
phase reloaded
if ! run health "$health"; then
  rollback
  exit 1
fi
phase healthy
# Proven: the new files stay.
echo "$fingerprint" > "$state/applied"
rm -rf "$journal"
trap - HUP TERM INT PIPE
echo "phoenix-apply $name: $(wc -l < "$state/incoming") files applied"
