#!/usr/bin/env bash
# Makes a fresh machine ready: uv, the locked virtual environment, shellcheck, and a check that
# Google's emulators (gcloud + Java) are present. Safe to run again; it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[bootstrap] %s\n' "$*" >&2; }

if ! command -v uv >/dev/null 2>&1; then
  say "installing uv (from PyPI)"
  python3 -m pip install --quiet --user 'uv==0.13.9' 2>/dev/null || python3 -m pip install --quiet 'uv==0.13.9'
  export PATH="$HOME/.local/bin:$PATH"
fi

say "syncing the locked environment (uv.lock)"
uv sync --frozen --quiet

if ! command -v shellcheck >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing shellcheck (Debian package)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck) >/dev/null 2>&1 \
      || say "could not install shellcheck; its test will be skipped"
  else
    say "shellcheck missing and not root: its test will be skipped (apt-get install shellcheck)"
  fi
fi

missing=()
command -v gcloud >/dev/null 2>&1 || missing+=("gcloud CLI (Debian package google-cloud-cli)")
command -v java >/dev/null 2>&1 || missing+=("Java 17 (apt-get install openjdk-17-jre-headless)")
if command -v gcloud >/dev/null 2>&1; then
  sdk="$(dirname "$(readlink -f "$(command -v gcloud)")")/.."
  [ -d "$sdk/platform/pubsub-emulator" ] || missing+=("Pub/Sub emulator (google-cloud-cli-pubsub-emulator)")
  [ -d "$sdk/platform/cloud-firestore-emulator" ] || missing+=("Firestore emulator (google-cloud-cli-firestore-emulator)")
fi
if [ ${#missing[@]} -gt 0 ]; then
  say "the local stack needs: ${missing[*]}"
  exit 2
fi
say "ready"
