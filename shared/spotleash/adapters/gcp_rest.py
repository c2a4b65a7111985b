"""The reads ``spotleash check`` makes only against real Google Cloud: the enabled APIs, the bucket's IAM
policy, the region's Spot CPU quota. Plain REST with the application default credentials (google-auth's
AuthorizedSession), so no SDK is added for three GETs. Not exercised by the local stack, which has no
such APIs: tests/system covers them when run against a real project.
"""

from __future__ import annotations

from typing import Any

from spotleash.errors import SpotleashError

REQUIRED_APIS = ("pubsub.googleapis.com", "cloudfunctions.googleapis.com", "run.googleapis.com",
                 "firestore.googleapis.com", "compute.googleapis.com", "storage.googleapis.com",
                 "cloudscheduler.googleapis.com", "cloudbuild.googleapis.com", "cloudbilling.googleapis.com")
SMALLEST_SPOT_CPUS = 4  # e2-highmem-4, the smallest machine type a launch asks for
READERS = {"roles/storage.objectViewer", "roles/storage.legacyObjectReader", "roles/storage.objectAdmin",
           "roles/storage.admin", "roles/storage.legacyBucketReader"}
TIMEOUT_S = 20.0


class CheckCallFailed(SpotleashError):
    """A Google API answered with an error, or not at all."""


def _get(url: str, params: dict[str, str] | None = None) -> dict[str, Any]:
    import google.auth
    import google.auth.exceptions
    import requests
    from google.auth.transport.requests import AuthorizedSession

    try:
        creds, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        r = AuthorizedSession(creds).get(url, params=params, timeout=TIMEOUT_S)  # type: ignore[no-untyped-call]
    except google.auth.exceptions.GoogleAuthError as e:
        raise CheckCallFailed(f"no usable Google credentials ({e})") from e
    except requests.RequestException as e:
        raise CheckCallFailed(f"GET {url} failed: {type(e).__name__}") from e
    if r.status_code != 200:
        raise CheckCallFailed(f"GET {url}: HTTP {r.status_code} {r.text[:200]}")
    body: dict[str, Any] = r.json()
    return body


def missing_apis(project: str) -> list[str]:
    enabled: set[str] = set()
    params = {"filter": "state:ENABLED", "pageSize": "200"}
    while True:
        page = _get(f"https://serviceusage.googleapis.com/v1/projects/{project}/services", params)
        enabled |= {s["config"]["name"] for s in page.get("services", [])}
        if not page.get("nextPageToken"):
            break
        params["pageToken"] = page["nextPageToken"]
    return [a for a in REQUIRED_APIS if a not in enabled]


def can_read_bucket(bucket: str, service_account: str) -> bool:
    policy = _get(f"https://storage.googleapis.com/storage/v1/b/{bucket}/iam")
    member = f"serviceAccount:{service_account}"
    return any(b.get("role") in READERS and member in b.get("members", []) for b in policy.get("bindings", []))


def spot_cpu_quota(project: str, region: str) -> tuple[str, float, float]:
    """(metric, limit, usage): PREEMPTIBLE_CPUS when the region sets one, else CPUS (Spot VMs then count there)."""
    quotas = {q["metric"]: q for q in _get(
        f"https://compute.googleapis.com/compute/v1/projects/{project}/regions/{region}").get("quotas", [])}
    metric = "PREEMPTIBLE_CPUS" if quotas.get("PREEMPTIBLE_CPUS", {}).get("limit", 0) > 0 else "CPUS"
    q = quotas.get(metric, {"limit": 0.0, "usage": 0.0})
    return metric, float(q["limit"]), float(q["usage"])
