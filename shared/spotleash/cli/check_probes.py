"""The probes of ``spotleash check`` (the command is ``cli/check.py``): one line per part of the
configured deployment, ✓ or ✗ with the fix.

Every line is a real call against the part it names, made the way spotleash itself makes it: the
deployment's topics and subscriptions are read, a dry-run demand (``DemandEvent.dry_run``) goes through
Pub/Sub to on_demand, which audits what it would do without renting anything, and its audit entry is
read back from Firestore. On the local stack the lines that only mean something on Google Cloud (the
APIs, the VM's read access to the bucket, Spot quota) say "not checked on the local stack".

A probe that depends on another (everything on credentials; the dry run on Pub/Sub and Firestore) is
not run when that one failed: it says which line to fix first instead of failing the same way twice.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from spotleash.adapters import gcp_rest
from spotleash.adapters.firestore import FirestoreStore
from spotleash.adapters.pubsub import Publisher
from spotleash.adapters.storage import Storage
from spotleash.agent import default_lease_id
from spotleash.agent.runner import configured_components
from spotleash.config import Settings
from spotleash.errors import ProviderTransient, SpotleashError
from spotleash.model import instance_id_for
from spotleash.polling import WaitTimeout, wait_until
from spotleash.providers.vast.client import VastClient
from spotleash.topology import load_topology
from spotleash.wire.events import DemandEvent
from spotleash.wire.package import parse_pointer, pointer_object

RESTART_STACK = "restart the local stack: `spotleash local down && spotleash local up`"
ADC_LOGIN = "run `gcloud auth application-default login` (or `spotleash local up` for the local stack)"
TERRAFORM = "deploy it: `terraform -chdir=terraform apply` (see the README's deployment section)"
ONE_CALL_S = 10.0  # one read of a part that does not answer is a ✗, not a wait


@dataclass(frozen=True)
class Line:
    part: str
    ok: bool | None  # None: not checked here (the detail says why)
    detail: str
    fix: str = ""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def passed(lines: list[Line]) -> bool:
    return all(line.ok is not False for line in lines)


def on_local_stack() -> bool:
    """The clients talk to the local stack's emulators (its env file was loaded, or the variables set)."""
    return bool(os.environ.get("PUBSUB_EMULATOR_HOST"))


def _why(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return f"{type(e).__name__}: {first[:200]}"


# ------------------------------------------------------------------ the probes
def credentials(s: Settings, local: bool) -> Line:
    if local:
        served = os.environ.get("GOOGLE_CLOUD_PROJECT", s.project)
        if served != s.project:
            return Line("credentials and project", False,
                        f"the local stack serves project {served}, but the configured project is {s.project}",
                        "unset SPOTLEASH_PROJECT (and project in spotleash.toml) while using the local stack")
        return Line("credentials and project", True, f"the local stack's emulators (no credentials needed), "
                    f"project {s.project}")
    import google.auth
    import google.auth.exceptions

    try:
        _creds, found_project = google.auth.default()
    except google.auth.exceptions.DefaultCredentialsError:
        return Line("credentials and project", False, "no Google credentials and no local stack", ADC_LOGIN)
    if s.project == "spotleash-local":
        return Line("credentials and project", False, "the project is the local stack's default, spotleash-local",
                    "name your project: SPOTLEASH_PROJECT or project in spotleash.toml")
    also = f" (the credentials' own project is {found_project})" if found_project and found_project != s.project else ""
    return Line("credentials and project", True, f"application default credentials, project {s.project}{also}")


def apis(s: Settings, local: bool) -> Line:
    if local:
        return Line("APIs", None, "not checked on the local stack")
    try:
        missing = gcp_rest.missing_apis(s.project)
    except SpotleashError as e:
        return Line("APIs", False, str(e), "grant yourself roles/serviceusage.serviceUsageViewer, or check the project")
    if missing:
        return Line("APIs", False, f"not enabled: {', '.join(missing)}",
                    f"`gcloud services enable {' '.join(missing)} --project {s.project}`")
    return Line("APIs", True, f"the {len(gcp_rest.REQUIRED_APIS)} APIs the functions need are enabled")


def topics(s: Settings, local: bool) -> Line:
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    topo = load_topology()
    pub, sub = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    missing: list[str] = []
    try:
        for t in topo.topics:
            try:
                pub.get_topic(topic=pub.topic_path(s.project, t), retry=None, timeout=ONE_CALL_S)
            except Exception as e:  # noqa: BLE001 - NotFound, Unavailable, PermissionDenied: each is "missing" here
                missing.append(f"topic {t} ({_why(e)})")
        for name in topo.subscriptions:
            try:
                sub.get_subscription(subscription=sub.subscription_path(s.project, name), retry=None,
                                     timeout=ONE_CALL_S)
            except Exception as e:  # noqa: BLE001 - as above
                missing.append(f"subscription {name} ({_why(e)})")
    finally:
        sub.close()
    if missing:
        return Line("topics and subscriptions", False, "; ".join(missing[:3]) + (" ..." if len(missing) > 3 else ""),
                    RESTART_STACK if local else TERRAFORM)
    return Line("topics and subscriptions", True, f"{len(topo.topics)} topics, {len(topo.subscriptions)} subscriptions")


def firestore(s: Settings, local: bool) -> tuple[Line, dict[str, Any] | None]:
    """The Firestore line, and the budget document it read (for the budget line)."""
    try:
        budget = FirestoreStore.from_settings(s).read_budget_once(ONE_CALL_S)
    except Exception as e:  # noqa: BLE001 - the client's errors are many; every one means "not reachable"
        fix = RESTART_STACK if local else (f"create the database: `gcloud firestore databases create --location "
                                           f"{s.region} --project {s.project}` (Terraform does it)")
        return Line("Firestore", False, f"cannot read it: {_why(e)}", fix), None
    return Line("Firestore", True, f"readable (project {s.project}, deployment {s.deployment_id})"), budget


def functions(s: Settings, local: bool, timeout_s: float) -> Line:
    """A dry-run demand through Pub/Sub to on_demand, its ``demand_dry_run`` audit entry read back."""
    event = DemandEvent(lease_id=default_lease_id(), trigger="manual", ram_percent=0.0,
                        components=configured_components(s), dry_run=True)
    started = time.monotonic()
    try:
        Publisher(s).publish_and_wait(event, ONE_CALL_S)
    except SpotleashError as e:
        return Line("functions (a dry-run demand)", False, f"could not publish it: {e}",
                    RESTART_STACK if local else TERRAFORM)
    store = FirestoreStore.from_settings(s)
    iid = instance_id_for(event.event_id)

    def audited() -> list[dict[str, Any]]:
        return [e for e in store.audit_entries(iid, limit=5) if e.get("action") == "demand_dry_run"]

    try:
        seen = wait_until(audited, timeout_s=max(timeout_s - (time.monotonic() - started), 0.0), interval_s=0.5,
                          what="the dry-run demand's audit entry")
        return Line("functions (a dry-run demand)", True,
                    f"on_demand audited it in {time.monotonic() - started:.1f}s (would: {seen[0]['reason']})")
    except WaitTimeout:
        pass
    fix = (RESTART_STACK if local else
           f"read on_demand's logs: `gcloud functions logs read on_demand --region {s.region} --project "
           f"{s.project}`, then {TERRAFORM}")
    return Line("functions (a dry-run demand)", False, f"published, but on_demand did not audit it within "
                f"{timeout_s:.0f}s", fix)


def bucket(s: Settings, local: bool) -> Line:
    if not s.package_bucket:
        return Line("package bucket", False, "no bucket configured: `spotleash publish` has nowhere to put the app",
                    "set SPOTLEASH_PACKAGE_BUCKET (Terraform's output package_bucket; the local stack sets it)")
    try:
        store = Storage(s.package_bucket, project=s.project, retry_s=ONE_CALL_S)
        if not store.bucket_exists():
            fix = (f"fix SPOTLEASH_PACKAGE_BUCKET: the local stack's bucket is {load_topology().package_bucket}"
                   if local else f"create it with Terraform, or fix SPOTLEASH_PACKAGE_BUCKET: {TERRAFORM}")
            return Line("package bucket", False, f"gs://{s.package_bucket} does not exist", fix)
        pointer = store.stat(pointer_object(s.package_channel))
        published = parse_pointer(store.read_bytes(pointer.name)[0])[:12] if pointer else None
    except SpotleashError as e:
        return Line("package bucket", False, str(e), RESTART_STACK if local else ADC_LOGIN)
    what = f"latest-{s.package_channel}.txt → {published}" if published else (
        f"nothing published on channel {s.package_channel} yet (`spotleash publish`)")
    return Line("package bucket", True, f"gs://{s.package_bucket} readable; {what}")


def vm_read_access(s: Settings, local: bool) -> Line:
    if local:
        return Line("the VMs' read access to the bucket", None, "not checked on the local stack")
    if not s.vm_service_account or not s.package_bucket:
        return Line("the VMs' read access to the bucket", False, "no VM service account or no bucket configured",
                    "set SPOTLEASH_VM_SERVICE_ACCOUNT and SPOTLEASH_PACKAGE_BUCKET (Terraform's outputs)")
    try:
        can = gcp_rest.can_read_bucket(s.package_bucket, s.vm_service_account)
    except SpotleashError as e:
        return Line("the VMs' read access to the bucket", False, str(e), ADC_LOGIN)
    if not can:
        return Line("the VMs' read access to the bucket", False, f"{s.vm_service_account} may not read "
                    f"gs://{s.package_bucket}", f"`gcloud storage buckets add-iam-policy-binding gs://{s.package_bucket} "
                    f"--member serviceAccount:{s.vm_service_account} --role roles/storage.objectViewer`")
    return Line("the VMs' read access to the bucket", True, f"{s.vm_service_account} may read it")


def spot_quota(s: Settings, local: bool) -> Line:
    if local:
        return Line("Spot quota", None, "not checked on the local stack")
    try:
        metric, limit, usage = gcp_rest.spot_cpu_quota(s.project, s.region)
    except SpotleashError as e:
        return Line("Spot quota", False, str(e), ADC_LOGIN)
    if limit - usage < gcp_rest.SMALLEST_SPOT_CPUS:
        return Line("Spot quota", False, f"{metric} in {s.region}: {usage:g} of {limit:g} used",
                    f"request more {metric} quota for {s.region}: https://console.cloud.google.com/iam-admin/quotas"
                    f"?project={s.project}")
    return Line("Spot quota", True, f"{metric} in {s.region}: {limit - usage:g} of {limit:g} free")


def vast_key(s: Settings, local: bool) -> Line:
    if s.vast_api_key is None:
        if s.gpu_components:
            return Line("VAST.ai API key", False, f"not set, but {', '.join(s.gpu_components)} need a GPU",
                        "set SPOTLEASH_VAST_API_KEY (https://cloud.vast.ai/account/)")
        return Line("VAST.ai API key", True, "not set: GPU launches are off (no component needs a GPU)")
    client = VastClient(s.vast_url, s.vast_api_key.get_secret_value(), timeout_s=ONE_CALL_S, attempts=1)
    try:
        me = client.call("GET", "/api/v0/users/current/", "who am I", retry=False)
    except ProviderTransient as e:
        return Line("VAST.ai API key", False, f"{s.vast_url} does not answer: {e}",
                    RESTART_STACK if local else "check SPOTLEASH_VAST_URL and the network")
    except SpotleashError as e:
        return Line("VAST.ai API key", False, f"VAST.ai refused the key: {e}",
                    "set SPOTLEASH_VAST_API_KEY to a valid key (https://cloud.vast.ai/account/)")
    finally:
        client.close()
    who = me.get("id") if isinstance(me, dict) else None
    return Line("VAST.ai API key", True, f"accepted by {s.vast_url}" + (f" (user {who})" if who is not None else ""))


def heartbeat_url(s: Settings, local: bool) -> Line:
    import httpx

    if not s.heartbeat_url:
        return Line("heartbeat URL", False, "not set: instances could not beat and would be reaped",
                    "set SPOTLEASH_HEARTBEAT_URL (Terraform's output heartbeat_url; the local stack sets it)")
    try:
        r = httpx.get(s.heartbeat_url, timeout=ONE_CALL_S)
    except httpx.HTTPError as e:
        return Line("heartbeat URL", False, f"{s.heartbeat_url} is not reachable ({_why(e)})",
                    RESTART_STACK if local else "fix SPOTLEASH_HEARTBEAT_URL (Terraform's output heartbeat_url)")
    return Line("heartbeat URL", True, f"{s.heartbeat_url} answers (HTTP {r.status_code})")


def budget(s: Settings, budget_doc: dict[str, Any] | None) -> Line:
    guard = f"${s.monthly_budget_usd:g}/month guard (SPOTLEASH_MONTHLY_BUDGET_USD)"
    if budget_doc and budget_doc.get("exceeded"):
        return Line("budget", False, f"{guard}; the last billing alert says ${budget_doc.get('cost')} of "
                    f"${budget_doc.get('budget')} is spent: launches are refused",
                    "raise the budget in Cloud Billing and SPOTLEASH_MONTHLY_BUDGET_USD, or wait for next month")
    last = f"; last alert ${budget_doc.get('cost')} of ${budget_doc.get('budget')}" if budget_doc else "; no alert yet"
    return Line("budget", True, guard + last)


def _needs(part: str, on: str) -> Line:
    return Line(part, None, f"not checked: fix '{on}' first")


def run_checks(s: Settings, *, timeout_s: float = 30.0, progress: Callable[[Line], None] = lambda _l: None) -> list[Line]:
    """Every line, in order; ``progress`` is called with each as soon as it is known."""
    local = on_local_stack()
    lines: list[Line] = []

    def add(line: Line) -> Line:
        lines.append(line)
        progress(line)
        return line

    creds = add(credentials(s, local))
    if not creds.ok:
        for part in ("APIs", "topics and subscriptions", "Firestore", "functions (a dry-run demand)", "package bucket",
                     "the VMs' read access to the bucket", "Spot quota"):
            add(_needs(part, creds.part))
        add(vast_key(s, local))
        add(heartbeat_url(s, local))
        add(budget(s, None))
        return lines
    add(apis(s, local))
    t = add(topics(s, local))
    fs, budget_doc = firestore(s, local)
    add(fs)
    if t.ok and fs.ok:
        add(functions(s, local, timeout_s))
    else:
        add(_needs("functions (a dry-run demand)", t.part if not t.ok else fs.part))
    add(bucket(s, local))
    add(vm_read_access(s, local))
    add(spot_quota(s, local))
    add(vast_key(s, local))
    add(heartbeat_url(s, local))
    add(budget(s, budget_doc))
    return lines
