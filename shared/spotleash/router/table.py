"""Where each component's requests go: pure decisions over plain data and a ``now`` (no I/O).

``decide_target`` answers for one component: the remote copy when its instance is READY, the component
is healthy there, nothing says the instance is going away and the router's own probe of it passes;
otherwise the local copy when it answers its own probe. When every copy failed its probes, ``least_bad``
still picks one (panic routing, Envoy's panic threshold): a probe that timed out is weak evidence (the
copy may be busy, and failing every request makes a slow service a dead one), an error answer stronger;
a refused connection or a wrong certificate says no copy is there at all. Only then is the answer nobody
(the proxy answers 503 with Retry-After, or holds the request for a copy to come).
The agent's hand-off sets each local copy's ``LocalMode``: ``STOPPED`` (its remote copy serves and the
agent stopped it: not a target, not probed, no panic target) or ``HOME`` (coming home: the local copy takes
new requests ahead of a usable remote copy, which then drains). ``RouteTable`` keeps what the control plane and
the probes said, and turns every change of that into
at most one ``Change`` per component (the proxy logs it and drains the target it leaves), and notes each
remote copy that fails probes without notice (``suspect_without_notice``: the agent asks the
control plane to check that instance at its provider now).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

READY = "READY"
ENDING = frozenset({"TERMINATING", "TERMINATED", "FAILED"})
HEALTHY = "healthy"


class LocalMode(StrEnum):
    """What the agent's hand-off says of a component's local copy (``agent.handoff``)."""

    AUTO = "auto"  # the default: local whenever no remote copy is usable
    STOPPED = "stopped"  # the agent stopped it (its remote copy serves): never a target, not probed
    HOME = "home"  # coming home: the local copy answers and takes new requests even while a remote copy is usable


class TargetKind(StrEnum):
    LOCAL = "local"
    REMOTE = "remote"
    NONE = "none"  # no target can serve: the proxy answers 503 with Retry-After


@dataclass(frozen=True)
class RemoteState:
    """One component's copy on one instance, as the control plane's record shows it."""

    instance_id: str
    instance_state: str  # the record's State value (READY, TERMINATING...)
    component_state: str | None  # starting / healthy / failing; None: not reported
    endpoint: str | None  # host:port of the instance's authenticating TLS front
    fingerprint: str | None  # sha256 (hex) of the front's certificate, pinned by the router
    preempted: bool = False


class Failure(StrEnum):
    """How a probe or a forward failed, weakest evidence that the copy is gone first."""

    SLOW = "slow"  # no answer in time: busy, or frozen — it may well be there
    BROKE = "broke"  # it answered, but not 2xx, or dropped the connection: there, and unwell
    REFUSED = "refused"  # refused, unreachable, or a wrong certificate: no (right) copy listens there


# Panic routing's order: a copy that only timed out before one that answered badly; a refused one never.
_DOUBT = {None: 0, Failure.SLOW: 1, Failure.BROKE: 2}


@dataclass(frozen=True)
class Probes:
    """The router's own recent probes of one target (active probes plus failed forwards)."""

    ok_streak: int = 0
    fail_streak: int = 0
    last_at: float | None = None
    last_error: str | None = None
    last_failure: Failure | None = None  # how the last failure failed (None: the last probe passed)

    def record(self, ok: bool, now: float, error: str | None = None, failure: Failure = Failure.BROKE) -> Probes:
        if ok:
            return Probes(self.ok_streak + 1, 0, now, None, None)
        return Probes(0, self.fail_streak + 1, now, error or "failed", failure)

    @property
    def doubt(self) -> int | None:
        """How strongly the probes say the copy is gone, for panic routing: lower is better; None: not
        there at all (its last failure was a refusal), so never a panic target."""
        return _DOUBT.get(self.last_failure)


@dataclass(frozen=True)
class Policy:
    rise: int = 1  # passing probes in a row before a remote copy takes traffic
    fall: int = 2  # failing probes in a row before a target stops taking traffic
    suspect: int = 1  # failing probes in a row of a remote copy before the control plane is asked to check it
    stale_s: float = 10.0  # a remote whose last probe is older than this is not trusted

    def __post_init__(self) -> None:
        if self.rise < 1 or self.fall < 1 or not 1 <= self.suspect <= self.fall or self.stale_s <= 0:
            raise ValueError(f"bad route policy: {self}")


@dataclass(frozen=True)
class Route:
    target: TargetKind
    reason: str
    remote: RemoteState | None = None  # set when target is REMOTE
    panic: bool = False  # every copy failed its probes: this one is the least bad (``least_bad``)

    @property
    def key(self) -> str:
        """Identity of the target: a change of key is a target change (logged, drained)."""
        if self.target == TargetKind.REMOTE and self.remote is not None:
            return f"remote:{self.remote.instance_id}"
        return str(self.target)


def local_ok(probes: Probes, has_local: bool, policy: Policy) -> bool:
    """The local copy serves unless it failed ``fall`` probes in a row (trusted before its first probe)."""
    return has_local and probes.fail_streak < policy.fall


def remote_unusable(
    remote: RemoteState | None,
    probes: Probes,
    now: float,
    policy: Policy,
    lease_released: bool = False,
    in_use: bool = False,
) -> str | None:
    """Why this remote copy must not take new requests, or None when it may.

    ``in_use``: it is the current target, so ``fall`` failures take it out; otherwise it needs ``rise``
    passes in a row to come in (hysteresis: one lost probe does not flip traffic back and forth).
    """
    if lease_released:
        return "lease released"
    if remote is None:
        return "no remote copy"
    if remote.preempted:
        return f"instance {remote.instance_id} got a preemption notice"
    if remote.instance_state in ENDING:
        return f"instance {remote.instance_id} is ending ({remote.instance_state})"
    if remote.instance_state != READY:
        return f"instance {remote.instance_id} is not ready ({remote.instance_state})"
    if remote.component_state != HEALTHY:
        return f"component is {remote.component_state or 'not reported'} on {remote.instance_id}"
    if not remote.endpoint or not remote.fingerprint:
        return f"instance {remote.instance_id} reported no endpoint or certificate fingerprint"
    if probes.last_at is None:
        return f"awaiting the first probe of {remote.instance_id}"
    if probes.fail_streak >= policy.fall or (not in_use and probes.fail_streak > 0):
        return f"probe of {remote.instance_id} failing ({probes.fail_streak} in a row: {probes.last_error})"
    if not in_use and probes.ok_streak < policy.rise:
        return f"probe of {remote.instance_id} passed {probes.ok_streak}/{policy.rise} times"
    if now - probes.last_at > policy.stale_s:
        return f"last probe of {remote.instance_id} is {now - probes.last_at:.0f} s old"
    return None


def decide_target(
    component: str,
    local_ok: bool,
    remote: RemoteState | None,
    probes: Probes,
    now: float,
    *,
    policy: Policy | None = None,
    lease_released: bool = False,
    current: Route | None = None,
) -> Route:
    """Where ``component``'s new requests go now."""
    policy = policy or Policy()
    in_use = (
        current is not None
        and current.target == TargetKind.REMOTE
        and remote is not None
        and current.remote is not None
        and current.remote.instance_id == remote.instance_id
    )
    why_not = remote_unusable(remote, probes, now, policy, lease_released, in_use)
    if why_not is None:
        return Route(TargetKind.REMOTE, f"remote copy of {component} ready and its probe passing", remote)
    if local_ok:
        return Route(TargetKind.LOCAL, why_not)
    return Route(TargetKind.NONE, f"local copy of {component} not answering; {why_not}")


def probeable(remote: RemoteState) -> bool:
    """A remote copy the router probes (and may route to in panic): READY, healthy on its instance, with
    an endpoint and a certificate, no preemption notice."""
    return (remote.instance_state == READY and remote.component_state == HEALTHY and bool(remote.endpoint)
            and bool(remote.fingerprint) and not remote.preempted)


def least_bad(component: str, local: Probes | None, remotes: Sequence[tuple[RemoteState, Probes]], *,
              lease_released: bool = False, current: Route | None = None) -> Route | None:
    """Every copy of ``component`` failed its probes: the one to send to anyway, or None when no copy is
    there at all (Envoy's panic threshold, at 100 %). ``local``: the local copy's probes (None: no local
    copy); ``remotes``: each remote copy with its probes.

    Candidates: the local copy, and every remote copy the router probes (``probeable``) unless the lease
    is released — a planned ending never takes traffic back. A copy whose last failure was a refusal or a
    wrong certificate is not there and never chosen. The rest rank by their last failure (a timeout before
    an error answer), then the current target (no flapping between two bad copies), then local first."""
    options: list[tuple[tuple[int, bool, int, str], Route]] = []
    here = current.key if current is not None else None

    def add(probes: Probes, remote: RemoteState | None) -> None:
        doubt = probes.doubt
        if doubt is None:
            return
        d = Route(TargetKind.REMOTE if remote else TargetKind.LOCAL,
                     f"panic: every copy of {component} is failing its probes; the least bad is the "
                     f"{'remote copy on ' + remote.instance_id if remote else 'local copy'} "
                     f"(last: {probes.last_error or 'not probed yet'})", remote, panic=True)
        options.append(((doubt, d.key != here, 0 if remote is None else 1,
                         remote.instance_id if remote else ""), d))

    if local is not None:
        add(local, None)
    if not lease_released:
        for r, p in remotes:
            if probeable(r):
                add(p, r)
    return min(options, key=lambda o: o[0])[1] if options else None


def suspect_without_notice(remote: RemoteState | None, before: Probes, after: Probes, policy: Policy,
                           lease_released: bool = False) -> bool:
    """Did this probe make a remote copy suspect (its ``suspect``-th failure in a row, the first by default)
    while nothing planned its ending? Then its instance may be gone behind our back (an outbid VAST box, a VM
    deleted, a frozen box) and the control plane should ask the provider now — a question, not a verdict:
    the provider's answer decides, and one showing the box running changes nothing (the traffic still needs
    ``fall`` failures to move). Asking at the first failure rather than at the fall saves a probe timeout
    on every silent loss. A planned ending never counts:
    the lease released, a preemption notice, the instance ending (a release's or the reaper's deletion),
    its READY record gone (then the table no longer has it), or its own heartbeat calling the component
    unhealthy (the instance is alive and says so)."""
    if lease_released or remote is None or remote.preempted:
        return False
    if remote.instance_state != READY or remote.component_state != HEALTHY:
        return False
    return before.fail_streak < policy.suspect <= after.fail_streak


@dataclass(frozen=True)
class Suspect:
    """A remote copy that failed probes without notice (``suspect_without_notice``)."""

    component: str
    instance_id: str
    error: str


@dataclass(frozen=True)
class Change:
    component: str
    old: Route
    new: Route


@dataclass
class _Component:
    has_local: bool
    remotes: dict[str, RemoteState] = field(default_factory=dict)  # by instance id
    local_probes: Probes = field(default_factory=Probes)
    current: Route = field(default_factory=lambda: Route(TargetKind.LOCAL, "starting"))
    local_mode: LocalMode = LocalMode.AUTO

    @property
    def local_there(self) -> bool:
        """A local copy exists and the agent has not stopped it."""
        return self.has_local and self.local_mode != LocalMode.STOPPED


class RouteTable:
    """Per component: the remote copies the control plane reports, the probes, the current decision."""

    def __init__(self, components: Mapping[str, bool], policy: Policy | None = None) -> None:
        """``components``: name → whether a local copy exists."""
        self.policy = policy or Policy()
        self.lease_released = False
        self._c = {
            n: _Component(has_local, current=Route(TargetKind.LOCAL if has_local else TargetKind.NONE,
                                                      "starting: no remote copy yet"))
            for n, has_local in components.items()
        }
        self._remote_probes: dict[tuple[str, str], Probes] = {}
        self._suspects: list[Suspect] = []

    @property
    def components(self) -> list[str]:
        return list(self._c)

    def current(self, component: str) -> Route:
        return self._c[component].current

    def remotes(self, component: str) -> list[RemoteState]:
        return list(self._c[component].remotes.values())

    def remote_probes(self, component: str, instance_id: str) -> Probes:
        return self._remote_probes.get((component, instance_id), Probes())

    def local_probes(self, component: str) -> Probes:
        return self._c[component].local_probes

    def local_mode(self, component: str) -> LocalMode:
        return self._c[component].local_mode

    def local_there(self, component: str) -> bool:
        """Has ``component`` a local copy the agent has not stopped (a target, worth a probe)?"""
        return self._c[component].local_there

    def probe_targets(self) -> list[tuple[str, RemoteState]]:
        """Remote copies worth probing: READY, healthy on their instance, with an endpoint, not ending."""
        return [(name, r) for name, c in self._c.items() for r in c.remotes.values() if probeable(r)]

    # ------------------------------------------------------------------ inputs

    def set_remotes(self, remotes: Mapping[str, Sequence[RemoteState]], now: float) -> list[Change]:
        """Replace what the control plane reports (every component not named has no remote copy)."""
        for name, c in self._c.items():
            fresh = {r.instance_id: r for r in remotes.get(name, ())}
            for iid, old in c.remotes.items():
                new = fresh.get(iid)
                if new is None or (new.endpoint, new.fingerprint) != (old.endpoint, old.fingerprint):
                    self._remote_probes.pop((name, iid), None)  # a new address earns its own probes
            c.remotes = fresh
        return self.reevaluate(now)

    def release_lease(self, now: float) -> list[Change]:
        self.lease_released = True
        return self.reevaluate(now)

    def reopen_lease(self, now: float) -> list[Change]:
        """A new demand after a release mid-run: the lease's next remote copies may take traffic again."""
        self.lease_released = False
        return self.reevaluate(now)

    def set_local_mode(self, component: str, mode: LocalMode, now: float) -> list[Change]:
        """The hand-off's word on ``component``'s local copy (``LocalMode``). Leaving STOPPED forgets the old
        copy's probes: the new one earns its own."""
        c = self._c[component]
        if c.local_mode == LocalMode.STOPPED and mode != LocalMode.STOPPED:
            c.local_probes = Probes()
        c.local_mode = mode
        return self.reevaluate(now)

    def record_probe(
        self, component: str, instance_id: str | None, ok: bool, now: float, error: str | None = None,
        failure: Failure = Failure.BROKE,
    ) -> list[Change]:
        """A probe result (``instance_id`` None: the local copy; ``failure``: how it failed, when it did).
        Unknown remotes are ignored."""
        c = self._c[component]
        if instance_id is None:
            c.local_probes = c.local_probes.record(ok, now, error, failure)
        elif instance_id in c.remotes:
            key = (component, instance_id)
            before = self._remote_probes.get(key, Probes())
            after = self._remote_probes[key] = before.record(ok, now, error, failure)
            if suspect_without_notice(c.remotes[instance_id], before, after, self.policy, self.lease_released):
                self._suspects.append(Suspect(component, instance_id, after.last_error or "failed"))
        return self.reevaluate(now)

    def unsettled(self) -> bool:
        """Has a probed target failed its last probe without having fallen yet? The proxy then probes again
        at once instead of after its interval: a dead target falls in two probe timeouts, not in those plus
        the interval between them (a freeze the router waits out is still shorter than two timeouts)."""
        targets = {(name, r.instance_id) for name, r in self.probe_targets()}
        streaks = [p.fail_streak for key, p in self._remote_probes.items() if key in targets]
        streaks += [c.local_probes.fail_streak for c in self._c.values() if c.local_there]
        return any(0 < s < self.policy.fall for s in streaks)

    def take_suspects(self) -> list[Suspect]:
        """The remote copies that became suspect since the last call (each once per run of failures)."""
        suspects, self._suspects = self._suspects, []
        return suspects

    # ------------------------------------------------------------------ deciding

    def _decide(self, name: str, c: _Component, now: float) -> Route:
        lok = local_ok(c.local_probes, c.local_there, self.policy)
        cur = c.current
        if c.local_mode == LocalMode.HOME and lok:
            return Route(TargetKind.LOCAL, f"{name} came home: its local copy answers again")
        candidates: list[RemoteState] = []
        if cur.target == TargetKind.REMOTE and cur.remote is not None and cur.remote.instance_id in c.remotes:
            candidates.append(c.remotes[cur.remote.instance_id])  # stay where we are while it is usable
        candidates += [r for iid, r in sorted(c.remotes.items()) if r not in candidates]
        first: Route | None = None
        for r in candidates:
            d = decide_target(name, lok, r, self.remote_probes(name, r.instance_id), now, policy=self.policy,
                              lease_released=self.lease_released, current=cur)
            if d.target == TargetKind.REMOTE:
                return d
            first = first or d
        decided = first or decide_target(name, lok, None, Probes(), now, policy=self.policy,
                                         lease_released=self.lease_released, current=cur)
        if decided.target != TargetKind.NONE:
            return decided
        remotes = [(r, self.remote_probes(name, r.instance_id)) for _, r in sorted(c.remotes.items())]
        panic = least_bad(name, c.local_probes if c.local_there else None, remotes,
                          lease_released=self.lease_released, current=cur)
        return panic or decided

    def reevaluate(self, now: float) -> list[Change]:
        """Decide again; a change of target, or into or out of panic on the same one, is a ``Change``."""
        changes = []
        for name, c in self._c.items():
            new = self._decide(name, c, now)
            if (new.key, new.panic) != (c.current.key, c.current.panic):
                changes.append(Change(name, c.current, new))
            c.current = new  # same key: a fresher reason or record, not a change
        return changes
