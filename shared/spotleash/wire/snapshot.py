"""Snapshots on the wire: object names, the manifest, and what a heartbeat asks and its reply grants.

One definition for the instance agent (``spotleash.instance_agent.snapshot``) and the control plane
(``spotleash.services.snapshots``).

**How an instance gets a credential limited to its lease's prefix.** It never gets a credential: it
asks over its heartbeat (already authenticated by its own token, and already bound to its lease), and
the reply carries one URL per object it may write or read — V4 signed URLs the control plane mints
for exactly ``snapshots/<lease>/<snapshot_id>/<object>``, one method each, valid for minutes, and for
writes signed with ``x-goog-if-generation-match: 0`` so they can create an object but never overwrite
one (a box cannot rewrite a snapshot that was already verified). Why not a token:

- a VAST box has no Google identity at all, and the GCE VM's service account only reads the bucket
  (issue 12): giving it write on the bucket would let any box overwrite packages or another lease's
  snapshots. Prefix-scoped IAM conditions exist only for Google identities; downscoped tokens
  (credential access boundaries) need an STS exchange and the JSON API on the box. Signed URLs are one
  mechanism for both providers, need nothing but HTTP on the box, and bound what a leaked URL can do
  to one object, one verb, a few minutes;
- the control plane only signs (local crypto, or one IAM signBlob per URL on Cloud Functions) and
  reads the small manifest to verify: it never streams bulk data.

Locally (``STORAGE_EMULATOR_HOST``) the URLs are the emulator's plain JSON-API upload and media
download URLs (``spotleash.adapters.storage.Storage.transfer``), so the same code path runs end to end.

Object layout: ``snapshots/<lease>/<snapshot_id>/part-00000.tar.zst`` … and ``manifest.json``,
uploaded last. A snapshot exists for restore only once the control plane has verified it (every
object present with the manifest's size and MD5) and recorded it as ``verified`` in Firestore.

**When an instance snapshots** (``spotleash.instance_agent.keeper``), one snapshot at a time, each one's
``UploadAsk`` saying why (``trigger``) and, when asked for, which request it answers (``request_id``):

- ``periodic``: every ``AgentConfig.snapshot_interval_s`` seconds (0: never), skipped while the state
  paths are unchanged since the last verified snapshot;
- ``requested``: the control plane asks in a heartbeat reply — the reply's member
  ``SNAPSHOT_REQUEST_FIELD`` (``"snapshot_request"``) holds a ``SnapshotRequest``. The instance takes one
  snapshot per ``request_id`` (a request repeated in later replies is not taken again; one arriving while
  a snapshot runs is taken after it, so the state it saves is at least as new as the request). The
  control plane knows its request was served when an ``UploadAsk`` names that ``request_id`` and then
  when that snapshot is verified (or failed); it may stop repeating the request at the ``UploadAsk``;
- ``preempted``: the GCE preemption notice (``instance/preempted`` TRUE), best effort within its 30 s.

**Restore at boot.** A new instance asks ``RestoreAsk`` before its components start; its ``RestoredAsk``
carries the restore's seconds and bytes (the phase timing the control plane records). No verified
snapshot: ``RestoredAsk(snapshot_id=None)``, and the components start on empty state. While a preempted
predecessor is still saving its state, the answer is ``RestoreWait`` (ask again shortly; bounded by the
preemption grace — ``spotleash.decide.preemption`` has why).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from spotleash.wire.ids import Id

SNAPSHOT_PREFIX = "snapshots"
MANIFEST_OBJECT = "manifest.json"
MANIFEST_FORMAT = 1
MAX_PARTS = 512
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Detail = Annotated[str, Field(max_length=500)]


def object_prefix(lease_id: str, snapshot_id: str) -> str:
    return f"{SNAPSHOT_PREFIX}/{lease_id}/{snapshot_id}/"


def lease_prefix(lease_id: str) -> str:
    return f"{SNAPSHOT_PREFIX}/{lease_id}/"


def part_object(index: int) -> str:
    return f"part-{index:05d}.tar.zst"


def object_names(parts: int) -> list[str]:
    """The objects of a snapshot of ``parts`` parts, relative to its prefix (the manifest last)."""
    return [part_object(i) for i in range(parts)] + [MANIFEST_OBJECT]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# ------------------------------------------------------------------------------------------ manifest


class ManifestObject(_Wire):
    name: Annotated[str, Field(pattern=r"^part-[0-9]{5}\.tar\.zst$")]
    size: Annotated[int, Field(ge=0)]
    sha256: Sha256
    md5: Annotated[str, Field(min_length=24, max_length=24)]  # base64, as Cloud Storage reports md5Hash


class SnapshotManifest(_Wire):
    """``manifest.json``: what the instance packed. Its own sha256 travels in the heartbeat."""

    format: Literal[1] = 1
    snapshot_id: Id
    lease_id: str
    instance_id: str
    created_at: AwareDatetime
    roots: Annotated[list[str], Field(min_length=1, max_length=16)]  # absolute state paths; tar member r<i>/...
    objects: Annotated[list[ManifestObject], Field(min_length=1, max_length=MAX_PARTS)]
    files: Annotated[int, Field(ge=0)]
    raw_bytes: Annotated[int, Field(ge=0)]  # bytes of file content before compression
    skipped: Annotated[list[str], Field(max_length=1000)] = []  # what was not packed, and why

    @property
    def size_bytes(self) -> int:
        return sum(o.size for o in self.objects)


# ------------------------------------------------------------------------------------------ the asks


SnapshotTrigger = Literal["periodic", "requested", "preempted", "manual"]
RequestId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")]


class UploadAsk(_Wire):
    """'I packed a snapshot of ``parts`` parts: give me URLs to upload it.' ``trigger``: why it was
    taken; ``request_id``: the ``SnapshotRequest`` it answers (trigger ``requested`` only)."""

    op: Literal["upload"] = "upload"
    snapshot_id: Id
    parts: Annotated[int, Field(ge=1, le=MAX_PARTS)]
    trigger: SnapshotTrigger = "manual"
    request_id: RequestId | None = None


class UploadedAsk(_Wire):
    """'Every object and the manifest are uploaded: verify and record it.'"""

    op: Literal["uploaded"] = "uploaded"
    snapshot_id: Id
    manifest_sha256: Sha256


class AbandonedAsk(_Wire):
    """'I could not finish this snapshot' (upload failed, disk full...): the control plane alerts."""

    op: Literal["abandoned"] = "abandoned"
    snapshot_id: Id
    detail: Detail = ""


class RestoreAsk(_Wire):
    """'What should I restore?' ``failed``: snapshots this instance found corrupt, with why."""

    op: Literal["restore"] = "restore"
    failed: Annotated[dict[Id, Detail], Field(max_length=16)] = {}


class RestoredAsk(_Wire):
    """'Restored ``snapshot_id``' (None: there was nothing to restore), for the audit."""

    op: Literal["restored"] = "restored"
    snapshot_id: Id | None = None
    seconds: Annotated[float, Field(ge=0)] = 0.0  # the whole restore, waits for a newer snapshot included
    raw_bytes: Annotated[int, Field(ge=0)] = 0
    waited_s: Annotated[float, Field(ge=0)] = 0.0  # of ``seconds``: told to wait (``RestoreWait``)


SnapshotAsk = Annotated[UploadAsk | UploadedAsk | AbandonedAsk | RestoreAsk | RestoredAsk,
                        Field(discriminator="op")]


# ------------------------------------------------------------------------------------------ the replies


class Transfer(_Wire):
    """One HTTP request the instance makes as given (the URL is a bearer secret: never logged)."""

    method: Literal["GET", "PUT", "POST"]
    url: Annotated[str, Field(max_length=8192)]
    headers: dict[str, str] = {}


class UploadGrant(_Wire):
    kind: Literal["upload_grant"] = "upload_grant"
    snapshot_id: Id
    objects: dict[str, Transfer]  # object name (relative to the prefix) -> the request that writes it
    expires_at: AwareDatetime


class Verdict(_Wire):
    kind: Literal["verdict"] = "verdict"
    snapshot_id: Id
    verified: bool
    detail: Detail = ""


class RestoreGrant(_Wire):
    """The snapshot to restore (None: none is verified for this lease), with read URLs."""

    kind: Literal["restore_grant"] = "restore_grant"
    snapshot_id: Id | None = None
    manifest_sha256: Sha256 | None = None
    objects: dict[str, Transfer] = {}
    expires_at: AwareDatetime | None = None


class RestoreWait(_Wire):
    """'Ask again in ``retry_after_s``': a newer snapshot of the lease is on its way (a preempted predecessor
    is saving its state; ``spotleash.decide.preemption`` decides). The restore's clock keeps running."""

    kind: Literal["restore_wait"] = "restore_wait"
    retry_after_s: Annotated[float, Field(gt=0, le=60)]
    detail: Detail = ""


class Refused(_Wire):
    kind: Literal["refused"] = "refused"
    detail: Detail


class Noted(_Wire):
    kind: Literal["noted"] = "noted"


# ------------------------------------------------------------------------------------------ the request


SNAPSHOT_REQUEST_FIELD = "snapshot_request"  # the heartbeat reply's member carrying a SnapshotRequest


class SnapshotRequest(_Wire):
    """'Take a snapshot now' — in any heartbeat reply, beside ``action`` (set by the control plane before a
    planned destroy, for hibernation, or on the CLI's ``snapshot create``). ``request_id`` is the control
    plane's, unique per request; ``reason`` is free text for the instance's log and the audit."""

    request_id: RequestId
    reason: Detail = ""


SnapshotReply = Annotated[UploadGrant | Verdict | RestoreGrant | RestoreWait | Refused | Noted,
                          Field(discriminator="kind")]

