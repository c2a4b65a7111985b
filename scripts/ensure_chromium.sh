#!/usr/bin/env bash
# Makes Debian's headless browser available for the dashboard's browser test: the `chromium` and
# `chromium-driver` packages (/usr/bin/chromium, /usr/bin/chromedriver). Nothing is downloaded at test
# time from anywhere but Debian's package mirrors; Playwright's or Selenium's own browser downloads are
# never used. Safe to run again.
#   exit 0  both binaries are present (installed now or before)
#   exit 3  they are missing and cannot be installed here (not root, or no apt-get): the test skips
#   exit 1  apt-get ran and failed
set -euo pipefail

say() { printf '[ensure_chromium] %s\n' "$*" >&2; }
have() { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }

if have; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  say "chromium and chromium-driver are missing and this user cannot install them: run as root" \
      "\`apt-get install chromium chromium-driver\`"
  exit 3
fi
say "installing chromium and chromium-driver (Debian packages)"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null 2>&1; then
  apt-get update -qq >/dev/null 2>&1 || true
  apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null || {
    say "apt-get install chromium chromium-driver failed"
    exit 1
  }
fi
have || { say "installed, yet /usr/bin/chromium or /usr/bin/chromedriver is missing"; exit 1; }
say "ready: $(/usr/bin/chromium --version 2>/dev/null || echo chromium)"
