"""``python -m local_emulator.scheduler --host 127.0.0.1 --port PORT --project P [--time-scale F]``."""

from __future__ import annotations

import argparse
import os
import sys

from local_emulator.procs import StopSignal
from local_emulator.scheduler.server import SchedulerServer
from spotleash import log as slog


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m local_emulator.scheduler", description="Cloud Scheduler fake (gRPC)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--project", required=True)
    ap.add_argument("--time-scale", type=float, default=1.0, help="speed of the fake's clock (60: a minute a second)")
    args = ap.parse_args(argv)
    slog.configure("INFO")
    if not os.environ.get("PUBSUB_EMULATOR_HOST"):
        print("PUBSUB_EMULATOR_HOST is not set: the scheduler fake publishes its Pub/Sub targets to the emulator",
              file=sys.stderr)
        return 2
    server = SchedulerServer(host=args.host, port=args.port, project=args.project, time_scale=args.time_scale)
    stop = StopSignal()
    server.start()
    print(f"scheduler fake listening on {server.address}", flush=True)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
