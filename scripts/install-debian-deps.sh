#!/bin/bash
# Debian packages the tests run for real: nginx, BIND, Pebble, certbot, shellcheck, cloud-init,
# a load generator, Go with smallstep's sources to build a real step-ca (tests/tools.py), nftables
# (the end-to-end lab's NAT of the public address), and what the plan's install steps ask of a
# guest (dnsutils, kmod, xz-utils: the lab's guests see this machine's packages). Installed only
# when run as root; services are not started by the packages (the tests start what they need
# inside an isolated network namespace).
set -euo pipefail
packages=(nginx libnginx-mod-stream bind9 bind9-utils bind9-dnsutils pebble certbot python3-certbot-dns-rfc2136 shellcheck cloud-init wrk nghttp2-client
          openssl curl iproute2 nftables util-linux jq docker-compose graphviz dnsutils kmod xz-utils
          golang-go golang-github-smallstep-certificates-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "install-debian-deps: not root; missing Debian packages: ${missing[*]} (tests that need them say so)" >&2
  exit 0
fi
# Keep package scripts from starting nginx or named in the machine's own namespace.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 755 "$policy"; own_policy=1
fi
trap '[ "$own_policy" -eq 1 ] && rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-debian-deps: installed ${missing[*]}"
