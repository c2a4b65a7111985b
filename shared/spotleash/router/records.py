"""From the control plane's instance records to the router's ``RemoteState`` (pure, no I/O).

The router reads, from each record of its lease (Firestore ``instances``, as a plain mapping so that
a record written by a newer or older control plane still reads): ``instance_id``, ``state``,
``preempted``, ``component_states`` (component → ``{state, endpoint, ...}``, as the heartbeat
reported it) and ``tls_fingerprint`` (sha256 hex of the instance's TLS front certificate, reported
over the authenticated heartbeat). Every component of a record reaches the instance through the
same front, so its ``endpoint`` is the front's ``host:port``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from spotleash.router.table import RemoteState

FINGERPRINT_RE = re.compile(r"^[0-9a-f]{64}$")
ENDPOINT_RE = re.compile(r"^[A-Za-z0-9.\[\]:-]+:[0-9]{1,5}$")

# The record fields the router reads (one definition; the wiring adds ``tls_fingerprint`` to the record).
F_ID, F_STATE, F_PREEMPTED, F_COMPONENTS, F_FINGERPRINT = (
    "instance_id", "state", "preempted", "component_states", "tls_fingerprint")


def normalize_fingerprint(value: object) -> str | None:
    """``AB:CD:...`` or ``abcd...`` → 64 lowercase hex digits; anything else → None."""
    if not isinstance(value, str):
        return None
    fp = value.replace(":", "").strip().lower()
    return fp if FINGERPRINT_RE.match(fp) else None


def remote_states(records: Iterable[Mapping[str, Any]]) -> dict[str, list[RemoteState]]:
    """Component → its copies on the lease's instances. Malformed parts are skipped, never raised."""
    out: dict[str, list[RemoteState]] = {}
    for rec in records:
        iid = rec.get(F_ID)
        comps = rec.get(F_COMPONENTS)
        if not isinstance(iid, str) or not isinstance(comps, Mapping):
            continue
        state = str(rec.get(F_STATE, ""))
        fingerprint = normalize_fingerprint(rec.get(F_FINGERPRINT))
        for name, report in comps.items():
            if not isinstance(name, str) or not isinstance(report, Mapping):
                continue
            endpoint = report.get("endpoint")
            cstate = report.get("state")
            out.setdefault(name, []).append(RemoteState(
                instance_id=iid,
                instance_state=state,
                component_state=cstate if isinstance(cstate, str) else None,
                endpoint=endpoint if isinstance(endpoint, str) and ENDPOINT_RE.match(endpoint) else None,
                fingerprint=fingerprint,
                preempted=bool(rec.get(F_PREEMPTED, False)),
            ))
    return out
