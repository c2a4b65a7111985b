#!/usr/bin/env bash
# `make test`: the suite in two pytest processes side by side. The stack tests mostly wait (emulators,
# fake VMs booting, holds: a whole run used ~8 CPU-minutes in 32), while tests/unit is pure CPU; so the
# unit tests run beside the rest, on the other core. Not more lanes: the fake VMs of this one machine bind
# the example app's declared ports (8101/8102), so two files that launch it cannot run at once.
# Usage: test_lanes.sh RUN... (the command that runs a tool in the project's environment: `uv run --frozen`)
set -uo pipefail
unit_log=$(mktemp "${TMPDIR:-/tmp}/spotleash-unit-XXXXXX.log")
trap 'rm -f "$unit_log"' EXIT

"$@" pytest -q -p no:cacheprovider -m "not chaos" --durations=5 tests/unit >"$unit_log" 2>&1 &
unit_pid=$!
trap 'kill "$unit_pid" 2>/dev/null; rm -f "$unit_log"' EXIT
"$@" pytest -q -p no:cacheprovider -m "not chaos" --durations=15 --ignore=tests/unit
rest_rc=$?
wait "$unit_pid"
unit_rc=$?

echo "---- tests/unit (ran beside the rest) ----"
cat "$unit_log"
if [ "$rest_rc" -ne 0 ] || [ "$unit_rc" -ne 0 ]; then
  echo "make test: FAILED (tests/unit exit $unit_rc, the rest exit $rest_rc)" >&2
  exit 1
fi
