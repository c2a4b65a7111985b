"""Compute Engine Spot VMs behind the ``Provider`` protocol, with google-cloud-compute (REST).

The same code talks to real GCE (``endpoint=None``: default credentials) and to the local fake
(``endpoint="http://127.0.0.1:PORT"``: anonymous credentials). Operations are waited on with our
own ``ZoneOperationsClient`` built with the same client options (the extended operation returned by
``insert()`` would poll the real googleapis host — see platform-facts).

Every call is retried a bounded number of times with exponential backoff on transient errors
(429, 5xx, timeouts, connection errors); SDK errors are translated into ``spotleash.errors``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

import requests
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth import exceptions as auth_exc
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import compute_v1
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from spotleash.adapters.google_errors import is_transient
from spotleash.errors import CapacityExhausted, NotFound, ProviderPermanent, ProviderTransient
from spotleash.log import get_logger
from spotleash.providers.base import (
    LABEL_DEPLOYMENT,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    MANAGED_VALUE,
    LaunchSpec,
    ProviderInstance,
    ProviderStatus,
)
from spotleash.providers.gce.startup_script import render_startup_script
from spotleash.wire.agent_config import FRONT_TAG, metadata_values

if TYPE_CHECKING:
    from spotleash.config import Settings

log = get_logger(__name__)
T = TypeVar("T")

# requestId must be a UUID on GCE: derive it from the instance id (and the zone, so that a retry in
# the next zone after a stock-out is not answered with the first zone's failed operation).
REQUEST_ID_NAMESPACE = uuid.UUID("7d0f3c52-5b1e-4b7e-9d7e-2f8f3c1a9e11")
CAPACITY_CODES = frozenset(
    {"ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", "RESOURCE_POOL_EXHAUSTED", "STOCKOUT"}
)
MIN_RUN_S = 30  # GCE refuses a shorter max_run_duration
DEFAULT_IMAGE = "projects/debian-cloud/global/images/family/debian-12"
# The VM's own identity may write logs and read objects (IAM narrows it to the package bucket).
VM_SCOPES = ("https://www.googleapis.com/auth/logging.write",
             "https://www.googleapis.com/auth/devstorage.read_only")


def map_status(native: str | None) -> ProviderStatus:
    """The one place GCE's instance statuses become ours."""
    return {
        "PROVISIONING": ProviderStatus.PENDING,
        "STAGING": ProviderStatus.PENDING,
        "REPAIRING": ProviderStatus.PENDING,
        "RUNNING": ProviderStatus.RUNNING,
        "STOPPING": ProviderStatus.STOPPING,
        "SUSPENDING": ProviderStatus.STOPPING,
        "SUSPENDED": ProviderStatus.STOPPED,
        "STOPPED": ProviderStatus.STOPPED,
        # GCE's TERMINATED is a *stopped* VM: it still exists and its disk still bills.
        "TERMINATED": ProviderStatus.STOPPED,
    }.get(native or "", ProviderStatus.UNKNOWN)


def request_id_for(instance_id: str, zone: str) -> str:
    return str(uuid.uuid5(REQUEST_ID_NAMESPACE, f"{instance_id}/{zone}"))


def _is_capacity(e: gexc.GoogleAPICallError) -> bool:
    reasons = " ".join(str(x.get("reason", "")) for x in (e.errors or []) if isinstance(x, dict))
    text = f"{e.message} {reasons}"
    return any(code in text for code in CAPACITY_CODES)


def translate(e: Exception, what: str) -> Exception:
    """An SDK / transport error as a spotleash error (the caller raises it ``from e``)."""
    if isinstance(e, gexc.GoogleAPICallError):
        code = e.code or 0
        if _is_capacity(e):
            return CapacityExhausted(f"{what}: {e.message}")
        if isinstance(e, gexc.NotFound) or code == 404:
            return NotFound(f"{what}: {e.message}")
        if is_transient(e):
            return ProviderTransient(f"{what}: HTTP {code} {e.message}")
        return ProviderPermanent(f"{what}: HTTP {code} {e.message}")
    if is_transient(e):
        return ProviderTransient(f"{what}: {type(e).__name__}: {e}")
    return ProviderPermanent(f"{what}: {type(e).__name__}: {e}")


_SDK_ERRORS = (
    gexc.GoogleAPICallError,
    requests.exceptions.RequestException,
    auth_exc.TransportError,
    TimeoutError,
    ConnectionError,
)


class GceProvider:
    name = "gce"

    def __init__(
        self,
        project: str,
        zones: tuple[str, ...] | list[str],
        *,
        endpoint: str | None = None,
        credentials: Credentials | None = None,
        image: str = DEFAULT_IMAGE,
        disk_gb: int = 20,
        network: str = "global/networks/default",
        retry_attempts: int = 5,
        retry_base_s: float = 0.5,
        retry_max_s: float = 8.0,
        call_timeout_s: float = 30.0,
        operation_timeout_s: float = 300.0,
        page_size: int = 500,
        service_account: str | None = None,
    ) -> None:
        if not zones:
            raise ValueError("GceProvider needs at least one zone")
        self.project = project
        self.zones = tuple(zones)
        self.endpoint = endpoint
        self.service_account = service_account  # least privilege: logging + package read, never cloud-platform
        self.image, self.disk_gb, self.network = image, disk_gb, network
        self.retry_attempts, self.retry_base_s, self.retry_max_s = retry_attempts, retry_base_s, retry_max_s
        self.call_timeout_s, self.operation_timeout_s, self.page_size = call_timeout_s, operation_timeout_s, page_size
        options = ClientOptions(api_endpoint=endpoint) if endpoint else None
        if credentials is None and endpoint:
            credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
        self._instances = compute_v1.InstancesClient(client_options=options, credentials=credentials)
        self._operations = compute_v1.ZoneOperationsClient(client_options=options, credentials=credentials)
        self._zone_of: dict[str, str] = {}  # instance name -> zone, learned from create / list

    @classmethod
    def from_settings(cls, settings: Settings) -> GceProvider:
        return cls(
            project=settings.project,
            zones=tuple(settings.zones),
            endpoint=settings.compute_endpoint,
            service_account=settings.vm_service_account,
        )

    # ------------------------------------------------------------------ plumbing
    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` with bounded retries on transient errors; SDK errors translated."""
        retrying = Retrying(
            retry=retry_if_exception_type(ProviderTransient),
            stop=stop_after_attempt(self.retry_attempts),
            wait=wait_exponential(multiplier=self.retry_base_s, max=self.retry_max_s),
            reraise=True,
            before_sleep=lambda rs: log.warning(
                "gce call failed, retrying", operation=what, attempt=rs.attempt_number,
                reason=str(rs.outcome.exception()) if rs.outcome else None,
            ),
        )
        for attempt in retrying:
            with attempt:
                try:
                    return fn()
                except _SDK_ERRORS as e:
                    raise translate(e, what) from e
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    def _to_instance(self, inst: compute_v1.Instance) -> ProviderInstance:
        zone = inst.zone.rsplit("/", 1)[-1] if inst.zone else None
        if zone:
            self._zone_of[inst.name] = zone
        created = None
        if inst.creation_timestamp:
            try:
                created = datetime.fromisoformat(inst.creation_timestamp.replace("Z", "+00:00"))
            except ValueError:
                created = None
        return ProviderInstance(
            provider=self.name,
            provider_id=inst.name,
            status=map_status(inst.status),
            labels=dict(inst.labels),
            created_at=created,
            zone=zone,
            machine=inst.machine_type.rsplit("/", 1)[-1] if inst.machine_type else None,
            native_status=inst.status or None,
        )

    def _aggregated(self, filter_: str) -> list[ProviderInstance]:
        """Every instance matching ``filter_`` in every zone, all pages; raises if any scope failed."""

        def run() -> list[ProviderInstance]:
            request = compute_v1.AggregatedListInstancesRequest(
                project=self.project, filter=filter_, max_results=self.page_size
            )
            found: list[ProviderInstance] = []
            pager = self._instances.aggregated_list(request=request, timeout=self.call_timeout_s)
            for scope, scoped in pager:
                if getattr(scoped.warning, "code", None) == "UNREACHABLE":
                    raise ProviderTransient(f"aggregatedList: scope {scope} unreachable; listing is incomplete")
                found.extend(self._to_instance(i) for i in scoped.instances)
            return found

        return self._call("instances.aggregatedList", run)

    def _resolve_zone(self, provider_id: str) -> tuple[str | None, str]:
        if "/" in provider_id:
            zone, name = provider_id.rsplit("/", 1)
            return zone.rsplit("/", 1)[-1], name
        return self._zone_of.get(provider_id), provider_id

    def _wait(self, zone: str, operation: str) -> compute_v1.Operation:
        """The operation once DONE; each ``wait`` call long-polls, so there is no pause between calls."""
        request = compute_v1.WaitZoneOperationRequest(project=self.project, zone=zone, operation=operation)
        waiting = Retrying(
            retry=retry_if_result(lambda op: op.status != compute_v1.Operation.Status.DONE),
            stop=stop_after_delay(self.operation_timeout_s),
        )
        try:
            done: compute_v1.Operation = waiting(
                self._call, "zoneOperations.wait",
                lambda: self._operations.wait(request=request, timeout=self.call_timeout_s + 120),
            )
        except RetryError as e:
            status = e.last_attempt.result().status
            raise ProviderTransient(
                f"operation {operation} in {zone} still {status} after {self.operation_timeout_s}s"
            ) from None
        return done

    # ------------------------------------------------------------------ the protocol
    def _resource(self, spec: LaunchSpec, zone: str) -> compute_v1.Instance:
        # The agent's config and heartbeat token ride in instance metadata: anyone holding
        # compute.instances.get on the project can read the token. It only authorises heartbeats of this
        # one instance (the control plane keeps its sha256), so the exposure is bounded; it never goes in
        # a label or a log.
        items = [
            compute_v1.Items(key="startup-script", value=render_startup_script()),
            *(compute_v1.Items(key=k, value=v) for k, v in metadata_values(spec).items()),
        ]
        return compute_v1.Instance(
            name=spec.instance_id,
            machine_type=f"zones/{zone}/machineTypes/{spec.machine_type}",
            labels=spec.labels,
            metadata=compute_v1.Metadata(items=items),
            disks=[
                compute_v1.AttachedDisk(
                    boot=True,
                    auto_delete=True,
                    initialize_params=compute_v1.AttachedDiskInitializeParams(
                        source_image=self.image, disk_size_gb=self.disk_gb
                    ),
                )
            ],
            tags=compute_v1.Tags(items=[FRONT_TAG]),  # the firewall opens the TLS front's port to these only
            network_interfaces=[
                compute_v1.NetworkInterface(
                    network=self.network,
                    access_configs=[compute_v1.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT")],
                )
            ],
            scheduling=compute_v1.Scheduling(
                provisioning_model="SPOT",
                instance_termination_action="DELETE",
                automatic_restart=False,
                on_host_maintenance="TERMINATE",
                max_run_duration=compute_v1.Duration(seconds=spec.max_run_s),
            ),
            deletion_protection=False,
            service_accounts=[
                compute_v1.ServiceAccount(email=self.service_account, scopes=list(VM_SCOPES))
            ]
            if self.service_account
            else [],
        )

    def create(self, spec: LaunchSpec) -> ProviderInstance:
        existing = self.find(spec.instance_id)
        if existing is not None:
            log.info("gce create: already exists, reconciled by label", instance_id=spec.instance_id, zone=existing.zone)
            return existing
        if spec.max_run_s < MIN_RUN_S:
            raise ProviderPermanent(
                f"{spec.instance_id}: remaining allowance {spec.max_run_s}s is below GCE's minimum max_run_duration ({MIN_RUN_S}s)"
            )
        exhausted: list[str] = []
        for zone in spec.zones or self.zones:
            got = self._create_in_zone(spec, zone)
            if got is None:
                exhausted.append(zone)
                log.warning("gce zone exhausted, trying the next", instance_id=spec.instance_id, zone=zone, reason="capacity")
                continue
            return got
        raise CapacityExhausted(f"{spec.instance_id}: no Spot capacity in {', '.join(exhausted)}")

    def _create_in_zone(self, spec: LaunchSpec, zone: str) -> ProviderInstance | None:
        """The instance, or None when the zone has no capacity."""
        request = compute_v1.InsertInstanceRequest(
            project=self.project,
            zone=zone,
            instance_resource=self._resource(spec, zone),
            request_id=request_id_for(spec.instance_id, zone),
        )
        try:
            op = self._call(
                "instances.insert", lambda: self._instances.insert_unary(request=request, timeout=self.call_timeout_s)
            )
        except CapacityExhausted:
            return None
        except ProviderPermanent as e:
            if isinstance(e.__cause__, gexc.Conflict):
                return self._adopt(spec, zone, e)
            raise
        log.info("gce insert accepted", instance_id=spec.instance_id, zone=zone, operation=op.name)
        done = self._wait(zone, op.name)
        codes = [err.code for err in done.error.errors] if done.error else []
        if any(c in CAPACITY_CODES for c in codes):
            return None
        if "RESOURCE_ALREADY_EXISTS" in codes:
            return self._adopt(spec, zone, None)
        if codes:
            messages = "; ".join(f"{err.code}: {err.message}" for err in done.error.errors)
            raise ProviderPermanent(f"{spec.instance_id}: create in {zone} failed: {messages}")
        self._zone_of[spec.instance_id] = zone
        got = self.get(f"{zone}/{spec.instance_id}")
        if got is None:
            raise ProviderTransient(f"{spec.instance_id}: created in {zone} but not visible yet")
        log.info("gce instance created", instance_id=spec.instance_id, zone=zone, status=str(got.status))
        return got

    def _adopt(self, spec: LaunchSpec, zone: str, cause: Exception | None) -> ProviderInstance:
        """The name is taken in ``zone``: ours (a concurrent or earlier create) is returned, not ours refused."""
        got = self.get(f"{zone}/{spec.instance_id}")
        if got is not None and got.instance_id == spec.instance_id and got.owned:
            return got
        raise ProviderPermanent(f"{spec.instance_id}: the name is taken in {zone} by an instance that is not ours") from cause

    def get(self, provider_id: str) -> ProviderInstance | None:
        zone, name = self._resolve_zone(provider_id)
        if zone is None:
            found = self._aggregated(f'name = "{name}"')
            return found[0] if found else None
        try:
            inst = self._call(
                "instances.get",
                lambda: self._instances.get(project=self.project, zone=zone, instance=name, timeout=self.call_timeout_s),
            )
        except NotFound:
            return None
        return self._to_instance(inst)

    def find(self, instance_id: str) -> ProviderInstance | None:
        found = self._aggregated(f'(labels.{LABEL_MANAGED} = "{MANAGED_VALUE}") AND (labels.{LABEL_INSTANCE} = "{instance_id}")')
        return found[0] if found else None

    def list_owned(self, deployment_id: str) -> list[ProviderInstance]:
        return self._aggregated(
            f'(labels.{LABEL_MANAGED} = "{MANAGED_VALUE}") AND (labels.{LABEL_DEPLOYMENT} = "{deployment_id}")'
        )

    def delete(self, provider_id: str, *, wait: bool = False) -> None:
        zone, name = self._resolve_zone(provider_id)
        if zone is None:
            found = self.get(name)
            if found is None or found.zone is None:
                log.info("gce delete: already gone", provider_id=provider_id)
                return
            zone = found.zone
        try:
            op = self._call(
                "instances.delete",
                lambda: self._instances.delete_unary(project=self.project, zone=zone, instance=name, timeout=self.call_timeout_s),
            )
        except NotFound:
            log.info("gce delete: already gone", provider_id=provider_id, zone=zone)
            return
        log.info("gce delete accepted", provider_id=name, zone=zone, operation=op.name)
        if wait or op.status == compute_v1.Operation.Status.DONE:
            done = op if op.status == compute_v1.Operation.Status.DONE else self._wait(zone, op.name)
            errs = [f"{err.code}: {err.message}" for err in done.error.errors] if done.error else []
            if errs and not all(e.startswith("RESOURCE_NOT_FOUND") for e in errs):
                raise ProviderPermanent(f"delete of {name} in {zone} failed: {'; '.join(errs)}")
