"""What the providers say beside Firestore (``status --refresh``) and what ``down`` waits for: pure comparisons."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from rich.console import Console
from rich.progress import Progress
from tests.support.fake_provider import FakeProvider

from spotleash.cli.down import wait_gone
from spotleash.config import Settings
from spotleash.decide.inventory import Left, Listings, check, left_of_leases, provider_says, take_inventory
from spotleash.errors import ExitCode, ProviderTransient
from spotleash.model import InstanceRecord, State, new_record, transition
from spotleash.providers.base import Inventory, ProviderInstance, ProviderStatus, ownership_labels

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
DEP = "default"


def rec(instance_id: str, state: State = State.RUNNING, *, lease_id: str = "lease-1",
        provider_id: str | None = "pid") -> InstanceRecord:
    r = new_record(instance_id=instance_id, lease_id=lease_id, deployment_id=DEP, event_id=f"ev-{instance_id}",
                   provider="gce", now=NOW, max_runtime_s=3600)
    path = {State.REQUESTED: [], State.RUNNING: [State.PROVISIONING, State.RUNNING],
            State.TERMINATED: [State.PROVISIONING, State.RUNNING, State.TERMINATING, State.TERMINATED]}[state]
    for step in path:
        r = transition(r, step, NOW)
    return r.model_copy(update={"provider_id": provider_id if state is not State.REQUESTED else None})


def vm(provider_id: str, instance_id: str, lease_id: str = "lease-1",
       status: ProviderStatus = ProviderStatus.RUNNING) -> ProviderInstance:
    return ProviderInstance("gce", provider_id, status, ownership_labels(DEP, lease_id, instance_id),
                            native_status=str(status))


def listing(*instances: ProviderInstance) -> dict[str, Inventory]:
    return {"gce": Inventory("gce", True, instances)}


def test_the_provider_view_of_each_record_flags_only_disagreements() -> None:
    inv = listing(vm("vm-a", "a"), vm("vm-z", "z"))
    assert provider_says(rec("a", provider_id="vm-a"), inv).listing == "listed"
    assert provider_says(rec("a", provider_id="vm-a"), inv).flag is None
    ended_but_there = provider_says(rec("z", State.TERMINATED, provider_id="vm-z"), inv)
    assert ended_but_there.listing == "listed" and "Firestore says TERMINATED" in str(ended_but_there.flag)
    vanished = provider_says(rec("b", provider_id="vm-b"), inv)
    assert vanished.listing == "gone" and vanished.flag == "the provider no longer has it"
    assert vanished.cell() == "[red]gone: the provider no longer has it[/]"
    assert provider_says(rec("a", provider_id="vm-a"), inv).cell() == "RUNNING"
    assert provider_says(rec("c", State.TERMINATED, provider_id="vm-c"), inv).flag is None  # gone, as recorded
    assert provider_says(rec("d", State.REQUESTED), inv).listing == "not_created"
    failed = {"gce": Inventory("gce", False, (), "503 from compute")}
    unknown = provider_says(rec("a", provider_id="vm-a"), failed)
    assert unknown.listing == "unknown" and "503 from compute" in str(unknown.flag)  # never read as "gone"


def test_instances_no_shown_record_accounts_for_are_flagged() -> None:
    inv = listing(vm("vm-a", "a"), vm("vm-x", "x"), vm("vm-t", "t"))
    shown = [rec("a", provider_id="vm-a")]
    checked = check(shown, {"t": rec("t", State.TERMINATED, provider_id="vm-t")}, inv)
    flags = {u.instance_id: u.flag for u in checked.unrecorded}
    assert flags == {"x": "not in Firestore", "t": "Firestore says TERMINATED, the provider still has it"}
    assert checked.providers_json() == {"gce": {"ok": True, "listed": 3, "error": None}}


def test_what_is_left_of_released_leases() -> None:
    live = [rec("a", provider_id="vm-a"), rec("o", lease_id="other", provider_id="vm-o")]
    inv = listing(vm("vm-a", "a"), vm("vm-b", "b"), vm("vm-o", "o", lease_id="other"))
    left = {x.instance_id: x.why for x in left_of_leases(live, inv, ["lease-1"])}
    assert set(left) == {"a", "b"}  # the other lease is not waited for
    assert "Firestore says RUNNING" in left["a"] and "the provider lists it" in left["a"]
    assert left_of_leases([], listing(), ["lease-1"]) == []
    failed = left_of_leases([], {"gce": Inventory("gce", False, (), "timeout")}, ["lease-1"])
    assert [x.why for x in failed] == ["listing failed, deletion unconfirmed: timeout"]


def test_a_failed_listing_is_unknown_not_empty() -> None:
    p = FakeProvider("gce")
    p.plant("a", deployment_id=DEP)
    assert take_inventory(p, "gce", DEP).instances[0].instance_id == "a"
    p.fail("list_owned", ProviderTransient("compute down"))
    inv = take_inventory(p, "gce", DEP)
    assert inv.ok is False and inv.instances == () and "compute down" in str(inv.error)


def test_down_waits_until_nothing_is_left_and_says_what_went() -> None:
    a, b = Left("a", "gce", "vm-a", "x"), Left("b", "gce", "vm-b", "x")
    looks = iter([[a, b], [b], []])
    with Progress(console=Console(file=io.StringIO())) as progress:
        result = wait_gone(["lease-1"], lambda: next(looks), timeout_s=60, progress=progress, poll_s=0)
    assert result.exit_code == ExitCode.OK and result.gone == ["a", "b"] and result.left == []
    assert result.as_json()["ok"] is True
    # an instance gone before the first look still counts: ``before`` is what the release was for
    with Progress(console=Console(file=io.StringIO())) as progress:
        fast = wait_gone(["lease-1"], lambda: [], timeout_s=60, progress=progress, before=[a, b], poll_s=0)
    assert fast.gone == ["a", "b"] and fast.exit_code == ExitCode.OK


def test_down_reports_what_is_left_at_its_timeout_with_exit_3() -> None:
    stuck = Left("a", "gce", "vm-a", "the provider lists it (RUNNING)")
    with Progress(console=Console(file=io.StringIO())) as progress:
        result = wait_gone(["lease-1"], lambda: [stuck], timeout_s=0, progress=progress, poll_s=0)
    assert result.exit_code == ExitCode.LEFT_RUNNING == 3
    assert result.as_json()["left"] == [{"instance_id": "a", "provider": "gce", "provider_id": "vm-a",
                                         "why": "the provider lists it (RUNNING)"}]


def test_a_provider_that_cannot_be_built_is_listed_as_unknown() -> None:
    with Listings(Settings(), names=["no-such-provider"]) as listings:
        inv = listings()["no-such-provider"]
    assert inv.ok is False and inv.instances == () and "unknown provider" in str(inv.error)
