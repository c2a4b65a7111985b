#!/usr/bin/env bash
# `make test`: the suite in two pytest processes side by side, each with its own local stack on its own
# ports. The stack tests mostly wait (emulators, fake VMs booting, holds: a whole run used ~8 CPU-minutes in
# 30), so two lanes share this 2-core machine well. The split is by what a test binds: the fake VMs of this
# one machine serve the example app on its declared ports (8101/8102), and so do the instance tests, so every
# file that launches it stays in one lane (e2e, instance); the other lane's tests take free ports only.
# Usage: test_lanes.sh RUN... (the command that runs a tool in the project's environment: `uv run --frozen`)
set -uo pipefail
LANE_A=(tests/unit tests/emulator tests/browser tests/host)
LANE_B=(tests/e2e tests/instance tests/system)
for dir in tests/*/; do  # a new test folder in neither lane would never run: refuse
  dir=${dir%/}
  if [ -n "$(find "$dir" -name 'test_*.py' -print -quit)" ]; then
    case " ${LANE_A[*]} ${LANE_B[*]} tests/chaos " in *" $dir "*) ;; *) echo "scripts/test_lanes.sh: $dir is in no lane" >&2; exit 2;; esac
  fi
done
lane_a_log=$(mktemp "${TMPDIR:-/tmp}/spotleash-lane-a-XXXXXX.log")

"$@" pytest -q -p no:cacheprovider -m "not chaos" --durations=10 "${LANE_A[@]}" >"$lane_a_log" 2>&1 &
lane_a=$!
trap 'kill "$lane_a" 2>/dev/null; rm -f "$lane_a_log"' EXIT
echo "lane A (${LANE_A[*]}) runs in the background; its report follows this one"
"$@" pytest -q -p no:cacheprovider -m "not chaos" --durations=15 "${LANE_B[@]}"
rc_b=$?
wait "$lane_a"
rc_a=$?

echo "---- lane A: ${LANE_A[*]} ----"
cat "$lane_a_log"
if [ "$rc_a" -ne 0 ] || [ "$rc_b" -ne 0 ]; then
  echo "make test: FAILED (lane A exit $rc_a, lane B exit $rc_b)" >&2
  exit 1
fi
