"""Snapshots end to end on the Cloud Storage emulator (fake-gcs-server, official client): the instance
side packs and uploads through the URLs its heartbeat was granted, the control plane verifies and
records, a new box restores; a tampered object falls back to the snapshot before, audited; a snapshot
carrying a traversal attack is refused at restore. Heartbeats go through ``handle_heartbeat`` in-process
and their replies through the JSON body ``functions/main.py`` sends."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import zstandard
from tests.emulator.emulator_fixtures import gcs_emulator
from tests.support.builders import DEP, open_lease, put_record
from tests.support.memory_store import MemoryStore

from spotleash.adapters.storage import Storage
from spotleash.config import Settings
from spotleash.instance_agent.snapshot.channel import parse_reply
from spotleash.instance_agent.snapshot.restore import restore
from spotleash.instance_agent.snapshot.take import take_snapshot
from spotleash.model import SnapshotState, State
from spotleash.services.context import Context, token_hash
from spotleash.services.heartbeat import handle_heartbeat
from spotleash.services.reap import sweep_abandoned_uploads
from spotleash.wire.events import Heartbeat
from spotleash.wire.snapshot import (
    MANIFEST_OBJECT,
    ManifestObject,
    SnapshotAsk,
    SnapshotManifest,
    SnapshotReply,
    UploadAsk,
    UploadedAsk,
    UploadGrant,
    object_prefix,
)

pytestmark = [pytest.mark.emulator, pytest.mark.slow]

BUCKET = "spotleash-test-snapshots"
IID, LEASE = "sl-box1", "lease-1"


@pytest.fixture(scope="module")
def gcs_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with gcs_emulator(tmp_path_factory.mktemp("gcs-logs"), BUCKET) as url:
        yield url


@pytest.fixture()
def ctx(gcs_url: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Context:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    settings = Settings(deployment_id=DEP, heartbeat_signing_key="k" * 32, package_bucket=BUCKET,  # type: ignore[arg-type]
                        snapshot_keep=getattr(request, "param", 3))
    c = Context(settings=settings, store=MemoryStore(DEP), storage=Storage(BUCKET, project="p", emulator=gcs_url))
    open_lease(c, LEASE, ttl_s=3600)
    return c


class Channel:
    """The instance's asks, as heartbeats through the real service; the reply as the HTTP body."""

    def __init__(self, ctx: Context, instance_id: str, before: Any = None) -> None:
        self.ctx, self.instance_id, self.before = ctx, instance_id, before
        self.asks: list[str] = []
        rec = ctx.store.get(instance_id)
        assert rec is not None
        self.lease_id = rec.lease_id

    def ask(self, ask: SnapshotAsk, budget_s: float | None = None) -> SnapshotReply:
        self.asks.append(ask.op)
        if self.before:
            self.before(ask)
        beat = Heartbeat(lease_id=self.lease_id, instance_id=self.instance_id, snapshot=ask)
        reply = handle_heartbeat(self.ctx, Heartbeat.model_validate_json(beat.model_dump_json()),
                                 self.ctx.heartbeat_token(self.instance_id))
        assert reply.status == 200
        return parse_reply(json.dumps({"action": reply.action, "snapshot": reply.snapshot}), ask.op)


def box(ctx: Context, iid: str) -> Channel:
    put_record(ctx, iid, LEASE, State.READY, provider="vast", token_hash=token_hash(ctx.heartbeat_token(iid)))
    return Channel(ctx, iid)


def write_state(root: Path, marker: str) -> dict[str, str]:
    (root / "ckpt").mkdir(parents=True, exist_ok=True)
    (root / "ckpt" / "weights.bin").write_bytes(hashlib.sha256(marker.encode()).digest() * 40_000)
    (root / "ckpt" / "z-optimizer.bin").write_bytes(os.urandom(300_000))  # a second part
    (root / "notes.md").write_text(f"run {marker}\n" * 2000)
    (root / "latest").unlink(missing_ok=True)
    (root / "latest").symlink_to("ckpt/weights.bin")
    return files_of(root)


def files_of(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def snapshot(ch: Channel, root: Path, sid: str, tmp: Path, **kw: Any) -> Any:
    with httpx.Client(trust_env=False, timeout=30) as http:
        return take_snapshot([root], snapshot_id=sid, lease_id=LEASE, instance_id=ch.instance_id, channel=ch,
                             spool=tmp / "spool", http=http, part_bytes=200_000, **kw)


def restore_into(ch: Channel, root: Path, tmp: Path) -> Any:
    with httpx.Client(trust_env=False, timeout=30) as http:
        return restore([root], channel=ch, spool=tmp / "rspool", http=http, sleep=lambda _s: None)


def actions(ctx: Context) -> list[tuple[str, str]]:
    store = ctx.store
    assert isinstance(store, MemoryStore)
    return [(e["action"], e.get("snapshot_id") or "") for e in store.audit_entries()]


def state(ctx: Context, sid: str) -> SnapshotState:
    snap = ctx.store.get_snapshot(sid)
    assert snap is not None
    return snap.state


def test_snapshot_upload_verify_then_a_new_box_restores_it(ctx: Context, tmp_path: Path) -> None:
    ws1 = tmp_path / "box1" / "workspace"
    want = write_state(ws1, "one")
    out = snapshot(box(ctx, IID), ws1, "snap-1", tmp_path)
    assert out.verified, out.detail
    assert out.files == 3 and out.size_bytes < out.raw_bytes
    rec = ctx.store.get_snapshot("snap-1")
    assert rec is not None and rec.state is SnapshotState.VERIFIED and rec.parts >= 2
    storage = ctx.bucket()
    assert storage.list_names(object_prefix(LEASE, "snap-1")) == sorted(rec.objects)
    assert not (tmp_path / "spool" / "snap-1").exists()  # the spool is cleaned

    ws2 = tmp_path / "box2" / "workspace"
    ws2.mkdir(parents=True)
    (ws2 / "from-image.txt").write_text("replaced by the restore")
    got = restore_into(box(ctx, "sl-box2"), ws2, tmp_path)
    assert got.snapshot_id == "snap-1" and got.fell_back == {}
    assert files_of(ws2) == want and os.readlink(ws2 / "latest") == "ckpt/weights.bin"
    assert ("snapshot_verified", "snap-1") in actions(ctx) and ("restored", "snap-1") in actions(ctx)


def test_a_tampered_latest_snapshot_falls_back_to_the_one_before_and_says_so(ctx: Context, tmp_path: Path) -> None:
    ws1 = tmp_path / "box1" / "workspace"
    first = write_state(ws1, "one")
    ch = box(ctx, IID)
    assert snapshot(ch, ws1, "snap-1", tmp_path).verified
    write_state(ws1, "two")
    assert snapshot(ch, ws1, "snap-2", tmp_path).verified

    storage = ctx.bucket()  # someone damages a part of the latest snapshot after it was verified
    victim = object_prefix(LEASE, "snap-2") + "part-00000.tar.zst"
    info = storage.stat(victim)
    assert info is not None  # same size, other bytes: only the sha256 can tell
    storage.bucket.blob(victim).upload_from_string(os.urandom(info.size))

    ws2 = tmp_path / "box2" / "workspace"
    got = restore_into(box(ctx, "sl-box2"), ws2, tmp_path)
    assert got.snapshot_id == "snap-1" and list(got.fell_back) == ["snap-2"]
    assert "sha256" in got.fell_back["snap-2"]
    assert files_of(ws2) == first
    assert state(ctx, "snap-2") is SnapshotState.CORRUPT and state(ctx, "snap-1") is SnapshotState.VERIFIED
    store = ctx.store
    assert isinstance(store, MemoryStore)
    [corrupt] = [e for e in store.audit_entries() if e["action"] == "snapshot_corrupt"]
    assert corrupt["snapshot_id"] == "snap-2" and "falling back" in corrupt["detail"]
    [granted] = [e for e in store.audit_entries() if e["action"] == "restore_granted" and e["reason"] == "fallback"]
    assert granted["snapshot_id"] == "snap-1" and granted["fell_back_from"] == ["snap-2"]

    # the next box is not offered the corrupt one again
    ws3 = tmp_path / "box3" / "workspace"
    assert restore_into(box(ctx, "sl-box3"), ws3, tmp_path).fell_back == {}


def test_a_snapshot_carrying_a_traversal_attack_verifies_but_is_refused_at_restore(ctx: Context,
                                                                                   tmp_path: Path) -> None:
    ws1 = tmp_path / "box1" / "workspace"
    first = write_state(ws1, "one")
    ch = box(ctx, IID)
    assert snapshot(ch, ws1, "snap-1", tmp_path).verified

    # a compromised box uploads a well-formed snapshot whose tar escapes its root
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("r0/../../../escaped.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    part = zstandard.ZstdCompressor().compress(buf.getvalue())
    import base64

    md5 = base64.b64encode(hashlib.md5(part).digest()).decode()  # noqa: S324
    grant = ch.ask(UploadAsk(snapshot_id="snap-evil", parts=1))
    assert isinstance(grant, UploadGrant)
    manifest = SnapshotManifest(snapshot_id="snap-evil", lease_id=LEASE, instance_id=IID, created_at=ctx.now(),
                                roots=[str(ws1)], files=1, raw_bytes=4,
                                objects=[ManifestObject(name="part-00000.tar.zst", size=len(part),
                                                        sha256=hashlib.sha256(part).hexdigest(), md5=md5)])
    mbytes = manifest.model_dump_json().encode()
    with httpx.Client(trust_env=False) as http:
        for name, data in (("part-00000.tar.zst", part), (MANIFEST_OBJECT, mbytes)):
            t = grant.objects[name]
            assert http.request(t.method, t.url, content=data, headers=t.headers).status_code == 200
    verdict = ch.ask(UploadedAsk(snapshot_id="snap-evil", manifest_sha256=hashlib.sha256(mbytes).hexdigest()))
    assert getattr(verdict, "verified", None) is True  # its bytes are what it says: only extraction can tell

    ws2 = tmp_path / "box2" / "workspace"
    got = restore_into(box(ctx, "sl-box2"), ws2, tmp_path)
    assert got.snapshot_id == "snap-1" and "unsafe member" in got.fell_back["snap-evil"]
    assert files_of(ws2) == first
    assert not any(p.name == "escaped.txt" for p in tmp_path.rglob("escaped.txt"))
    assert state(ctx, "snap-evil") is SnapshotState.CORRUPT


def test_an_object_changed_before_the_report_fails_verification_keeps_nothing_and_alerts(
        ctx: Context, tmp_path: Path) -> None:
    ws1 = tmp_path / "box1" / "workspace"
    write_state(ws1, "one")
    storage = ctx.bucket()

    def tamper(ask: SnapshotAsk) -> None:
        if ask.op == "uploaded":
            storage.bucket.blob(object_prefix(LEASE, "snap-1") + "part-00000.tar.zst").upload_from_string(b"x" * 10)

    put_record(ctx, IID, LEASE, State.READY, provider="vast", token_hash=token_hash(ctx.heartbeat_token(IID)))
    out = snapshot(Channel(ctx, IID, before=tamper), ws1, "snap-1", tmp_path)
    assert not out.verified and "part-00000.tar.zst" in out.detail
    assert state(ctx, "snap-1") is SnapshotState.FAILED
    assert ("alert", "snap-1") in actions(ctx)
    assert restore_into(box(ctx, "sl-box2"), tmp_path / "box2" / "ws", tmp_path).snapshot_id is None


def test_an_upload_that_cannot_reach_storage_is_abandoned_and_alerted(ctx: Context, tmp_path: Path,
                                                                       gcs_url: str) -> None:
    ws1 = tmp_path / "box1" / "workspace"
    write_state(ws1, "one")
    ch = box(ctx, IID)

    def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    with httpx.Client(transport=httpx.MockTransport(broken)) as http:  # Cloud Storage answering 503
        out = take_snapshot([ws1], snapshot_id="snap-1", lease_id=LEASE, instance_id=IID, channel=ch,
                            spool=tmp_path / "spool", http=http, retry_budget_s=0.5, sleep=lambda _s: None)
    assert not out.verified and "unavailable" in out.detail
    assert ch.asks == ["upload", "abandoned"]
    assert state(ctx, "snap-1") is SnapshotState.FAILED and ("alert", "snap-1") in actions(ctx)


@pytest.mark.parametrize("ctx", [2], indirect=True)
def test_retention_keeps_the_last_n_and_deletes_older_objects(ctx: Context, tmp_path: Path) -> None:
    ws1 = tmp_path / "box1" / "workspace"
    ch = box(ctx, IID)
    for i in range(4):
        write_state(ws1, str(i))
        assert snapshot(ch, ws1, f"snap-{i}", tmp_path).verified
    storage = ctx.bucket()
    assert [state(ctx, f"snap-{i}") for i in range(4)] == [SnapshotState.DELETED] * 2 + [SnapshotState.VERIFIED] * 2
    assert storage.list_names(object_prefix(LEASE, "snap-0")) == []
    assert storage.list_names(object_prefix(LEASE, "snap-1")) == []
    assert storage.list_names(object_prefix(LEASE, "snap-3"))


class Killed(BaseException):
    """The instance agent dying: nothing of ours catches it, so no "abandoned" ask is ever sent."""


def test_the_reaper_sweeps_an_upload_whose_agent_died_when_no_snapshot_follows(ctx: Context, tmp_path: Path) -> None:
    ws1 = tmp_path / "box1" / "workspace"
    write_state(ws1, "one")

    def die_before_uploaded(ask: SnapshotAsk) -> None:
        if ask.op == "uploaded":
            raise Killed

    ch = box(ctx, IID)
    ch.before = die_before_uploaded
    with pytest.raises(Killed):
        snapshot(ch, ws1, "snap-dead", tmp_path)
    storage = ctx.bucket()
    landed = storage.list_names(object_prefix(LEASE, "snap-dead"))
    assert landed and state(ctx, "snap-dead") is SnapshotState.UPLOADING  # parts in the bucket, never verified

    assert sweep_abandoned_uploads(ctx) == []  # within the upload timeout it may still finish
    later = ctx.now() + timedelta(seconds=ctx.settings.snapshot_upload_timeout_s + 1)
    ctx.clock = lambda: later
    assert sweep_abandoned_uploads(ctx) == ["snap-dead"]
    assert storage.list_names(object_prefix(LEASE, "snap-dead")) == []
    assert state(ctx, "snap-dead") is SnapshotState.DELETED and ("snapshot_deleted", "snap-dead") in actions(ctx)
    assert sweep_abandoned_uploads(ctx) == []  # nothing left: the next tick does nothing
