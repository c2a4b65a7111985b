#!/usr/bin/env bash
# `make test` and `make chaos`: each in two pytest processes side by side, each lane with its own local stack
# on its own ports. The stack tests mostly wait (emulators, fake VMs booting, holds: a whole run used ~8
# CPU-minutes in 30), so two lanes share this 2-core machine well. The split is by what a test binds: the fake
# VMs of this one machine serve a published app on its declared ports (the example's 8101/8102, the test apps'
# own), and so do the instance tests, so every file that publishes or runs an app on its declared ports stays
# in lane B; lane A's tests take free ports only. Within that rule the lanes are balanced by measured time.
# Usage: test_lanes.sh suite|chaos RUN...   (RUN: the command that runs a tool in the project's environment)
set -uo pipefail
mode=${1:?usage: test_lanes.sh suite|chaos RUN...}
shift
case "$mode" in
  suite)
    mark="not chaos"
    # End-to-end files whose instances run no package (FAST_TIMINGS) and that bind nothing fixed: ~5 min that
    # lane A, ten minutes shorter without them, takes from lane B.
    MOVED=(tests/e2e/test_control_plane.py tests/e2e/test_cli.py tests/e2e/test_agent_shutdown.py
           tests/e2e/test_heartbeat_and_gpu.py tests/e2e/test_lease_unknown.py tests/e2e/test_status_paging.py)
    LANE_A=(tests/unit tests/emulator tests/browser tests/host "${MOVED[@]}")
    LANE_B=(tests/e2e tests/instance tests/system)
    ;;
  chaos)
    mark="chaos"
    # The router scenarios publish the example app (8101/8102); the others take free ports.
    MOVED=(tests/chaos/test_router_chaos.py tests/chaos/test_handoff_chaos.py tests/chaos/test_hostile_events.py)
    LANE_A=(tests/chaos)
    LANE_B=("${MOVED[@]}")
    ;;
  *) echo "test_lanes.sh: unknown mode $mode (suite or chaos)" >&2; exit 2;;
esac

IGNORE=()  # a moved file runs in the other lane only
for f in "${MOVED[@]}"; do
  [ -f "$f" ] || { echo "scripts/test_lanes.sh: $f is gone: update its list" >&2; exit 2; }
  IGNORE+=("--ignore=$f")
done
if [ "$mode" = suite ]; then
  for dir in tests/*/; do  # a new test folder in neither lane would never run: refuse
    dir=${dir%/}
    if [ -n "$(find "$dir" -name 'test_*.py' -print -quit)" ]; then
      case " ${LANE_A[*]} ${LANE_B[*]} tests/chaos " in *" $dir "*) ;; *) echo "scripts/test_lanes.sh: $dir is in no lane" >&2; exit 2;; esac
    fi
  done
  a_args=("${LANE_A[@]}")
  b_args=("${IGNORE[@]}" "${LANE_B[@]}")
else
  a_args=("${IGNORE[@]}" "${LANE_A[@]}")
  b_args=("${LANE_B[@]}")
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/spotleash-lanes-XXXXXX")
# Each lane's pytest temporary files (its local stack's logs among them) stay here until this checkout's next run
# of this mode: pytest's default numbered folders are rotated away by any later pytest on the machine, and with
# them the logs that explain a failure.
kept="${TMPDIR:-/tmp}/spotleash-lanes-last-$mode-$(pwd | cksum | cut -d' ' -f1)"
rm -rf "$kept" && mkdir -p "$kept"
SPOTLEASH_CHAOS_RESULTS_FILE=$work/chaos-a.json \
  "$@" pytest -q -p no:cacheprovider -m "$mark" --durations=10 --basetemp="$kept/lane-a" "${a_args[@]}" \
  >"$work/lane-a.log" 2>&1 &
lane_a=$!
trap 'kill "$lane_a" 2>/dev/null; rm -rf "$work"' EXIT
echo "$mode, lane A (${a_args[*]}) runs in the background; its report follows this one"
SPOTLEASH_CHAOS_RESULTS_FILE=$work/chaos-b.json \
  "$@" pytest -q -p no:cacheprovider -m "$mark" --durations=15 --basetemp="$kept/lane-b" "${b_args[@]}"
rc_b=$?
wait "$lane_a"
rc_a=$?

echo "---- $mode, lane A: ${a_args[*]} ----"
cat "$work/lane-a.log"
if [ "$mode" = chaos ]; then  # one run's figures from both lanes, where a single process writes them
  "$@" python -m tests.chaos.report --merge "$work/chaos-a.json" "$work/chaos-b.json" || rc_a=1
fi
if [ "$rc_a" -ne 0 ] || [ "$rc_b" -ne 0 ]; then
  echo "make $([ "$mode" = suite ] && echo test || echo chaos): FAILED (lane A exit $rc_a, lane B exit $rc_b)" >&2
  echo "each lane's temporary files, its local stack's logs in local-stack*/local/logs: $kept/lane-a, $kept/lane-b" >&2
  exit 1
fi
