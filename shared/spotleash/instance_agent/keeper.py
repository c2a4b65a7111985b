"""When the instance snapshots and restores: the one thread that does either, one at a time.

``begin(roots)`` starts it: first the **restore** of the lease's latest verified snapshot into the state
paths (``snapshot.restore``, which checks every hash and falls back past corrupt snapshots), then the
loop that takes **snapshots** (``snapshot.take_snapshot``) on its triggers, in this order of precedence:

- ``preempted`` — the GCE preemption notice (``ask("preempted")``), ahead of anything queued;
- ``requested`` — a heartbeat reply's ``SnapshotRequest``, once per ``request_id``;
- ``periodic`` — every ``interval_s`` seconds (0: never), skipped while the state paths' listing (names,
  sizes, mtimes) is the one last saved: an idle box uploads nothing and stays idle.

Triggers that arrive while a snapshot runs wait for it (a request is then served by a snapshot started
after it arrived). The wire (``spotleash.wire.snapshot``) reports every outcome to the control plane.

A restore that cannot finish (the control plane or Cloud Storage unreachable for ``restore_budget_s``)
fails the instance (``restore_failed``) rather than start its components on empty state: a snapshot of
that empty state would otherwise become the lease's newest.

Where the state paths are: ``resolve_state_paths`` — the configured ones, else the package's
``[app] state_paths``, else the provider's default (``/workspace`` on VAST, none on GCE); under
``$SPOTLEASH_VM_ROOT`` when that is set (the local fakes' per-instance root; unset on a real instance).
"""

from __future__ import annotations

import collections
import hashlib
import math
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx

from spotleash.clock import utcnow
from spotleash.instance_agent.snapshot.channel import Channel
from spotleash.instance_agent.snapshot.common import SnapshotError, state_paths_for
from spotleash.instance_agent.snapshot.packing import PART_BYTES
from spotleash.instance_agent.snapshot.restore import RestoreOutcome, restore
from spotleash.instance_agent.snapshot.take import SnapshotOutcome, take_snapshot
from spotleash.log import get_logger
from spotleash.wire.events import InstanceFailure
from spotleash.wire.snapshot import SnapshotTrigger

log = get_logger(__name__)

VM_ROOT_ENV = "SPOTLEASH_VM_ROOT"  # local_emulator.vmshim.ROOT_VAR: a fake instance's own root directory
PREEMPTION_BUDGET_S = 25.0  # GCE gives 30 s between the notice and hard off
REMEMBERED_REQUESTS = 64


def resolve_state_paths(provider: str, configured: Sequence[str], declared: Sequence[str] = (),
                        env: Mapping[str, str] | None = None) -> list[Path]:
    """The directories this instance keeps: ``configured`` (AgentConfig), else ``declared`` (the package's
    ``[app] state_paths``), else the provider's default; re-rooted under ``$SPOTLEASH_VM_ROOT`` if set."""
    paths = state_paths_for(provider, list(configured) or list(declared))
    root = (os.environ if env is None else env).get(VM_ROOT_ENV)
    return [Path(root) / p.relative_to("/") for p in paths] if root else paths


def fingerprint(roots: Sequence[Path]) -> str:
    """A digest of every entry's path, type, size and mtime under ``roots`` (not their bytes)."""
    h = hashlib.sha256()
    for i, root in enumerate(roots):
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames) + dirnames:
                p = os.path.join(dirpath, name)
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                h.update(f"{i}\0{os.path.relpath(p, root)}\0{st.st_mode}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def new_snapshot_id() -> str:
    """Unique, and sortable by time to the microsecond: ``20261129t213501-123456-1a2b3c4d``."""
    return f"{utcnow():%Y%m%dt%H%M%S-%f}-{secrets.token_hex(4)}"


class SnapshotKeeper:
    def __init__(
        self,
        *,
        lease_id: str,
        instance_id: str,
        channel: Channel,
        spool: Path,
        interval_s: float,
        http: httpx.Client | None = None,
        part_bytes: int = PART_BYTES,
        restore_budget_s: float = 180.0,
        retry_budget_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[], None] = lambda: None,
        stop: threading.Event | None = None,
    ) -> None:
        self.lease_id, self.instance_id = lease_id, instance_id
        self._channel = channel
        self.spool = spool
        self.interval_s = interval_s
        self._http = http
        self.part_bytes = part_bytes
        self.restore_budget_s = restore_budget_s
        self.retry_budget_s = retry_budget_s
        self._clock = clock
        self._on_change = on_change
        self.roots: list[Path] = []
        self.leave_out: list[Path] = []  # never packed though under a root: the artifacts, the blob cache (agent)
        self._cond = threading.Condition()
        self._queue: list[tuple[SnapshotTrigger, str | None]] = []
        self._seen_requests: collections.deque[str] = collections.deque(maxlen=REMEMBERED_REQUESTS)
        self._stop = stop or threading.Event()  # shared with the channel, so stop() ends an ask's retries too
        self._thread: threading.Thread | None = None
        self._saved_fingerprint: str | None = None
        self.restored = threading.Event()  # set when the restore ended (done, nothing to do, or failed)
        self.restore_outcome: RestoreOutcome | None = None
        self.failure: InstanceFailure | None = None
        self.busy: SnapshotTrigger | None = None  # the trigger of the snapshot running now
        self.outcomes: list[SnapshotOutcome] = []  # of this instance's snapshots, oldest first (last 16)
        self.periodic_checks = 0  # periods that came due (a snapshot taken or, unchanged, skipped)

    # ------------------------------------------------------------------ control
    def begin(self, roots: Sequence[Path]) -> None:
        """Restore into ``roots``, then keep snapshotting them (idempotent: the first call wins)."""
        with self._cond:
            if self._thread is not None:
                return
            self.roots = list(roots)
            self._thread = threading.Thread(target=self._main, name="snapshot-keeper", daemon=True)
        self._thread.start()

    def wait_restored(self, timeout_s: float | None = None) -> InstanceFailure | None:
        """Block until the restore has ended; the failure that keeps components off, if any."""
        while not self.restored.wait(1.0 if timeout_s is None else timeout_s):
            if self._stop.is_set():
                return InstanceFailure(reason="restore_failed", detail="the agent is stopping")
            if timeout_s is not None:
                return InstanceFailure(reason="restore_failed", detail=f"not restored within {timeout_s:.0f} s")
        return self.failure

    def ask(self, trigger: SnapshotTrigger, request_id: str | None = None, reason: str = "") -> bool:
        """Queue a snapshot; False when it is not taken (a request already seen, or no state paths)."""
        with self._cond:
            if self._thread is not None and not self.roots:
                return False
            if request_id is not None:
                if request_id in self._seen_requests:
                    return False
                self._seen_requests.append(request_id)
            item = (trigger, request_id)
            if trigger == "preempted":
                if any(t == "preempted" for t, _ in self._queue) or self.busy == "preempted":
                    return False
                self._queue.insert(0, item)
            else:
                self._queue.append(item)
            self._cond.notify_all()
        log.info("snapshot asked for", trigger=trigger, request_id=request_id, reason=reason[:200])
        return True

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def settle_preemption(self, budget_s: float = PREEMPTION_BUDGET_S) -> None:
        """Wait (at most ``budget_s``) for a queued or running preemption snapshot before the agent exits."""
        end = self._clock() + budget_s
        with self._cond:
            while (self.busy == "preempted" or any(t == "preempted" for t, _ in self._queue)) \
                    and self._clock() < end and self._thread is not None and self._thread.is_alive():
                self._cond.wait(min(0.5, max(0.0, end - self._clock())))

    # ------------------------------------------------------------------ the thread
    def _main(self) -> None:
        try:
            self._run()
        finally:  # whatever ended the thread, nobody may wait for the restore forever
            if not self.restored.is_set():
                self.failure = self.failure or InstanceFailure(reason="restore_failed",
                                                               detail="the restore stopped unexpectedly")
                self.restored.set()
                self._on_change()

    def _run(self) -> None:
        if not self.roots:
            self.restored.set()
            return
        if not self._restore():
            return
        next_periodic = self._clock() + self.interval_s if self.interval_s > 0 else math.inf
        while not self._stop.is_set():
            with self._cond:
                while not self._queue and not self._stop.is_set() and self._clock() < next_periodic:
                    self._cond.wait(None if math.isinf(next_periodic) else max(0.01, next_periodic - self._clock()))
                if self._stop.is_set():
                    return
                trigger, request_id = self._queue.pop(0) if self._queue else ("periodic", None)
                self.busy = trigger
            try:
                if trigger == "periodic":
                    next_periodic = self._clock() + self.interval_s
                    self.periodic_checks += 1
                if trigger != "periodic" or fingerprint(self.roots) != self._saved_fingerprint:
                    self._take(trigger, request_id)
            except Exception as e:  # noqa: BLE001 - one snapshot's unforeseen error must not end every later one
                log.error("snapshot failed unexpectedly; the keeper goes on", trigger=trigger, request_id=request_id,
                          error=f"{type(e).__name__}: {e}"[:300])
            finally:
                with self._cond:
                    self.busy = None
                    self._cond.notify_all()

    def _take(self, trigger: SnapshotTrigger, request_id: str | None) -> None:
        before = fingerprint(self.roots)
        outcome = take_snapshot(
            self.roots, snapshot_id=new_snapshot_id(), lease_id=self.lease_id, instance_id=self.instance_id,
            channel=self._channel, spool=self.spool, http=self._http, part_bytes=self.part_bytes,
            retry_budget_s=PREEMPTION_BUDGET_S if trigger == "preempted" else self.retry_budget_s,
            trigger=trigger, request_id=request_id, leave_out=self.leave_out)
        self.outcomes = [*self.outcomes[-15:], outcome]
        if outcome.verified:
            self._saved_fingerprint = before  # what changed while packing is saved by the next one
        log.info("snapshot outcome", trigger=trigger, request_id=request_id, snapshot_id=outcome.snapshot_id,
                 verified=outcome.verified, detail=outcome.detail[:200], raw_bytes=outcome.raw_bytes)

    def _restore(self) -> bool:
        give_up_at = self._clock() + self.restore_budget_s
        pause = 1.0
        while True:
            try:
                self.restore_outcome = restore(self.roots, channel=self._channel, spool=self.spool, http=self._http,
                                               retry_budget_s=self.retry_budget_s)
                # What was restored is saved already. Taken before anyone hears the restore is over: the
                # components start then, and a change they made before this listing would count as saved
                # and no periodic snapshot would ever take it.
                self._saved_fingerprint = fingerprint(self.roots)
                self.restored.set()
                self._on_change()
                return True
            except (SnapshotError, OSError) as e:  # OSError: the disk (full, read-only), said as such
                why = str(e)[:400]
            if self._stop.is_set() or self._clock() + pause > give_up_at:
                self.failure = InstanceFailure(reason="restore_failed", detail=f"state not restored: {why}")
                log.error("restore failed; components stay off", instance_id=self.instance_id, reason=why)
                self.restored.set()
                self._on_change()
                return False
            log.warning("restore not done yet; retrying", instance_id=self.instance_id, reason=why, pause_s=pause)
            self._stop.wait(pause)
            pause = min(pause * 2, 15.0)
