"""The dashboard in a real browser: Debian's headless chromium driven by Selenium through /usr/bin/chromedriver.

The first test runs the local dashboard server in this process over the in-memory store, with a clock the
test moves, so every figure on the page can be compared with the cost ledger's at the same instant. The
browser loads the page with the token, and the test checks the instance rows, a hibernated lease, the spend
figures, the chart, a live update after the store changes, the 401 without the token, keyboard navigation to
every table, visible focus, and that no request left for another host (chromium's performance log and the
server's access log).

The second serves the view as ``spotleash dashboard`` builds it (``state_source``, the real clock) over
``FirestoreStore`` on Google's Firestore emulator: an instance asked to hibernate, then the hibernation
written into Firestore while the page is open (the ``Hibernation`` document, the box deleted), shows up
live with its components, snapshot age and size; deleting the document (a restore) takes it off again.

Chromium comes from Debian's packages (scripts/ensure_chromium.sh installs them when root); nothing is
downloaded at run time. Without them and without root the test skips and says why.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from tests.conftest import TEST_PROJECT
from tests.emulator.emulator_fixtures import firestore_emulator
from tests.support.memory_store import MemoryStore

from spotleash.adapters.firestore import FirestoreStore
from spotleash.clock import month_start, utcnow
from spotleash.dashboard.command import state_source
from spotleash.dashboard.local import DashboardServer
from spotleash.dashboard.view import build_view, gather
from spotleash.decide.ledger import month_to_date
from spotleash.model import Hibernation, InstanceRecord, Lease, RequestedSnapshot, State, transition
from spotleash.wire.events import ComponentReport

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
DEP = "dep-browser"
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
WAIT_S = 20.0

pytestmark = pytest.mark.browser


def ensure_chromium() -> None:
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "ensure_chromium.sh")], capture_output=True, text=True,
                          timeout=900)
    if proc.returncode == 3:
        pytest.skip(f"chromium cannot be installed on this machine: {proc.stderr.strip()}")
    assert proc.returncode == 0, f"scripts/ensure_chromium.sh failed: {proc.stderr}"


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def record(iid: str, state: State, *, lease_id: str, provider: str = "gce", price: float,
           running: datetime | None, **more: Any) -> InstanceRecord:
    created = (running or T0) - timedelta(minutes=1)
    return InstanceRecord.model_validate({
        "instance_id": iid, "lease_id": lease_id, "deployment_id": DEP, "event_id": f"e-{iid}",
        "provider": provider, "state": state, "created_at": created, "updated_at": running or created,
        "deadline": created + timedelta(hours=2), "running_at": running, "price_per_hour": price,
        "provider_id": f"p-{iid}", "zone": "us-central1-a" if provider == "gce" else "Quebec, CA",
        "machine": "e2-highmem-4" if provider == "gce" else "RTX 4090", **more})


def seed(store: MemoryStore) -> None:
    store.put(record("sl-web-ready", State.READY, lease_id="lease-laptop", price=0.06,
                     running=T0 - timedelta(hours=1), last_heartbeat=T0 - timedelta(seconds=3),
                     components=["api"], component_states={"api": ComponentReport(state="healthy",
                                                                                endpoint="10.1.2.3:8443")}))
    store.put(record("sl-web-gpu", State.RUNNING, lease_id="lease-laptop", provider="vast", price=0.42,
                     storage_per_hour=0.02, running=T0 - timedelta(minutes=20), last_heartbeat=T0 - timedelta(seconds=8)))
    store.put_lease(Lease(lease_id="lease-laptop", deployment_id=DEP, expires_at=T0 + timedelta(seconds=80),
                          renewed_at=T0 - timedelta(seconds=10), holder="laptop"))
    store.reject(source="demand", reason="invalid_json", detail="Expecting value", raw=b"{x", message_id="m-1",
                 now=T0 - timedelta(minutes=3))
    store.put_budget({"cost": 10.0, "budget": 50.0, "threshold": 0.2, "exceeded": False, "stop_all": False,
                      "at": T0 - timedelta(hours=2)})
    store.put_hibernation(hibernation("lease-nightly", DEP, T0 - timedelta(hours=3)))


def hibernation(lease_id: str, dep: str, at: datetime) -> Hibernation:
    """What services.hibernate records once the snapshot taken at ``at`` is verified."""
    return Hibernation(lease_id=lease_id, deployment_id=dep, snapshot_id=f"{lease_id}-snap-1",
                       instance_id=f"sl-{lease_id}-box", components=["vision", "chatbots"], snapshot_created_at=at,
                       size_bytes=734_500_000, raw_bytes=2_100_000_000, hibernated_at=at + timedelta(minutes=2))


@pytest.fixture(scope="module")
def chromium_ready() -> None:
    ensure_chromium()


@pytest.fixture
def dash() -> Iterator[tuple[DashboardServer, MemoryStore, Clock, Callable[[], dict[str, Any]]]]:
    store, clock = MemoryStore(DEP), Clock(T0)
    seed(store)

    def state() -> dict[str, Any]:
        return build_view(gather(store, clock(), monthly_budget_usd=50.0))

    srv = DashboardServer(state).start()
    try:
        yield srv, store, clock, state
    finally:
        srv.stop()


@pytest.fixture
def browser(chromium_ready: None, tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_AVOID_STATS", "true")  # Selenium Manager is not used (both paths given); be sure
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "driver.log")),
                              options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    import time

    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as e:  # noqa: BLE001 - the DOM may be mid-render; try again until the deadline
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def row_ids(driver: Any, table: str) -> list[str]:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr[data-instance-id]")
    return [r.get_attribute("data-instance-id") for r in rows]


def test_the_dashboard_in_chromium(dash: Any, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    srv, store, clock, _state = dash
    driver = browser

    # --- without the token: 401, and nothing of the state
    driver.get(f"http://127.0.0.1:{srv.port}/")
    assert "valid dashboard token" in driver.find_element(By.TAG_NAME, "body").text
    driver.get(f"http://127.0.0.1:{srv.port}/wrong-token/api/state")
    assert "lease-laptop" not in driver.page_source
    assert [a.status for a in srv.access.snapshot()][:2] == [401, 401]

    # --- with it: the instance rows
    driver.get(srv.url)
    assert driver.title == "spotleash dashboard"
    wait_for("both live instances", lambda: sorted(row_ids(driver, "instances")) == ["sl-web-gpu", "sl-web-ready"])
    ready_row = driver.execute_script(
        "return document.querySelector('#instances tr[data-instance-id=\"sl-web-ready\"]').innerText;")
    assert "READY" in ready_row and "api: healthy @ 10.1.2.3:8443" in ready_row
    assert "not available" in ready_row  # no route source behind the local server
    assert "not available" in driver.find_element(By.ID, "routes-note").text
    nightly = driver.execute_script(
        "return document.querySelector('#hibernated tr[data-lease-id=\"lease-nightly\"]').innerText;")
    assert "vision, chatbots" in nightly and "lease-nightly-snap-1" in nightly and "734.5" in nightly
    assert "3h 00m ago" in nightly or "3h 01m ago" in nightly  # the snapshot's age, moved on by the page
    assert "invalid_json" in driver.find_element(By.ID, "rejected").text
    assert "$10.0000 of $50.0000" in driver.find_element(By.ID, "budget-alert").text

    # --- spend equals the ledger's at the same instant
    def ledger_now() -> Any:
        return month_to_date(store.billed_since(month_start(clock())), clock())

    ledger = ledger_now()
    month = driver.find_element(By.ID, "spend-month")  # the figures' elements stay; only their text changes
    today = driver.find_element(By.ID, "spend-today")
    assert float(month.get_attribute("data-value")) == pytest.approx(ledger.total, abs=1e-6)
    assert month.text == f"${ledger.total:.4f}"
    assert float(today.get_attribute("data-value")) == pytest.approx(ledger.by_day.get(clock().date(), 0.0), abs=1e-6)

    # --- the chart: one bar per day of the month so far, today's the ledger's
    chart = driver.execute_script(  # read in one go: every poll redraws the chart
        "const svg = document.querySelector('#chart-box svg');"
        "return {role: svg.getAttribute('role'), title: svg.querySelector('title').textContent,"
        " costs: [...svg.querySelectorAll('rect.bar')].map(r => Number(r.dataset.cost))};")
    assert len(chart["costs"]) == clock().day and chart["role"] == "img" and "spend per day" in chart["title"]
    assert chart["costs"][-1] == pytest.approx(ledger.by_day.get(clock().date(), 0.0), abs=1e-6)

    # --- the heartbeat age moves on by itself between reads
    def beat_age() -> str:  # found again each time: every read re-renders the rows
        cell = driver.find_element(By.CSS_SELECTOR, '#instances tr[data-instance-id="sl-web-ready"] td.heartbeat')
        return str(cell.text)

    first = wait_for("a heartbeat age", lambda: beat_age() if beat_age().endswith(" ago") else None)
    wait_for("the heartbeat age to move", lambda: beat_age() not in (first, "–"))

    # --- live update, an hour on: the GPU box was outbid and reaped; its failover replacement is READY
    later = T0 + timedelta(hours=1)
    store.update("sl-web-gpu", lambda r: transition(transition(
        r, State.TERMINATING, later - timedelta(seconds=115), reason="reap: stopped_at_provider"),
        State.TERMINATED, later - timedelta(seconds=110)))
    store.audit("reap", "stopped_at_provider", later - timedelta(seconds=110), instance_id="sl-web-gpu",
                lease_id="lease-laptop", provider="vast", provider_id="p-sl-web-gpu", cost_so_far=0.5, seconds=2.0)
    store.put(record("sl-web-new", State.READY, lease_id="lease-laptop", provider="vast", price=0.42,
                     storage_per_hour=0.02, running=later - timedelta(seconds=30), last_heartbeat=later,
                     replaces="sl-web-gpu", lost_at=later - timedelta(seconds=120),
                     first_heartbeat_at=later - timedelta(seconds=20), restore_s=6.0,
                     ready_at=later - timedelta(seconds=5)))
    before = float(month.get_attribute("data-value"))
    clock.now = later
    wait_for("the new instance row and the deleted one gone",
             lambda: sorted(row_ids(driver, "instances")) == ["sl-web-new", "sl-web-ready"])
    wait_for("the deletion with its reason", lambda: "sl-web-gpu" in row_ids(driver, "deletions"))
    deletion = driver.execute_script(
        "return document.querySelector('#deletions tr[data-instance-id=\"sl-web-gpu\"]').innerText;")
    assert "stopped_at_provider" in deletion and "reap" in deletion
    replacement = driver.execute_script(
        "return document.querySelector('#instances tr[data-instance-id=\"sl-web-new\"]').innerText;")
    # created 30 s after the loss, running 60 s later, first beat 10 s on, READY 15 s on of which 6 s restore
    assert "replaces sl-web-gpu" in replacement
    assert ("detection 30.0 s · provisioning 60.0 s · boot 10.0 s · restore 6.0 s · ready 9.0 s · total 115.0 s"
            in replacement)
    ledger = ledger_now()
    wait_for("the month's spend to follow the ledger",
             lambda: float(driver.find_element(By.ID, "spend-month").get_attribute("data-value"))
             == pytest.approx(ledger.total, abs=1e-6))
    assert ledger.total > before

    # --- keyboard: Tab from the top reaches every table, and the focus is drawn
    driver.find_element(By.TAG_NAME, "body").click()
    driver.execute_script("document.activeElement.blur(); window.scrollTo(0, 0);")
    reached: list[str] = []
    outlines: list[str] = []
    body = driver.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    for _ in range(40):
        active = driver.switch_to.active_element
        table = active.get_attribute("class") == "table-wrap" and active.find_elements(By.TAG_NAME, "table")
        if table:
            reached.append(table[0].get_attribute("id"))
            outlines.append(driver.execute_script(
                "const s = getComputedStyle(arguments[0]); return s.outlineStyle + ' ' + s.outlineWidth;", active))
        active.send_keys(Keys.TAB)
    for needed in ("instances", "deletions", "rejected", "hibernated"):
        assert needed in reached, f"Tab never reached #{needed}: {reached}"
    assert all(not o.startswith("none") and not o.endswith(" 0px") for o in outlines), outlines

    driver.save_screenshot(str(tmp_path / "dashboard.png"))
    if os.environ.get("SPOTLEASH_DASHBOARD_SCREENSHOT"):
        driver.save_screenshot(os.environ["SPOTLEASH_DASHBOARD_SCREENSHOT"])

    # --- nothing left for another host: chromium's own network log and the server's access log
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    assert urls, "the performance log recorded no request at all"
    # chrome:// (the blank tab's own pages), data:, about: and blob: never touch the network
    local_schemes = {"chrome", "chrome-untrusted", "data", "about", "blob"}
    schemes = {urlsplit(u).scheme for u in urls}
    assert schemes <= {"http"} | local_schemes, f"unexpected schemes: {schemes}"
    hosts = {urlsplit(u).hostname for u in urls if urlsplit(u).scheme == "http"}
    assert hosts == {"127.0.0.1"}, f"requests left for {hosts - {'127.0.0.1'}}"
    assert {a.host for a in srv.access.snapshot()} == {f"127.0.0.1:{srv.port}"}
    assert any(a.path == "/<token>/api/state" for a in srv.access.snapshot())
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "401" not in e["message"]]
    assert errors == [], errors


@pytest.fixture(scope="module")
def firestore_host(chromium_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with firestore_emulator(tmp_path_factory.mktemp("firestore-emulator")) as host:
        yield host


def hibernated_rows(driver: Any) -> dict[str, dict[str, str]]:
    """lease id -> the row's cells by column header, read in one go (every poll re-renders the rows)."""
    return dict(driver.execute_script(
        "const heads = [...document.querySelectorAll('#hibernated thead th')].map(h => h.textContent);"
        "const out = {};"
        "for (const tr of document.querySelectorAll('#hibernated tbody tr[data-lease-id]')) {"
        "  const cells = [...tr.children];"
        "  out[tr.dataset.leaseId] = Object.fromEntries(heads.map((h, i) => [h, cells[i].textContent]));"
        "  out[tr.dataset.leaseId]['row header'] = cells[0].tagName + ' ' + cells[0].getAttribute('scope');"
        "}"
        "return out;"))


def test_a_hibernation_written_to_firestore_appears_live(firestore_host: str, browser: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from google.cloud import firestore
    from selenium.webdriver.common.by import By

    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_host)
    dep = f"dep-browser-{uuid.uuid4().hex[:8]}"
    store = FirestoreStore(firestore.Client(project=TEST_PROJECT), dep)
    now = utcnow()
    # A READY box that reported itself idle: the heartbeat asked it for a hibernation snapshot.
    asked = RequestedSnapshot(request_id="hibernate-browser", reason="hibernate", requested_at=now, by="heartbeat")
    store.put(record("sl-idle", State.READY, lease_id="lease-idle", provider="vast", price=0.42,
                     running=now - timedelta(hours=1), last_heartbeat=now, deployment_id=dep,
                     components=["vision", "chatbots"], snapshot_request=asked))
    srv = DashboardServer(state_source(store, 50.0)).start()
    driver = browser
    try:
        driver.get(srv.url)
        wait_for("the idle instance", lambda: row_ids(driver, "instances") == ["sl-idle"])
        idle_row = driver.execute_script(
            "return document.querySelector('#instances tr[data-instance-id=\"sl-idle\"]').innerText;")
        assert "hibernating: idle, snapshot asked" in idle_row
        assert driver.find_element(By.ID, "hibernated").find_element(By.TAG_NAME, "tbody").text \
            == "No hibernated leases."

        # The reaper's hibernation, as services.hibernate writes it: the document, then the box deleted.
        snapshot_at = utcnow() - timedelta(minutes=3)
        store.put_hibernation(hibernation("lease-idle", dep, snapshot_at))
        done = utcnow()
        store.update("sl-idle", lambda r: transition(transition(r, State.TERMINATING, done, reason="hibernated"),
                                                     State.TERMINATED, done))
        store.audit("hibernate", "hibernated", done, instance_id="sl-idle", lease_id="lease-idle", provider="vast",
                    provider_id="p-sl-idle", cost_so_far=0.42, seconds=1.0)

        rows = wait_for("the hibernated lease", lambda: hibernated_rows(driver).get("lease-idle") and
                        hibernated_rows(driver))
        assert list(rows) == ["lease-idle"]
        row = rows["lease-idle"]
        assert row["row header"] == "TH row"
        assert row["Lease"] == "lease-idle" and row["Components"] == "vision, chatbots"
        assert row["Snapshot"] == "lease-idle-snap-1" and row["Instance destroyed"] == "sl-lease-idle-box"
        assert row["Size (MB)"] == "734.5"
        assert row["Snapshot taken"].startswith("3m ") and row["Snapshot taken"].endswith(" ago")
        assert row["Hibernated"].endswith(" ago")
        wait_for("the snapshot age to move on", lambda: hibernated_rows(driver)["lease-idle"]["Snapshot taken"]
                 != row["Snapshot taken"])
        wait_for("the instance gone", lambda: row_ids(driver, "instances") == [])
        wait_for("its deletion, by hibernation", lambda: "sl-idle" in row_ids(driver, "deletions"))
        deletion = driver.execute_script(
            "return document.querySelector('#deletions tr[data-instance-id=\"sl-idle\"]').innerText;")
        assert "hibernate" in deletion and "0.4200" in deletion

        # The lease's next instance restored it and became READY: the document goes, and so does the row.
        store.delete_hibernation("lease-idle")
        wait_for("the hibernated lease gone", lambda: not hibernated_rows(driver))
        assert driver.find_element(By.ID, "hibernated").find_element(By.TAG_NAME, "tbody").text \
            == "No hibernated leases."
    finally:
        srv.stop()
