#!/usr/bin/env bash
# Makes the outside load generator and the reference proxy of `make bench`'s router rows available:
# Debian's `wrk` (/usr/bin/wrk) and `nginx` (/usr/sbin/nginx), from Debian's package mirrors only.
# Safe to run again.
#   exit 0  both binaries are present (installed now or before)
#   exit 3  they are missing and cannot be installed here (not root, or no apt-get): the rows are skipped
#   exit 1  apt-get ran and failed
set -euo pipefail

say() { printf '[ensure_bench_tools] %s\n' "$*" >&2; }
have() { [ -x /usr/bin/wrk ] && [ -x /usr/sbin/nginx ]; }

if have; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  say "wrk and nginx are missing and this user cannot install them: run as root \`apt-get install wrk nginx-light\`" \
      "(or nginx)"
  exit 3
fi
say "installing wrk and nginx (Debian packages)"
export DEBIAN_FRONTEND=noninteractive
# The package's own service must not start (nor hold port 80): the bench runs its own nginx on a free port.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
fi
trap '[ "$made_policy" = 1 ] && rm -f "$policy"' EXIT
if ! apt-get install -y -qq --no-install-recommends wrk nginx >/dev/null 2>&1; then
  apt-get update -qq >/dev/null 2>&1 || true
  apt-get install -y -qq --no-install-recommends wrk nginx >/dev/null || {
    say "apt-get install wrk nginx failed"
    exit 1
  }
fi
have || { say "installed, yet /usr/bin/wrk or /usr/sbin/nginx is missing"; exit 1; }
say "ready: $(/usr/sbin/nginx -v 2>&1), wrk $(/usr/bin/wrk --version 2>&1 | head -1 | awk '{print $2}')"
