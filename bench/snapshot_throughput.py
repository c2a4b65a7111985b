"""Snapshot and restore throughput of a state directory of mixed data, on the Cloud Storage emulator.

    uv run python -m bench.snapshot_throughput [MB ...]      # default 50; run under the stack lock

The state is a third incompressible (random), a third text-like (logs, JSON), a third sparse (zeros,
as in preallocated checkpoints). The whole path is the real one: the instance side packs and uploads
through the URLs granted over ``handle_heartbeat``, the control plane verifies (manifest + MD5 per
object), a second box restores. Cloud Storage is fake-gcs-server on loopback, so the figures are
spotleash's own work (compression, hashing, HTTP), not a real network's.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx
from tests.support.memory_store import MemoryStore

from local_emulator import storage as gcs
from local_emulator.procs import free_port
from spotleash.config import Settings
from spotleash.events import Heartbeat
from spotleash.instance_agent.snapshot import parse_reply, restore, take_snapshot
from spotleash.model import Lease, State, new_record, transition
from spotleash.services.context import Context, token_hash
from spotleash.services.heartbeat import handle_heartbeat
from spotleash.snapshot_wire import SnapshotAsk, SnapshotReply
from spotleash.storage import Storage

BUCKET = "bench-snapshots"
LEASE = "lease-bench"
WORDS = ["step", "loss", "epoch", "lr", "grad_norm", "val", "acc", "checkpoint", "token", "batch"]


def make_state(root: Path, mb: int, seed: int = 7) -> int:
    rnd = random.Random(seed)
    third = mb * 1024 * 1024 // 3
    (root / "ckpt").mkdir(parents=True)
    (root / "logs").mkdir()
    for i in range(4):
        (root / "ckpt" / f"shard-{i}.bin").write_bytes(os.urandom(third // 4))
    for i in range(20):
        lines, size = [], 0
        while size < third // 20:
            line = json.dumps({w: round(rnd.random(), 4) for w in rnd.sample(WORDS, 4)}) + "\n"
            lines.append(line)
            size += len(line)
        (root / "logs" / f"run-{i}.jsonl").write_text("".join(lines))
    (root / "ckpt" / "prealloc.bin").write_bytes(bytes(third))
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


class Channel:
    def __init__(self, ctx: Context, iid: str) -> None:
        self.ctx, self.iid = ctx, iid

    def ask(self, ask: SnapshotAsk) -> SnapshotReply:
        reply = handle_heartbeat(self.ctx, Heartbeat(lease_id=LEASE, instance_id=self.iid, snapshot=ask),
                                 self.ctx.heartbeat_token(self.iid))
        return parse_reply(json.dumps({"snapshot": reply.snapshot}), ask.op)


def box(ctx: Context, iid: str) -> Channel:
    now = ctx.now()
    rec = new_record(instance_id=iid, lease_id=LEASE, deployment_id="bench", event_id=f"ev-{iid}", provider="vast",
                     now=now, max_runtime_s=3600, token_hash=token_hash(ctx.heartbeat_token(iid)))
    ctx.store.create_intent(transition(transition(rec, State.PROVISIONING, now), State.READY, now))
    return Channel(ctx, iid)


def run(mb: int, url: str) -> dict[str, float]:
    settings = Settings(deployment_id="bench", heartbeat_signing_key="k" * 32, package_bucket=BUCKET)  # type: ignore[arg-type]
    ctx = Context(settings=settings, store=MemoryStore("bench"), storage=Storage(BUCKET, project="p", emulator=url))
    now = ctx.now()
    ctx.store.put_lease(Lease(lease_id=LEASE, deployment_id="bench", expires_at=now.replace(year=now.year + 1),
                              renewed_at=now))
    with tempfile.TemporaryDirectory() as d, httpx.Client(trust_env=False, timeout=120) as http:
        tmp = Path(d)
        raw = make_state(tmp / "box1" / "workspace", mb)
        t0 = time.monotonic()
        out = take_snapshot([tmp / "box1" / "workspace"], snapshot_id=f"s-{mb}", lease_id=LEASE,
                            instance_id="sl-b1", channel=box(ctx, "sl-b1"), spool=tmp / "spool", http=http,
                            part_bytes=64 * 1024 * 1024)
        snap_s = time.monotonic() - t0
        assert out.verified, out.detail
        t1 = time.monotonic()
        got = restore([tmp / "box2" / "workspace"], channel=box(ctx, "sl-b2"), spool=tmp / "rspool", http=http)
        restore_s = time.monotonic() - t1
        assert got.snapshot_id == out.snapshot_id and got.raw_bytes == raw
    return {"raw_mb": raw / 2**20, "stored_mb": out.size_bytes / 2**20, "ratio": raw / out.size_bytes,
            "snapshot_s": snap_s, "snapshot_mb_s": raw / 2**20 / snap_s, "restore_s": restore_s,
            "restore_mb_s": raw / 2**20 / restore_s, **{k: v for k, v in out.timings.items()}}


def main(argv: list[str]) -> None:
    sizes = [int(a) for a in argv] or [50]
    port = free_port()
    with tempfile.TemporaryDirectory() as logs:
        proc = gcs.spawn_storage(port, Path(logs))
        try:
            gcs.wait_storage_ready(proc, 20.0)
            gcs.create_bucket(port, "p", BUCKET)
            for mb in sizes:
                print(json.dumps({k: round(v, 3) for k, v in run(mb, gcs.url(port)).items()}))
        finally:
            proc.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
