"""VAST.ai provider: REST with httpx on the paths the ``vastai`` SDK 1.9.1 uses, SSH with paramiko.

Ownership lives in VAST's one free-text label: ``spotleash:<deployment>:<lease>:<instance_id>``,
parsed back into the label dict of :mod:`spotleash.providers.base`. Every box runs, from its
``onstart``, a self-destruct watchdog (``python -m spotleash.instance_agent.watchdog``, with a
pure-bash fallback) that deletes the instance past its deadline with its own
``CONTAINER_API_KEY``, and the instance agent.

Traps handled (platform-facts): ``actual_status`` null while loading; a failed bid leaving a
stopped instance whose id comes back in the error (``cancel_unavail`` sent, any id destroyed);
offers vanishing between search and create (next offer); 429/5xx/timeouts (bounded backoff);
``no_such_instance`` on delete (already gone). SSH host keys are pinned per instance: learned at
first contact and handed back to the caller to store; later connections use ``RejectPolicy``.
"""

from __future__ import annotations

import base64
import io
import json
import shlex
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import paramiko
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from spotleash.errors import (
    CapacityExhausted,
    ConfigError,
    NotFound,
    ProviderPermanent,
    ProviderTransient,
)
from spotleash.log import get_logger
from spotleash.providers.base import (
    LABEL_DEPLOYMENT,
    LABEL_INSTANCE,
    LABEL_LEASE,
    LABEL_MANAGED,
    MANAGED_VALUE,
    GpuRequirements,
    LaunchSpec,
    ProviderInstance,
    ProviderStatus,
)

if TYPE_CHECKING:
    from spotleash.config import Settings

log = get_logger("spotleash.providers.vast")

LABEL_PREFIX = "spotleash"
SSH_USER = "root"
MB_PER_GB = 1000  # the SDK's query parser multiplies GB by 1000 for gpu_ram (which the API holds in MB)
RELIABILITY_PENALTY = 10.0  # 1 % less reliability weighs like 10 % more price
V1_PAGE = 25
AGENT_CONFIG_ENV = "SPOTLEASH_AGENT_CONFIG"
TOKEN_ENV = "SPOTLEASH_HEARTBEAT_TOKEN"


# ---------------------------------------------------------------------------------- pure helpers
def make_label(deployment_id: str, lease_id: str, instance_id: str) -> str:
    for part in (deployment_id, lease_id, instance_id):
        if ":" in part or not part:
            raise ProviderPermanent(f"label parts must be non-empty and free of ':' (got {part!r})")
    return f"{LABEL_PREFIX}:{deployment_id}:{lease_id}:{instance_id}"


def parse_label(label: str | None) -> dict[str, str]:
    """Our label back into base.py's label dict; {} for anything that is not ours."""
    if not label:
        return {}
    parts = label.strip().split(":")
    if len(parts) != 4 or parts[0] != LABEL_PREFIX or not all(parts[1:]):
        return {}
    return {LABEL_MANAGED: MANAGED_VALUE, LABEL_DEPLOYMENT: parts[1], LABEL_LEASE: parts[2],
            LABEL_INSTANCE: parts[3]}


def map_status(actual: str | None, cur_state: str | None, intended: str | None) -> ProviderStatus:
    """The one place VAST's states become ours. ``actual_status`` is null while an instance loads."""
    a = (actual or "").lower()
    wants_stop = (intended or "").lower() == "stopped"
    if a in ("", "created", "loading", "scheduling", "pulling"):
        if (cur_state or "").lower() == "stopped":
            return ProviderStatus.STOPPED
        return ProviderStatus.STOPPING if wants_stop and actual is not None else ProviderStatus.PENDING
    if a == "running":
        return ProviderStatus.STOPPING if wants_stop else ProviderStatus.RUNNING
    if a in ("exited", "stopped", "inactive"):
        return ProviderStatus.STOPPED
    if a in ("destroying", "destroyed", "deleted"):
        return ProviderStatus.TERMINATED
    return ProviderStatus.UNKNOWN  # "offline", "unknown", anything new


@dataclass(frozen=True)
class Offer:
    id: int
    gpu_name: str
    num_gpus: int
    gpu_ram_gb: float
    dph_total: float
    min_bid: float
    reliability: float
    geolocation: str
    verified: bool
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Offer:
        return cls(
            id=int(d["id"]), gpu_name=str(d.get("gpu_name", "")), num_gpus=int(d.get("num_gpus") or 0),
            gpu_ram_gb=float(d.get("gpu_ram") or 0) / MB_PER_GB, dph_total=float(d.get("dph_total") or 0),
            min_bid=float(d.get("min_bid") or 0),
            reliability=float(d.get("reliability2", d.get("reliability")) or 0),
            geolocation=str(d.get("geolocation") or ""), verified=bool(d.get("verified")), raw=d,
        )


def offer_cost(o: Offer) -> float:
    """Price weighed by reliability: an unreliable host costs a relaunch."""
    return o.dph_total * (1.0 + RELIABILITY_PENALTY * max(0.0, 1.0 - o.reliability))


def rank_offers(offers: list[Offer], req: GpuRequirements) -> list[Offer]:
    """Offers meeting ``req`` (checked again here: never trust the filter alone), best first."""
    ok = [
        o for o in offers
        if (not req.gpu_names or o.gpu_name in req.gpu_names)
        and o.gpu_ram_gb >= req.min_vram_gb and o.dph_total <= req.max_dph
        and o.reliability >= req.min_reliability and (o.verified or not req.verified)
        and o.num_gpus == req.num_gpus
    ]
    return sorted(ok, key=lambda o: (offer_cost(o), -o.reliability, o.id))


def search_query(req: GpuRequirements, *, interruptible: bool, limit: int) -> dict[str, Any]:
    q: dict[str, Any] = {
        "num_gpus": {"eq": req.num_gpus},
        "gpu_ram": {"gte": req.min_vram_gb * MB_PER_GB},
        "dph_total": {"lte": req.max_dph},
        "reliability": {"gte": req.min_reliability},
        "rentable": {"eq": True},
        "rented": {"eq": False},
        "external": {"eq": False},
        "order": [["dph_total", "asc"]],
        "type": "bid" if interruptible else "on-demand",
        "limit": limit,
    }
    if req.gpu_names:
        q["gpu_name"] = {"in": list(req.gpu_names)}
    if req.verified:
        q["verified"] = {"eq": True}
    return q


def build_onstart(spec: LaunchSpec, *, bootstrap: str | None = None) -> str:
    """The box's start script: the watchdog first (python, or a bash+curl fallback), then the agent."""
    deadline = spec.deadline.astimezone(UTC)
    epoch = int(deadline.timestamp())
    iso = deadline.isoformat()
    fallback = (
        f'while [ "$(date +%s)" -lt {epoch} ]; do sleep 5; done; '
        'until curl -fsS -X DELETE -H "Authorization: Bearer $CONTAINER_API_KEY" '
        '"${VAST_URL:-https://console.vast.ai}/api/v0/instances/$CONTAINER_ID/"; do sleep 10; done'
    )
    lines = [
        "#!/bin/bash",
        "# spotleash: self-destruct watchdog and instance agent",
        'LOGDIR="${HOME:-/root}/spotleash-logs"; mkdir -p "$LOGDIR"',
    ]
    if bootstrap:
        lines.append(f'{bootstrap} >>"$LOGDIR/bootstrap.log" 2>&1')
    lines += [
        "if python -c 'import spotleash.instance_agent.watchdog' >/dev/null 2>&1; then",
        f'  nohup python -m spotleash.instance_agent.watchdog --deadline {shlex.quote(iso)} '
        '>>"$LOGDIR/watchdog.log" 2>&1 &',
        "else",
        f"  nohup bash -c {shlex.quote(fallback)} >>\"$LOGDIR/watchdog.log\" 2>&1 &",
        "fi",
        'nohup python -m spotleash.instance_agent --provider vast >>"$LOGDIR/agent.log" 2>&1 &',
        "",
    ]
    return "\n".join(lines)


def agent_env(spec: LaunchSpec) -> dict[str, str]:
    cfg = {
        "instance_id": spec.instance_id, "lease_id": spec.lease_id, "deployment_id": spec.deployment_id,
        "heartbeat_url": spec.heartbeat_url, "heartbeat_interval_s": spec.heartbeat_interval_s,
        "deadline": spec.deadline.astimezone(UTC).isoformat(),
    }
    env = {**spec.extra_env, AGENT_CONFIG_ENV: json.dumps(cfg)}
    if spec.heartbeat_token:
        env[TOKEN_ENV] = spec.heartbeat_token
    return env


def host_key_line(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.get_base64()}"


# ---------------------------------------------------------------------------------- errors
class VastCreateFailed(ProviderPermanent):
    """A create that failed; ``new_contract`` is the id of an instance it left behind, if any."""

    def __init__(self, msg: str, new_contract: int | None) -> None:
        super().__init__(msg)
        self.new_contract = new_contract


@dataclass
class CallStats:
    """Where the time went: in HTTP calls to VAST, in polling sleeps, in SSH attempts."""

    http_s: float = 0.0
    http_calls: int = 0
    sleep_s: float = 0.0
    ssh_s: float = 0.0
    retries: int = 0

    def snapshot(self) -> CallStats:
        return CallStats(self.http_s, self.http_calls, self.sleep_s, self.ssh_s, self.retries)


def _error_of(r: httpx.Response) -> tuple[str, str, dict[str, Any]]:
    try:
        body = r.json()
    except ValueError:
        return "", r.text[:200], {}
    if not isinstance(body, dict):
        return "", str(body)[:200], {}
    return str(body.get("error") or ""), str(body.get("msg") or body.get("detail") or "")[:300], body


def translate(r: httpx.Response, what: str) -> Exception:
    code, msg, body = _error_of(r)
    text = f"VAST {what}: HTTP {r.status_code} {code} {msg}".strip()
    if r.status_code == 429 or r.status_code >= 500:
        return ProviderTransient(text)
    if code == "no_such_instance":
        return NotFound(text)
    if code == "no_such_ask":
        return CapacityExhausted(text)
    if r.status_code in (401, 403):
        return ProviderPermanent(f"{text} (check VAST_API_KEY / SPOTLEASH_VAST_API_KEY)")
    if "new_contract" in body:
        nc = body.get("new_contract")
        return VastCreateFailed(text, int(nc) if nc is not None else None)
    if r.status_code == 404:
        return NotFound(text)
    return ProviderPermanent(text)


# ---------------------------------------------------------------------------------- provider
class VastProvider:
    name = "vast"

    def __init__(
        self,
        *,
        url: str,
        api_key: str,
        ssh_key_path: Path,
        image: str = "pytorch/pytorch:latest",
        requirements: GpuRequirements | None = None,
        interruptible: bool = False,
        bid_factor: float = 1.15,
        disk_gb: float = 16.0,
        timeout_s: float = 20.0,
        attempts: int = 5,
        search_limit: int = 20,
        bootstrap: str | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        if not api_key:
            raise ConfigError("VAST.ai needs an API key: set SPOTLEASH_VAST_API_KEY (or VAST_API_KEY)")
        self.url = url.rstrip("/")
        self._api_key = api_key
        self.ssh_key_path = ssh_key_path
        self.image = image
        self.requirements = requirements or GpuRequirements()
        self.interruptible = interruptible
        self.bid_factor = bid_factor
        self.disk_gb = disk_gb
        self.attempts = attempts
        self.search_limit = search_limit
        self.bootstrap = bootstrap
        self.stats = CallStats()
        self._http = client or httpx.Client(base_url=self.url, timeout=timeout_s)
        self._pkey: paramiko.PKey | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> VastProvider:
        if settings.vast_api_key is None or not settings.vast_api_key.get_secret_value():
            raise ConfigError("GPU launches need SPOTLEASH_VAST_API_KEY (the VAST.ai API key); it is not set")
        if not settings.vast_url:
            raise ConfigError("SPOTLEASH_VAST_URL is empty; unset it for the real service")
        req = GpuRequirements(
            gpu_names=tuple(settings.gpu_names), min_vram_gb=settings.gpu_min_vram_gb,
            max_dph=settings.gpu_max_dph, min_reliability=settings.gpu_min_reliability,
        )
        kwargs.setdefault("ssh_key_path", settings.state_dir / "vast_ssh_key")
        kwargs.setdefault("interruptible", settings.vast_interruptible)
        return cls(url=settings.vast_url, api_key=settings.vast_api_key.get_secret_value(),
                   image=settings.gpu_image, requirements=req, **kwargs)

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------ HTTP
    def _once(self, method: str, path: str, what: str, *, json_body: Any = None,
              params: dict[str, str] | None = None, key: str | None = None) -> httpx.Response:
        t0 = time.monotonic()
        try:
            r = self._http.request(method, path, json=json_body, params=params,
                                   headers={"Authorization": f"Bearer {key or self._api_key}",
                                            "Accept": "application/json"})
        except httpx.TimeoutException as e:
            raise ProviderTransient(f"VAST {what}: timed out") from e
        except httpx.TransportError as e:
            raise ProviderTransient(f"VAST {what}: {type(e).__name__}: {e}") from e
        finally:
            self.stats.http_s += time.monotonic() - t0
            self.stats.http_calls += 1
        return r

    def _call(self, method: str, path: str, what: str, *, json_body: Any = None,
              params: dict[str, str] | None = None, retry: bool = True) -> Any:
        """One API call, retried with backoff on 429/5xx/timeouts; errors translated."""
        def attempt() -> Any:
            r = self._once(method, path, what, json_body=json_body, params=params)
            if r.status_code >= 400:
                err = translate(r, what)
                if isinstance(err, ProviderTransient):
                    log.warning("VAST call failed; will retry", call=what, status=r.status_code)
                raise err
            try:
                return r.json()
            except ValueError as e:
                raise ProviderTransient(f"VAST {what}: answer is not JSON: {r.text[:100]!r}") from e

        if not retry:
            return attempt()
        for a in Retrying(retry=retry_if_exception_type(ProviderTransient),
                          stop=stop_after_attempt(self.attempts),
                          wait=wait_exponential_jitter(multiplier=0.2, max=4.0, jitter=0.2), reraise=True,
                          before_sleep=lambda _s: self._count_retry()):
            with a:
                return attempt()
        raise AssertionError("unreachable")  # pragma: no cover

    def _count_retry(self) -> None:
        self.stats.retries += 1

    # ------------------------------------------------------------------ offers
    def search(self, req: GpuRequirements | None = None) -> list[Offer]:
        req = req or self.requirements
        body = self._call("POST", "/api/v0/bundles/", "search offers",
                          json_body=search_query(req, interruptible=self.interruptible, limit=self.search_limit))
        offers = [Offer.from_json(o) for o in (body.get("offers") or [])]
        return rank_offers(offers, req)

    # ------------------------------------------------------------------ instances
    def _to_instance(self, d: dict[str, Any]) -> ProviderInstance:
        start = d.get("start_date")
        return ProviderInstance(
            provider=self.name, provider_id=str(d["id"]),
            status=map_status(d.get("actual_status"), d.get("cur_state"), d.get("intended_status")),
            labels=parse_label(d.get("label")),
            created_at=datetime.fromtimestamp(float(start), UTC) if start else None,
            zone=d.get("geolocation"), machine=d.get("gpu_name"),
            price_per_hour=float(d.get("dph_total") or 0.0),
            ssh_host=d.get("ssh_host") or d.get("public_ipaddr"),
            ssh_port=int(d["ssh_port"]) if d.get("ssh_port") else None,
            native_status=d.get("actual_status") or (d.get("status_msg") or None),
        )

    def get_raw(self, provider_id: str) -> dict[str, Any] | None:
        try:
            body = self._call("GET", f"/api/v0/instances/{int(provider_id)}/", "show instance",
                              params={"owner": "me"})
        except NotFound:
            return None
        row = body.get("instances") if isinstance(body, dict) else None
        return row if isinstance(row, dict) else None

    def get(self, provider_id: str) -> ProviderInstance | None:
        row = self.get_raw(provider_id)
        return self._to_instance(row) if row else None

    def _all(self) -> Iterator[dict[str, Any]]:
        params: dict[str, str] = {"select_filters": "{}", "order_by": json.dumps([{"col": "id", "dir": "asc"}]),
                                  "limit": str(V1_PAGE)}
        for _ in range(10_000):
            body = self._call("GET", "/api/v1/instances/", "list instances", params=params)
            if not isinstance(body, dict) or not isinstance(body.get("instances"), list):
                raise ProviderTransient(f"VAST list instances: unexpected answer {str(body)[:100]!r}")
            yield from body["instances"]
            nxt = body.get("next_token")
            if not nxt:
                return
            params["after_token"] = str(nxt)
        raise ProviderTransient("VAST list instances: paging never ended")

    def list_owned(self, deployment_id: str) -> list[ProviderInstance]:
        out = []
        for row in self._all():
            labels = parse_label(row.get("label"))
            if labels.get(LABEL_DEPLOYMENT) == deployment_id:
                out.append(self._to_instance(row))
        return out

    def find(self, instance_id: str) -> ProviderInstance | None:
        for row in self._all():
            if parse_label(row.get("label")).get(LABEL_INSTANCE) == instance_id:
                return self._to_instance(row)
        return None

    def delete(self, provider_id: str) -> None:
        try:
            self._call("DELETE", f"/api/v0/instances/{int(provider_id)}/", "destroy instance", json_body={})
        except NotFound:
            log.info("instance already gone", provider_id=provider_id)
            return
        log.info("instance destroyed", provider_id=provider_id)

    def create(self, spec: LaunchSpec) -> ProviderInstance:
        existing = self.find(spec.instance_id)
        if existing is not None and existing.status is not ProviderStatus.TERMINATED:
            log.info("instance exists already; not creating another", instance_id=spec.instance_id,
                     provider_id=existing.provider_id)
            return existing
        self.ensure_ssh_key()
        req = spec.gpu or self.requirements
        offers = self.search(req)
        if not offers:
            raise CapacityExhausted(f"no VAST offer matches {req}")
        label = make_label(spec.deployment_id, spec.lease_id, spec.instance_id)
        body: dict[str, Any] = {
            "client_id": "me", "image": spec.image or self.image, "disk": self.disk_gb, "label": label,
            "env": agent_env(spec), "onstart": build_onstart(spec, bootstrap=self.bootstrap),
            "runtype": "ssh_direct ssh_proxy", "cancel_unavail": True,
        }
        tried = []
        for offer in offers:
            tried.append(offer.id)
            if self.interruptible:
                body["price"] = round(max(offer.min_bid * self.bid_factor, offer.min_bid + 0.001), 4)
            else:
                body.pop("price", None)
            new_id = self._create_on(offer, body, spec)
            if new_id is not None:
                log.info("instance created", instance_id=spec.instance_id, provider_id=new_id, offer=offer.id,
                         gpu=offer.gpu_name, dph_total=offer.dph_total)
                inst = self.get(str(new_id))
                return inst or ProviderInstance(self.name, str(new_id), ProviderStatus.PENDING, spec.labels,
                                                price_per_hour=offer.dph_total, machine=offer.gpu_name)
        raise CapacityExhausted(f"every VAST offer failed for {spec.instance_id} (tried {tried})")

    def _create_on(self, offer: Offer, body: dict[str, Any], spec: LaunchSpec) -> int | None:
        """The new contract id, or None if this offer cannot be had (gone, bid refused)."""
        path = f"/api/v0/asks/{offer.id}/"
        for attempt in range(self.attempts):
            try:
                res = self._call("PUT", path, "create instance", json_body=body, retry=False)
            except CapacityExhausted:
                log.info("offer gone; taking the next one", offer=offer.id)
                return None
            except VastCreateFailed as e:
                log.warning("create failed and left an instance; destroying it", offer=offer.id,
                            provider_id=e.new_contract, reason=str(e))
                if e.new_contract is not None:
                    self.delete(str(e.new_contract))
                return None
            except ProviderTransient as e:
                # The create may have happened even though we saw no answer: look before retrying.
                found = self.find(spec.instance_id)
                if found is not None:
                    return int(found.provider_id)
                if attempt == self.attempts - 1:
                    raise
                pause = min(4.0, 0.2 * 2**attempt)
                log.warning("create failed transiently; retrying", offer=offer.id, reason=str(e), pause_s=pause)
                self._sleep(pause)
                continue
            if not isinstance(res, dict) or not res.get("success") or res.get("new_contract") is None:
                raise ProviderPermanent(f"VAST create instance: unexpected answer {str(res)[:200]!r}")
            return int(res["new_contract"])
        return None

    def _sleep(self, s: float) -> None:
        t0 = time.monotonic()
        time.sleep(s)
        self.stats.sleep_s += time.monotonic() - t0

    def wait_running(self, provider_id: str, *, timeout_s: float = 600.0, poll_s: float = 1.0,
                     on_poll: Callable[[ProviderInstance | None], None] | None = None) -> ProviderInstance:
        """Poll about every second until RUNNING with an SSH endpoint; null statuses are just 'not yet'."""
        deadline = time.monotonic() + timeout_s
        last: ProviderInstance | None = None
        while True:
            try:
                last = self.get(provider_id)
            except ProviderTransient as e:
                log.warning("poll failed; still waiting", provider_id=provider_id, reason=str(e))
            else:
                if on_poll is not None:
                    on_poll(last)
                if last is None:
                    raise NotFound(f"VAST instance {provider_id} vanished while we waited for it")
                if last.status is ProviderStatus.RUNNING and last.ssh_host and last.ssh_port:
                    return last
                if last.status in (ProviderStatus.STOPPED, ProviderStatus.TERMINATED):
                    raise CapacityExhausted(f"VAST instance {provider_id} stopped before running "
                                            f"({last.native_status})")
            left = deadline - time.monotonic()
            if left <= 0:
                state = last.native_status if last else "unknown"
                raise ProviderTransient(f"VAST instance {provider_id} not running after {timeout_s:.0f} s "
                                        f"(last status: {state})")
            self._sleep(min(poll_s, left))

    # ------------------------------------------------------------------ SSH
    def ensure_ssh_key(self) -> paramiko.PKey:
        """Our SSH key (created once, mode 0600) registered with the account."""
        if self._pkey is None:
            p = self.ssh_key_path
            if p.exists():
                self._pkey = paramiko.ECDSAKey.from_private_key_file(str(p))
            else:
                p.parent.mkdir(parents=True, exist_ok=True)
                key = paramiko.ECDSAKey.generate()
                buf = io.StringIO()
                key.write_private_key(buf)
                p.touch(mode=0o600)
                p.write_text(buf.getvalue())
                self._pkey = key
        pub = host_key_line(self._pkey)
        keys = self._call("GET", "/api/v0/ssh/", "list ssh keys")
        rows = keys if isinstance(keys, list) else (keys.get("keys") or []) if isinstance(keys, dict) else []
        if not any(str(k.get("public_key") or k.get("ssh_key") or "").split()[:2] == pub.split()
                   for k in rows if isinstance(k, dict)):
            self._call("POST", "/api/v0/ssh/", "add ssh key", json_body={"ssh_key": pub + " spotleash"})
        return self._pkey

    def learn_host_key(self, host: str, port: int, *, timeout_s: float = 10.0) -> str:
        """First contact: read the server's host key (nothing is sent but the SSH handshake)."""
        t0 = time.monotonic()
        sock = socket.create_connection((host, port), timeout=timeout_s)
        t = paramiko.Transport(sock)
        try:
            t.start_client(timeout=timeout_s)
            return host_key_line(t.get_remote_server_key())
        finally:
            t.close()
            self.stats.ssh_s += time.monotonic() - t0

    @contextmanager
    def ssh(self, inst: ProviderInstance, host_key: str, *, timeout_s: float = 15.0) -> Iterator[paramiko.SSHClient]:
        """An SSH client that only accepts ``host_key`` (RejectPolicy for anything else)."""
        if not inst.ssh_host or not inst.ssh_port:
            raise ProviderTransient(f"VAST instance {inst.provider_id} has no SSH endpoint yet")
        kind, b64 = host_key.split()[:2]
        c = paramiko.SSHClient()
        c.set_missing_host_key_policy(paramiko.RejectPolicy())
        hk = paramiko.PKey.from_type_string(kind, base64.b64decode(b64))
        c.get_host_keys().add(f"[{inst.ssh_host}]:{inst.ssh_port}" if inst.ssh_port != 22 else inst.ssh_host, kind, hk)
        t0 = time.monotonic()
        try:
            c.connect(inst.ssh_host, inst.ssh_port, username=SSH_USER, pkey=self.ensure_ssh_key_local(),
                      look_for_keys=False, allow_agent=False, timeout=timeout_s, banner_timeout=timeout_s,
                      auth_timeout=timeout_s)
        finally:
            self.stats.ssh_s += time.monotonic() - t0
        try:
            yield c
        finally:
            c.close()

    def ensure_ssh_key_local(self) -> paramiko.PKey:
        if self._pkey is None:
            return self.ensure_ssh_key()
        return self._pkey

    def wait_ssh(self, inst: ProviderInstance, *, host_key: str | None = None, timeout_s: float = 120.0) -> str:
        """Retry (with backoff) until SSH answers ``true``; returns the pinned host key to store."""
        deadline = time.monotonic() + timeout_s
        pause = 0.25
        last_err = ""
        while True:
            try:
                if host_key is None:
                    host_key = self.learn_host_key(str(inst.ssh_host), int(inst.ssh_port or 22))
                    log.info("host key learned at first contact", provider_id=inst.provider_id,
                             host_key=host_key.split()[0])
                with self.ssh(inst, host_key) as c:
                    code, _, err = run(c, "true", timeout_s=15.0)
                    if code == 0:
                        return host_key
                    last_err = f"exit {code}: {err[:100]}"
            except paramiko.BadHostKeyException:
                raise
            except (OSError, paramiko.SSHException, EOFError) as e:
                last_err = f"{type(e).__name__}: {e}"
            if time.monotonic() + pause > deadline:
                raise ProviderTransient(f"SSH to VAST instance {inst.provider_id} not ready after "
                                        f"{timeout_s:.0f} s ({last_err})")
            self._sleep(pause)
            pause = min(pause * 2, 5.0)


def run(client: paramiko.SSHClient, cmd: str, *, timeout_s: float = 60.0, stdin: bytes | None = None) -> tuple[int, str, str]:
    """Run ``cmd`` over SSH: (exit code, stdout, stderr)."""
    i, o, e = client.exec_command(cmd, timeout=timeout_s)
    if stdin is not None:
        i.write(stdin)
        i.channel.shutdown_write()
    out = o.read().decode("utf-8", errors="replace")
    err = e.read().decode("utf-8", errors="replace")
    return o.channel.recv_exit_status(), out, err
