"""``python -m local_emulator.billing --host 127.0.0.1 --port PORT``: the Billing Catalog fake (gRPC)."""

from __future__ import annotations

import argparse
import signal
import threading

from local_emulator.billing.server import BillingServer
from spotleash import log as slog


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m local_emulator.billing", description="Cloud Billing Catalog fake (gRPC)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args(argv)
    slog.configure("INFO")
    server = BillingServer(host=args.host, port=args.port)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    server.start()
    print(f"billing catalog fake listening on {server.address}", flush=True)
    done.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
