"""A test app whose component really holds memory, a hog that grows on command, and a load through the router.

``ballast`` allocates and touches ``BALLAST_MB`` MB at start (every page resident, charged to its cgroup), then
answers ``GET /healthz`` with ``{"component": "ballast", "held_mb": N, "served_by": ...}``. The app has no
requirements: publishing it is quick and an instance runs it on the interpreter alone. ``Hog`` is a process in
the "laptop" cgroup that grows by N MB for each line ``N`` written to it (and exits at EOF). ``Load`` sends GETs
through the router's stable port one after another from a thread and counts who answered and what failed.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tests.support.cgroups import MemoryCgroup

SERVED_BY = "X-Served-By"

BALLAST_PY = '''"""Holds BALLAST_MB MB, every page touched, and answers /healthz."""
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MB = int(os.environ["BALLAST_MB"])
HELD = bytearray(MB * 2**20)
for i in range(0, len(HELD), 4096):  # touch every page: resident, charged to the cgroup
    HELD[i] = 1
WHO = os.environ.get("SPOTLEASH_COMPONENT_OF", "local")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"component": "ballast", "held_mb": MB, "served_by": WHO}).encode()
        self.send_response(200 if self.path == "/healthz" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer((os.environ.get("HOST", "0.0.0.0"), int(os.environ["PORT"])), Handler).serve_forever()
'''

APP_TOML = '''[app]
name = "ballast"
dir = {dir}
requirements = []

[[app.components]]
name = "ballast"
command = ["python", "ballast.py"]
port = {port}
health_path = "/healthz"
ram_gb = {ram_gb}
env = {{ BALLAST_MB = "{mb}" }}
local_url = "http://127.0.0.1:{local_port}"
route_port = {route_port}
start_timeout_s = 60
'''

HOG_PY = """
import sys
held = []
for line in sys.stdin:
    mb = int(line)
    block = bytearray(mb * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    held.append(block)
    print(sum(len(b) for b in held) // 2**20, flush=True)
"""


def ballast_app(where: Path, *, mb: int, port: int, local_port: int, route_port: int) -> Path:
    """The app tree with its spotleash.toml (``dir`` absolute, so the same file serves publish and the agent)."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "ballast.py").write_text(BALLAST_PY)
    ram_gb = round(mb / 1024 + 0.05, 2)  # what the user declares: a little above what it holds
    (where / "spotleash.toml").write_text(APP_TOML.format(dir=f'"{where}"', port=port, ram_gb=ram_gb, mb=mb,
                                                          local_port=local_port, route_port=route_port))
    return where / "spotleash.toml"


class Hog:
    """A process in ``cg`` that grows on command: ``grow(mb)`` returns once the memory is touched."""

    def __init__(self, cg: MemoryCgroup) -> None:
        self.proc = subprocess.Popen(cg.argv_inside([sys.executable, "-u", "-c", HOG_PY]), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.held_mb = 0

    def grow(self, mb: int) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{mb}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the hog died (exit {self.proc.wait(timeout=10)}); OOM-killed?")
        self.held_mb = int(line)
        return self.held_mb

    def end(self) -> int:
        """Close its stdin: it exits and its memory goes back; its exit code."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        return self.proc.wait(timeout=30)


@dataclass
class Load:
    """GETs through the router's port for ``ballast``, one after another (bounded: 300 s)."""

    url: str
    served: Counter[str] = field(default_factory=Counter)  # X-Served-By → count
    failures: list[str] = field(default_factory=list)
    last_served_by: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Load:
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=90)

    @property
    def total(self) -> int:
        return sum(self.served.values()) + len(self.failures)

    def _run(self) -> None:
        deadline = time.monotonic() + 600
        with httpx.Client(timeout=60, trust_env=False) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    r = client.get(self.url)
                except httpx.HTTPError as e:
                    self.failures.append(f"{type(e).__name__}: {e}")
                    continue
                if r.status_code == 200 and r.json().get("component") == "ballast":
                    self.last_served_by = r.headers.get(SERVED_BY, "?")
                    self.served[self.last_served_by] += 1
                else:
                    self.failures.append(f"{r.status_code} {r.text[:300]}")
                time.sleep(0.02)


@dataclass
class Sampler:
    """The cgroup's usage, working set and OOM-kill counter every ``interval_s``, from a thread."""

    cg: MemoryCgroup
    interval_s: float = 0.2
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)  # (t, usage, working set, oom kills)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    t0: float = field(default_factory=time.monotonic)

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.samples.append((round(time.monotonic() - self.t0, 2), self.cg.usage(), self.cg.working_set(),
                                     self.cg.oom_kills()))
            except OSError:
                return  # the cgroup is gone

    def peak_usage(self) -> int:
        return max((s[1] for s in self.samples), default=0)
