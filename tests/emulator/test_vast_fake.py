"""The VAST fake driven by the OFFICIAL vastai SDK (and raw HTTP for what the SDK hides)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys

import httpx
import paramiko
import psutil
import pytest
import requests
from tests.emulator import vast_fixtures as fx
from tests.emulator.escaper import ESCAPER_LINE
from tests.emulator.vast_fixtures import API_KEY, assert_no_instance_processes, instance_pids, wait_for
from vastai import VastAI

from local_emulator.procs import free_port
from local_emulator.vast import VastFake

pytestmark = pytest.mark.emulator
vast_fake = fx.vast_fake
control = fx.control


def sdk(fake: VastFake, key: str = API_KEY) -> VastAI:
    return VastAI(api_key=key, server_url=fake.url, raw=True, retry=2)


def test_search_filters_order_limit(vast_fake: VastFake) -> None:
    v = sdk(vast_fake)
    offers = v.search_offers("gpu_name=RTX_4090 num_gpus=1 reliability>0.95 gpu_ram>=20", order="dph_total",
                             limit=3)
    assert 1 <= len(offers) <= 3
    assert all(o["gpu_name"] == "RTX 4090" and o["num_gpus"] == 1 and o["reliability"] > 0.95 for o in offers)
    assert all(o["gpu_ram"] >= 20_000 for o in offers)  # MB, as the real API
    prices = [o["dph_total"] for o in offers]
    assert prices == sorted(prices)
    assert all(o["verified"] for o in offers)  # the SDK's default filter
    many = v.search_offers("gpu_name in [RTX_4090,A100_PCIE] dph_total<2", order="dph_total-", limit=50)
    assert {o["gpu_name"] for o in many} <= {"RTX 4090", "A100 PCIE"} and len({o["gpu_name"] for o in many}) == 2
    assert [o["dph_total"] for o in many] == sorted((o["dph_total"] for o in many), reverse=True)
    # the catalog is deterministic
    assert [o["id"] for o in v.search_offers("gpu_name=RTX_3090", order="dph_total")] == \
        [o["id"] for o in sdk(vast_fake).search_offers("gpu_name=RTX_3090", order="dph_total")]


def test_search_raw_ops_and_bid_type(vast_fake: VastFake) -> None:
    h = {"Authorization": f"Bearer {API_KEY}"}
    base = vast_fake.url + "/api/v0/bundles/"
    q = {"gpu_name": {"notin": ["RTX 4090", "RTX 3090"]}, "num_gpus": {"gte": 2}, "verified": {"neq": False},
         "order": [["min_bid", "asc"]], "type": "bid", "limit": 5}
    r = httpx.post(base, json=q, headers=h)
    assert r.status_code == 200
    offers = r.json()["offers"]
    assert offers and all(o["gpu_name"] not in ("RTX 4090", "RTX 3090") and o["num_gpus"] >= 2 for o in offers)
    assert all(o["is_bid"] and o["dph_total"] < o["dph_base"] for o in offers)
    bad = httpx.post(base, json={"no_such_field": {"eq": 1}}, headers=h)
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_args"


def test_auth_and_unknown_paths(vast_fake: VastFake) -> None:
    r = httpx.get(vast_fake.url + "/api/v1/instances/", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["success"] is False
    with pytest.raises(requests.HTTPError) as ei:
        sdk(vast_fake, "wrong").show_instances()
    assert ei.value.response.status_code == 401
    ok = httpx.get(vast_fake.url + "/api/v1/instances/", params={"api_key": API_KEY})
    assert ok.status_code == 200
    nf = httpx.get(vast_fake.url + "/api/v0/nonsense/", headers={"Authorization": f"Bearer {API_KEY}"})
    assert nf.status_code == 404 and nf.json()["error"] == "not_found"


def test_lifecycle_through_sdk_with_real_ssh(vast_fake: VastFake) -> None:
    v = sdk(vast_fake)
    key = paramiko.ECDSAKey.generate()
    v.create_ssh_key(f"{key.get_name()} {key.get_base64()} test")
    offer = v.search_offers("gpu_name=RTX_4090 num_gpus=1", order="dph_total", limit=1)[0]
    res = v.create_instance(offer["id"], image="pytorch/pytorch", disk=10, label="first",
                            onstart_cmd='echo "up $CONTAINER_ID" > up.txt; echo $VAST_URL > url.txt',
                            env={"FOO": "bar"}, cancel_unavail=True)
    assert res["success"] and isinstance(res["new_contract"], int)
    iid = res["new_contract"]
    first = v.show_instance(iid)
    assert first["actual_status"] is None and first["ssh_port"] is None  # null while loading
    seen = []

    def running() -> bool:
        s = v.show_instance(iid)
        seen.append(s["actual_status"])
        return s["actual_status"] == "running"

    wait_for(running, timeout=10, every=0.05, what="running")
    assert "loading" in seen
    v.label_instance(iid, "second")
    rows = v.show_instances()
    assert [(r["id"], r["label"]) for r in rows] == [(iid, "second")]
    row = v.show_instance(iid)
    assert row["extra_env"]["FOO"] == "bar"
    # the box is a real process tree with its own SSH endpoint
    pids = instance_pids(vast_fake)
    assert pids and all(psutil.pid_exists(p) for p in pids)
    c = paramiko.SSHClient()
    c.get_host_keys().add(f"[{row['ssh_host']}]:{row['ssh_port']}", vast_fake.model.get(iid).host_key.get_name(),
                          vast_fake.model.get(iid).host_key)
    c.set_missing_host_key_policy(paramiko.RejectPolicy())
    c.connect(row["ssh_host"], row["ssh_port"], username="root", pkey=key, look_for_keys=False, allow_agent=False)
    try:
        wait_for(lambda: run_ok(c, "test -s up.txt"), timeout=5, what="onstart output")
        _, out, _ = c.exec_command("cat up.txt url.txt; echo $CONTAINER_API_KEY | wc -c; exit 7")
        text = out.read().decode()
        assert out.channel.recv_exit_status() == 7
        assert f"up {iid}" in text and vast_fake.url in text and "65" in text
        sftp = c.open_sftp()
        sftp.putfo(io.BytesIO(b"payload"), "/data.bin")
        assert (vast_fake.model.get(iid).folder / "data.bin").read_bytes() == b"payload"
        with pytest.raises(OSError):
            sftp.open("/../../etc/passwd")  # rooted in the instance's folder: normalised to /etc/passwd there
    finally:
        c.close()
    port = row["ssh_port"]
    assert v.destroy_instance(iid)["success"]
    assert v.show_instance(iid) is None
    assert_no_instance_processes(pids)
    wait_for(lambda: not _port_open(port), timeout=5, what="ssh port closed")
    gone = httpx.delete(f"{vast_fake.url}/api/v0/instances/{iid}/", headers={"Authorization": f"Bearer {API_KEY}"})
    assert gone.status_code == 404 and gone.json()["error"] == "no_such_instance"


def run_ok(c: paramiko.SSHClient, cmd: str) -> bool:
    _, o, _ = c.exec_command(cmd)
    return o.channel.recv_exit_status() == 0


def _port_open(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def test_v1_paging_and_stop_start(vast_fake: VastFake) -> None:
    v = sdk(vast_fake)
    offers = v.search_offers("num_gpus=1", order="dph_total", limit=30)
    ids = [v.create_instance(o["id"], image="img", label=f"l{n}")["new_contract"] for n, o in enumerate(offers[:28])]
    page = v.show_instances_v1({"select_filters": {}, "order_by": [{"col": "id", "dir": "asc"}], "limit": 25})
    assert len(page["instances"]) == 25 and page["next_token"] and page["total_instances"] == 28
    assert sorted(r["id"] for r in v.show_instances()) == sorted(ids)  # the SDK follows next_token
    v.stop_instance(ids[0])
    s = v.show_instance(ids[0])
    assert (s["actual_status"], s["cur_state"], s["intended_status"]) == ("exited", "stopped", "stopped")
    v.start_instance(ids[0])
    assert v.show_instance(ids[0])["intended_status"] == "running"


def test_failed_bid_without_cancel_unavail_leaves_stopped_instance(vast_fake: VastFake) -> None:
    h = {"Authorization": f"Bearer {API_KEY}"}
    offer = sdk(vast_fake).search_offers("gpu_name=RTX_3090", type="bid", order="min_bid", limit=1)[0]
    low = round(offer["min_bid"] / 2, 4)
    r = httpx.put(f"{vast_fake.url}/api/v0/asks/{offer['id']}/", headers=h,
                  json={"client_id": "me", "image": "img", "price": low, "cancel_unavail": False})
    assert r.status_code == 400 and r.json()["new_contract"]
    left = sdk(vast_fake).show_instance(r.json()["new_contract"])
    assert left["actual_status"] == "exited" and left["cur_state"] == "stopped"
    offer2 = sdk(vast_fake).search_offers("gpu_name=RTX_3090", type="bid", order="min_bid", limit=1)[0]
    r2 = httpx.put(f"{vast_fake.url}/api/v0/asks/{offer2['id']}/", headers=h,
                   json={"client_id": "me", "image": "img", "price": offer2["min_bid"] / 2, "cancel_unavail": True})
    assert r2.status_code == 400 and "new_contract" not in r2.json()


def test_control_faults_outbid_vanish(vast_fake: VastFake, control: httpx.Client) -> None:
    h = {"Authorization": f"Bearer {API_KEY}"}
    control.post("/faults", json={"status": 429, "count": 2}).raise_for_status()
    codes = [httpx.get(vast_fake.url + "/api/v1/instances/", headers=h).status_code for _ in range(3)]
    assert codes == [429, 429, 200]
    control.post("/faults", json={"status": 503, "count": 1, "path": "bundles"}).raise_for_status()
    assert httpx.post(vast_fake.url + "/api/v0/bundles/", json={}, headers=h).status_code == 503
    control.post("/faults", json={"latency_s": 0.5, "count": 1}).raise_for_status()
    r = httpx.get(vast_fake.url + "/api/v1/instances/", headers=h)
    assert r.elapsed.total_seconds() >= 0.45
    plan = control.get("/faults").json()  # the shared control API: every rule, and how often it fired
    assert plan["left"] == 0 and [(r["status"], r["fired"]) for r in plan["rules"]] == [(429, 2), (503, 1), (None, 1)]
    assert control.post("/faults", json={"effect": "no_such_effect"}).status_code == 400
    offer = sdk(vast_fake).search_offers("gpu_name=RTX_4090", order="dph_total", limit=1)[0]
    control.post(f"/vanish/{offer['id']}").raise_for_status()
    gone = httpx.put(f"{vast_fake.url}/api/v0/asks/{offer['id']}/", headers=h, json={"client_id": "me", "image": "i"})
    assert gone.status_code == 404 and gone.json()["error"] == "no_such_ask"
    bid_offer = sdk(vast_fake).search_offers("gpu_name=RTX_4090", type="bid", order="dph_total", limit=1)[0]
    iid = sdk(vast_fake).create_instance(bid_offer["id"], image="i", price=bid_offer["min_bid"] * 1.2)["new_contract"]
    control.post(f"/outbid/{iid}").raise_for_status()
    s = sdk(vast_fake).show_instance(iid)
    assert s["cur_state"] == "stopped" and "outbid" in s["status_msg"]
    assert control.get("/inspect").json()["instances"][0]["id"] == iid
    # restock: the vanished offer is for rent again; the outbid box's offer stays held while the box lives
    assert control.post("/restock").json() == {"restocked": 1}
    again = httpx.put(f"{vast_fake.url}/api/v0/asks/{offer['id']}/", headers=h, json={"client_id": "me", "image": "i"})
    assert again.status_code == 200, again.text
    assert not vast_fake.model.offer(bid_offer["id"]).available
    control.post("/reset").raise_for_status()
    assert control.get("/inspect").json()["instances"] == []


def test_container_key_destroys_only_its_own_instance(vast_fake: VastFake) -> None:
    v = sdk(vast_fake)
    offers = v.search_offers("num_gpus=1", order="dph_total", limit=2)
    a, b = (v.create_instance(o["id"], image="i")["new_contract"] for o in offers)
    key_a = vast_fake.model.get(a).api_key
    other = httpx.delete(f"{vast_fake.url}/api/v0/instances/{b}/", headers={"Authorization": f"Bearer {key_a}"})
    assert other.status_code == 401
    listing = httpx.get(f"{vast_fake.url}/api/v1/instances/", headers={"Authorization": f"Bearer {key_a}"})
    assert listing.status_code == 401
    own = httpx.delete(f"{vast_fake.url}/api/v0/instances/{a}/", headers={"Authorization": f"Bearer {key_a}"})
    assert own.status_code == 200
    again = httpx.delete(f"{vast_fake.url}/api/v0/instances/{a}/", headers={"Authorization": f"Bearer {key_a}"})
    assert again.status_code == 404 and again.json()["error"] == "no_such_instance"


def test_destroy_ends_processes_that_left_the_box_s_process_group(vast_fake: VastFake) -> None:
    from local_emulator import procs, vmshim

    v = sdk(vast_fake)
    o = v.search_offers("num_gpus=1", order="dph_total", limit=1)[0]
    iid = v.create_instance(o["id"], image="i", onstart_cmd=f"{ESCAPER_LINE}\nwait")["new_contract"]
    mark = vmshim.instance_mark("vast", iid)

    def escaper() -> list[psutil.Process]:
        return [p for p in procs.find_marked(vmshim.INSTANCE_VAR, mark) if "python" in p.name()]

    wait_for(escaper, timeout=20, what="the escaper to start")
    box = vast_fake.model.get(iid).proc
    assert box is not None and os.getpgid(escaper()[0].pid) != box.pgid, "it runs outside the box's process group"
    v.destroy_instance(iid)
    wait_for(lambda: not procs.find_marked(vmshim.INSTANCE_VAR, mark), timeout=15,
             what="every process of the destroyed box to end")


def _alive(pid: int) -> bool:
    """Running: a box's process ended by a destroy stays a zombie of this process until the fake reaps it."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_destroy_in_one_fake_leaves_another_fake_s_boxes_running(vast_fake: VastFake) -> None:
    """Two fakes on one machine (CI runs two test lanes, each with its stack): their box ids differ, so a destroy,
    which ends every process marked with its box's id, never reaches the other fake's box. Both fakes counted
    from one first id once, and lane A's destroys SIGTERMed lane B's agent of the same id."""
    other = VastFake(api_key=API_KEY, boot_delay_s=0.2).start()
    try:
        ours, theirs = sdk(vast_fake), sdk(other)
        ids = []
        for v in (ours, theirs):
            o = v.search_offers("num_gpus=1", order="dph_total", limit=1)[0]
            ids.append(v.create_instance(o["id"], image="i", onstart_cmd="sleep 1000")["new_contract"])
        assert ids[0] != ids[1]
        wait_for(lambda: theirs.show_instance(ids[1])["actual_status"] == "running", timeout=20, what="their box")
        box = other.model.get(ids[1]).proc
        assert box is not None
        before = {p.pid for p in psutil.Process(box.pid).children(recursive=True)} | {box.pid}
        ours.destroy_instance(ids[0])  # its processes are ended before the call returns
        gone = [pid for pid in before if not _alive(pid)]
        assert not gone, f"destroying our box {ids[0]} ended processes of their box {ids[1]}: {gone}"
        assert theirs.show_instance(ids[1])["actual_status"] == "running"
    finally:
        pids = instance_pids(other)
        other.stop()
        assert_no_instance_processes(pids)


def test_process_mode_sigterm_kills_instances(tmp_path: object) -> None:
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "local_emulator.vast", "--port", str(port), "--api-key", API_KEY,
                          "--boot-delay", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return httpx.get(url + "/_control/health").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, timeout=20, what="fake health")
        v = VastAI(api_key=API_KEY, server_url=url, raw=True)
        o = v.search_offers("num_gpus=1", order="dph_total", limit=1)[0]
        iid = v.create_instance(o["id"], image="i", onstart_cmd="sleep 1000")["new_contract"]
        wait_for(lambda: v.show_instance(iid)["actual_status"] == "running", timeout=10, what="running")
        pids = [pid for i in httpx.get(url + "/_control/inspect").json()["instances"] for pid in i["pids"]]
        assert pids
        os.kill(p.pid, signal.SIGTERM)
        assert p.wait(timeout=20) == 0
        wait_for(lambda: not any(psutil.pid_exists(x) and psutil.Process(x).status() != psutil.STATUS_ZOMBIE
                                 for x in pids), timeout=10, what="instance processes gone")
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)


def test_a_requested_port_is_mapped_to_a_host_port_and_relayed(vast_fake: VastFake) -> None:
    """``--env "-p P:P"`` (the SDK's parse_env) exposes container port P on a host port VAST picks: the
    instance's ``ports`` and the box's ``VAST_TCP_PORT_P`` name it, and a connection to it reaches P."""
    import socket
    import threading

    container_port = free_port()
    server = socket.create_server(("127.0.0.1", container_port))

    def echo_once() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"echo:" + conn.recv(100))

    threading.Thread(target=echo_once, daemon=True).start()
    v = sdk(vast_fake)
    offer = v.search_offers("gpu_name=RTX_4090 num_gpus=1", order="dph_total", limit=1)[0]
    iid = v.create_instance(offer["id"], image="i", env=f"-e FOO=bar -p {container_port}:{container_port}",
                            onstart_cmd=f'echo "$VAST_TCP_PORT_{container_port}" > mapped.txt')["new_contract"]
    try:
        wait_for(lambda: v.show_instance(iid)["actual_status"] == "running", timeout=10, every=0.05, what="running")
        row = v.show_instance(iid)
        host_port = int(row["ports"][f"{container_port}/tcp"][0]["HostPort"])
        assert host_port != container_port and row["extra_env"] == {"FOO": "bar"}
        mapped = vast_fake.model.get(iid).folder / "mapped.txt"
        wait_for(lambda: mapped.exists() and mapped.read_text().strip(), timeout=5, what="the onstart's output")
        assert mapped.read_text().strip() == str(host_port)
        with socket.create_connection(("127.0.0.1", host_port), timeout=5) as c:
            c.sendall(b"hello")
            assert c.recv(100) == b"echo:hello"
    finally:
        server.close()
        v.destroy_instance(iid)
    assert not _port_open(host_port), "the mapping ends with the box"


def test_an_outbid_box_is_paused_with_its_workspace_kept_then_resumed_or_destroyed(
        vast_fake: VastFake, control: httpx.Client) -> None:
    v = sdk(vast_fake)
    offer = v.search_offers("gpu_name=RTX_4090", type="bid", order="dph_total", limit=1)[0]
    # The box counts in its workspace (SPOTLEASH_VM_ROOT/workspace: the agent's /workspace) every 50 ms.
    count = 'while true; do date +%s%N >> "$SPOTLEASH_VM_ROOT/workspace/ticks"; sleep 0.05; done'
    iid = v.create_instance(offer["id"], image="i", price=offer["min_bid"] * 1.2, onstart_cmd=count)["new_contract"]
    wait_for(lambda: v.show_instance(iid)["actual_status"] == "running", timeout=10, what="running")
    [row] = control.get("/inspect").json()["instances"]
    ticks = vast_fake.model.get(iid).root / "workspace" / "ticks"
    assert row["workspace"] == str(ticks.parent)
    wait_for(lambda: ticks.exists() and len(ticks.read_text().split()) >= 3, timeout=10, what="the box to work")

    control.post(f"/outbid/{iid}").raise_for_status()
    s = v.show_instance(iid)
    assert s["actual_status"] == "exited" and "outbid" in s["status_msg"] and s["ssh_port"] is None
    pids = instance_pids(vast_fake)
    assert pids and control.get("/inspect").json()["instances"][0]["paused"] is True
    wait_for(lambda: all(_stopped_or_gone(p) for p in pids), timeout=5, what="every process of the box stopped")
    frozen = ticks.read_text()  # the disk is kept as it stood
    control.post(f"/outbid/{iid}").raise_for_status()  # outbid again: still the same paused box
    assert instance_pids(vast_fake) == pids

    v.start_instance(iid)
    assert v.show_instance(iid)["actual_status"] == "running"
    wait_for(lambda: len(ticks.read_text()) > len(frozen), timeout=10, what="the box to go on where it stood")
    assert ticks.read_text().startswith(frozen)  # resumed, not rebooted

    control.post(f"/outbid/{iid}").raise_for_status()
    folder = vast_fake.model.get(iid).folder
    assert v.destroy_instance(iid)["success"]
    assert_no_instance_processes(pids)
    assert not folder.exists()  # destroy removes the disk
    rentable = v.search_offers("gpu_name=RTX_4090", type="bid", limit=1000)
    assert offer["id"] not in [o["id"] for o in rentable]  # the higher bidder has its GPUs: not ours to rent again


def _stopped_or_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True
