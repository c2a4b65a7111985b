"""VastProvider against the fake, through every trap of the real service."""

from __future__ import annotations

from pathlib import Path

import httpx
import paramiko
import pytest
from tests.emulator import vast_fixtures as fx
from tests.emulator.vast_fixtures import API_KEY, REQ, spec, wait_for
from vastai import VastAI

from local_emulator.vast import VastFake
from spotleash.config import load_settings
from spotleash.errors import CapacityExhausted, ConfigError, ProviderTransient
from spotleash.providers.base import ProviderInstance, ProviderStatus
from spotleash.providers.vast import VastProvider, make_label
from spotleash.providers.vast.ssh import run

pytestmark = pytest.mark.emulator
vast_fake = fx.vast_fake
control = fx.control
provider = fx.provider


def rows(fake: VastFake) -> list[dict[str, object]]:
    return list(fake.model.inspect()["instances"])


def test_create_wait_running_tolerates_null_status(provider: VastProvider, vast_fake: VastFake) -> None:
    inst = provider.create(spec("a"))
    assert inst.status is ProviderStatus.PENDING and inst.native_status is None  # actual_status null
    assert inst.instance_id == "a" and inst.lease_id == "lease-1" and inst.owned
    seen: list[str | None] = []
    running = provider.wait_running(inst.provider_id, timeout_s=20, poll_s=0.1,
                                    on_poll=lambda i: seen.append(i.native_status if i else "gone"))
    assert running.status is ProviderStatus.RUNNING and running.ssh_port
    assert None in seen and "loading" in seen
    raw = provider.get_raw(inst.provider_id)
    assert raw is not None and raw["label"] == make_label("dep-test", "lease-1", "a")
    env = dict(raw["extra_env"])
    assert "SPOTLEASH_AGENT_CONFIG" in env and "watchdog" in str(raw["onstart"])


def test_repeated_create_makes_one_instance(provider: VastProvider, vast_fake: VastFake) -> None:
    a = provider.create(spec("same"))
    b = provider.create(spec("same"))
    assert a.provider_id == b.provider_id
    assert len(provider.list_owned("dep-test")) == 1 and len(rows(vast_fake)) == 1
    assert provider.find("same") is not None and provider.find("other") is None


def test_failed_bid_leaving_an_instance_is_destroyed(vast_fake: VastFake, control: httpx.Client, tmp_path: Path) -> None:
    p = VastProvider(url=vast_fake.url, api_key=API_KEY, ssh_key_path=tmp_path / "k", requirements=REQ,
                     interruptible=True)
    control.post("/faults", json={"effect": "bid_leaves_instance", "count": 1}).raise_for_status()
    inst = p.create(spec("bid"))
    left = rows(vast_fake)
    assert [r["id"] for r in left] == [int(inst.provider_id)]  # the stopped leftover was destroyed
    methods = [(m, path.split("/")[3]) for m, path, _ in vast_fake.model.calls]
    assert ("DELETE", "instances") in methods
    puts = [c for c in vast_fake.model.calls if c[0] == "PUT" and "/asks/" in c[1]]
    assert [c[2] for c in puts] == [400, 200]
    p.close()


def test_offer_vanishing_takes_the_next(provider: VastProvider, vast_fake: VastFake, control: httpx.Client) -> None:
    control.post("/faults", json={"effect": "offer_gone", "count": 2}).raise_for_status()
    inst = provider.create(spec("v"))
    puts = [c for c in vast_fake.model.calls if c[0] == "PUT" and "/asks/" in c[1]]
    assert [c[2] for c in puts] == [404, 404, 200]
    assert len({c[1] for c in puts}) == 3 and inst.instance_id == "v"


def test_no_offer_at_all_is_capacity_exhausted(provider: VastProvider) -> None:
    from dataclasses import replace

    with pytest.raises(CapacityExhausted):
        provider.create(replace(spec("none"), gpu=replace(REQ, gpu_names=("No Such GPU",))))


def test_outbid_instance_is_stopped(vast_fake: VastFake, control: httpx.Client, tmp_path: Path) -> None:
    p = VastProvider(url=vast_fake.url, api_key=API_KEY, ssh_key_path=tmp_path / "k", requirements=REQ,
                     interruptible=True)
    inst = p.create(spec("ob"))
    p.wait_running(inst.provider_id, timeout_s=20, poll_s=0.1)
    control.post(f"/outbid/{inst.provider_id}").raise_for_status()
    got = p.get(inst.provider_id)
    assert got is not None and got.status is ProviderStatus.STOPPED
    with pytest.raises(CapacityExhausted, match="stopped before running"):
        p.wait_running(inst.provider_id, timeout_s=5, poll_s=0.1)
    p.delete(inst.provider_id)
    p.close()


def test_429_bursts_are_retried_and_bounded(provider: VastProvider, control: httpx.Client) -> None:
    control.post("/faults", json={"status": 429, "count": 3}).raise_for_status()
    inst = provider.create(spec("r"))
    assert provider.stats.retries >= 3 and inst.instance_id == "r"
    control.post("/faults", json={"status": 503, "count": 10, "path": "v1/instances"}).raise_for_status()
    with pytest.raises(ProviderTransient):
        provider.list_owned("dep-test")
    control.delete("/faults").raise_for_status()


def test_list_owned_all_pages_and_delete_idempotent(provider: VastProvider, vast_fake: VastFake) -> None:
    v = VastAI(api_key=API_KEY, server_url=vast_fake.url, raw=True)
    offers = v.search_offers("num_gpus=1", order="dph_total", limit=40)
    labels = [make_label("dep-test", "l", f"i{n}") for n in range(27)] + \
        [make_label("other-dep", "l", "x"), "someone-elses-box", ""]
    for o, label in zip(offers, labels, strict=False):
        v.create_instance(o["id"], image="img", label=label or None)
    owned = provider.list_owned("dep-test")
    assert sorted(i.instance_id or "" for i in owned) == sorted(f"i{n}" for n in range(27))
    assert all(i.owned for i in owned)
    victim = owned[0].provider_id
    provider.delete(victim)
    provider.delete(victim)  # already gone counts as success
    assert provider.get(victim) is None


def test_ssh_exec_sftp_with_pinned_key_and_wrong_key_rejected(provider: VastProvider, vast_fake: VastFake) -> None:
    inst = provider.create(spec("ssh"))
    running = provider.wait_running(inst.provider_id, timeout_s=20, poll_s=0.1)
    host_key = provider.wait_ssh(running, timeout_s=20)
    real = vast_fake.model.get(int(inst.provider_id)).host_key
    assert host_key == f"{real.get_name()} {real.get_base64()}"
    with provider.ssh(running, host_key) as c:
        assert run(c, "echo hi; exit 4") == (4, "hi\n", "")
        code, out, _ = run(c, "python -c 'import spotleash, os; print(os.environ[\"CONTAINER_ID\"])'")
        assert code == 0 and out.strip() == inst.provider_id
        sftp = c.open_sftp()
        with sftp.open("note.txt", "w") as f:
            f.write("pinned")
        with sftp.open("note.txt") as f:
            assert f.read() == b"pinned"
    wrong = paramiko.ECDSAKey.generate()
    with pytest.raises(paramiko.BadHostKeyException), provider.ssh(running, f"{wrong.get_name()} {wrong.get_base64()}"):
        pass
    with pytest.raises(paramiko.BadHostKeyException):
        provider.wait_ssh(running, host_key=f"{wrong.get_name()} {wrong.get_base64()}", timeout_s=5)


def test_destroy_ends_processes_and_ssh(provider: VastProvider, vast_fake: VastFake) -> None:
    inst = provider.create(spec("d"))
    running = provider.wait_running(inst.provider_id, timeout_s=20, poll_s=0.1)
    pids = fx.instance_pids(vast_fake)
    assert pids
    provider.delete(inst.provider_id)
    fx.assert_no_instance_processes(pids)
    gone = ProviderInstance("vast", inst.provider_id, ProviderStatus.RUNNING, {}, ssh_host=running.ssh_host,
                            ssh_port=running.ssh_port)
    with pytest.raises(ProviderTransient):
        provider.wait_ssh(gone, timeout_s=1)
    wait_for(lambda: provider.get(inst.provider_id) is None, timeout=5, what="gone")


def test_from_settings_needs_a_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPOTLEASH_VAST_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="SPOTLEASH_VAST_API_KEY"):
        VastProvider.from_settings(load_settings(state_dir=tmp_path))
    p = VastProvider.from_settings(load_settings(state_dir=tmp_path, vast_api_key="k", vast_url="http://127.0.0.1:9"))
    assert p.ssh_key_path == tmp_path / "vast_ssh_key" and p.requirements.gpu_names
    p.close()


def test_learn_host_key_from_a_box_that_is_no_ssh_server_is_transient(tmp_path: Path) -> None:
    """What the heartbeat's first contact sees: paramiko's errors come back as ProviderTransient."""
    import socket
    import threading

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def answer_garbage() -> None:
            conn, _ = server.accept()
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        t = threading.Thread(target=answer_garbage, daemon=True)
        t.start()
        p = VastProvider(url="http://127.0.0.1:9", api_key="k", ssh_key_path=tmp_path / "k")
        try:
            with pytest.raises(ProviderTransient, match=f"SSH to 127.0.0.1:{port}"):
                p.learn_host_key("127.0.0.1", port, timeout_s=3)
        finally:
            p.close()
        t.join(timeout=5)


def test_a_box_with_a_route_credential_exposes_the_front_port_mapped_to_a_host_port(
        provider: VastProvider, vast_fake: VastFake) -> None:
    """The router reaches a box's TLS front through the host port VAST maps its container port 8443 to."""
    inst = provider.create(spec("front", route_credential_sha256="c" * 64))
    running = provider.wait_running(inst.provider_id, timeout_s=20, poll_s=0.1)
    raw = provider.get_raw(running.provider_id)
    assert raw is not None
    [mapping] = raw["ports"]["8443/tcp"]
    assert int(mapping["HostPort"]) != 8443
    assert "-p 8443:8443" not in dict(raw["extra_env"]), "a docker option, not a variable of the box"
    plain = provider.create(spec("no-front"))
    plain_raw = provider.wait_running(plain.provider_id, timeout_s=20, poll_s=0.1) and provider.get_raw(plain.provider_id)
    assert plain_raw is not None and "8443/tcp" not in plain_raw["ports"]
