"""VAST.ai provider: the ``Provider`` verbs over the REST client, SSH (paramiko) loaded only when used.

Traps handled (platform-facts): ``actual_status`` null while loading; a failed bid leaving a
stopped instance whose id comes back in the error (``cancel_unavail`` sent, any id destroyed);
offers vanishing between search and create (next offer); 429/5xx/timeouts (bounded backoff);
``no_such_instance`` on delete (already gone).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
    stop_before_delay,
    wait_exponential,
    wait_fixed,
)

from spotleash.errors import CapacityExhausted, ConfigError, NotFound, ProviderPermanent, ProviderTransient
from spotleash.log import get_logger
from spotleash.providers.base import (
    LABEL_DEPLOYMENT,
    LABEL_INSTANCE,
    GpuRequirements,
    LaunchSpec,
    ProviderInstance,
    ProviderStatus,
)
from spotleash.providers.vast.client import CallStats, VastClient, VastCreateFailed
from spotleash.providers.vast.mapping import make_label, map_status, parse_label
from spotleash.providers.vast.offers import Offer, rank_offers, search_query
from spotleash.providers.vast.onstart import agent_env, build_onstart

if TYPE_CHECKING:
    import paramiko

    from spotleash.config import Settings

log = get_logger(__name__)

V1_PAGE = 25


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
        self.api = VastClient(url, api_key, timeout_s=timeout_s, attempts=attempts, client=client)
        self.url = self.api.url
        self.stats: CallStats = self.api.stats
        self.ssh_key_path = ssh_key_path
        self.image = image
        self.requirements = requirements or GpuRequirements()
        self.interruptible = interruptible
        self.bid_factor = bid_factor
        self.disk_gb = disk_gb
        self.attempts = attempts
        self.search_limit = search_limit
        self.bootstrap = bootstrap
        self._pkey: paramiko.PKey | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> VastProvider:
        if settings.vast_api_key is None or not settings.vast_api_key.get_secret_value():
            raise ConfigError("GPU launches need SPOTLEASH_VAST_API_KEY (the VAST.ai API key); it is not set")
        if not settings.vast_url:
            raise ConfigError("SPOTLEASH_VAST_URL is empty; unset it for the real service")
        req = GpuRequirements.from_settings(settings)
        kwargs.setdefault("ssh_key_path", settings.state_dir / "vast_ssh_key")
        kwargs.setdefault("interruptible", settings.vast_interruptible)
        return cls(url=settings.vast_url, api_key=settings.vast_api_key.get_secret_value(),
                   image=settings.gpu_image, requirements=req, **kwargs)

    def close(self) -> None:
        self.api.close()

    # ------------------------------------------------------------------ offers
    def search(self, req: GpuRequirements | None = None) -> list[Offer]:
        req = req or self.requirements
        body = self.api.call("POST", "/api/v0/bundles/", "search offers",
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
            storage_per_hour=float(d.get("storage_total_cost") or 0.0),
            ssh_host=d.get("ssh_host") or d.get("public_ipaddr"),
            ssh_port=int(d["ssh_port"]) if d.get("ssh_port") else None,
            native_status=d.get("actual_status") or (d.get("status_msg") or None),
        )

    def get_raw(self, provider_id: str) -> dict[str, Any] | None:
        try:
            body = self.api.call("GET", f"/api/v0/instances/{int(provider_id)}/", "show instance",
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
            body = self.api.call("GET", "/api/v1/instances/", "list instances", params=params)
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
            self.api.call("DELETE", f"/api/v0/instances/{int(provider_id)}/", "destroy instance", json_body={})
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

        def attempt() -> int | None:
            try:
                res = self.api.call("PUT", path, "create instance", json_body=body, retry=False)
            except CapacityExhausted:
                log.info("offer gone; taking the next one", offer=offer.id)
                return None
            except VastCreateFailed as e:
                log.warning("create failed and left an instance; destroying it", offer=offer.id,
                            provider_id=e.new_contract, reason=str(e))
                if e.new_contract is not None:
                    self.delete(str(e.new_contract))
                return None
            except ProviderTransient:
                # The create may have happened even though we saw no answer: look before retrying.
                found = self.find(spec.instance_id)
                if found is not None:
                    return int(found.provider_id)
                raise
            if not isinstance(res, dict) or not res.get("success") or res.get("new_contract") is None:
                raise ProviderPermanent(f"VAST create instance: unexpected answer {str(res)[:200]!r}")
            return int(res["new_contract"])

        def before_sleep(rs: RetryCallState) -> None:
            log.warning("create failed transiently; retrying", offer=offer.id,
                        reason=str(rs.outcome.exception()) if rs.outcome else None,
                        pause_s=rs.next_action.sleep if rs.next_action else None)

        retrying = Retrying(retry=retry_if_exception_type(ProviderTransient), stop=stop_after_attempt(self.attempts),
                            wait=wait_exponential(multiplier=0.2, max=4.0), sleep=self.api.sleep,
                            before_sleep=before_sleep, reraise=True)
        created: int | None = retrying(attempt)
        return created

    def wait_running(self, provider_id: str, *, timeout_s: float = 600.0, poll_s: float = 1.0,
                     on_poll: Callable[[ProviderInstance | None], None] | None = None) -> ProviderInstance:
        """Poll about every second until RUNNING with an SSH endpoint; null statuses are just 'not yet'."""
        last: ProviderInstance | None = None

        def look() -> ProviderInstance | None:
            nonlocal last
            try:
                last = self.get(provider_id)
            except ProviderTransient as e:
                log.warning("poll failed; still waiting", provider_id=provider_id, reason=str(e))
                return None
            if on_poll is not None:
                on_poll(last)
            if last is None:
                raise NotFound(f"VAST instance {provider_id} vanished while we waited for it")
            if last.status is ProviderStatus.RUNNING and last.ssh_host and last.ssh_port:
                return last
            if last.status in (ProviderStatus.STOPPED, ProviderStatus.TERMINATED):
                raise CapacityExhausted(f"VAST instance {provider_id} stopped before running "
                                        f"({last.native_status})")
            return None

        waiting = Retrying(retry=retry_if_result(lambda got: got is None), stop=stop_after_delay(timeout_s),
                           wait=wait_fixed(poll_s), sleep=self.api.sleep)
        try:
            running = waiting(look)
        except RetryError:
            state = last.native_status if last else "unknown"
            raise ProviderTransient(f"VAST instance {provider_id} not running after {timeout_s:.0f} s "
                                    f"(last status: {state})") from None
        assert running is not None  # retried while None
        return running

    # ------------------------------------------------------------------ SSH
    def ensure_ssh_key(self) -> paramiko.PKey:
        """Our SSH key (created once, mode 0600) registered with the account."""
        from spotleash.providers.vast import ssh

        if self._pkey is None:
            self._pkey = ssh.load_or_create_key(self.ssh_key_path)
        pub = ssh.host_key_line(self._pkey)
        keys = self.api.call("GET", "/api/v0/ssh/", "list ssh keys")
        rows = keys if isinstance(keys, list) else (keys.get("keys") or []) if isinstance(keys, dict) else []
        if not any(str(k.get("public_key") or k.get("ssh_key") or "").split()[:2] == pub.split()
                   for k in rows if isinstance(k, dict)):
            self.api.call("POST", "/api/v0/ssh/", "add ssh key", json_body={"ssh_key": pub + " spotleash"})
        return self._pkey

    def learn_host_key(self, host: str, port: int, *, timeout_s: float = 10.0) -> str:
        """First contact: the server's host key. ProviderTransient when the box does not answer yet."""
        from spotleash.providers.vast import ssh

        t0 = time.monotonic()
        try:
            return ssh.learn_host_key(host, port, timeout_s=timeout_s)
        except ssh.UNREACHABLE as e:
            raise ProviderTransient(f"SSH to {host}:{port}: {type(e).__name__}: {e}") from e
        finally:
            self.stats.ssh_s += time.monotonic() - t0

    @contextmanager
    def ssh(self, inst: ProviderInstance, host_key: str, *, timeout_s: float = 15.0) -> Iterator[paramiko.SSHClient]:
        """An SSH client that only accepts ``host_key`` (RejectPolicy for anything else)."""
        from spotleash.providers.vast import ssh

        if not inst.ssh_host or not inst.ssh_port:
            raise ProviderTransient(f"VAST instance {inst.provider_id} has no SSH endpoint yet")
        with ExitStack() as stack:
            t0 = time.monotonic()
            try:
                client = stack.enter_context(ssh.connect(inst.ssh_host, inst.ssh_port, host_key,
                                                         self.ensure_ssh_key_local(), timeout_s=timeout_s))
            finally:
                self.stats.ssh_s += time.monotonic() - t0
            yield client

    def ensure_ssh_key_local(self) -> paramiko.PKey:
        if self._pkey is None:
            return self.ensure_ssh_key()
        return self._pkey

    def wait_ssh(self, inst: ProviderInstance, *, host_key: str | None = None, timeout_s: float = 120.0) -> str:
        """Retry (with backoff) until SSH answers ``true``; returns the pinned host key to store."""
        from spotleash.providers.vast import ssh

        pinned = host_key
        last_err = ""

        def attempt() -> str | None:
            nonlocal pinned, last_err
            try:
                if pinned is None:
                    pinned = self.learn_host_key(str(inst.ssh_host), int(inst.ssh_port or 22))
                    log.info("host key learned at first contact", provider_id=inst.provider_id,
                             host_key=pinned.split()[0])
                with self.ssh(inst, pinned) as c:
                    code, _, err = ssh.run(c, "true", timeout_s=15.0)
                    if code == 0:
                        return pinned
                    last_err = f"exit {code}: {err[:100]}"
            except ssh.BadHostKey:
                raise  # not the box we pinned: never retried
            except ProviderTransient as e:
                last_err = str(e)
            except ssh.UNREACHABLE as e:
                last_err = f"{type(e).__name__}: {e}"
            return None

        waiting = Retrying(retry=retry_if_result(lambda got: got is None), stop=stop_before_delay(timeout_s),
                           wait=wait_exponential(multiplier=0.25, max=5.0), sleep=self.api.sleep)
        try:
            answered = waiting(attempt)
        except RetryError:
            raise ProviderTransient(f"SSH to VAST instance {inst.provider_id} not ready after "
                                    f"{timeout_s:.0f} s ({last_err})") from None
        assert answered is not None  # retried while None
        return answered
