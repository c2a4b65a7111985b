"""Snapshot and restore throughput of a state directory, through the real instance-side code, on the stack.

Section ``snapshot`` of ``python -m bench``. The state is mostly incompressible: 70 % random bytes (model
weights, optimizer state), 20 % JSON-lines logs, 10 % zeros (a preallocated file). The whole path is the
real one: ``take_snapshot`` packs (tar + zstd level 3, sha256 and MD5 per part), asks for upload URLs
over ``handle_heartbeat`` (the grant a real instance gets; the local stack's Cloud Storage emulator takes
plain JSON-API URLs where Google takes V4 signed ones), uploads, reports the manifest's sha256 and waits
for the control plane's verdict (manifest + MD5 of every object read back from the bucket); then
``restore`` on a second "box" asks for the latest verified snapshot, downloads every part checking size
and sha256, and extracts. The control plane side runs in this process on the stack's Firestore emulator
under a deployment id of its own (``bench-snap``), so the stack's reaper never sees these records.

Baselines, same bytes, same run, same emulator, same 4 transfer threads: ``read + sha256`` of every file
(the local floor), ``raw upload`` (read + sha256 + one POST per file, uncompressed, to the same kind of
URL) and ``raw download`` (GET per file + sha256 + write). The figures are spotleash's own work
(compression, hashing, HTTP on loopback), not a real network's; a real upload is bounded by the link.

    uv run python -m bench.snapshot_throughput [MB ...]    # alone: spawns Cloud Storage and Firestore emulators
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from google.cloud import firestore

from bench.stats import ratio, summary
from spotleash.adapters.firestore import FirestoreStore, Store
from spotleash.adapters.storage import Storage
from spotleash.config import Settings
from spotleash.instance_agent.snapshot.channel import parse_reply
from spotleash.instance_agent.snapshot.common import WORKERS
from spotleash.instance_agent.snapshot.restore import restore
from spotleash.instance_agent.snapshot.take import take_snapshot
from spotleash.log import get_logger
from spotleash.model import Lease, State, new_record, transition
from spotleash.services.context import Context, token_hash
from spotleash.services.heartbeat import handle_heartbeat
from spotleash.wire.events import Heartbeat
from spotleash.wire.snapshot import SnapshotAsk, SnapshotReply

log = get_logger("bench.snapshot")

DEPLOYMENT = "bench-snap"
WORDS = ["step", "loss", "epoch", "lr", "grad_norm", "val", "acc", "checkpoint", "token", "batch"]
MIX = {"random": 0.7, "text": 0.2, "zeros": 0.1}
CHUNK = 1 << 20


def make_state(root: Path, mb: int, seed: int = 7) -> int:
    """``mb`` MB of state in the MIX proportions; its size in bytes."""
    rnd = random.Random(seed)
    total = mb * 2**20
    (root / "ckpt").mkdir(parents=True)
    (root / "logs").mkdir()
    rand_bytes, text_bytes = int(total * MIX["random"]), int(total * MIX["text"])
    shards = max(1, mb // 64)
    for i in range(shards):
        with (root / "ckpt" / f"shard-{i}.bin").open("wb") as f:
            left = rand_bytes // shards
            while left > 0:
                f.write(os.urandom(min(CHUNK * 8, left)))
                left -= CHUNK * 8
    for i in range(20):
        lines, size = [], 0
        while size < text_bytes // 20:
            line = json.dumps({w: round(rnd.random(), 4) for w in rnd.sample(WORDS, 4)}) + "\n"
            lines.append(line)
            size += len(line)
        (root / "logs" / f"run-{i}.jsonl").write_text("".join(lines))
    with (root / "ckpt" / "prealloc.bin").open("wb") as f:
        f.truncate(total - rand_bytes - text_bytes)
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def free_gb(path: Path) -> float:
    return shutil.disk_usage(path).free / 2**30


class Channel:
    """The instance's heartbeat, without HTTP: ``handle_heartbeat`` called in-process with the box's token."""

    def __init__(self, ctx: Context, lease_id: str, iid: str) -> None:
        self.ctx, self.lease_id, self.iid = ctx, lease_id, iid

    def ask(self, ask: SnapshotAsk, budget_s: float | None = None) -> SnapshotReply:  # noqa: ARG002 - in-process: always answered
        reply = handle_heartbeat(self.ctx, Heartbeat(lease_id=self.lease_id, instance_id=self.iid, snapshot=ask),
                                 self.ctx.heartbeat_token(self.iid))
        return parse_reply(json.dumps({"snapshot": reply.snapshot}), ask.op)


def box(ctx: Context, lease_id: str, iid: str) -> Channel:
    now = ctx.now()
    rec = new_record(instance_id=iid, lease_id=lease_id, deployment_id=DEPLOYMENT, event_id=f"ev-{iid}",
                     provider="vast", now=now, max_runtime_s=3600, token_hash=token_hash(ctx.heartbeat_token(iid)))
    ctx.store.create_intent(transition(transition(rec, State.PROVISIONING, now), State.READY, now))
    return Channel(ctx, lease_id, iid)


# --------------------------------------------------------------------------- baselines


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _sha_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def read_sha256(root: Path) -> float:
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        list(pool.map(_sha_file, _files(root)))
    return time.monotonic() - t0


def raw_upload(http: httpx.Client, storage: Storage, root: Path, prefix: str) -> float:
    def one(path: Path) -> None:
        _sha_file(path)
        req = storage.signed_request(f"{prefix}/{path.relative_to(root)}", "PUT")
        size = path.stat().st_size
        with path.open("rb") as f:
            r = http.request(req.method, req.url, headers={**req.headers, "Content-Length": str(size)},
                             content=iter(lambda: f.read(CHUNK), b""))
        if r.status_code >= 300:
            raise RuntimeError(f"raw upload of {path.name}: HTTP {r.status_code} {r.text[:200]}")

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        list(pool.map(one, _files(root)))
    return time.monotonic() - t0


def raw_download(http: httpx.Client, storage: Storage, names: list[str], prefix: str, dest: Path) -> float:
    def one(name: str) -> None:
        req = storage.signed_request(f"{prefix}/{name}", "GET")
        out = dest / name
        out.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        with http.stream(req.method, req.url, headers=req.headers) as r, out.open("wb") as f:
            if r.status_code != 200:
                raise RuntimeError(f"raw download of {name}: HTTP {r.status_code}")
            for chunk in r.iter_bytes(CHUNK):
                h.update(chunk)
                f.write(chunk)

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        list(pool.map(one, names))
    return time.monotonic() - t0


# --------------------------------------------------------------------------- one size


@dataclass
class Bench:
    ctx: Context
    storage: Storage
    scratch: Path


def one_run(b: Bench, mb: int, i: int, state: Path, raw: int) -> dict[str, Any]:
    """One snapshot + restore of ``state`` with its baselines; every temporary byte removed after."""
    lease_id = f"lease-bench-snap-{mb}-{i}-{int(time.time())}"
    now = b.ctx.now()
    b.ctx.store.put_lease(Lease(lease_id=lease_id, deployment_id=DEPLOYMENT,
                                expires_at=now.replace(year=now.year + 1), renewed_at=now))
    work = b.scratch / f"run-{mb}-{i}"
    prefix = f"bench-raw/{lease_id}"
    names = [str(p.relative_to(state)) for p in _files(state)]
    try:
        with httpx.Client(trust_env=False, timeout=300) as http:
            base_read = read_sha256(state)
            base_up = raw_upload(http, b.storage, state, prefix)
            base_down = raw_download(http, b.storage, names, prefix, work / "raw-down")
            shutil.rmtree(work / "raw-down", ignore_errors=True)
            t0 = time.monotonic()
            out = take_snapshot([state], snapshot_id=f"s-{mb}-{i}-{int(time.time())}", lease_id=lease_id,
                                instance_id=f"sl-bsnap{mb}-{i}a", channel=box(b.ctx, lease_id, f"sl-bsnap{mb}-{i}a"),
                                spool=work / "spool", http=http, part_bytes=64 * 2**20)
            snap_s = time.monotonic() - t0
            if not out.verified:
                raise RuntimeError(f"snapshot of {mb} MB not verified: {out.detail}")
            target = work / "box2" / "workspace"
            t1 = time.monotonic()
            got = restore([target], channel=box(b.ctx, lease_id, f"sl-bsnap{mb}-{i}b"), spool=work / "rspool",
                          http=http)
            restore_s = time.monotonic() - t1
            if got.snapshot_id != out.snapshot_id or got.raw_bytes != raw:
                raise RuntimeError(f"restore of {mb} MB got {got.snapshot_id} with {got.raw_bytes} bytes, "
                                   f"want {out.snapshot_id} with {raw}")
            same = _sha_file(target / "ckpt" / "shard-0.bin") == _sha_file(state / "ckpt" / "shard-0.bin")
            if not same:
                raise RuntimeError("the restored shard-0.bin differs from the original")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for name in b.storage.list_names(prefix + "/") + b.storage.list_names(f"snapshots/{lease_id}/"):
            b.storage.delete_if_present(name)
    return {"snapshot_s": snap_s, "restore_s": restore_s, "read_sha256_s": base_read, "raw_upload_s": base_up,
            "raw_download_s": base_down, "stored_bytes": out.size_bytes,
            **{f"snap_{k}": v for k, v in out.timings.items()}}


def one_size(b: Bench, mb: int, repeats: int) -> dict[str, Any]:
    need = mb * 3.5 / 1024 + 0.5  # state + spool + restored copy + restore spool, and room to spare
    if free_gb(b.scratch) < need:
        raise RuntimeError(f"{free_gb(b.scratch):.1f} GB free under {b.scratch}; {mb} MB needs ~{need:.1f} GB")
    state = b.scratch / f"state-{mb}" / "workspace"
    try:
        raw = make_state(state, mb)
        runs = [one_run(b, mb, i, state, raw) for i in range(repeats)]
    finally:
        shutil.rmtree(state.parent, ignore_errors=True)
    log.info("bench snapshot", mb=mb, runs=[{k: round(v, 2) for k, v in r.items()} for r in runs])
    keys = runs[0].keys() if runs else []
    return {"mb": mb, "raw_bytes": raw, "runs": runs, **{k: summary([float(r[k]) for r in runs]) for k in keys}}


def snapshot_section(ctx: Context, storage: Storage, scratch: Path, sizes_mb: list[int], repeats: int) -> dict[str, Any]:
    scratch.mkdir(parents=True, exist_ok=True)
    b = Bench(ctx, storage, scratch)
    return {"mix": MIX, "free_gb_before": free_gb(scratch),
            "sizes": [one_size(b, mb, repeats) for mb in sizes_mb]}


def stack_context(settings: Settings) -> tuple[Context, Storage]:
    """A control plane of its own deployment id on the stack's Firestore and Cloud Storage emulators."""
    from spotleash.topology import load_topology

    bucket = load_topology().package_bucket
    s = settings.model_copy(update={"deployment_id": DEPLOYMENT, "package_bucket": bucket})
    storage = Storage(bucket, project=s.project)
    store: Store = FirestoreStore(firestore.Client(project=s.project), DEPLOYMENT)
    return Context(settings=s, store=store, storage=storage), storage


# --------------------------------------------------------------------------- rows


def _mbs(mb: float, seconds: float | None) -> float | None:
    return None if not seconds else mb / seconds


def snapshot_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Per size: snapshot and restore wall time (median of the repeats) against the raw transfer of the
    same bytes, and the throughput both ways; the ratio is spotleash's time over the baseline's."""
    rows: list[dict[str, Any]] = []
    for sz in res.get("sizes", []):
        mb, n = sz["raw_bytes"] / 2**20, sz["snapshot_s"]["n"]
        label = f"{mb:.0f} MB" if mb < 1000 else f"{mb / 1024:.1f} GB"
        stored = sz["stored_bytes"]["median"] / 2**20
        snap, rest = sz["snapshot_s"], sz["restore_s"]
        up, down, rd = sz["raw_upload_s"]["median"], sz["raw_download_s"]["median"], sz["read_sha256_s"]["median"]
        rows += [
            {"key": f"snapshot_{mb:.0f}", "metric": f"snapshot of {label} of state (stored {stored:.0f} MB): "
             f"pack+zstd+sha256 {sz['snap_pack_s']['median']:.2f} s, upload {sz['snap_upload_s']['median']:.2f} s, "
             f"verify {sz['snap_verify_s']['median']:.2f} s", "unit": "s", "n": n, "median": snap["median"],
             "p99": snap["p99"], "max": snap["max"], "baseline": up, "baseline_name": "raw upload",
             "ratio": ratio(snap["median"], up)},
            {"key": f"restore_{mb:.0f}", "metric": f"restore of {label} (download, sha256 per part, extract)",
             "unit": "s", "n": n, "median": rest["median"], "p99": rest["p99"], "max": rest["max"],
             "baseline": down, "baseline_name": "raw download", "ratio": ratio(rest["median"], down)},
            {"key": f"snapshot_{mb:.0f}_mbs", "metric": f"snapshot throughput, {label} (read + sha256 alone: "
             f"{_mbs(mb, rd) or 0:.0f} MB/s)", "unit": "MB/s", "n": n, "median": _mbs(mb, snap["median"]),
             "baseline": _mbs(mb, up), "baseline_name": "raw upload", "ratio": ratio(_mbs(mb, snap["median"]), _mbs(mb, up))},
            {"key": f"restore_{mb:.0f}_mbs", "metric": f"restore throughput, {label}", "unit": "MB/s", "n": n,
             "median": _mbs(mb, rest["median"]), "baseline": _mbs(mb, down), "baseline_name": "raw download",
             "ratio": ratio(_mbs(mb, rest["median"]), _mbs(mb, down))},
        ]
    return rows


def snapshot_notes(res: dict[str, Any]) -> list[str]:
    mix = ", ".join(f"{int(v * 100)} % {k}" for k, v in res.get("mix", MIX).items())
    return [f"snapshot/restore: state of {mix} (mostly incompressible, as model weights are); the real "
            "instance-side code (`take_snapshot`, `restore`: tar + zstd 3, sha256 per 64 MB part, URLs granted "
            "over `handle_heartbeat`, manifest verified by the control plane, every part's hash checked before "
            "extracting) against the stack's Cloud Storage emulator on loopback. Baselines, same run and bytes: "
            "raw upload = read + sha256 + POST per file uncompressed; raw download = GET + sha256 + write; "
            "4 transfer threads each. Loopback: no real network's bandwidth is in these figures."]


# --------------------------------------------------------------------------- alone


def main(argv: list[str]) -> None:
    """Alone: a Cloud Storage and a Firestore emulator of its own, the same control plane as on the stack."""
    from local_emulator import emulators
    from local_emulator import storage as gcs
    from local_emulator.procs import LOOPBACK, free_port

    sizes = [int(a) for a in argv] or [50]
    port = free_port()
    with tempfile.TemporaryDirectory() as logs:
        proc = gcs.spawn_storage(port, Path(logs))
        fs = emulators.spawn_firestore_emulator(log_dir=Path(logs))
        try:
            gcs.wait_storage_ready(proc, 20.0)
            emulators.wait_firestore_ready(fs)
            bucket = "bench-snapshots"
            gcs.create_bucket(port, "p", bucket)
            os.environ["FIRESTORE_EMULATOR_HOST"] = f"{LOOPBACK}:{fs.port}"
            settings = Settings(deployment_id=DEPLOYMENT, heartbeat_signing_key="k" * 32,  # type: ignore[arg-type]
                                project="p", package_bucket=bucket)
            storage = Storage(bucket, project="p", emulator=gcs.url(port))
            store: Store = FirestoreStore(firestore.Client(project="p"), DEPLOYMENT)
            ctx = Context(settings=settings, store=store, storage=storage)
            print(json.dumps(snapshot_rows(snapshot_section(ctx, storage, Path(logs) / "scratch", sizes, 1)),
                             indent=1, default=str))
        finally:
            fs.stop()
            proc.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
