"""Which Pub/Sub messages a function of the local stack handled, read from its log (what reaper_paused waits on)."""

from __future__ import annotations

import json
from pathlib import Path

from local_emulator import stack


def test_the_handled_lines_give_their_message_ids_and_nothing_else_counts(tmp_path: Path) -> None:
    logs = stack.logs_dir(tmp_path)
    logs.mkdir(parents=True)
    lines = [
        json.dumps({"severity": "INFO", "message": "handled", "source": "reap", "message_id": "156"}),
        "[2026-12-08 00:10:10 +0000] [42] [INFO] Booting worker with pid: 42",  # the server's own lines
        json.dumps({"severity": "INFO", "message": "reap done", "message_id": "157"}),  # not the handled line
        json.dumps({"severity": "INFO", "message": "handled", "source": "reap", "message_id": None}),
        '{"message": "handled", "message_id": "158"',  # cut off by a kill mid-write
        json.dumps({"severity": "INFO", "message": "handled", "source": "reap", "message_id": 162}),
    ]
    (logs / "on_reap.log").write_text("\n".join(lines) + "\n")
    assert stack.handled_message_ids(tmp_path, "on_reap") == {"156", "162"}
    assert stack.handled_message_ids(tmp_path, "on_demand") == set()  # no log yet: nothing handled
