"""A tiny component for the supervisor's tests: a stdlib HTTP server whose behaviour ``MODE`` picks.

MODE=ok (answers 200), sick (503 forever), crash (prints and exits 3 at start), child (ok, and starts
a ``sleep`` grandchild in its process group); ``CRASH_IF=<path>``: crash at start once that file exists. Its answer reports the environment it was given.
"""

import http.server
import json
import os
import subprocess
import sys

MODE = os.environ.get("MODE", "ok")
SHOWN = ("PORT", "MODE", "SPOTLEASH_HEARTBEAT_TOKEN", "SPOTLEASH_AGENT_CONFIG", "SPOTLEASH_COMPONENT_OF", "VIRTUAL_ENV",
         "SPOTLEASH_STATE_PATHS")

if os.environ.get("CRASH_IF") and os.path.exists(os.environ["CRASH_IF"]):  # a copy that starts fine until the file appears
    MODE = "crash"
if MODE == "crash":
    print("boom: the model file is missing", flush=True)
    sys.exit(3)
if MODE == "child":
    child = subprocess.Popen(["sleep", "300"])  # noqa: S607
    with open(os.environ["CHILD_PID_FILE"], "w") as f:
        f.write(str(child.pid))


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        body = json.dumps({"mode": MODE, "path": self.path, "env": {k: os.environ.get(k) for k in SHOWN}}).encode()
        self.send_response(503 if MODE == "sick" else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


print(f"listening on {os.environ['PORT']}", flush=True)
http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()  # noqa: S104
