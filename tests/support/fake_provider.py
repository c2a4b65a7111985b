"""``spotleash.providers.base.Provider`` in memory, with scripted failures, for in-process service tests.

    gce = FakeProvider("gce", clock)
    gce.fail("create", ProviderTransient("503"), times=2)          # transient, then it works
    gce.fail("create", ProviderPermanent("400"), leave_partial=True)  # refused after making half a VM
    gce.fail("list_owned", ProviderTransient("listing 503"))       # a failed inventory
    gce.on("create", lambda: release(...))                          # run something *during* a call (races)
    gce.delete_lag = 2                                              # a delete is confirmed on the 3rd get()
    gce.take_back(pid)                                              # preempted / outbid: STOPPED at the provider

Like the real providers it reconciles by label (``create`` twice for one instance id makes one
instance), treats deleting what is gone as success, and lists only what carries our labels.
Every call is recorded in ``calls`` as ``(verb, argument)``, so tests assert what was asked of it.
Provider ids differ from instance ids (``gce-0001``), so code that mixes the two up fails here.
"""

from __future__ import annotations

import itertools
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from spotleash.clock import utcnow
from spotleash.providers.base import (
    LABEL_DEPLOYMENT,
    LABEL_INSTANCE,
    HostKeyLearner,
    LaunchSpec,
    Provider,
    ProviderInstance,
    ProviderStatus,
    ownership_labels,
)


@dataclass
class _Fault:
    error: Exception
    times: int
    target: str | None  # only calls with this argument (provider id, instance id...); None: any
    leave_partial: bool  # create only: the instance exists although the call failed


class FakeProvider:
    def __init__(self, name: str = "gce", clock: Callable[[], datetime] = utcnow, *,
                 price_per_hour: float = 0.05) -> None:
        self.name = name
        self.clock = clock
        self.price_per_hour = price_per_hour
        self.instances: dict[str, ProviderInstance] = {}  # provider id -> instance
        self.calls: list[tuple[str, str]] = []
        self.specs: list[LaunchSpec] = []  # every spec create() was given
        self.delete_lag = 0  # get() calls a deleted instance still answers (STOPPING) before it is gone
        self.never_delete = False  # deletes are accepted but nothing ever goes
        self._lingering: dict[str, int] = {}
        self._faults: dict[str, list[_Fault]] = defaultdict(list)
        self._hooks: dict[str, list[Callable[[], None]]] = defaultdict(list)
        self._seq = itertools.count(1)
        self._lock = threading.RLock()

    # ---------------------------------------------------------------- scripting
    def fail(self, verb: str, error: Exception, *, times: int = 1, target: str | None = None,
             leave_partial: bool = False) -> None:
        """The next ``times`` calls of ``verb`` (on ``target`` only, if given) raise ``error``."""
        with self._lock:
            self._faults[verb].append(_Fault(error, times, target, leave_partial))

    def on(self, verb: str, hook: Callable[[], None]) -> None:
        """Run ``hook`` once, at the start of the next call of ``verb`` (before it acts or fails)."""
        with self._lock:
            self._hooks[verb].append(hook)

    def plant(self, instance_id: str | None, *, lease_id: str = "lease-x", deployment_id: str = "default",
              age_s: float = 3600.0, owned: bool = True, status: ProviderStatus = ProviderStatus.RUNNING,
              native_status: str | None = None) -> ProviderInstance:
        """An instance that exists at the provider without any call of ours (an orphan, a stranger's VM)."""
        labels = ownership_labels(deployment_id, lease_id, instance_id or "none")
        if instance_id is None:
            labels.pop(LABEL_INSTANCE)
        if not owned:
            labels = {"team": "someone-else", LABEL_DEPLOYMENT: deployment_id}
        inst = ProviderInstance(self.name, self._next_id(), status, labels,
                                created_at=self.clock() - timedelta(seconds=age_s), native_status=native_status)
        with self._lock:
            self.instances[inst.provider_id] = inst
        return inst

    def take_back(self, provider_id: str, status: ProviderStatus = ProviderStatus.STOPPED,
                  native_status: str = "PREEMPTED") -> None:
        """The provider stops the instance on its own (Spot preemption, an outbid VAST contract)."""
        with self._lock:
            self.instances[provider_id] = replace(self.instances[provider_id], status=status,
                                                  native_status=native_status)

    def vanish(self, provider_id: str) -> None:
        """The instance is gone without a delete of ours."""
        with self._lock:
            self.instances.pop(provider_id, None)

    def calls_of(self, verb: str) -> list[str]:
        with self._lock:
            return [arg for v, arg in self.calls if v == verb]

    def by_instance_id(self, instance_id: str) -> ProviderInstance | None:
        with self._lock:
            return next((i for i in self.instances.values() if i.instance_id == instance_id), None)

    # ---------------------------------------------------------------- the Provider protocol
    def create(self, spec: LaunchSpec) -> ProviderInstance:
        fault = self._enter("create", spec.instance_id)
        with self._lock:
            self.specs.append(spec)
            made = self.by_instance_id(spec.instance_id)
            if made is None and (fault is None or fault.leave_partial):
                made = self._make(spec)
        if fault is not None:
            raise fault.error
        assert made is not None
        return made

    def get(self, provider_id: str) -> ProviderInstance | None:
        self._raise_if_scripted("get", provider_id)
        with self._lock:
            if provider_id in self._lingering:
                left = self._lingering[provider_id]
                if left <= 0 and not self.never_delete:
                    del self._lingering[provider_id]
                    self.instances.pop(provider_id, None)
                    return None
                self._lingering[provider_id] = left - 1
            return self.instances.get(provider_id)

    def find(self, instance_id: str) -> ProviderInstance | None:
        self._raise_if_scripted("find", instance_id)
        return self.by_instance_id(instance_id)

    def list_owned(self, deployment_id: str) -> list[ProviderInstance]:
        self._raise_if_scripted("list_owned", deployment_id)
        with self._lock:
            return [i for i in self.instances.values()
                    if i.owned and i.labels.get(LABEL_DEPLOYMENT) == deployment_id]

    def delete(self, provider_id: str) -> None:
        self._raise_if_scripted("delete", provider_id)
        with self._lock:
            inst = self.instances.get(provider_id)
            if inst is None:
                return  # already gone counts as success
            if self.delete_lag or self.never_delete:
                self.instances[provider_id] = replace(inst, status=ProviderStatus.STOPPING)
                self._lingering.setdefault(provider_id, self.delete_lag)
            else:
                del self.instances[provider_id]

    # ---------------------------------------------------------------- internals
    def _next_id(self) -> str:
        return f"{self.name}-{next(self._seq):04d}"

    def _make(self, spec: LaunchSpec) -> ProviderInstance:
        ssh_host, ssh_port = self._address()
        inst = ProviderInstance(
            self.name, self._next_id(), ProviderStatus.RUNNING, dict(spec.labels), created_at=self.clock(),
            zone=spec.zones[0] if spec.zones else None, machine=spec.machine_type,
            price_per_hour=self.price_per_hour, ssh_host=ssh_host, ssh_port=ssh_port,
        )
        self.instances[inst.provider_id] = inst
        return inst

    def _address(self) -> tuple[str | None, int | None]:
        return None, None

    def _enter(self, verb: str, arg: str) -> _Fault | None:
        """Record the call, run its hook, and return the scripted fault it meets (if any)."""
        with self._lock:
            self.calls.append((verb, arg))
            hooks, self._hooks[verb] = self._hooks[verb][:1], self._hooks[verb][1:]
        for hook in hooks:  # outside the lock: a hook may call services that call us
            hook()
        with self._lock:
            for fault in self._faults[verb]:
                if fault.target is None or fault.target == arg:
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults[verb].remove(fault)
                    return fault
        return None

    def _raise_if_scripted(self, verb: str, arg: str) -> None:
        fault = self._enter(verb, arg)
        if fault is not None:
            raise fault.error


class FakeSshProvider(FakeProvider):
    """A provider whose boxes are reached over SSH (VAST): ``learn_host_key`` makes it a HostKeyLearner."""

    def __init__(self, name: str = "vast", clock: Callable[[], datetime] = utcnow, *,
                 price_per_hour: float = 0.4) -> None:
        super().__init__(name, clock, price_per_hour=price_per_hour)
        self.host_keys: dict[tuple[str, int], str] = {}

    def learn_host_key(self, host: str, port: int, *, timeout_s: float = 10.0) -> str:  # noqa: ARG002
        self._raise_if_scripted("learn_host_key", f"{host}:{port}")
        with self._lock:
            return self.host_keys.setdefault((host, port), f"ssh-ed25519 AAAAC3NzaFAKE{port}")

    def _address(self) -> tuple[str | None, int | None]:
        return "198.51.100.7", 40000 + len(self.instances)


if TYPE_CHECKING:  # mypy (strict, over tests/support) holds both to the protocols the services use
    _provider: Provider = FakeProvider()
    _ssh: HostKeyLearner = FakeSshProvider()
