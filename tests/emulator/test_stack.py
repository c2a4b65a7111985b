"""The local stack: up wires everything from the topology, down leaves nothing behind, even after a crash."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from local_emulator import stack
from local_emulator.procs import MissingDependency, StackError, port_open, started
from spotleash.polling import wait_until
from spotleash.topology import load_topology

pytestmark = pytest.mark.emulator

topo = load_topology()


def available_fakes() -> tuple[str, ...]:
    """The fakes whose module exists in this tree (others are being written in parallel)."""
    out = []
    for fake in stack.ALL_FAKES:
        try:
            if importlib.util.find_spec(f"local_emulator.{fake}.__main__") is not None:
                out.append(fake)
        except ModuleNotFoundError:
            continue
    return tuple(out)


def processes_of(state_dir: Path) -> list[psutil.Process]:
    """Every live process whose environment marks it as started by the stack of ``state_dir``."""
    marker = str(Path(state_dir).resolve())
    found = []
    for p in psutil.process_iter():
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            if p.environ().get(stack.MARKER_VAR) == marker:
                found.append(p)
        except psutil.Error:
            continue
    return found


def assert_nothing_left(state_dir: Path, ports: list[int]) -> None:
    left = processes_of(state_dir)
    assert not left, f"processes left behind: {[(p.pid, ' '.join(p.cmdline())[:120]) for p in left]}"
    java = [p for p in psutil.process_iter(["name", "cmdline"]) if p.info["name"] == "java"
            and any(f":{port}" in " ".join(p.info["cmdline"] or []) or f"--port={port}" in " ".join(p.info["cmdline"] or [])
                    for port in ports)]
    assert not java, f"emulator Java processes left behind: {[p.pid for p in java]}"
    still_open = [port for port in ports if port_open(port)]
    assert not still_open, f"ports still open: {still_open}"
    assert not stack.stack_file(state_dir).exists() and not stack.env_file(state_dir).exists()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack.StackInfo]:
    state_dir = tmp_path_factory.mktemp("stack-under-test")
    try:
        yield stack.up(state_dir, overrides={"SPOTLEASH_PROJECT": "spotleash-stack-test", "SPOTLEASH_DEMAND_COOLDOWN_S": "7"},
                       fakes=available_fakes())
    finally:
        stack.down(state_dir)


def test_up_is_ready_and_status_reports_every_part(running: stack.StackInfo) -> None:
    st = stack.status(running.state_dir)
    assert st.recorded and st.complete and st.all_alive
    names = {p.name for p in st.parts}
    assert names == {"pubsub", "firestore", "storage", *available_fakes(), *topo.functions}
    rows = st.as_rows()
    assert all(r["alive"] and r["address"].startswith("127.0.0.1:") for r in rows)
    assert 0 < running.ready_s < 120
    assert st.ready_s == pytest.approx(running.ready_s, abs=0.01)
    for p in st.parts:
        assert Path(p.log_path).is_file() and Path(p.log_path).parent == stack.logs_dir(running.state_dir)


def test_env_file_has_connection_settings(running: stack.StackInfo) -> None:
    env = stack.read_env(running.state_dir)
    assert env == running.env
    assert env["GOOGLE_CLOUD_PROJECT"] == env["SPOTLEASH_PROJECT"] == running.project == "spotleash-stack-test"
    assert env["SPOTLEASH_DEMAND_COOLDOWN_S"] == "7"  # overrides are passed through
    assert env["SPOTLEASH_HEARTBEAT_URL"] == running.url_of("on_heartbeat")
    for name in topo.functions:
        assert env[stack.fn_url_var(name)] == running.url_of(name)
    if "compute" in available_fakes():
        assert running.compute_url.startswith("http://127.0.0.1:")
    if "vast" in available_fakes():
        assert running.vast_url.startswith("http://127.0.0.1:") and len(env["SPOTLEASH_VAST_API_KEY"]) >= 32
    assert oct(stack.env_file(running.state_dir).stat().st_mode & 0o777) == "0o600"  # it holds keys


def test_functions_answer_http(running: stack.StackInfo) -> None:
    r = httpx.post(running.url_of("on_heartbeat"), content=b"not json", timeout=10)
    assert r.status_code == 400  # the real entry point parsed and rejected it
    for name in topo.functions:
        assert httpx.get(running.url_of(name), timeout=10).status_code < 600


def test_pubsub_wired_from_topology(running: stack.StackInfo) -> None:
    pub, sub = stack._pubsub_clients(running.pubsub_host)
    try:
        topics = {t.name.rsplit("/", 1)[1] for t in pub.list_topics(project=f"projects/{running.project}")}
        assert topics == set(topo.topics)
        for s in topo.subscriptions.values():
            got = sub.get_subscription(subscription=sub.subscription_path(running.project, s.name))
            assert got.topic.endswith(f"/topics/{s.topic}")
            assert got.ack_deadline_seconds == s.ack_deadline_s
            if s.function is None:
                assert not got.push_config.push_endpoint
            else:
                port = running.ports[s.function]
                assert got.push_config.push_endpoint == (
                    f"http://127.0.0.1:{port}/projects/{running.project}/topics/{s.topic}"
                )
                assert got.dead_letter_policy.dead_letter_topic.endswith(f"/topics/{topo.dead_letter_topic}")
                assert got.dead_letter_policy.max_delivery_attempts == s.max_delivery_attempts
                assert got.retry_policy.minimum_backoff.total_seconds() == s.min_backoff_s
                assert got.retry_policy.maximum_backoff.total_seconds() == s.max_backoff_s
    finally:
        pub.stop()
        sub.close()


def test_scheduler_jobs_created_from_topology(running: stack.StackInfo) -> None:
    if "scheduler" not in available_fakes():
        pytest.skip("scheduler fake not present")
    from local_emulator.scheduler import scheduler_client

    client = scheduler_client(running.scheduler_host)
    try:
        parent = f"projects/{running.project}/locations/{running.env['SPOTLEASH_REGION']}"
        jobs = {j.name.rsplit("/", 1)[1]: j for j in client.list_jobs(parent=parent)}
        assert set(jobs) == set(topo.schedules)
        for name, sch in topo.schedules.items():
            assert jobs[name].schedule == sch.cron
            assert jobs[name].pubsub_target.topic_name == f"projects/{running.project}/topics/{sch.topic}"
            assert json.loads(jobs[name].pubsub_target.data) == sch.payload
    finally:
        client.transport.close()


def test_billing_catalog_prices_spot_machines(running: stack.StackInfo, tmp_path: Path) -> None:
    if "billing" not in available_fakes():
        pytest.skip("the billing fake is not in this tree")
    from datetime import UTC, datetime

    from spotleash.config import Settings
    from spotleash.pricing.book import PriceBook

    endpoint = stack.read_env(running.state_dir)["SPOTLEASH_BILLING_ENDPOINT"]
    assert endpoint.startswith("127.0.0.1:")
    book = PriceBook.from_settings(Settings(billing_endpoint=endpoint, state_dir=tmp_path), lambda: datetime.now(UTC),
                                   None)
    q = book.quote("e2-highmem-4", "europe-west4")  # 4 x 0.006543 x 1.094 + 32 x 0.000877 x 1.094
    assert q.from_catalog and q.usd_per_hour == pytest.approx(4 * 0.006543 * 1.094 + 32 * 0.000877 * 1.094, abs=1e-6)


def test_second_up_in_same_dir_is_refused(running: stack.StackInfo) -> None:
    with pytest.raises(StackError, match="already runs"):
        stack.up(running.state_dir, fakes=())


def test_down_leaves_nothing_behind(running: stack.StackInfo, caplog: pytest.LogCaptureFixture) -> None:
    # Runs last in this module (file order): stops the module's stack and checks the machine is clean.
    ports = list(running.ports.values())
    assert len(processes_of(running.state_dir)) >= len(running.ports)  # gcloud wrappers + java children + ...
    with httpx.Client() as kept_alive:  # a kept-alive connection into every function, as Pub/Sub's pushes leave
        for name in topo.functions:
            kept_alive.get(running.url_of(name) + "_spotleash/ready")
        t0 = time.monotonic()
        stopped = stack.down(running.state_dir)
        took = time.monotonic() - t0
    assert set(stopped) == set(running.ports)
    killed = [getattr(r, "fields", {}).get("process", "?") for r in caplog.records if "did not stop" in r.message]
    stacks = {name: (stack.logs_dir(running.state_dir) / f"{name}.log").read_text()[-4000:] for name in killed}
    assert not killed, stacks  # nothing needed SIGKILL (a killed fake's log ends with its threads' stacks)
    assert took < 5, f"down took {took:.1f}s"
    assert_nothing_left(running.state_dir, ports)
    assert stack.down(running.state_dir) == []  # idempotent
    assert not stack.status(running.state_dir).recorded


def test_interrupted_up_is_cleaned_by_down(tmp_path: Path) -> None:
    """``up`` killed with SIGKILL midway (some parts started, none wired): ``down`` still cleans all."""
    state_dir = tmp_path / "interrupted"
    code = (
        "import sys; from pathlib import Path; from local_emulator import stack; "
        f"stack.up(Path(sys.argv[1]), fakes={available_fakes()!r})"
    )
    runner = subprocess.Popen([sys.executable, "-c", code, str(state_dir)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    ports: list[int] = []
    try:
        def enough_started() -> bool:
            try:
                state = json.loads(stack.stack_file(state_dir).read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                return False
            return len(state["processes"]) >= 4 and not state["complete"]

        wait_until(enough_started, timeout_s=60, what="up to start a few parts")
        runner.send_signal(signal.SIGKILL)
        runner.wait(timeout=10)
        st = stack.status(state_dir)
        assert st.recorded and not st.complete
        ports = [p.port for p in st.parts if p.port]
        assert processes_of(state_dir), "the interrupted up should have left processes for down to clean"
        stopped = stack.down(state_dir)
        assert stopped
        assert_nothing_left(state_dir, ports)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait(timeout=10)
        stack.down(state_dir)


def test_failed_up_cleans_up_after_itself(tmp_path: Path) -> None:
    """A part that dies at start makes up fail with its log in the message, and stop everything else."""
    if "scheduler" not in available_fakes():
        pytest.skip("scheduler fake not present")
    state_dir = tmp_path / "failing"
    with pytest.raises(StackError, match=r"(?s)scheduler exited .*unrecognized arguments"):
        stack.up(state_dir, fakes=("scheduler",), functions=False, fake_args={"scheduler": ["--no-such-flag"]})
    assert not processes_of(state_dir)
    assert not stack.stack_file(state_dir).exists()
    assert (stack.logs_dir(state_dir) / "scheduler.log").is_file()  # logs are kept for the post-mortem


def test_missing_gcloud_gives_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(MissingDependency, match=r"gcloud not found on PATH.*install the Google Cloud CLI"):
        stack.up(tmp_path / "st", fakes=(), functions=False)
    assert not stack.stack_file(tmp_path / "st").exists()  # nothing was started


def test_missing_java_gives_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:

    gcloud = shutil.which("gcloud")
    if gcloud is None:
        pytest.skip("gcloud absent: covered by test_missing_gcloud_gives_clear_error")
    only_gcloud = tmp_path / "bin"
    only_gcloud.mkdir()
    (only_gcloud / "gcloud").symlink_to(gcloud)
    monkeypatch.setenv("PATH", str(only_gcloud))
    from local_emulator.emulators import start_pubsub_emulator

    with pytest.raises(MissingDependency, match=r"java not found on PATH.*OpenJDK"):
        start_pubsub_emulator("spotleash-test", log_dir=tmp_path)


def test_missing_fake_module_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(stack._FAKE_MODULES, "compute", ("local_emulator.no_such_fake", "the Compute Engine fake"))
    with pytest.raises(StackError, match=r"the Compute Engine fake is missing.*fakes=\('vast', 'scheduler'\)"):
        stack.up(tmp_path / "st", fakes=("compute", "vast", "scheduler"))
    assert not stack.stack_file(tmp_path / "st").exists()


def test_status_and_read_env_without_a_stack(tmp_path: Path) -> None:
    st = stack.status(tmp_path)
    assert not st.recorded and not st.parts and not st.all_alive
    with pytest.raises(StackError, match="run `spotleash local up` first"):
        stack.read_env(tmp_path)
    assert stack.down(tmp_path) == []


def test_down_refuses_to_kill_a_recycled_pid(tmp_path: Path) -> None:
    """A record whose pid now belongs to another process (it started at another time) is not killed."""
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        rec = {"name": "impostor", "pid": victim.pid, "pgid": victim.pid,
               "started": started(victim.pid) - 1000, "port": None, "log_path": ""}
        path = stack.stack_file(tmp_path)
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"project": "p", "complete": True, "processes": [rec]}))
        assert stack.status(tmp_path).parts[0].alive is False
        assert stack.down(tmp_path) == []
        assert victim.poll() is None, "down killed a process it did not start"
    finally:
        victim.kill()
        victim.wait(timeout=10)



def test_local_stack_fixture_sets_env_for_the_session(request: pytest.FixtureRequest) -> None:
    missing = set(stack.ALL_FAKES) - set(available_fakes())
    if missing:
        pytest.skip(f"the session fixture needs every fake; missing: {sorted(missing)}")

    from tests.conftest import FAST_TIMINGS

    info = request.getfixturevalue("local_stack")
    for key, value in {**info.env, **FAST_TIMINGS}.items():
        assert os.environ[key] == value
    assert stack.status(info.state_dir).all_alive
    assert os.environ["SPOTLEASH_FN_ON_REAP_URL"] == info.url_of("on_reap")
    assert httpx.get(info.compute_url + "/_control/health", timeout=5).status_code == 200
    assert httpx.get(info.vast_url + "/_control/health", timeout=5).status_code == 200
