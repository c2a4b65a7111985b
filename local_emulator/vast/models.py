"""State and rules of the VAST.ai fake: account, offers, instances, faults, and the boxes' processes.

Lifecycle (``boot_delay_s`` = B): created → ``actual_status`` null for B/3 → ``loading`` →
``running`` at B, when the instance's process group starts (``bash onstart.sh``, then it idles) and
its SSH endpoint opens. ``stop`` → ``exited`` (processes and SSH gone, instance kept); ``start`` →
loading again; ``destroy`` → gone (``no_such_instance`` afterwards), offer free again, its data removed.

Outbid (a bid box, ``POST /_control/outbid/{id}``) → ``exited`` and **paused**, as on VAST: every process
of the box and its components is SIGSTOPped where it stands and its disk is kept; ``start`` resumes them
(SIGCONT; SSH opens again), ``destroy`` SIGKILLs them. A box's disk is ``<folder>/root`` (given to it as
``SPOTLEASH_VM_ROOT``, see ``local_emulator.vmshim``), its workspace ``<folder>/root/workspace``: what
the instance agent sees as ``/workspace``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko
import psutil

from local_emulator import procs, vmshim
from local_emulator.faults import FaultPlan
from local_emulator.vast import errors, gpus
from local_emulator.vast.errors import VastApiError
from local_emulator.vast.offers import Offer, build_catalog
from local_emulator.vast.portmap import PortRelay, requested_ports
from local_emulator.vast.ssh import SshEndpoint
from spotleash.log import get_logger

log = get_logger("local_emulator.vast")

# Box ids start at a random point of this range: every process of a box carries its id (vmshim.INSTANCE_VAR) and a
# destroy ends every process so marked, so two fakes on one machine (CI's two test lanes) that both counted from
# one number each ended the other's boxes of the same id (an agent SIGTERMed 0.8 s after its start).
INSTANCE_IDS = (21_000_000, 29_000_000)
IDLE = "exec sleep 2147483647"
# Faults of the model, not the transport: the offer is rented away between search and create; a bid
# is refused yet leaves a stopped instance behind (as real VAST does).
EFFECTS = ("offer_gone", "bid_leaves_instance")


@dataclass
class Instance:
    id: int
    offer: Offer
    label: str | None
    image: str
    env: dict[str, str]
    onstart: str
    disk: float
    is_bid: bool
    price: float | None
    dph_total: float
    api_key: str
    folder: Path
    host_key: paramiko.PKey
    created: float = field(default_factory=time.time)
    boot_started: float = field(default_factory=time.monotonic)
    intended: str = "running"  # intended_status
    state: str = "booting"  # booting | running | stopped
    status_msg: str | None = None
    proc: procs.ManagedProcess | None = None
    ssh: SshEndpoint | None = None
    ssh_keys: list[str] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)  # container ports the create asked to expose ("-p C:C")
    relays: list[PortRelay] = field(default_factory=list)  # their host ports, while the box runs
    paused: procs.ManagedProcess | None = None  # outbid: the box's process group, SIGSTOPped
    outbid: bool = False  # its GPUs went to a higher bid: destroyed, its offer is not free again

    @property
    def root(self) -> Path:
        """The box's disk (``SPOTLEASH_VM_ROOT``): ``/workspace`` of the instance agent is ``root/workspace``."""
        return self.folder / "root"

    @property
    def spotleash_id(self) -> str:
        """The spotleash instance id in the box's agent config (its components carry it), or ""."""
        try:
            cfg = json.loads(self.env.get("SPOTLEASH_AGENT_CONFIG") or "{}")
        except ValueError:
            return ""
        return str(cfg.get("instance_id") or "") if isinstance(cfg, dict) else ""

    def actual_status(self, boot_delay: float) -> str | None:
        if self.state == "running":
            return "running"
        if self.state == "stopped":
            return "exited"
        return None if time.monotonic() - self.boot_started < boot_delay / 3 else "loading"

    def to_json(self, boot_delay: float) -> dict[str, Any]:
        o = self.offer.fields
        actual = self.actual_status(boot_delay)
        running = self.state == "running" and self.ssh is not None
        return {
            "id": self.id,
            "label": self.label,
            "actual_status": actual,
            "cur_state": "stopped" if self.state == "stopped" else "running",
            "intended_status": self.intended,
            "next_state": "stopped" if self.state == "stopped" else "running",
            "status_msg": self.status_msg,
            "start_date": self.created,
            "image_uuid": self.image,
            "image_runtype": "ssh",
            "onstart": self.onstart,
            "extra_env": [[k, v] for k, v in self.env.items()],
            "disk_space": self.disk,
            "is_bid": self.is_bid,
            "min_bid": o["min_bid"],
            "dph_total": self.dph_total,
            "storage_cost": o["storage_cost"],  # $/GB/month
            "storage_total_cost": o["storage_cost_h"],  # $/h of this box's storage, part of dph_total
            "machine_id": o["machine_id"],
            "host_id": o["host_id"],
            "gpu_name": o["gpu_name"],
            "num_gpus": o["num_gpus"],
            "gpu_ram": o["gpu_ram"],
            "cpu_ram": o["cpu_ram"],
            "reliability2": o["reliability2"],
            "geolocation": o["geolocation"],
            "inet_up": o["inet_up"],
            "inet_down": o["inet_down"],
            "public_ipaddr": self.ssh.host if running and self.ssh else None,
            "ssh_host": self.ssh.host if running and self.ssh else None,
            "ssh_port": self.ssh.port if running and self.ssh else None,
            "ssh_idx": None,
            "ports": ({"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(self.ssh.port)}],
                       **{f"{r.container_port}/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(r.host_port)}]
                          for r in self.relays}} if running and self.ssh else {}),
        }


KEEP_LOGS_ENV = "SPOTLEASH_VAST_FAKE_LOG_DIR"  # the local stack sets it to its logs directory


def _keep_logs(inst: Instance) -> None:
    """A destroyed box's output (its onstart's; the bootstrap's, agent's and watchdog's in ``~/spotleash-logs``)
    copied to ``$SPOTLEASH_VAST_FAKE_LOG_DIR/instance-<id>/``, when set: the disk goes with the box, and a failed
    test's kept stack must still say why a box went quiet."""
    kept = os.environ.get(KEEP_LOGS_ENV)
    if not kept:
        return
    dest = Path(kept) / f"instance-{inst.id}"
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for log_file in [inst.folder / "onstart.log", *sorted((inst.folder / "spotleash-logs").glob("*.log"))]:
            if log_file.is_file():
                shutil.copyfile(log_file, dest / log_file.name)
    except OSError as e:  # the destroy goes on: keeping its logs is for the reader, not the bill
        log.warning("a destroyed box's logs were not kept", instance=inst.id, reason=str(e))


class VastModel:
    def __init__(self, *, api_key: str, host: str, url_getter: Any, data_dir: Path, boot_delay_s: float,
                 seed: int = 4) -> None:
        self.api_key = api_key
        self.host = host
        self._url = url_getter
        self.data_dir = data_dir
        self.boot_delay_s = boot_delay_s
        self.seed = seed
        self.lock = threading.RLock()
        self.offers: list[Offer] = build_catalog(seed)
        self.instances: dict[int, Instance] = {}
        self.ssh_keys: list[dict[str, Any]] = []
        self.faults = FaultPlan(effects=EFFECTS)
        self.calls: list[tuple[str, str, int]] = []  # (method, path, status) of every API call
        self._dead_keys: dict[int, tuple[str, ...]] = {}
        self._next_id = INSTANCE_IDS[0] + secrets.randbelow(INSTANCE_IDS[1] - INSTANCE_IDS[0])
        self._next_key = 1
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick_loop, name="vast-ticker", daemon=True)
        self._ticker.start()

    # ------------------------------------------------------------------ auth
    def auth(self, key: str | None, *, instance_id: int | None = None) -> None:
        """The account key passes everywhere; an instance's CONTAINER_API_KEY only for itself."""
        if key and secrets.compare_digest(key, self.api_key):
            return
        if key and instance_id is not None:
            with self.lock:
                inst = self.instances.get(instance_id)
                if inst is not None and secrets.compare_digest(key, inst.api_key):
                    return
                if inst is None and key in self._dead_keys.get(instance_id, ()):
                    raise errors.no_such_instance(instance_id)  # its own key, already destroyed
        raise errors.unauthorized()

    # ------------------------------------------------------------------ ssh keys
    def add_ssh_key(self, key: str) -> dict[str, Any]:
        parts = key.strip().split()
        if len(parts) < 2 or not parts[0].startswith(("ssh-", "ecdsa-")):
            raise errors.invalid("ssh_key must be an OpenSSH public key line")
        with self.lock:
            for k in self.ssh_keys:
                if k["public_key"].split()[:2] == parts[:2]:
                    return k
            rec = {"id": self._next_key, "public_key": key.strip(), "ssh_key": key.strip(),
                   "created_at": time.time(), "deleted_at": None}
            self._next_key += 1
            self.ssh_keys.append(rec)
            return rec

    def delete_ssh_key(self, key_id: int) -> None:
        with self.lock:
            before = len(self.ssh_keys)
            self.ssh_keys = [k for k in self.ssh_keys if k["id"] != key_id]
            if len(self.ssh_keys) == before:
                raise VastApiError(404, "no_such_key", f"SSH key {key_id} not found.")

    # ------------------------------------------------------------------ offers
    def offer(self, offer_id: int) -> Offer | None:
        return next((o for o in self.offers if o.id == offer_id), None)

    def vanish(self, offer_id: int) -> None:
        with self.lock:
            o = self.offer(offer_id)
            if o is None:
                raise errors.no_such_ask(offer_id)
            o.available = False

    def restock(self) -> int:
        """The market moves on: every offer no live instance holds is for rent again (a vanished offer, an
        outbid box's GPUs once its higher bidder left). Returns how many came back."""
        with self.lock:
            held = {inst.offer.id for inst in self.instances.values()}
            back = [o for o in self.offers if not o.available and o.id not in held]
            for o in back:
                o.available = True
            return len(back)

    # ------------------------------------------------------------------ instances
    def create(self, offer_id: int, body: dict[str, Any]) -> int:
        if body.get("client_id") not in (None, "me"):
            raise errors.invalid("client_id must be 'me'")
        image = body.get("image")
        if not image and not body.get("template_hash_id"):
            raise errors.invalid("image is required")
        env_in = body.get("env") or {}
        if not isinstance(env_in, dict):
            raise errors.invalid("env must be an object")
        price = body.get("price")
        with self.lock:
            o = self.offer(offer_id)
            gone = self.faults.take("create", method="PUT", path=f"/api/v0/asks/{offer_id}/", effect="offer_gone")
            if gone is not None and o is not None:
                o.available = False  # someone else rented it between search and create
            if o is None or not o.available:
                raise errors.no_such_ask(offer_id)
            is_bid = price is not None
            leave = self.faults.take("create", method="PUT", path=f"/api/v0/asks/{offer_id}/", effect="bid_leaves_instance")
            if is_bid and (float(price) < o.fields["min_bid"] or leave is not None):
                msg = f"Your bid of ${float(price):.4f}/h is below the current minimum ${o.fields['min_bid']:.4f}/h."
                if body.get("cancel_unavail") and leave is None:
                    raise VastApiError(400, "bid_too_low", msg)
                inst = self._new_instance(o, body, image, env_in, price, is_bid=True)
                self._do_stop(inst, "stopped", "bid not accepted: " + msg)
                raise VastApiError(400, "bid_too_low", msg, new_contract=inst.id)
            inst = self._new_instance(o, body, image, env_in, price, is_bid=is_bid)
            return inst.id

    def _new_instance(self, o: Offer, body: dict[str, Any], image: str, env_in: dict[str, Any],
                      price: Any, *, is_bid: bool) -> Instance:
        iid = self._next_id
        self._next_id += 1
        folder = self.data_dir / f"instance-{iid}"
        folder.mkdir(parents=True, exist_ok=True)
        env = {str(k): str(v) for k, v in env_in.items() if not str(k).startswith("-")}
        dph = o.view("bid" if is_bid else "on-demand")["dph_total"]
        if is_bid:
            dph = round(float(price) + o.fields["storage_cost_h"], 4)
        inst = Instance(
            id=iid, offer=o, label=body.get("label"), image=image or "", env=env,
            onstart=body.get("onstart") or "", disk=float(body.get("disk") or 10), is_bid=is_bid,
            price=None if price is None else float(price), dph_total=dph,
            api_key=secrets.token_hex(32), folder=folder, host_key=paramiko.ECDSAKey.generate(),
            ssh_keys=[k["public_key"] for k in self.ssh_keys], ports=requested_ports(env_in),
        )
        o.available = False
        self.instances[iid] = inst
        log.info("instance created", instance=iid, offer=o.id, bid=is_bid)
        return inst

    def get(self, iid: int) -> Instance:
        with self.lock:
            inst = self.instances.get(iid)
            if inst is None:
                raise errors.no_such_instance(iid)
            return inst

    def set_label(self, iid: int, label: str) -> None:
        with self.lock:
            self.get(iid).label = label

    def start(self, iid: int) -> None:
        with self.lock:
            inst = self.get(iid)
            inst.intended = "running"
            if inst.state == "stopped" and inst.paused is not None:
                inst.outbid = False  # the bid is competitive again: the GPUs are back
                self._resume(inst)
            elif inst.state == "stopped":
                inst.state = "booting"
                inst.status_msg = None
                inst.boot_started = time.monotonic()

    def stop(self, iid: int) -> None:
        with self.lock:
            inst = self.get(iid)
        self._do_stop(inst, "stopped", None)

    def outbid(self, iid: int) -> None:
        with self.lock:
            inst = self.get(iid)
            if not inst.is_bid:
                raise errors.invalid(f"instance {iid} is on-demand; only a bid can be outbid")
        # real VAST keeps intended_status running and would resume if the bid became competitive
        with self.lock:
            if inst.paused is not None:
                return  # outbid already
            if inst.state != "running" or inst.proc is None:
                self._do_stop(inst, "running", "Instance was outbid by a higher bid and stopped.")
                return
            inst.intended, inst.state, inst.outbid = "running", "stopped", True
            inst.status_msg = "Instance was outbid by a higher bid and stopped."
            proc, ssh = inst.proc, inst.ssh
            inst.proc, inst.ssh, inst.paused = None, None, proc
        if ssh is not None:
            ssh.close()
        n = self._signal_box(proc, inst.spotleash_id, signal.SIGSTOP)
        log.info("instance paused (outbid): processes stopped, disk kept", instance=iid, processes=n)

    @staticmethod
    def _signal_box(proc: procs.ManagedProcess, spotleash_id: str, sig: signal.Signals) -> int:
        """``sig`` to every process of the box: its group and its components (groups of their own)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pgid, sig)  # the group first: a child forked meanwhile is in it too
        members = proc.members()
        if spotleash_id:
            members += [p for p in procs.find_marked(vmshim.MARKER_VAR, spotleash_id)
                        if p.pid not in {m.pid for m in members}]
        for p in members:
            with contextlib.suppress(ProcessLookupError, PermissionError, OSError, psutil.Error):
                p.send_signal(sig)
        return len(members)

    def _resume(self, inst: Instance) -> None:
        """Caller holds the lock: SIGCONT the paused box, open SSH again."""
        proc, inst.paused = inst.paused, None
        assert proc is not None
        inst.ssh = SshEndpoint(host=self.host, host_key=inst.host_key, root=inst.folder, env=self._box_env(inst),
                               authorized=lambda: list(inst.ssh_keys) + [k["public_key"] for k in self.ssh_keys],
                               name=str(inst.id))
        inst.proc, inst.state, inst.status_msg = proc, "running", None
        self._signal_box(proc, inst.spotleash_id, signal.SIGCONT)
        log.info("instance resumed", instance=inst.id)

    def _do_stop(self, inst: Instance, intended: str, msg: str | None) -> None:
        with self.lock:
            inst.intended = intended
            inst.state = "stopped"
            inst.status_msg = msg
            proc, ssh, paused, relays = inst.proc, inst.ssh, inst.paused, inst.relays
            inst.proc, inst.ssh, inst.paused, inst.relays = None, None, None, []
        self._kill(inst.id, proc or paused, ssh, inst.spotleash_id, relays, paused=paused is not None)

    def destroy(self, iid: int) -> None:
        with self.lock:
            inst = self.get(iid)
            del self.instances[iid]
            self._dead_keys[iid] = (inst.api_key,)
            inst.offer.available = not inst.outbid  # the higher bidder keeps an outbid box's GPUs
            proc, ssh, paused, relays = inst.proc, inst.ssh, inst.paused, inst.relays
            inst.proc, inst.ssh, inst.paused, inst.relays = None, None, None, []
        self._kill(iid, proc or paused, ssh, inst.spotleash_id, relays, paused=paused is not None)
        _keep_logs(inst)
        shutil.rmtree(inst.folder, ignore_errors=True)  # the box's disk goes with it: destroy ends the bill
        log.info("instance destroyed", instance=iid)

    def _kill(self, iid: int, proc: procs.ManagedProcess | None, ssh: SshEndpoint | None,
              spotleash_id: str = "", relays: list[PortRelay] | None = None, *, paused: bool = False) -> None:
        for relay in relays or []:
            relay.close()
        if ssh is not None:
            ssh.close()
        if paused and proc is not None:  # SIGSTOPped processes would hold a SIGTERM until resumed
            self._signal_box(proc, spotleash_id, signal.SIGKILL)
        if proc is not None:
            try:
                procs.stop_all([proc], timeout=10.0, term_grace=3.0)
            except procs.StackError as e:
                log.error("instance process did not stop", instance=iid, reason=str(e))
        # Install steps and components run in process groups of their own: they die with the box too.
        try:
            left = vmshim.sweep_instance(vmshim.instance_mark("vast", iid))
        except procs.StackError as e:
            log.error("box processes outside its group did not stop", instance=iid, reason=str(e))
            left = 0
        if left:
            log.info("box processes outside its process group ended", instance=iid, count=left)
        swept = vmshim.sweep_components(spotleash_id)
        if swept:
            log.info("component processes of the box ended", instance=iid, count=swept)

    # ------------------------------------------------------------------ boot
    def _tick_loop(self) -> None:
        while not self._stop.wait(0.05):
            with self.lock:
                due = [i for i in self.instances.values()
                       if i.state == "booting" and time.monotonic() - i.boot_started >= self.boot_delay_s]
                for i in due:
                    i.state = "starting"  # claimed; not booting twice
            for inst in due:
                try:
                    self._boot(inst)
                except (OSError, procs.StackError, paramiko.SSHException) as e:
                    log.error("instance failed to boot", instance=inst.id, reason=str(e))
                    with self.lock:
                        inst.state = "stopped"
                        inst.status_msg = f"boot failed: {e}"

    def _box_env(self, inst: Instance, relays: list[PortRelay] | None = None) -> dict[str, str]:
        gpu_state = self._gpu_state(inst)
        env = {
            # python3: the fakes' own (see local_emulator.vmshim); nvidia-smi: the box's GPUs (vast.gpus)
            "PATH": os.pathsep.join([str(gpus.BIN), vmshim.path_value()]),
            **gpus.box_env(inst.folder, gpu_state),
            "HOME": str(inst.folder),
            "LANG": "C.UTF-8",
            "CONTAINER_ID": str(inst.id),
            "CONTAINER_API_KEY": inst.api_key,
            "VAST_URL": self._url(),
            "VAST_CONTAINERLABEL": f"C.{inst.id}",
            "PUBLIC_IPADDR": self.host,
            vmshim.ROOT_VAR: str(inst.root),
            **inst.env,
            vmshim.INSTANCE_VAR: vmshim.instance_mark("vast", inst.id),
        }
        env.update({f"VAST_TCP_PORT_{r.container_port}": str(r.host_port) for r in relays or inst.relays})
        for var in ("PYTHONPATH", "VIRTUAL_ENV", "TMPDIR", "SPOTLEASH_LOCAL_STACK"):
            if var in os.environ and var not in env:
                env[var] = os.environ[var]
        return env

    @staticmethod
    def _gpu_state(inst: Instance) -> dict[str, Any]:
        """The box's GPUs (``vast.gpus``): written at its first boot, kept across a stop and start."""
        path = inst.folder / gpus.STATE_FILE
        if path.is_file():
            state: dict[str, Any] = json.loads(path.read_text())
            return state
        state = gpus.initial_state(inst.offer.fields, inst.id)
        inst.folder.mkdir(parents=True, exist_ok=True)
        gpus.write_state(inst.folder, state)
        return state

    def set_gpu_load(self, iid: int, body: Any) -> dict[str, Any]:
        """``POST /_control/gpu/{id}``: what the box's nvidia-smi reports from now on (``vast.gpus.set_load``)."""
        with self.lock:
            inst = self.get(iid)
            self._gpu_state(inst)
            return gpus.set_load(inst.folder, body)

    def _boot(self, inst: Instance) -> None:
        relays = [PortRelay(self.host, port) for port in inst.ports]
        env = self._box_env(inst, relays)
        (inst.root / "workspace").mkdir(parents=True, exist_ok=True)
        (inst.folder / "onstart.sh").write_text(inst.onstart + "\n")
        ssh = SshEndpoint(host=self.host, host_key=inst.host_key, root=inst.folder, env=env,
                          authorized=lambda: list(inst.ssh_keys) + [k["public_key"] for k in self.ssh_keys],
                          name=str(inst.id))
        proc = procs.spawn(f"vast-instance-{inst.id}", ["bash", "-c", f"bash ./onstart.sh; {IDLE}"],
                           log_path=inst.folder / "onstart.log", port=None, env=env, cwd=inst.folder)
        with self.lock:
            alive = self.instances.get(inst.id) is inst and inst.state == "starting"
            if alive:
                inst.proc, inst.ssh, inst.state, inst.relays = proc, ssh, "running", relays
        if not alive:  # destroyed or stopped while booting
            self._kill(inst.id, proc, ssh, inst.spotleash_id, relays)

    # ------------------------------------------------------------------ control
    def inspect(self) -> dict[str, Any]:
        with self.lock:
            return {
                "instances": [
                    {**i.to_json(self.boot_delay_s), "state": i.state, "folder": str(i.folder), "offer_id": i.offer.id,
                     "root": str(i.root), "workspace": str(i.root / "workspace"), "paused": i.paused is not None,
                     "pids": [p.pid for p in (i.proc or i.paused).members()] if (i.proc or i.paused) else [],
                     "pgid": (i.proc or i.paused).pgid if (i.proc or i.paused) else None}
                    for i in self.instances.values()
                ],
                "ssh_keys": len(self.ssh_keys),
                "faults": self.faults.to_json(),
                "offers_available": sum(1 for o in self.offers if o.available),
                "calls": len(self.calls),
            }

    def reset(self) -> None:
        self.kill_all()
        with self.lock:
            self.offers = build_catalog(self.seed)
            self.ssh_keys.clear()
            self.faults.reset()
            self.calls.clear()
            self._dead_keys.clear()

    def kill_all(self) -> None:
        with self.lock:
            ids = list(self.instances)
        for iid in ids:
            with contextlib.suppress(VastApiError):
                self.destroy(iid)

    def close(self) -> None:
        self._stop.set()
        self._ticker.join(timeout=2)
        self.kill_all()
