"""``python -m local_emulator.vast --host 127.0.0.1 --port PORT --api-key KEY [--boot-delay S] [--data-dir D]``

Ready when ``GET /_control/health`` answers 200. SIGTERM / SIGINT stop every instance process.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from local_emulator.procs import StopSignal
from local_emulator.vast.server import VastFake
from spotleash.log import configure


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m local_emulator.vast", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--api-key", default=os.environ.get("VAST_API_KEY", ""),
                   help="the account's API key (default: $VAST_API_KEY)")
    p.add_argument("--boot-delay", type=float, default=1.0, help="seconds from create to running")
    p.add_argument("--data-dir", type=Path, default=None, help="where instance folders live (default: a temp dir)")
    p.add_argument("--seed", type=int, default=4, help="offers catalog seed")
    args = p.parse_args(argv)
    if not args.api_key:
        p.error("--api-key (or VAST_API_KEY) is required")
    configure("INFO")
    stop = StopSignal()
    fake = VastFake(args.host, args.port, api_key=args.api_key, boot_delay_s=args.boot_delay,
                    data_dir=args.data_dir, seed=args.seed).start()
    print(f"vast fake listening on {fake.url}", flush=True)
    try:
        stop.wait()
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
