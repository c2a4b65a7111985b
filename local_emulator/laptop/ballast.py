"""Real memory for whole-flow tests and benchmarks: an app whose component really holds memory, the agent
started inside a memory-limited cgroup (``laptop.cgroups``), a hog that grows on command, the cgroup sampled.

``ballast`` allocates and touches ``BALLAST_MB`` MB at start (every page resident, charged to its cgroup), then
answers ``GET /healthz`` with ``{"component": "ballast", "held_mb": N, "served_by": ...}``. The app has no
requirements: publishing it is quick and an instance runs it on the interpreter alone. ``Hog`` is a process in
the "laptop" cgroup that grows by N MB for each line ``N`` written to it (and exits at EOF). The load through the
router is ``local_emulator.load.Load``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from local_emulator.json_log import log_lines
from local_emulator.laptop.cgroups import MB, MemoryCgroup

BALLAST_PY = '''"""Holds BALLAST_MB MB, every page touched, and answers /healthz."""
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

if os.path.exists(os.environ.get("BALLAST_CRASH_IF", "/nonexistent")):
    raise SystemExit("ballast: crash file present, exiting at start")  # a copy that crash-loops, on demand
MB = int(os.environ["BALLAST_MB"])
HELD = bytearray(MB * 2**20)
for i in range(0, len(HELD), 4096):  # touch every page: resident, charged to the cgroup
    HELD[i] = 1
WHO = os.environ.get("SPOTLEASH_COMPONENT_OF", "local")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"component": "ballast", "held_mb": MB, "served_by": WHO}).encode()
        self.send_response(200 if self.path == "/healthz" else 404)
        self.send_header("X-Served-By", WHO)  # which copy answered: the instance id, or "local"
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
env = {{ BALLAST_MB = "{mb}", BALLAST_CRASH_IF = "{crash_if}" }}
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
    """The app tree with its spotleash.toml (``dir`` absolute, so the same file serves publish and the agent).
    While ``<where>/crash`` exists, a copy started (either side) exits at once: ``crash_file(config)``."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "ballast.py").write_text(BALLAST_PY)
    ram_gb = round(mb / 1024 + 0.05, 2)  # what the user declares: a little above what it holds
    (where / "spotleash.toml").write_text(APP_TOML.format(dir=f'"{where}"', port=port, ram_gb=ram_gb, mb=mb,
                                                          crash_if=where / "crash", local_port=local_port, route_port=route_port))
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


def crash_file(config: Path) -> Path:
    return config.parent / "crash"


# ------------------------------------------------------------------ publishing it on a stack


@contextmanager
def published(state_dir: Path, config: Path, tmp: Path) -> Iterator[dict[str, Any]]:
    """The app of ``config`` published through the CLI on the stack at ``state_dir``, its launchers restarted
    with the package bucket (as a redeploy would); undone at the end. Yields ``publish --json``'s result."""
    from local_emulator.stack import set_launcher_env
    from spotleash.topology import load_topology

    bucket = load_topology().package_bucket
    cache = Path(os.environ.get("SPOTLEASH_TEST_WHEEL_CACHE", Path.home() / ".cache" / "spotleash" / "test-wheels"))
    cache.mkdir(parents=True, exist_ok=True)
    pub = tmp / "publish-state"
    pub.mkdir(parents=True, exist_ok=True)  # the bench passes a directory not made yet
    if not (pub / "wheels").exists():
        (pub / "wheels").symlink_to(cache, target_is_directory=True)
    env = {**os.environ, "SPOTLEASH_PACKAGE_BUCKET": bucket, "SPOTLEASH_STATE_DIR": str(pub)}
    out = subprocess.run([sys.executable, "-m", "spotleash.cli", "publish", "--app", str(config.parent), "--json"],
                         env=env, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    saved = os.environ.get("SPOTLEASH_PACKAGE_BUCKET")
    set_launcher_env(state_dir, {"SPOTLEASH_PACKAGE_BUCKET": bucket})
    os.environ["SPOTLEASH_PACKAGE_BUCKET"] = bucket
    try:
        yield json.loads(out.stdout)
    finally:
        set_launcher_env(state_dir, {"SPOTLEASH_PACKAGE_BUCKET": ""})
        if saved is None:
            os.environ.pop("SPOTLEASH_PACKAGE_BUCKET", None)
        else:
            os.environ["SPOTLEASH_PACKAGE_BUCKET"] = saved


# ------------------------------------------------------------------ the agent in the laptop

COMPONENT_ENV = "SPOTLEASH_LOCAL_COMPONENT"  # the supervisor marks each local copy's processes with it


def agent_env(cg: MemoryCgroup, config: Path, work: Path, admin_port: int, **extra: str) -> dict[str, str]:
    """The agent's environment: the app's settings, the cgroup as its memory source, short timings."""
    env = {**os.environ, "SPOTLEASH_CONFIG_FILE": str(config), "SPOTLEASH_STATE_DIR": str(work / "state"),
           "SPOTLEASH_MEMORY_SOURCE": f"cgroup-v{cg.version}", "SPOTLEASH_SAMPLE_INTERVAL_S": "0.25",
           "SPOTLEASH_RELEASE_HOLD_S": "5", "SPOTLEASH_ROUTER_ADMIN_PORT": str(admin_port),
           # the host's PSI (other tenants of this machine) must not fire the demand: the cgroup's figures must
           "SPOTLEASH_MEMORY_PSI_PRESSURE": "100", "SPOTLEASH_SHUTDOWN_BUDGET_S": "10", "PYTHONUNBUFFERED": "1",
           **extra}
    for var in ("SPOTLEASH_COMPONENTS", "SPOTLEASH_COMPONENT_RAM_GB", "SPOTLEASH_GPU_COMPONENTS",
                "SPOTLEASH_COMPONENT_OF"):
        env.pop(var, None)
    return env


def start_agent(cg: MemoryCgroup, lease_id: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``python -m spotleash.agent`` inside ``cg`` (its own process group), its output in ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(cg.argv_inside([sys.executable, "-m", "spotleash.agent", "--lease-id", lease_id]),
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def local_copy_pids(cg: MemoryCgroup, component: str) -> list[int]:
    """The pids in the cgroup that belong to ``component``'s local copy."""
    out = []
    for pid in cg.pids():
        try:
            if psutil.Process(pid).environ().get(COMPONENT_ENV) == component:
                out.append(pid)
        except psutil.Error:
            continue
    return out


def tree_rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            continue
    return total


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def demand_line(log: Path) -> dict[str, Any] | None:
    return next((ln for ln in log_lines(log) if str(ln.get("message", "")).startswith("demand:")), None)


def grow_until_demand(hog: Hog, cg: MemoryCgroup, log: Path, *, step_mb: int = 64, ceiling: float = 0.92,
                      timeout_s: float = 120.0) -> dict[str, Any]:
    """Grow the hog ``step_mb`` at a time (never past ``ceiling`` of the limit) until the agent demands."""
    t0 = time.monotonic()
    while (line := demand_line(log)) is None:
        assert time.monotonic() - t0 < timeout_s, f"no demand within {timeout_s:.0f} s of the hog starting"
        if cg.working_set() + step_mb * MB < ceiling * cg.limit():
            hog.grow(step_mb)
        time.sleep(0.5)
    return line


def top_up(hog: Hog, cg: MemoryCgroup, share: float, step_mb: int = 64) -> None:
    """Grow the hog until the cgroup's working set is about ``share`` of its limit."""
    while cg.working_set() + step_mb * MB < share * cg.limit():
        hog.grow(step_mb)
