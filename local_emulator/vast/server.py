"""HTTP layer of the VAST.ai fake: the REST paths the ``vastai`` SDK 1.9.1 uses, and ``/_control``.

API (Bearer key; ``?api_key=`` also accepted):
  POST   /api/v0/bundles/                 search offers      -> {"offers": [...]}
  PUT    /api/v0/asks/{offer}/            create instance    -> {"success": true, "new_contract": id}
  GET    /api/v1/instances/               list, paged        -> {"instances", "next_token", "total_instances"}
  GET    /api/v0/instances/               list (deprecated)  -> {"instances": [...]}
  GET    /api/v0/instances/{id}/          one                -> {"instances": {...}} ({"instances": null} once gone)
  PUT    /api/v0/instances/{id}/          {"label"} | {"state": "running"|"stopped"}
  DELETE /api/v0/instances/{id}/          destroy (no_such_instance once gone); CONTAINER_API_KEY works here
  GET|POST /api/v0/ssh/, DELETE /api/v0/ssh/{id}/, POST /api/v0/instances/{id}/ssh/   account SSH keys
  GET    /api/v0/users/current/
Any other path is a loud 404. Control (no auth, loopback only):
  GET /_control/health, GET /_control/inspect, POST /_control/reset,
  POST|GET|DELETE /_control/faults   local_emulator.faults rules, matched on the route name (``create``,
       ``destroy``, ``search``, ``list_v1``...), method and path; status 429 answers VAST's rate limit;
       effects ``offer_gone`` and ``bid_leaves_instance`` act on ``create``,
  POST /_control/outbid/{id} (the box is paused: SIGSTOP, disk kept), POST /_control/vanish/{offer}, POST /_control/ssh_keys {"ssh_key"},
  POST /_control/config {"boot_delay_s"}, POST /_control/restock (every offer no live instance holds is for rent
       again: the few offers a GPU demand accepts would otherwise run out over a long fault-injection run),
  POST /_control/gpu/{id} {"utilization_percent", "memory_used_mib"} (a number or one per GPU): what the box's
       nvidia-smi reports from now on (local_emulator.vast.gpus).
"""

from __future__ import annotations

import base64
import json
import re
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from local_emulator.faults import FaultError, FaultRule
from local_emulator.serving import Server
from local_emulator.vast import errors
from local_emulator.vast.errors import VastApiError
from local_emulator.vast.models import VastModel
from local_emulator.vast.offers import search
from spotleash.log import get_logger

log = get_logger("local_emulator.vast.server")
V1_MAX_LIMIT = 100
_ID = r"(?P<id>\d+)"
ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(r"/api/v0/bundles/?$"), "search"),
    ("PUT", re.compile(rf"/api/v0/asks/{_ID}/?$"), "create"),
    ("GET", re.compile(r"/api/v1/instances/?$"), "list_v1"),
    ("GET", re.compile(r"/api/v0/instances/?$"), "list_v0"),
    ("GET", re.compile(rf"/api/v0/instances/{_ID}/?$"), "show"),
    ("PUT", re.compile(rf"/api/v0/instances/{_ID}/?$"), "update"),
    ("DELETE", re.compile(rf"/api/v0/instances/{_ID}/?$"), "destroy"),
    ("POST", re.compile(rf"/api/v0/instances/{_ID}/ssh/?$"), "attach_ssh"),
    ("GET", re.compile(r"/api/v0/ssh/?$"), "ssh_list"),
    ("POST", re.compile(r"/api/v0/ssh/?$"), "ssh_add"),
    ("DELETE", re.compile(rf"/api/v0/ssh/{_ID}/?$"), "ssh_delete"),
    ("GET", re.compile(r"/api/v0/users/current/?$"), "whoami"),
]


def _qvalue(raw: str) -> Any:
    """The SDK JSON-encodes every non-string query value."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _token(iid: int) -> str:
    return base64.urlsafe_b64encode(f"after:{iid}".encode()).decode()


def _untoken(tok: str) -> int:
    try:
        return int(base64.urlsafe_b64decode(tok.encode()).decode().removeprefix("after:"))
    except (ValueError, UnicodeDecodeError) as e:
        raise errors.invalid(f"bad after_token {tok!r}") from e


def _select(rows: list[dict[str, Any]], filters: Any) -> list[dict[str, Any]]:
    from local_emulator.vast.offers import _match

    if not isinstance(filters, dict):
        raise errors.invalid("select_filters must be an object")
    for col, cond in filters.items():
        if not isinstance(cond, dict):
            cond = {"eq": cond}
        rows = [r for r in rows if all(_match(r.get(col), op, w) for op, w in cond.items())]
    return rows


def _act(fault: FaultRule) -> None:
    """A transport fault: wait, then answer the error (429 is VAST's own rate-limit answer)."""
    if fault.latency_s:
        time.sleep(fault.latency_s)
    if fault.status == 429:
        raise errors.rate_limited()
    if fault.status:
        raise VastApiError(fault.status, fault.reason or "injected_fault",
                           fault.message or f"injected fault: HTTP {fault.status}")


class _Handler(BaseHTTPRequestHandler):
    server_version = "vast-fake/1"
    protocol_version = "HTTP/1.1"
    fake: VastFake

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002, ARG002
        return

    # ------------------------------------------------------------------ plumbing
    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        if not n:
            return {}
        raw = self.rfile.read(n)
        try:
            return json.loads(raw)
        except ValueError as e:
            raise errors.invalid("body is not JSON") from e

    def _key(self, query: dict[str, str]) -> str | None:
        auth = self.headers.get("Authorization") or ""
        if auth.startswith("Bearer "):
            return auth[len("Bearer "):].strip()
        return query.get("api_key")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        path = parts.path
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        model = self.fake.model
        status = 500
        try:
            body = self._body()
            if path.startswith("/_control/"):
                status, out = self._control(method, path, body)
                self._send(status, out)
                return
            route = next((name for m, rx, name in ROUTES if m == method and rx.match(path)), "unknown")
            fault = model.faults.take(route, method=method, path=path)
            if fault is not None:
                _act(fault)
            for m, rx, name in ROUTES:
                match = rx.match(path)
                if match and m == method:
                    iid = int(match.group("id")) if "id" in rx.groupindex else None
                    model.auth(self._key(query), instance_id=iid if name == "destroy" else None)
                    status, out = getattr(self, "_api_" + name)(iid, query, body)
                    self._send(status, out)
                    return
            if any(rx.match(path) for _, rx, _ in ROUTES):
                raise VastApiError(405, "method_not_allowed", f"{method} is not allowed on {path}")
            raise errors.not_found(path)
        except VastApiError as e:
            status = e.status
            self._send(e.status, e.to_json(), e.headers)
        finally:
            if not path.startswith("/_control/"):
                with model.lock:
                    model.calls.append((method, path, status))

    # ------------------------------------------------------------------ API
    def _api_search(self, _id: Any, _q: dict[str, str], body: Any) -> tuple[int, Any]:
        return 200, {"offers": search(self.fake.model.offers, body)}

    def _api_create(self, oid: int, _q: dict[str, str], body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict):
            raise errors.invalid("body must be an object")
        return 200, {"success": True, "new_contract": self.fake.model.create(oid, body)}

    def _rows(self) -> list[dict[str, Any]]:
        m = self.fake.model
        with m.lock:
            return [i.to_json(m.boot_delay_s) for i in sorted(m.instances.values(), key=lambda i: i.id)]

    def _api_list_v0(self, _id: Any, _q: dict[str, str], _b: Any) -> tuple[int, Any]:
        return 200, {"instances": self._rows()}

    def _api_list_v1(self, _id: Any, q: dict[str, str], _b: Any) -> tuple[int, Any]:
        rows = _select(self._rows(), _qvalue(q.get("select_filters", "{}")))
        order = _qvalue(q.get("order_by", '[{"col": "id", "dir": "asc"}]'))
        if not isinstance(order, list):
            raise errors.invalid("order_by must be a list of {col, dir}")
        for o in reversed(order):
            col = str(o.get("col", "id"))
            rows.sort(key=lambda r, c=col: (r.get(c) is None, r.get(c)), reverse=o.get("dir") == "desc")
        total = len(rows)
        if "after_token" in q:
            after = _untoken(q["after_token"])
            ids = [r["id"] for r in rows]
            rows = rows[ids.index(after) + 1:] if after in ids else [r for r in rows if r["id"] > after]
        limit = _qvalue(q.get("limit", "25"))
        if not isinstance(limit, int) or not 1 <= limit <= V1_MAX_LIMIT:
            raise errors.invalid(f"limit must be 1..{V1_MAX_LIMIT}")
        page, more = rows[:limit], len(rows) > limit
        labels: dict[str, int] = {}
        for r in page:
            labels[r["label"] or ""] = labels.get(r["label"] or "", 0) + 1
        return 200, {"instances": page, "next_token": _token(page[-1]["id"]) if more and page else None,
                     "total_instances": total, "label_counts": labels}

    def _api_show(self, iid: int, _q: dict[str, str], _b: Any) -> tuple[int, Any]:
        m = self.fake.model
        with m.lock:
            inst = m.instances.get(iid)
            return 200, {"instances": inst.to_json(m.boot_delay_s) if inst else None}

    def _api_update(self, iid: int, _q: dict[str, str], body: Any) -> tuple[int, Any]:
        m = self.fake.model
        if not isinstance(body, dict) or not ({"label", "state"} & set(body)):
            raise errors.invalid("expected {'label': ...} or {'state': 'running'|'stopped'}")
        if "label" in body:
            m.set_label(iid, str(body["label"]))
        if "state" in body:
            if body["state"] == "stopped":
                m.stop(iid)
            elif body["state"] == "running":
                m.start(iid)
            else:
                raise errors.invalid(f"state must be running or stopped, got {body['state']!r}")
        return 200, {"success": True}

    def _api_destroy(self, iid: int, _q: dict[str, str], _b: Any) -> tuple[int, Any]:
        self.fake.model.destroy(iid)
        return 200, {"success": True}

    def _api_attach_ssh(self, iid: int, _q: dict[str, str], body: Any) -> tuple[int, Any]:
        m = self.fake.model
        key = str((body or {}).get("ssh_key", "")).strip()
        with m.lock:
            inst = m.get(iid)
            if len(key.split()) < 2:
                raise errors.invalid("ssh_key must be an OpenSSH public key line")
            inst.ssh_keys.append(key)
        return 200, {"success": True, "msg": "SSH key attached"}

    def _api_ssh_list(self, _id: Any, _q: dict[str, str], _b: Any) -> tuple[int, Any]:
        with self.fake.model.lock:
            return 200, list(self.fake.model.ssh_keys)

    def _api_ssh_add(self, _id: Any, _q: dict[str, str], body: Any) -> tuple[int, Any]:
        rec = self.fake.model.add_ssh_key(str((body or {}).get("ssh_key", "")))
        return 200, {"success": True, "key": rec, "id": rec["id"]}

    def _api_ssh_delete(self, kid: int, _q: dict[str, str], _b: Any) -> tuple[int, Any]:
        self.fake.model.delete_ssh_key(kid)
        return 200, {"success": True}

    def _api_whoami(self, _id: Any, _q: dict[str, str], _b: Any) -> tuple[int, Any]:
        return 200, {"id": 1, "username": "spotleash-fake", "credit": 25.0, "balance": 0.0}

    # ------------------------------------------------------------------ control
    def _control(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        m = self.fake.model
        parts = path.rstrip("/").split("/")[2:]
        if method == "GET" and parts == ["health"]:
            return 200, {"ok": True}
        if method == "GET" and parts == ["inspect"]:
            return 200, m.inspect()
        if method == "POST" and parts == ["reset"]:
            m.reset()
            return 200, {"ok": True}
        if parts == ["faults"]:
            try:
                return 200, m.faults.control(method, body)
            except FaultError as e:
                raise errors.invalid(str(e)) from e
        if method == "POST" and len(parts) == 2 and parts[0] == "outbid" and parts[1].isdigit():
            m.outbid(int(parts[1]))
            return 200, {"ok": True}
        if method == "POST" and len(parts) == 2 and parts[0] == "gpu" and parts[1].isdigit():
            return 200, m.set_gpu_load(int(parts[1]), body)
        if method == "POST" and len(parts) == 2 and parts[0] == "vanish" and parts[1].isdigit():
            m.vanish(int(parts[1]))
            return 200, {"ok": True}
        if method == "POST" and parts == ["restock"]:
            return 200, {"restocked": m.restock()}
        if method == "POST" and parts == ["ssh_keys"]:
            return 200, m.add_ssh_key(str((body or {}).get("ssh_key", "")))
        if method == "POST" and parts == ["config"]:
            if "boot_delay_s" in body:
                m.boot_delay_s = float(body["boot_delay_s"])
            return 200, {"boot_delay_s": m.boot_delay_s}
        raise errors.not_found(path)


class VastFake:
    """The fake in-process: ``VastFake(api_key=...).start()``; ``.url``; ``.stop()`` kills every instance."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, api_key: str = "fake-vast-key",
                 boot_delay_s: float = 1.0, data_dir: Path | None = None, seed: int = 4) -> None:
        self.host = host
        self.api_key = api_key
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="vast-fake-")
            data_dir = Path(self._tmp.name)
        handler = type("Handler", (_Handler,), {"fake": self})
        self.httpd = Server((host, port), handler)
        self.port = int(self.httpd.server_address[1])
        self.model = VastModel(api_key=api_key, host=host, url_getter=lambda: self.url, data_dir=data_dir,
                               boot_delay_s=boot_delay_s, seed=seed)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> VastFake:
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="vast-fake-http", daemon=True)
        self._thread.start()
        log.info("vast fake listening", url=self.url)
        return self

    def stop(self) -> None:
        self.model.close()
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> VastFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
