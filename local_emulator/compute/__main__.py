"""``python -m local_emulator.compute --host 127.0.0.1 --port PORT [--boot-delay S] [--time-scale F] [--project P]``

Ready when ``GET /_control/health`` answers 200. SIGTERM / SIGINT stop every VM process it started.
"""

from __future__ import annotations

import argparse

from local_emulator.compute.server import ComputeFake
from local_emulator.procs import StopSignal


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m local_emulator.compute", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--boot-delay", type=float, default=0.5, help="real seconds from insert to RUNNING")
    p.add_argument("--time-scale", type=float, default=1.0, help="fake seconds per real second for deadlines")
    p.add_argument("--project", default=None, help="only accept this project (default: any)")
    p.add_argument("--wait-timeout", type=float, default=30.0, help="longest operations.wait blocks")
    args = p.parse_args(argv)
    stop = StopSignal()
    fake = ComputeFake(
        args.host, args.port, project=args.project, boot_delay_s=args.boot_delay,
        time_scale=args.time_scale, wait_timeout_s=args.wait_timeout,
    ).start()
    print(f"compute fake listening on {fake.url}", flush=True)
    try:
        stop.wait()
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
