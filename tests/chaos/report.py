"""Render the chaos figures into the chaos table of docs/reliability.md.

A chaos run (``make chaos``) writes its figures to ``bench/results/tmp/chaos.json`` (untracked: a CI run
leaves the checkout clean). A person who wants them quoted publishes them:

    uv run python -m tests.chaos.report --publish   # copies the last run's figures to bench/results/chaos.json
                                                    # and rewrites the text between the chaos markers
    uv run python -m tests.chaos.report             # only re-renders the published figures

``make chaos`` runs the scenarios in two pytest processes (``scripts/test_lanes.sh chaos``), each writing its
own figures (``SPOTLEASH_CHAOS_RESULTS_FILE``); ``--merge A B`` makes them one run's figures in ``LAST_RUN``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results" / "chaos.json"  # the published figures docs/reliability.md quotes
LAST_RUN = REPO / "bench" / "results" / "tmp" / "chaos.json"  # what the last chaos run wrote (gitignored)
PAGE = REPO / "docs" / "reliability.md"
START, END = "<!-- chaos:start -->", "<!-- chaos:end -->"

WHAT_CLEANS = {
    "agent SIGKILL while idle": "nothing to clean; the lease just expires",
    "agent SIGKILL while launching": "lease expiry → reaper",
    "agent SIGKILL while running": "lease expiry → reaper",
    "agent SIGTERM during launch": "the agent's release; the launcher deletes what it made after the release",
    "on_demand killed between create and record": "Pub/Sub redelivery resumes (label reconcile) → lease expiry / provisioning timeout → reaper",
    "on_reap killed mid-reap": "the next reap retries a stalled delete (after 30 s)",
    "duplicate, late, out-of-order deliveries": "dedup by event id; released leases refuse late demands",
    "release and first renewal at the same instant": "renewal and release are each one Firestore transaction; "
                                                      "a renewal older than the release is ignored",
    "Firestore emulator restarted": "orphan sweep: labelled VM without a record → deleted, audited `orphan`",
    "Compute 429/503/timeouts at launch and delete": "retries with backoff in launch and release",
    "VAST offer vanishes": "next offer; release",
    "VAST failed bid leaves a stopped instance": "label reconcile destroys the leftover; release",
    "VAST outbid spot GPU": "reaper `stopped_at_provider` → failover replacement; release",
    "VAST 429/5xx/slow at launch and delete": "retries with backoff; release",
    "GCE preemption": "preemption seen → failover replacement; release",
    "instance agent hangs (SIGSTOP)": "heartbeat loss → reaper → failover replacement; release",
    "deadline hit mid-launch": "reaper `max_runtime`",
    "budget exhausted mid-run": "budget alert → reaper stops everything; launches refused",
    "hostile and malformed events": "acked, recorded in `rejected`, dead-lettered",
    "router: remote instance preempted under traffic": "router: preemption notice (listener) → local, 0 failed "
                                                       "requests; failover replacement; release",
    "router: remote instance killed under traffic": "router: failed forwards retried locally, probes → local, "
                                                    "0 failed requests; release (heartbeat loss → reaper)",
    "router: remote instance frozen under traffic": "router: probes fail → connections closed at once, in-flight "
                                                    "GETs retried locally, 0 failed requests; release",
    "router: remote instance slowed under traffic": "router: slow answers waited for, paused beyond the probe "
                                                    "timeout → local, back to remote at full speed; 0 failed "
                                                    "requests; release",
    "snapshots: on_heartbeat killed issuing URLs, agent SIGKILL mid-upload, Cloud Storage 503s":
        "instance repeats an unanswered snapshot ask; heartbeat loss → reaper → failover, the replacement "
        "restores the last verified snapshot (503s retried); the unfinished upload is never verified and its "
        "leftover object goes with the next verified snapshot's retention or the reaper's sweep past the upload timeout; release",
    "hand-off: remote lost while the local copy is stopped": "memory still short: the router holds requests, "
        "heartbeat loss → reaper → failover replacement serves them, 0 failed GETs, 0 OOM kills; release",
    "hand-off: local copy crash-looping while coming home": "the remote stays READY with the traffic until the "
        "local copy answers, then is released; 0 failed GETs",
    "hand-off: agent SIGKILL with local copies stopped": "no local-copy process left; lease expiry → reaper",
}


def render(data: dict[str, Any]) -> str:
    m = data["machine"]
    hb = data["bounds_s"].get("heartbeat_timeout", 5)  # results from before it was recorded: FAST_TIMINGS' 5 s
    lines = [
        f"Measured {data['date']} on {m['uname_m']}, {m['cores']} cores, Python {m['python']}, "
        f"{data['runs_per_scenario']} run(s) per scenario (`SPOTLEASH_CHAOS_RUNS`), "
        f"each on the local stack with fast timings (lease TTL 6 s, heartbeat timeout {hb:g} s, "
        f"a reap every {data['bounds_s']['reap_period']:g} s). "
        "Clean-up time runs from the fault to the moment no instance of the scenario is left at the provider "
        "(fake control API *and* `list_owned` through the official clients) and every instance the fakes ever "
        "held has a Firestore record in a terminal state with a reason.",
        "",
        "| scenario | runs | orphans left | records lost | worst clean-up | what cleans up |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, r in data["scenarios"].items():
        lost = str(r["records_lost"])
        if "instance_records_lost_with_emulator" in r:
            lost += f" ({r['instance_records_lost_with_emulator']} instance records lost with the emulator, all audited)"
        lines.append(f"| {name} | {r['runs']} | {r['orphans_left']} | {lost} | {r['worst_cleanup_s']:.1f} s | "
                     f"{WHAT_CLEANS.get(name, '')} |")
    lines += [
        "",
        "What the suite does: a stack of its own (`tests/chaos/conftest.py`), a real agent process for the agent "
        "faults, `stack.kill_part`/`stack.restart` for function and emulator processes, the fakes' control APIs for "
        "provider faults (every injected fault must have fired), the same fault API in front of Cloud Storage (a "
        "proxy before the emulator, `local_emulator/storage/fault_proxy.py`) and inside each function "
        "(`local_emulator/function_faults.py`: hold a function's reply after it acted, so it is killed in that "
        "window), hypothesis for the hostile events (pushed to the "
        "functions' URLs exactly as Pub/Sub push does). An observer polls both fakes throughout, so an instance "
        "that lived only seconds still counts.",
        "",
        "Firestore restarted: the emulator keeps its data in memory, so every record, lease and audit entry is "
        "lost. spotleash then has no memory of its VMs; the orphan sweep (list by ownership label, delete what "
        "has no record, after the orphan grace) deletes every one of them and audits each as `reap`/`orphan` in "
        "the new database. \"records lost\" counts instances with neither a record nor that audit entry.",
        "",
        "Found and fixed by these scenarios: a released lease was deleted at the next reap, so a renewal sent "
        "before the release but delivered after it reopened the lease and a late demand launched "
        "(`services/reap.py` now keeps released leases an hour); VAST bids (spot GPUs) could not be turned on "
        "(`SPOTLEASH_VAST_INTERRUPTIBLE`, used by the chaos stack); a renewal handled at the same instant as "
        "its lease's release wrote over the release, so the lease stayed open (5 of 12 pairs pushed together; "
        "the renewal and the release are now each one Firestore transaction, `Store.update_lease`); a snapshot "
        "whose upload ask went unanswered (on_heartbeat killed after it recorded the snapshot, before it replied) "
        "was lost — the instance gave up at once, the control plane counted the request as served, so nothing "
        "asked again (the instance now repeats an unanswered ask for up to a minute, `HeartbeatChannel`).",
    ]
    t = data["totals"]
    if data.get("failed_tests"):
        lines += ["", "Failed in this run (before their verdict, so not in the table): "
                  + ", ".join(f"`{n.split('::')[-1]}`" for n in data["failed_tests"]) + "."]
    lines += ["", f"Totals: {t['runs']} runs, {t['orphans_left']} orphans left, {t['records_lost']} records lost. "
              "Raw figures: `bench/results/chaos.json`."]
    return "\n".join(lines)


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One run's figures from its lanes' (each lane ran different scenarios on a stack of its own)."""
    if not parts:
        raise ValueError("no lane's figures to merge")
    scenarios: dict[str, Any] = {}
    for part in parts:
        twice = scenarios.keys() & part["scenarios"].keys()
        if twice:
            raise ValueError(f"scenario(s) {sorted(twice)} ran in two lanes")
        scenarios.update(part["scenarios"])
    first = parts[0]
    return {**first, "date": max(p["date"] for p in parts),  # written as a run ends, as one process writes it
            "command": "make chaos (lanes: scripts/test_lanes.sh chaos)",
            "scenarios": dict(sorted(scenarios.items())),
            "failed_tests": [n for p in parts for n in p.get("failed_tests", [])],
            "totals": {k: sum(p["totals"][k] for p in parts) for k in ("runs", "orphans_left", "records_lost")}}


def main(argv: list[str]) -> int:
    if argv[:1] == ["--merge"]:
        found = [Path(a) for a in argv[1:] if Path(a).is_file()]  # a lane that failed before any verdict wrote none
        if not found:
            print("no chaos lane wrote figures", file=sys.stderr)
            return 1
        LAST_RUN.parent.mkdir(parents=True, exist_ok=True)
        LAST_RUN.write_text(json.dumps(merge([json.loads(f.read_text()) for f in found]), indent=2) + "\n")
        return 0
    if "--publish" in argv:
        if not LAST_RUN.is_file():
            print(f"no chaos run to publish: {LAST_RUN} is missing (run `make chaos` first)", file=sys.stderr)
            return 1
        RESULTS.write_text(LAST_RUN.read_text())
    data = json.loads(RESULTS.read_text())
    text = PAGE.read_text()
    if START not in text or END not in text:
        print(f"{PAGE} has no chaos markers", file=sys.stderr)
        return 1
    new = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: f"{START}\n{render(data)}\n{END}", text,
                 flags=re.S)
    PAGE.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
