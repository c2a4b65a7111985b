"""``python -m local_emulator.billing --host 127.0.0.1 --port PORT``: the Billing Catalog fake (gRPC)."""

from __future__ import annotations

import argparse

from local_emulator.billing.server import BillingServer
from local_emulator.procs import StopSignal
from spotleash import log as slog


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m local_emulator.billing", description="Cloud Billing Catalog fake (gRPC)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args(argv)
    slog.configure("INFO")
    server = BillingServer(host=args.host, port=args.port)
    stop = StopSignal()
    server.start()
    print(f"billing catalog fake listening on {server.address}", flush=True)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
