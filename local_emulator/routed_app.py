"""A routed app on the local stack, for the router's end-to-end tests and the failover bench: a real agent,
real local copies.

``RoutedApp.start`` runs the example app's two components locally (``python thumbnailer.py`` /
``python vectors.py``, the same files an instance runs) and a real ``python -m spotleash.agent`` with a
copy of the example's ``spotleash.toml``: its ``local_url`` names the ports the local copies listen on
and its ``route_port`` free ones. On this one machine the fake instance's copies bind the declared
ports 8101/8102, so the local copies take others (a real instance has its own network). The agent
replays a RAM trace that stays above its threshold: it demands at once, with its route credential's
hash, and its router serves both route ports.

``RoutedApp.load()`` is the load through the router's ports (``local_emulator.load.Load``: GETs one after
another from a thread, bounded in count and time, counting who answered and what failed).

It runs the example app of the source tree (``spotleash.demo.traffic.example_app``, as ``spotleash demo``
does): from a clone of the repository, not from an installed wheel.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from local_emulator.json_log import first_logged, log_lines
from local_emulator.load import SERVED_BY, Load
from local_emulator.procs import free_port
from spotleash.demo.traffic import example_app
from spotleash.polling import wait_until

COMPONENTS = {"thumbnailer": ("thumbnailer.py", 8101, 8201), "vectors": ("vectors.py", 8102, 8202)}


def routed_toml(local_ports: dict[str, int], route_ports: dict[str, int], *, gpu: bool = False,
                agent_copies: bool = False) -> str:
    """The example's spotleash.toml with its app tree absolute and the local / route ports replaced;
    ``gpu``: every component asks for a GPU (the demand then goes to VAST); ``agent_copies``: the agent runs
    the local copies (and hands them off), not the test."""
    example = example_app()
    text = (example / "spotleash.toml").read_text()
    text = text.replace('dir = "."', f"dir = {json.dumps(str(example))}")
    for name, (_, port, route) in COMPONENTS.items():
        # local_copy = "user": the test runs the local copies itself (``RoutedApp.start``), not the agent
        user = "" if agent_copies else '\nlocal_copy = "user"'
        for old, new in ((f'"http://127.0.0.1:{port}"', f'"http://127.0.0.1:{local_ports[name]}"{user}'),
                         (f"route_port = {route}", f"route_port = {route_ports[name]}")):
            assert text.count(old) == 1, f"{old} not once in the example's spotleash.toml"
            text = text.replace(old, new)
        if gpu:
            text = text.replace(f"route_port = {route_ports[name]}", f"route_port = {route_ports[name]}\ngpu = true")
    return text


@dataclass
class RoutedApp:
    lease_id: str
    work: Path
    local_ports: dict[str, int] = field(default_factory=dict)
    route_ports: dict[str, int] = field(default_factory=dict)
    admin_port: int = 0
    gpu: bool = False  # the components ask for a GPU: the agent's demand goes to VAST
    locals_: list[subprocess.Popen[bytes]] = field(default_factory=list)
    agent: subprocess.Popen[bytes] | None = None
    agent_log: Path | None = None
    agent_copies: bool = False  # the agent runs the local copies (and hands them off); else this test does
    trace: str = "t_seconds,percent\n0,95\n1,95\n"  # the RAM trace the agent replays
    agent_env: dict[str, str] = field(default_factory=dict)  # more settings for the agent

    # ------------------------------------------------------------------ lifecycle
    def start(self, budget_s: float = 10.0) -> None:
        self.local_ports = {n: free_port() for n in COMPONENTS}
        self.route_ports = {n: free_port() for n in COMPONENTS}
        self.admin_port = free_port()
        config = self.work / "spotleash.toml"
        config.write_text(routed_toml(self.local_ports, self.route_ports, gpu=self.gpu, agent_copies=self.agent_copies))
        for name, (script, _, _) in ({} if self.agent_copies else COMPONENTS).items():
            env = {**os.environ, "PORT": str(self.local_ports[name]), "HOST": "127.0.0.1", "PYTHONUNBUFFERED": "1"}
            env.pop("SPOTLEASH_COMPONENT_OF", None)
            with (self.work / f"local-{name}.log").open("wb") as out:
                self.locals_.append(subprocess.Popen([sys.executable, script], cwd=example_app(), env=env, stdout=out,
                                                     stderr=subprocess.STDOUT, start_new_session=True))
        trace = self.work / "high.csv"
        trace.write_text(self.trace)
        env = {**os.environ, "SPOTLEASH_CONFIG_FILE": str(config), "SPOTLEASH_STATE_DIR": str(self.work / "state"),
               "SPOTLEASH_ROUTER_ADMIN_PORT": str(self.admin_port), "SPOTLEASH_SHUTDOWN_BUDGET_S": str(budget_s),
               "PYTHONUNBUFFERED": "1", **self.agent_env}
        for var in ("SPOTLEASH_COMPONENTS", "SPOTLEASH_COMPONENT_RAM_GB", "SPOTLEASH_GPU_COMPONENTS"):
            env.pop(var, None)  # derived from [app]
        self.agent_log = self.work / "agent.log"
        with self.agent_log.open("wb") as out:
            self.agent = subprocess.Popen(
                # a nominal 64 GB machine at 95 %: 6.4 GB short, more than both components (2 + 4 GB): both move
                [sys.executable, "-m", "spotleash.agent", "--lease-id", self.lease_id, "--trace", str(trace),
                 "--trace-limit-gb", "64"],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        for name, port in self.local_ports.items():
            wait_until(functools.partial(_answers, f"http://127.0.0.1:{port}/healthz"), timeout_s=60, interval_s=0.2,
                       what=f"the local copy of {name}")
        wait_until(lambda: self.logged("router started"), timeout_s=30, interval_s=0.2, what="the agent's router")

    def set_trace(self, text: str) -> None:
        """Rewrite the RAM trace the agent replays: it reads it again at its next sample, on the same clock
        (a row whose time has passed takes effect at once). Written whole, then renamed: never read half."""
        trace, tmp = self.work / "high.csv", self.work / "high.csv.new"
        tmp.write_text(text)
        os.replace(tmp, trace)

    def stop(self) -> None:
        for p in [*self.locals_, *([self.agent] if self.agent else [])]:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)

    # ------------------------------------------------------------------ the agent's log
    def lines(self) -> list[dict[str, Any]]:
        assert self.agent_log is not None
        return log_lines(self.agent_log)

    def logged(self, fragment: str) -> dict[str, Any] | None:
        assert self.agent_log is not None
        return first_logged(self.agent_log, fragment)

    def route_changes(self, component: str) -> list[dict[str, Any]]:
        return [ln for ln in self.lines() if ln.get("message") == "route changed" and ln.get("component") == component]

    # ------------------------------------------------------------------ through the router
    def url(self, component: str, path: str) -> str:
        return f"http://127.0.0.1:{self.route_ports[component]}{path}"

    def get(self, component: str, path: str = "/healthz", timeout_s: float = 30.0) -> httpx.Response:
        return httpx.get(self.url(component, path), timeout=timeout_s)

    def served_by(self, component: str) -> str:
        r = self.get(component)
        assert r.status_code == 200, r.text
        return r.headers[SERVED_BY]

    def wait_served_by(self, who: str, timeout_s: float = 30.0) -> None:
        for name in COMPONENTS:
            wait_until(functools.partial(self._served_by_is, name, who), timeout_s=timeout_s, interval_s=0.2,
                       what=f"{name} served by {who}")

    def _served_by_is(self, component: str, who: str) -> bool:
        return self.served_by(component) == who

    def load(self, timeout_s: float = 60.0) -> Load:
        """GETs of both components' health paths through the router, in turn (bounded: 3000 / 300 s)."""
        return Load({name: self.url(name, "/healthz") for name in COMPONENTS}, timeout_s=timeout_s, max_s=300,
                    max_requests=3000)

    def routes(self) -> dict[str, Any]:
        got: dict[str, Any] = httpx.get(f"http://127.0.0.1:{self.admin_port}/routes", timeout=10).json()
        return got


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
