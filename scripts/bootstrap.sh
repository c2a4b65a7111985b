#!/usr/bin/env bash
# Makes a fresh machine ready: uv (scripts/uv finds or installs it), Python 3.11, the locked virtual
# environment with every part's extras, shellcheck, and a check that Google's emulators (gcloud +
# Java) are present. Safe to run again; it only does what is missing. Needs nothing on PATH but a
# python3 (any version, to install uv) or a uv.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[bootstrap] %s\n' "$*" >&2; }
UV="scripts/uv"

"$UV" --which >/dev/null # installs the pinned uv into .tools/ if none is usable

# requires-python is ">=3.11,<3.12": find a 3.11 (on PATH or uv-managed), else let uv fetch one.
if ! "$UV" python find '>=3.11,<3.12' >/dev/null 2>&1; then
  say "no Python 3.11 found; asking uv to install one"
  if ! "$UV" python install 3.11 >&2; then
    say "Python 3.11 is needed (pyproject.toml: requires-python >=3.11,<3.12) and none was found or could be"
    say "downloaded. Install it (Debian/Ubuntu: apt-get install python3.11; or 'uv python install 3.11' where"
    say "uv can download) and run this again."
    exit 2
  fi
fi

say "syncing the locked environment (uv.lock, with the cli, ssh, local and instance extras)"
# The dev group (a default group) pulls in every extra; --locked refuses a uv.lock older than pyproject.toml.
"$UV" sync --locked --quiet --python '>=3.11,<3.12'

if ! command -v shellcheck >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing shellcheck (Debian package)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck) >/dev/null 2>&1 ||
      say "could not install shellcheck; its test will be skipped"
  else
    say "shellcheck missing and not root: its test will be skipped (apt-get install shellcheck)"
  fi
fi

# --- the dashboard's browser test (issue 15): Debian's chromium + chromium-driver. Not fatal: the test
# installs them itself through the same script, or skips with the reason when it cannot.
bash scripts/ensure_chromium.sh || say "chromium is not available: the dashboard's browser test will skip"
# --- end of the dashboard block

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
say "ready ($("$UV" --version), $("$UV" run --frozen python -c 'import platform; print("Python", platform.python_version())'))"
