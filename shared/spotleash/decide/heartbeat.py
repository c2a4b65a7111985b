"""What one heartbeat does to its instance's record, pure (``services/heartbeat.py`` runs it in the
record's transaction and acts on the result)."""

from __future__ import annotations

from datetime import datetime

from spotleash.config import Settings
from spotleash.decide import hibernate
from spotleash.model import ENDED, InstanceRecord, Readiness, State, transition
from spotleash.wire.events import Heartbeat


def record_beat(r: InstanceRecord, beat: Heartbeat, verdict: Readiness, settings: Settings,
                now: datetime) -> InstanceRecord | None:
    """The record after ``beat`` (None: an ended or terminating record is left as it is): READY once every
    component is healthy, the components' states, the first TLS fingerprint, the preemption notice and
    the hibernation / deadline snapshot request."""
    if r.state in ENDED or r.state == State.TERMINATING:
        return None
    ready = verdict.ready and r.state in (State.PROVISIONING, State.RUNNING)
    dst = State.READY if ready else r.state
    states = dict(beat.components) if beat.components else r.component_states
    moved = transition(r, dst, now, last_heartbeat=now, preempted=r.preempted or beat.preempted,
                       preempted_at=now if notices_preemption(r, beat) else r.preempted_at,
                       component_states=states, tls_fingerprint=r.tls_fingerprint or beat.tls_fingerprint,
                       first_heartbeat_at=r.first_heartbeat_at or now, idle_s=beat.idle_s, gpus=list(beat.gpus),
                       ready_at=r.ready_at or (now if dst is State.READY else None))
    return moved.model_copy(update={"snapshot_request": hibernate.after_beat(moved, beat.idle_s, settings, now)})


def notices_preemption(r: InstanceRecord, beat: Heartbeat) -> bool:
    """Does ``beat``, applied to ``r``, record the preemption notice? Several beats can carry the notice
    at once (the agent's and its snapshot asks'): the failover belongs to the one whose transaction recorded
    it, judged on the record as that transaction last read it."""
    return beat.preempted and not r.preempted and r.state not in ENDED and r.state != State.TERMINATING
