"""The demo's app side: the example app's local copies, a load generator, and a live view of the routes.

- ``demo_config``: a copy of ``examples/thumbs/spotleash.toml`` whose ``local_url``s name other ports.
  On this one machine a fake VM's components bind the ports the package declares (8101/8102), so the
  local copies listen on those plus ``LOCAL_PORT_SHIFT``; the router's ports (``route_port``) stay.
- ``LocalCopies``: each component started here exactly as an instance starts it (argv from the file,
  cwd the app directory, ``PORT`` and the component's environment).
- ``LoadGenerator``: a steady stream through the router's stable ports — GET queries to both
  components, POSTs with an ``Idempotency-Key`` (retryable) and plain POSTs (not retryable). It counts
  what it saw fail; the router's own counters say where requests went and how many were retried.
- ``RouteLog``: follows the agent's log for the router's ``route changed`` lines (one per target
  change, with its reason) and prints each with the share served remotely so far (``/routes``).
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

import spotleash
from spotleash.demo.memory import freed_line, freed_of
from spotleash.errors import ConfigError
from spotleash.packaging.appspec import LoadedApp, load_app
from spotleash.polling import wait_until
from spotleash.router.status import read_routes

LOCAL_PORT_SHIFT = 200  # the local copies' ports: the package's ports + this (8101 → 8301)
_LOCAL_URL = re.compile(r'^(local_url\s*=\s*")http://127\.0\.0\.1:(\d+)(")', re.MULTILINE)
_APP_DIR = re.compile(r'^dir\s*=\s*"\."', re.MULTILINE)


def example_app() -> Path:
    """``examples/thumbs`` of the source tree this spotleash runs from."""
    root = Path(spotleash.__file__).resolve().parents[2] / "examples" / "thumbs"
    if not (root / "spotleash.toml").is_file():
        raise ConfigError(f"the demo runs the example app from the repository, but {root} is missing "
                          "(run `make demo` from a clone of the repository)")
    return root


def demo_config(app_dir: Path, out_dir: Path, shift: int = LOCAL_PORT_SHIFT) -> LoadedApp:
    """Write ``out_dir/spotleash.toml``: the app's file with ``dir`` absolute and ``local_url`` ports + ``shift``."""
    text = (app_dir / "spotleash.toml").read_text()
    text, dirs = _APP_DIR.subn(f"dir = {json.dumps(str(app_dir))}", text)
    # local_copy = "user": the demo runs its local copies itself (``LocalCopies`` below), not the agent
    text, urls = _LOCAL_URL.subn(lambda m: f'{m[1]}http://127.0.0.1:{int(m[2]) + shift}{m[3]}\nlocal_copy = "user"',
                                 text)
    path = out_dir / "spotleash.toml"
    path.write_text(text)
    app = load_app(out_dir, None)
    if dirs != 1 or urls != len(app.spec.components) or any(c.local_port == c.port for c in app.spec.components):
        raise ConfigError(f"{app_dir / 'spotleash.toml'}: the demo expects dir = \".\" and one loopback "
                          "local_url per component, to move the local copies off the instance's ports")
    return app


class LocalCopies:
    """The components running on this machine, as the router's local targets."""

    def __init__(self, app: LoadedApp, log_dir: Path) -> None:
        self.app = app
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, timeout_s: float = 60.0) -> dict[str, str]:
        """Start every component and wait for its health path; component → local URL."""
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        urls = {}
        for c in self.app.spec.components:
            if c.local_url is None or c.local_port is None:
                continue
            env = {**os.environ, "PATH": path, **self.app.artifact_env(), **c.env, "PORT": str(c.local_port)}
            log = (self.log_dir / f"local-{c.name}.log").open("ab")
            self.procs[c.name] = subprocess.Popen(c.command, cwd=self.app.root, env=env, stdout=log,
                                                  stderr=subprocess.STDOUT, start_new_session=True)
            urls[c.name] = c.local_url
        for c in self.app.spec.components:
            if c.name in urls:
                wait_until(partial(_healthy, urls[c.name] + c.health_path), timeout_s=timeout_s, interval_s=0.2,
                           what=f"the local copy of {c.name} to answer (log: {self.log_dir}/local-{c.name}.log)")
        return urls

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def sample_image(thumbnailer_url: str) -> bytes:
    """A 320x240 PNG for the plain POSTs to thumbnail, made by the local thumbnailer itself."""
    r = httpx.get(f"{thumbnailer_url}/thumbnail", params={"size": 320, "color": "28a05a"}, timeout=10, trust_env=False)
    r.raise_for_status()
    return r.content


def png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG's IHDR chunk; None when ``data`` is not a PNG."""
    if len(data) < 24 or not data.startswith(b"\x89PNG\r\n\x1a\n") or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@dataclass
class LoadCounts:
    total: int = 0
    ok: int = 0
    failed: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)  # kind and status or error → count


class LoadGenerator:
    """``workers`` threads, each sending one request after another (with a short pause) to the routes.

    The mix: GET thumbnail and GET similar queries (idempotent), POST /similar with an Idempotency-Key
    (retryable), plain POST /thumbnail with an image (not idempotent: never retried by the router).
    """

    MIX = (("GET thumbnail", 4), ("GET similar", 4), ("POST similar+key", 1), ("POST thumbnail", 1))

    def __init__(self, routes: dict[str, int], image: bytes, *, workers: int = 3, pause_s: float = 0.1) -> None:
        self.base = {name: f"http://127.0.0.1:{port}" for name, port in routes.items()}
        self.workers = workers
        self.pause_s = pause_s
        self.counts = LoadCounts()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._png = image  # what the plain POSTs send to be thumbnailed
        self._kinds = [k for k, weight in self.MIX for _ in range(weight)]

    def start(self) -> None:
        for i in range(self.workers):
            t = threading.Thread(target=self._run, args=(i,), name=f"demo-load-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        """No new request from now on; wait for those in flight (the router drains them)."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=70)

    def snapshot(self) -> LoadCounts:
        with self._lock:
            return LoadCounts(self.counts.total, self.counts.ok, self.counts.failed, Counter(self.counts.by_kind),
                              Counter(self.counts.failures))

    def _run(self, worker: int) -> None:
        rng = random.Random(worker)
        with httpx.Client(timeout=60, trust_env=False) as client:
            n = 0
            while not self._stop.is_set():
                kind = rng.choice(self._kinds)
                n += 1
                try:
                    r = self._send(client, kind, rng, f"demo-{worker}-{n}")
                    failure = None if r.status_code == 200 else f"{r.status_code} {_why(r)}"
                except httpx.HTTPError as e:
                    failure = f"{type(e).__name__}: {e}"[:160]
                with self._lock:
                    self.counts.total += 1
                    self.counts.by_kind[kind] += 1
                    if failure is None:
                        self.counts.ok += 1
                    else:
                        self.counts.failed += 1
                        self.counts.failures[f"{kind}: {failure}"] += 1
                self._stop.wait(self.pause_s)

    def _send(self, client: httpx.Client, kind: str, rng: random.Random, key: str) -> httpx.Response:
        thumbs, vectors = self.base["thumbnailer"], self.base["vectors"]
        if kind == "GET thumbnail":
            return client.get(f"{thumbs}/thumbnail", params={"size": rng.choice((32, 64, 128)),
                                                             "color": f"{rng.randrange(1 << 24):06x}"})
        if kind == "GET similar":
            return client.get(f"{vectors}/similar", params={"id": rng.randrange(50_000), "k": 5})
        if kind == "POST similar+key":
            return client.post(f"{vectors}/similar", json={"id": rng.randrange(50_000), "k": 5},
                               headers={"Idempotency-Key": key})
        return client.post(f"{thumbs}/thumbnail?size=64", content=self._png)


def _why(r: httpx.Response) -> str:
    try:
        return str(r.json().get("error", ""))[:160]
    except ValueError:
        return r.text[:160]


class RouteLog:
    """Prints the router's target changes as they happen, from the agent's log (JSON lines)."""

    def __init__(self, console: Console, log_path: Path, admin_port: int | None, t0: float) -> None:
        self.console = console
        self.log_path = log_path
        self.admin_port = admin_port
        self.t0 = t0
        self.changes: list[dict[str, Any]] = []
        self.router_totals: dict[str, int] | None = None  # from the router's last line ("router stopped")
        self._last_routes: dict[str, Any] = {}  # /routes as last read (the router is gone after a SIGTERM)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-routes", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        pos = 0
        while True:
            stopping = self._stop.is_set()
            try:
                with self.log_path.open("rb") as f:
                    f.seek(pos)
                    chunk = f.read()
            except FileNotFoundError:
                chunk = b""
            end = chunk.rfind(b"\n") + 1
            pos += end
            for raw in chunk[:end].splitlines():
                self._line(raw)
            if stopping:
                return
            self._last_routes = read_routes(self.admin_port, timeout_s=0.5) or self._last_routes
            self._stop.wait(0.1)

    def _line(self, raw: bytes) -> None:
        try:
            entry = json.loads(raw)
        except ValueError:
            return
        if not isinstance(entry, dict):
            return
        freed = freed_of(entry)
        if freed is not None:  # a local copy stopped: the memory it gave back, as the agent reported it
            self.console.print(f"  [dim]{time.monotonic() - self.t0:6.1f}s[/] [bold green]{freed_line(*freed)}[/]")
        if not str(entry.get("logger", "")).startswith("spotleash.router."):
            return
        if entry.get("message") == "router stopped" and isinstance(entry.get("totals"), dict):
            self.router_totals = {k: int(v) for k, v in entry["totals"].items()}
        if entry.get("message") != "route changed":
            return
        self.changes.append(entry)
        routes = read_routes(self.admin_port, timeout_s=0.5)
        stopped = routes is None
        share = (routes or self._last_routes).get(str(entry.get("component")), {}).get("remote_share")
        to = str(entry.get("to_target"))
        where = f"[bold magenta]remote[/] {to.removeprefix('remote:')}" if to.startswith("remote:") else f"[bold]{to}[/]"
        shown = f"{share:.0%} served remotely so far" if isinstance(share, float) else "share unknown"
        shown += " when the router stopped" if stopped else ""
        self.console.print(f"  [dim]{time.monotonic() - self.t0:6.1f}s[/] route [cyan]{entry.get('component')}[/] → "
                           f"{where}  ({entry.get('reason')}; {shown})")


def wait_routes(admin_port: int | None, want: str, *, instance_id: str | None = None, timeout_s: float,
                what: str) -> dict[str, Any]:
    """Until every component's target is ``want`` (``local`` / ``remote``, on ``instance_id`` if named)."""
    def check() -> dict[str, Any] | None:
        routes = read_routes(admin_port, timeout_s=1.0)
        if not routes:
            return None
        for r in routes.values():
            if r.get("target") != want or (instance_id is not None and r.get("instance_id") != instance_id):
                return None
        return routes

    got: dict[str, Any] = wait_until(check, timeout_s=timeout_s, interval_s=0.1, what=what)
    return got


def router_totals(admin_port: int | None) -> dict[str, int] | None:
    """The router's ``/routes`` totals (total, remote, retried, failed) while it runs."""
    if admin_port is None:
        return None
    try:
        r = httpx.get(f"http://127.0.0.1:{admin_port}/routes", timeout=1.0, trust_env=False)
        totals = r.json().get("totals")
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return {k: int(v) for k, v in totals.items()} if isinstance(totals, dict) else None
