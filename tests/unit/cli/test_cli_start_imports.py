"""The command line starts without the Google clients it does not need: `spotleash publish` (a republish is
meant to take ≤ 3 s, #23) paid ~1.3 s importing Firestore, Pub/Sub and the VAST client for `check` and
`snapshot` before these imported them only inside their commands."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("google.cloud.firestore", "google.cloud.pubsub", "grpc", "spotleash.providers.vast.client")


def test_loading_the_command_line_imports_no_firestore_pubsub_or_vast_client() -> None:
    code = ("import sys, spotleash.cli.app\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "", f"imported at start-up: {done.stdout.strip()}"
