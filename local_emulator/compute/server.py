"""HTTP layer of the Compute Engine fake: the REST paths google-cloud-compute uses, and ``/_control``.

Covered (``/compute/v1/projects/P/...``):
  zones/Z/instances                      GET list (filter, maxResults, pageToken), POST insert (requestId)
  zones/Z/instances/N                    GET get, DELETE delete (requestId)
  zones/Z/instances/N/setLabels|stop|start   POST
  aggregated/instances                   GET (filter, maxResults, pageToken)
  zones/Z/operations/OP                  GET;  zones/Z/operations/OP/wait  POST
Every other path under /compute/v1 answers 501 notImplemented; anything else 404.
Control API: see ``_control`` below (health, reset, inspect, faults, calls, capacity, preempt, clock, config);
faults are local_emulator.faults rules matched on the operation name (``instances.insert``), method and path.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from local_emulator.compute import errors
from local_emulator.compute.errors import ApiError
from local_emulator.compute.filters import compile_filter
from local_emulator.compute.models import ZONES, ComputeModel, Instance
from local_emulator.faults import FaultError
from local_emulator.serving import Server

BASE = "https://www.googleapis.com/compute/v1"
MAX_RESULTS = 500
_COMMON_PARAMS = {"$alt", "alt", "prettyPrint", "fields", "key", "quotaUser", "userIp", "$.xgafv"}
_LIST_PARAMS = {"filter", "maxResults", "pageToken", "orderBy", "returnPartialSuccess"}

_P = r"/compute/v1/projects/(?P<project>[^/]+)"
ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("GET", re.compile(_P + r"/zones/(?P<zone>[^/]+)/instances$"), "instances.list"),
    ("POST", re.compile(_P + r"/zones/(?P<zone>[^/]+)/instances$"), "instances.insert"),
    ("GET", re.compile(_P + r"/zones/(?P<zone>[^/]+)/instances/(?P<name>[^/]+)$"), "instances.get"),
    ("DELETE", re.compile(_P + r"/zones/(?P<zone>[^/]+)/instances/(?P<name>[^/]+)$"), "instances.delete"),
    ("POST", re.compile(_P + r"/zones/(?P<zone>[^/]+)/instances/(?P<name>[^/]+)/setLabels$"), "instances.setLabels"),
    ("POST", re.compile(_P + r"/zones/(?P<zone>[^/]+)/instances/(?P<name>[^/]+)/stop$"), "instances.stop"),
    ("POST", re.compile(_P + r"/zones/(?P<zone>[^/]+)/instances/(?P<name>[^/]+)/start$"), "instances.start"),
    ("GET", re.compile(_P + r"/aggregated/instances$"), "instances.aggregatedList"),
    ("GET", re.compile(_P + r"/zones/(?P<zone>[^/]+)/operations/(?P<op>[^/]+)$"), "zoneOperations.get"),
    ("POST", re.compile(_P + r"/zones/(?P<zone>[^/]+)/operations/(?P<op>[^/]+)/wait$"), "zoneOperations.wait"),
]
_PARAMS = {
    "instances.list": _LIST_PARAMS,
    "instances.aggregatedList": _LIST_PARAMS | {"includeAllScopes", "serviceProjectNumber"},
    "instances.insert": {"requestId", "sourceInstanceTemplate", "sourceMachineImage"},
    "instances.delete": {"requestId", "noGracefulShutdown"},
    "instances.setLabels": {"requestId"},
    "instances.stop": {"requestId", "discardLocalSsd", "noGracefulShutdown"},
    "instances.start": {"requestId"},
    "instances.get": set(),
    "zoneOperations.get": set(),
    "zoneOperations.wait": set(),
}


def _page(items: list[Any], query: dict[str, str]) -> tuple[list[Any], str | None]:
    try:
        size = int(query.get("maxResults", MAX_RESULTS))
    except ValueError as e:
        raise errors.invalid("Invalid value for field 'maxResults'.") from e
    if not 0 <= size <= MAX_RESULTS:
        raise errors.invalid(f"Invalid value for field 'maxResults': {size}. Must be between 0 and {MAX_RESULTS}.")
    size = size or MAX_RESULTS
    start = 0
    token = query.get("pageToken")
    if token:
        try:
            start = int(base64.urlsafe_b64decode(token.encode()).decode().removeprefix("offset:"))
        except (ValueError, UnicodeDecodeError) as e:
            raise errors.invalid(f"Invalid value for field 'pageToken': '{token}'.") from e
    chunk = items[start:start + size]
    nxt = start + size
    return chunk, (base64.urlsafe_b64encode(f"offset:{nxt}".encode()).decode() if nxt < len(items) else None)


class ComputeApi:
    """Turns (method, path, query, body) into (status, JSON). Used by the HTTP handler."""

    def __init__(self, model: ComputeModel, wait_timeout_s: float = 30.0) -> None:
        self.model = model
        self.wait_timeout_s = wait_timeout_s

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        try:
            if path.startswith("/_control/"):
                return self._control(method, path, query, body)
            return 200, self._api(method, path, query, body)
        except ApiError as e:
            return e.code, e.to_json()

    # ------------------------------------------------------------------ the Compute API
    def _api(self, method: str, path: str, query: dict[str, str], body: Any) -> Any:
        op_name, m = "", None
        for verb, pattern, name in ROUTES:
            m = pattern.match(path)
            if m and verb == method:
                op_name = name
                break
        if not op_name or m is None:
            if path.startswith("/compute/v1/"):
                raise errors.not_implemented(f"{method} {path}")
            raise errors.ApiError(404, "notFound", f"unknown path {path}")
        unknown = set(query) - _PARAMS[op_name] - _COMMON_PARAMS
        if unknown:
            raise errors.invalid(f"Invalid JSON payload received. Unknown name \"{sorted(unknown)[0]}\": Cannot bind query parameter.")
        logged = body.get("name") if op_name == "instances.insert" and isinstance(body, dict) else m.groupdict().get("name")
        self.model.log_call(op_name, unquote(str(logged or "")))
        fault = self.model.faults.take(op_name, method=method, path=path)
        if fault is not None:
            if fault.latency_s:
                time.sleep(fault.latency_s)
            if fault.status:
                raise ApiError(fault.status, fault.reason or "backendError", fault.message or "injected fault")
        g = {k: unquote(v) for k, v in m.groupdict().items()}
        model, rid = self.model, query.get("requestId")
        if op_name == "instances.insert":
            return model.insert(g["project"], g["zone"], body, rid).to_json(BASE)
        if op_name == "instances.get":
            return model.get(g["project"], g["zone"], g["name"]).to_json(BASE)
        if op_name == "instances.delete":
            return model.delete(g["project"], g["zone"], g["name"], rid).to_json(BASE)
        if op_name == "instances.setLabels":
            return model.set_labels(g["project"], g["zone"], g["name"], body, rid).to_json(BASE)
        if op_name == "instances.stop":
            return model.stop(g["project"], g["zone"], g["name"], rid).to_json(BASE)
        if op_name == "instances.start":
            return model.start_instance(g["project"], g["zone"], g["name"], rid).to_json(BASE)
        if op_name == "zoneOperations.get":
            return model.get_operation(g["project"], g["zone"], g["op"]).to_json(BASE)
        if op_name == "zoneOperations.wait":
            return model.wait_operation(g["project"], g["zone"], g["op"], self.wait_timeout_s).to_json(BASE)
        return self._list(op_name, g, query)

    def _list(self, op_name: str, g: dict[str, str], query: dict[str, str]) -> Any:
        if query.get("orderBy") not in (None, "", "name"):
            raise errors.invalid(f"Invalid value for field 'orderBy': '{query['orderBy']}'. The fake sorts by name only.")
        pred = compile_filter(query.get("filter"))
        project = g["project"]
        zone = g.get("zone")
        resources = [i.to_json(BASE) for i in self.model.list(project, zone)]
        matched = [r for r in resources if pred(r)]
        chunk, token = _page(matched, query)
        out: dict[str, Any]
        if op_name == "instances.list":
            out = {
                "kind": "compute#instanceList",
                "id": f"projects/{project}/zones/{zone}/instances",
                "items": chunk,
                "selfLink": f"{BASE}/projects/{project}/zones/{zone}/instances",
            }
        else:
            items: dict[str, Any] = {}
            for z in ZONES:
                mine = [r for r in chunk if r["zone"].endswith(f"/zones/{z}")]
                items[f"zones/{z}"] = (
                    {"instances": mine}
                    if mine
                    else {"warning": {"code": "NO_RESULTS_ON_PAGE", "message": "There are no results for scope "
                                      f"'zones/{z}' on this page.", "data": [{"key": "scope", "value": f"zones/{z}"}]}}
                )
            out = {
                "kind": "compute#instanceAggregatedList",
                "id": f"projects/{project}/aggregated/instances",
                "items": items,
                "selfLink": f"{BASE}/projects/{project}/aggregated/instances",
            }
        if token:
            out["nextPageToken"] = token
        return out

    # ------------------------------------------------------------------ control API
    def _find(self, zone: str, name: str, project: str | None) -> Instance:
        with self.model.lock:
            for inst in self.model.instances.values():
                if inst.zone == zone and inst.name == name and project in (None, inst.project):
                    return inst
        raise errors.not_found(f"zones/{zone}/instances/{name}")

    def _control(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        model = self.model
        body = body if isinstance(body, dict) else {}
        parts = [p for p in path.split("/") if p][1:]
        route = (method, "/".join(parts[:1]))
        if route == ("GET", "health"):
            return 200, {"ok": True}
        if route == ("POST", "reset"):
            model.reset()
            return 200, {"ok": True}
        if route == ("GET", "instances") and len(parts) == 1:
            with model.lock:
                insts = list(model.instances.values())
            return 200, {"instances": [model.inspect(i) for i in insts]}
        if parts[:1] == ["instances"] and len(parts) >= 3:
            inst = self._find(parts[1], parts[2], query.get("project"))
            if method == "GET" and len(parts) == 3:
                return 200, model.inspect(inst)
            if method == "POST" and parts[3:] == ["preempt"]:
                return 200, model.inspect(model.preempt(inst.project, inst.zone, inst.name))
        if route[1] == "faults" and len(parts) == 1:
            try:
                return 200, model.faults.control(method, body)
            except FaultError as e:
                raise errors.invalid(str(e)) from e
        if route == ("GET", "calls"):  # ?since=EPOCH_SECONDS: the call log, oldest first
            since = float(query.get("since") or 0)
            with model.lock:
                log = [{"operation": o, "name": n, "at": t} for o, n, t in model.call_log if t >= since]
            return 200, {"calls": log}
        if route == ("POST", "capacity"):
            model.set_capacity(str(body.get("zone")), bool(body.get("exhausted", True)))
            return 200, {"exhausted_zones": sorted(model.exhausted_zones)}
        if route[1] == "clock":
            if method == "POST":
                if "time_scale" in body:
                    model.clock.set_scale(float(body["time_scale"]))
                if "advance_s" in body:
                    model.clock.advance(float(body["advance_s"]))
                model.tick()
            return 200, {"now": model.clock.now().isoformat(), "time_scale": model.clock.time_scale}
        if route == ("POST", "config"):
            if "boot_delay_s" in body:
                model.boot_delay_s = float(body["boot_delay_s"])
            if "wait_timeout_s" in body:
                self.wait_timeout_s = float(body["wait_timeout_s"])
            return 200, {"boot_delay_s": model.boot_delay_s, "wait_timeout_s": self.wait_timeout_s}
        raise errors.ApiError(404, "notFound", f"unknown control route {method} {path}")


def _handler(api: ComputeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002, ARG002
            return

        def _do(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body: Any = None
            if raw:
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    self._reply(*(400, errors.invalid("Invalid JSON payload received.").to_json()))
                    return
            code, out = api.handle(self.command, parts.path, query, body)
            self._reply(code, out)

        def _reply(self, code: int, out: Any) -> None:
            data = json.dumps(out).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _do  # noqa: N815

    return Handler


class ComputeFake:
    """The fake, in-process: ``with ComputeFake() as fake: ... fake.url ...``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        project: str | None = None,
        boot_delay_s: float = 0.5,
        time_scale: float = 1.0,
        vm_command: list[str] | None = None,
        wait_timeout_s: float = 30.0,
        workdir: Path | None = None,
    ) -> None:
        self.model = ComputeModel(
            project=project, boot_delay_s=boot_delay_s, time_scale=time_scale, vm_command=vm_command, workdir=workdir
        )
        self.api = ComputeApi(self.model, wait_timeout_s)
        self._httpd = Server((host, port), _handler(self.api))
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="gce-fake-http", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ComputeFake:
        self.model.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self.model.shutdown()

    def __enter__(self) -> ComputeFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
