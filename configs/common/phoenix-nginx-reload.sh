#!/bin/bash
# phoenix-nginx-reload [SECONDS]: reload nginx and return only once its new configuration is
# the one serving; fail otherwise, so phoenix-apply (or certbot's deploy hook) restores the
# previous files.
#
# `nginx -s reload` (what `systemctl reload nginx` runs) only signals the master and returns at
# once. The master then reads its configuration again. When it can load it (the files parse,
# every listen address binds, every certificate reads), it starts new workers and tells the old
# ones to finish their requests and exit; the old ones close their listening sockets at once,
# so new connections reach only the new configuration. When it cannot (a port another process
# holds, say: `nginx -t` does not bind, so it passes), it logs an [emerg] line and keeps the old
# workers serving the old configuration. A health check right after the reload therefore
# judges the old configuration.
#
# This waits until a worker that was not there before the reload exists. It fails when the
# error log shows an [emerg] since the reload and then stays quiet for 1.5 s with no new worker
# (the master is done: it retries a bind five times, half a second apart, before "still could
# not bind()", and a port freed meanwhile still loads the new configuration), and when neither
# happens within SECONDS (default 30). Then it waits a little (up to 5 s) for the old workers to finish; one
# still serving a long request (a stream, a websocket) is left to it: it no longer accepts.
# nginx not running (a fresh guest, a crash): it is started, and waited for the same way.
set -euo pipefail
limit=${1:-30}
conf=${PHOENIX_NGINX_CONF:-/etc/nginx/nginx.conf}

directive() {  # the first value of a directive in nginx.conf (pid, error_log are top-level)
  sed -n "s/^[[:space:]]*$1[[:space:]]\{1,\}\([^;[:space:]]*\).*;.*/\1/p" "$conf" | head -n1
}
pidfile=$(directive pid)
pidfile=${pidfile:-/run/nginx.pid}
errlog=$(directive error_log)
errlog=${errlog:-/var/log/nginx/error.log}

children() {  # the master's child processes (workers, cache manager), one pid a line, sorted
  local f
  for f in /proc/"$1"/task/*/children; do
    [ -r "$f" ] && tr ' ' '\n' < "$f"
  done | sed '/^$/d' | sort
}
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
size() { stat -c %s "$errlog" 2>/dev/null || echo 0; }
emerg_since() { tail -c +"$(($1 + 1))" "$errlog" 2>/dev/null | grep -m1 '\[emerg\]' || true; }

deadline=$((SECONDS + limit))
master=$(cat "$pidfile" 2>/dev/null || true)
if ! alive "$master"; then
  systemctl restart nginx
  until master=$(cat "$pidfile" 2>/dev/null) && alive "$master" && [ -n "$(children "$master")" ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "phoenix-nginx-reload: nginx did not start within ${limit}s" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "phoenix-nginx-reload: nginx started (master $master)"
  exit 0
fi

before=$(children "$master")
mark=$(size)
systemctl reload nginx
seen=$mark quiet=0
while :; do
  if ! alive "$master"; then
    echo "phoenix-nginx-reload: nginx's master ($master) exited during the reload" >&2
    exit 1
  fi
  now=$(children "$master")
  if [ -n "$(comm -13 <(printf '%s\n' "$before") <(printf '%s\n' "$now") | sed '/^$/d')" ]; then
    break
  fi
  current=$(size)
  if [ "$current" = "$seen" ]; then quiet=$((quiet + 1)); else seen=$current quiet=0; fi
  refused=$(emerg_since "$mark")
  if [ -n "$refused" ] && [ "$quiet" -ge 15 ]; then
    echo "phoenix-nginx-reload: the running nginx refused the new configuration and serves the old one: $refused" >&2
    exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "phoenix-nginx-reload: nginx loaded no new configuration within ${limit}s (no new worker; see $errlog)" >&2
    exit 1
  fi
  sleep 0.1
done
# Loaded. The old workers stop accepting at once; give them a moment to finish.
settle=$((SECONDS + 5))
while [ -n "$(comm -12 <(printf '%s\n' "$before") <(children "$master") | sed '/^$/d')" ] && [ "$SECONDS" -lt "$settle" ]; do
  sleep 0.1
done
echo "phoenix-nginx-reload: nginx serves the new configuration (master $master)"
