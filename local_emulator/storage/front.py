"""The stack's Cloud Storage process: fake-gcs-server behind the front that completes what it leaves out.

``python -m local_emulator.storage.front --port P`` starts fake-gcs-server on a free loopback port of its own
(its child, in its process group: stopping the part stops both) with ``-external-url`` naming the front, so the
session URL of a resumable upload and every media link lead back here, and serves the front on ``P``: a
``FaultProxy`` with precondition checks (``local_emulator.storage.preconditions``) and the usual fault control
API. Every client of the stack (``STORAGE_EMULATOR_HOST``) talks to the front.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time

from local_emulator import storage as gcs
from local_emulator.procs import free_port
from local_emulator.storage.fault_proxy import FaultProxy
from local_emulator.storage.preconditions import Sessions
from spotleash.signal_event import SignalEvent

READY_TIMEOUT_S = 30.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local_emulator.storage.front")
    parser.add_argument("--port", type=int, required=True, help="where clients reach Cloud Storage")
    args = parser.parse_args(argv)
    inner = free_port()
    emulator = subprocess.Popen(gcs.emulator_argv(inner, external_url=gcs.url(args.port)))
    stop = SignalEvent()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not gcs.ready(inner):
            if emulator.poll() is not None:
                print(f"fake-gcs-server exited with code {emulator.returncode} before it served", file=sys.stderr)
                return 1
            if time.monotonic() > deadline:
                print(f"fake-gcs-server did not serve within {READY_TIMEOUT_S:.0f} s", file=sys.stderr)
                return 1
            time.sleep(0.05)
        proxy = FaultProxy(gcs.url(inner), port=args.port, sessions=Sessions()).start()
        print(f"storage front on {gcs.url(args.port)}, fake-gcs-server on {gcs.url(inner)}", flush=True)
        try:
            while not stop.wait(0.5):
                if emulator.poll() is not None:
                    print(f"fake-gcs-server exited with code {emulator.returncode}", file=sys.stderr)
                    return 1
        finally:
            proxy.stop()
    finally:
        if emulator.poll() is None:
            emulator.terminate()
            try:
                emulator.wait(timeout=5)
            except subprocess.TimeoutExpired:
                emulator.kill()
                emulator.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
