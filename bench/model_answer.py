"""Heavy ML work (issue 23): section ``model`` of ``python -m bench``, each figure beside its baseline in the run.

1. **Republish with ≥ 1 GB of dependencies** (``republish_big``): examples/thumbs with a generated 1 GB
   ``[[app.artifacts]]`` entry (4 files of random bytes, as weights are; made in the run's scratch dir, never
   downloaded): a first publish to an empty bucket (every blob: the baseline, bytes and seconds), then a one-line
   change to one app file (the app blob and the manifest only, checked). ``spotleash publish --json`` as a user
   runs it, against the stack's Cloud Storage emulator.
2. **Install, uv vs pip** (``install_ways``): the instance's own code (``bootstrap.prepare_layered``: extract the
   app blob, place the wheels, uv out of its wheel, venv, offline install, the agent's import) on the example
   app's verified blobs, each run in a fresh work dir as on a new instance, once with uv (what the package
   ships) and once with pip (the fallback), alternating, every step timed.
3. **Memory alarm → first model answer** (``alarm_to_answer``): a real ``python -m spotleash.agent`` with
   examples/embedder's config (the MiniLM weights as an artifact), its RAM trace raised above the threshold at
   t0; phases from the agent's log, the record, the READY audit entry and the instance's timings; the first
   answer is a real ``/similarity`` through the agent's router, served by the rented box. Then a projection for
   a real VAST box and a 1 GB model: the field report's waits, the package and 1 GB of weights over the rented
   offer's ``inet_down``, the measured install, load and spotleash's own share.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.failover import FIELD_VAST, TARGET_OWN_S, TARGET_TOTAL_S
from bench.harness import Harness, log
from bench.packages import (
    EXAMPLE,
    WHEEL_CACHE,
    _bucket,
    _fresh_bucket,
    _publish,
    _set_launcher_env,
    after_install,
)
from bench.stats import summary
from spotleash.model import ENDED, InstanceRecord, State
from spotleash.polling import wait_until
from spotleash.topology import load_topology
from spotleash.wire.package import manifest_object, pointer_object

REPO = Path(__file__).resolve().parent.parent
EMBEDDER = REPO / "examples" / "embedder"
BIG_FILES = 4
BIG_FILE_MB = 256  # 4 × 256 MiB = 1 GiB of weights
TARGET_ONELINE_MB = 1.0
TARGET_ONELINE_S = 3.0
TARGET_INSTALL_S = 1.5
PROJECTED_MODEL_BYTES = 2**30
READY_TIMEOUT_S = 300.0
ANSWER_TIMEOUT_S = 60.0
PARAPHRASE = ("A man is playing a guitar.", "Someone plays an acoustic guitar.")
UNRELATED = ("A man is playing a guitar.", "The stock market fell sharply today.")


def _state(work: Path, name: str) -> Path:
    state = work / name
    state.mkdir(parents=True, exist_ok=True)
    if not (state / "wheels").exists():
        WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
        (state / "wheels").symlink_to(WHEEL_CACHE, target_is_directory=True)
    return state


# --------------------------------------------------------------------------- 1. republish, ≥ 1 GB of dependencies


def make_weights(root: Path, files: int = BIG_FILES, mb: int = BIG_FILE_MB) -> int:
    """``files`` files of ``mb`` MiB of random bytes (incompressible, as weights are); their total size."""
    root.mkdir(parents=True, exist_ok=True)
    chunk = 64 * 2**20
    for i in range(files):
        path = root / f"shard-{i:02d}.safetensors"
        if path.exists() and path.stat().st_size == mb * 2**20:
            continue
        with path.open("wb") as f:
            for _ in range(mb * 2**20 // chunk):
                f.write(os.urandom(chunk))
    return sum(p.stat().st_size for p in root.iterdir())


def big_app(work: Path, weights: Path) -> Path:
    """examples/thumbs with the generated weights as its ``weights`` artifact (outside the app tree)."""
    app = work / "big-app"
    shutil.rmtree(app, ignore_errors=True)
    shutil.copytree(EXAMPLE, app, ignore=shutil.ignore_patterns("__pycache__"))
    with (app / "spotleash.toml").open("a") as f:
        f.write(f'\n[[app.artifacts]]\nname = "weights"\npath = {json.dumps(str(weights))}\n')
    return app


def _drop_bucket_blobs(bucket: str) -> None:
    """The emulator keeps objects in memory: each run's GB goes once it is measured."""
    store = _bucket(bucket)
    for name in store.list_names(""):
        store.delete_if_present(name)


def republish_big(work: Path, runs: int) -> dict[str, Any]:
    weights = work / "big-weights"
    t = time.monotonic()
    weights_bytes = make_weights(weights)
    made_s = time.monotonic() - t
    app = big_app(work, weights)
    state = _state(work, "big-publish-state")
    first, oneline = [], []
    try:
        for i in range(runs):
            bucket = _fresh_bucket("big")
            try:
                first.append(_publish(app, state, bucket))
                with (app / "thumbnailer.py").open("a") as f:
                    f.write(f"# one more line {i}\n")
                oneline.append(_publish(app, state, bucket))
            finally:
                _drop_bucket_blobs(bucket)
    finally:
        shutil.rmtree(weights, ignore_errors=True)
    if any(r["blobs_uploaded"] != 1 for r in oneline):
        raise RuntimeError(f"a one-line change uploaded more than the app blob: {oneline}")
    out = {"weights_bytes": weights_bytes, "weights_made_s": made_s, "first": first, "oneline": oneline,
           "size_bytes": first[0]["size_bytes"], "wheels": first[0]["wheels"],
           "first_s": summary([r["wall_s"] for r in first]), "oneline_s": summary([r["wall_s"] for r in oneline]),
           "first_mb": summary([r["uploaded_bytes"] / 1e6 for r in first]),
           "oneline_mb": summary([r["uploaded_bytes"] / 1e6 for r in oneline])}
    log.info("bench republish 1 GB", first_s=out["first_s"]["median"], oneline_s=out["oneline_s"]["median"],
             oneline_mb=out["oneline_mb"]["median"])
    return out


# --------------------------------------------------------------------------- 2. install, uv vs pip


def _install_python() -> str:
    """The interpreter both ways use: the fakes' (this checkout's venv) if its pip can install into another
    venv (22.3+), else its base interpreter's, so pip is not charged an ensurepip the image would not need."""
    from spotleash.instance_agent import bootstrap

    for python in (sys.executable, getattr(sys, "_base_executable", sys.executable)):
        if bootstrap.has_python_option(bootstrap.pip_version_of(python)):
            return python
    return sys.executable


def install_ways(work: Path, sha256: str, runs: int) -> dict[str, Any]:
    """``runs`` × (uv, pip) of ``bootstrap.prepare_layered`` on the package ``sha256``'s verified blobs, each in a
    fresh work dir; every step of the install timed."""
    from spotleash.instance_agent import bootstrap

    store = _bucket()
    manifest_path = work / "install-manifest.json"
    manifest_path.write_bytes(store.read_bytes(manifest_object(sha256))[0])
    blobs = bootstrap.parse_layered(manifest_path.read_bytes())["blobs"]
    origin = bootstrap.origin_for(f"gs://{store.bucket_name}/{manifest_object(sha256)}", "", {}, env=os.environ,
                                  token=None)
    files = bootstrap.fetch_blobs(origin, blobs, work / "install-blobs")
    python = _install_python()

    class Timed(bootstrap.Installer):
        def __init__(self, pip: bool) -> None:
            super().__init__(python)
            self.pip = pip
            self.path = ""
            self.install_s = 0.0  # the whole install; its steps are the installer's own ``steps``

        def install(self, root: Path, manifest: Any, uv: Path | None = None) -> None:
            uv = None if self.pip else uv
            self.path = self.plan(root, manifest, uv).path
            t = time.monotonic()
            super().install(root, manifest, uv)
            self.install_s = time.monotonic() - t

    out: dict[str, Any] = {"python": python, "blobs": len(blobs), "runs": []}
    for i in range(runs):
        for way in ("uv", "pip"):
            where = work / f"install-{way}-{i}"
            inst = Timed(pip=way == "pip")
            t = time.monotonic()
            bootstrap.prepare_layered(manifest_path, sha256, where, files, inst)
            total = time.monotonic() - t
            out["runs"].append({"way": way, "total_s": total, "assemble_s": total - inst.install_s,
                                "steps": {k.removesuffix("_s"): v for k, v in inst.steps.items()}, "path": inst.path})
            shutil.rmtree(where, ignore_errors=True)
    for way in ("uv", "pip"):
        rs = [r for r in out["runs"] if r["way"] == way]
        out[way] = {"total_s": summary([r["total_s"] for r in rs]), "assemble_s": summary([r["assemble_s"] for r in rs]),
                    "steps": {k: summary([r["steps"][k] for r in rs]) for k in rs[0]["steps"]}, "path": rs[0]["path"]}
    shutil.rmtree(work / "install-blobs", ignore_errors=True)
    log.info("bench install", uv_s=out["uv"]["total_s"]["median"], pip_s=out["pip"]["total_s"]["median"])
    return out


# --------------------------------------------------------------------------- 3. memory alarm → first model answer


def embedder_toml(local_port: int, route_port: int, *, gpu: bool) -> str:
    """examples/embedder's config, its app tree and weights absolute, the local copy the user's (none runs: the
    laptop has no memory for the model), the router on a free port."""
    text = (EMBEDDER / "spotleash.toml").read_text()
    for old, new in (('dir = "../thumbs"', f"dir = {json.dumps(str(EXAMPLE))}"),
                     ('"http://127.0.0.1:8103"', f'"http://127.0.0.1:{local_port}"\nlocal_copy = "user"'),
                     ("route_port = 8203", f"route_port = {route_port}" + ("\ngpu = true" if gpu else ""))):
        if text.count(old) != 1:
            raise RuntimeError(f"{old!r} not once in {EMBEDDER / 'spotleash.toml'}")
        text = text.replace(old, new)
    return text


def _logged_at(log_path: Path, message: str) -> datetime | None:
    for raw in log_path.read_text(errors="replace").splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if message in str(line.get("message", "")) and line.get("time"):
            return datetime.fromisoformat(line["time"])
    return None


def _similarity(url: str, pair: tuple[str, str]) -> tuple[int, str, float | None]:
    try:
        r = httpx.get(url, params={"a": pair[0], "b": pair[1]}, timeout=30)
    except httpx.HTTPError:
        return 0, "", None
    score = float(r.json()["score"]) if r.status_code == 200 else None
    return r.status_code, r.headers.get("X-Served-By", ""), score


def _offer_inet_down(provider_id: str) -> float | None:
    """The rented box's offer's ``inet_down`` (Mbit/s), as the VAST API reports it."""
    try:
        r = httpx.get(f"{os.environ['SPOTLEASH_VAST_URL']}/api/v0/instances/{provider_id}/",
                      headers={"Authorization": f"Bearer {os.environ.get('SPOTLEASH_VAST_API_KEY', '')}"}, timeout=10)
        inst = r.json().get("instances") or {}
        return float(inst["inet_down"]) if inst.get("inet_down") is not None else None
    except (httpx.HTTPError, ValueError, KeyError):
        return None


def one_alarm(h: Harness, work: Path, i: int, *, gpu: bool) -> dict[str, Any]:
    from local_emulator.procs import free_port

    lease = f"lease-bench-model-{'vast' if gpu else 'gce'}-{i}"
    run_dir = work / f"alarm-{i}-{'vast' if gpu else 'gce'}"
    run_dir.mkdir(parents=True, exist_ok=True)
    route_port, admin_port = free_port(), free_port()
    config = run_dir / "spotleash.toml"
    config.write_text(embedder_toml(free_port(), route_port, gpu=gpu))
    trace = run_dir / "ram.csv"
    trace.write_text("t_seconds,percent\n0,40\n")
    env = {**os.environ, "SPOTLEASH_CONFIG_FILE": str(config), "SPOTLEASH_STATE_DIR": str(run_dir / "state"),
           "SPOTLEASH_ROUTER_ADMIN_PORT": str(admin_port), "PYTHONUNBUFFERED": "1",
           "SPOTLEASH_LOG_LEVEL": "INFO"}  # its "router started" and "demand published" lines time the phases
    for var in ("SPOTLEASH_COMPONENTS", "SPOTLEASH_COMPONENT_RAM_GB", "SPOTLEASH_GPU_COMPONENTS"):
        env.pop(var, None)  # derived from [app]
    agent_log = run_dir / "agent.log"
    with agent_log.open("wb") as out:
        agent = subprocess.Popen([sys.executable, "-m", "spotleash.agent", "--lease-id", lease, "--trace", str(trace),
                                  "--trace-limit-gb", "16"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    url = f"http://127.0.0.1:{route_port}/similarity"
    rec: InstanceRecord | None = None
    try:
        wait_until(lambda: _logged_at(agent_log, "router started"), timeout_s=60, interval_s=0.2,
                   what="the agent's router")
        time.sleep(1.5)  # a sample or two at 40 %: the alarm is a change the agent sees, not its first reading
        tmp = run_dir / "ram.csv.new"
        tmp.write_text("t_seconds,percent\n0,95\n")  # the alarm: 95 % of 16 GB, the model's 1 GB must move
        t0 = datetime.now(UTC)
        os.replace(tmp, trace)

        def ready() -> InstanceRecord | None:
            r = h.latest_of_lease(lease)
            if r is not None and r.state in ENDED:
                raise RuntimeError(f"{r.instance_id} ended {r.state}: {r.reason}")
            return r if r is not None and r.state == State.READY else None

        rec = wait_until(ready, timeout_s=READY_TIMEOUT_S, interval_s=0.1, what=f"{lease} READY")
        answered: tuple[int, str, float | None] = (0, "", None)

        def remote_answer() -> bool:
            nonlocal answered
            answered = _similarity(url, PARAPHRASE)
            return answered[0] == 200 and answered[1] not in ("", "local")

        wait_until(remote_answer, timeout_s=ANSWER_TIMEOUT_S, interval_s=0.05, what="a model answer from the box")
        answer_at = datetime.now(UTC)
        unrelated = _similarity(url, UNRELATED)
        assert rec is not None
        entry = next(e for e in h.store.audit_entries(rec.instance_id) if e["action"] == "ready")
        demand_at = _logged_at(agent_log, "demand published")
        inet_down = _offer_inet_down(rec.provider_id or "") if gpu else None
    finally:
        agent.send_signal(signal.SIGTERM)  # the agent releases its lease: the box is deleted
        try:
            agent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait(timeout=10)
        if rec is not None:
            iid = rec.instance_id
            wait_until(lambda: (r := h.store.get(iid)) is not None and r.state in ENDED, timeout_s=90,
                       interval_s=0.25, what=f"{iid} released")
    if demand_at is None or rec.running_at is None:
        raise RuntimeError(f"no 'demand published' in {agent_log} or no running_at on {rec.instance_id}")
    started = datetime.fromisoformat(entry["instance_started_at"])
    tm = {k: float(v) for k, v in (entry.get("timings") or {}).items()}
    ready_at: datetime = entry["at"]

    def s(a: datetime, b: datetime) -> float:
        return (b - a).total_seconds()

    restore, load, after = after_install(tm)  # load: the embedder starts, loads the weights → healthy
    phases = {
        # trace raised → the intent: the agent's detection, its demand published, Pub/Sub's push, on_demand (the
        # agent logs "demand published" once the publish call returns, which can be after the intent is written)
        "alarm_to_intent_s": s(t0, rec.created_at),
        "launch_s": s(rec.created_at, rec.running_at),  # launch work + the provider's create call
        "boot_s": s(rec.running_at, started),  # the fake boots the box and starts the bootstrap
        "fetch_s": tm["fetch_s"],
        "install_s": tm["install_s"],
        "load_s": load,
        "restore_s": restore,
        "handoff_s": max(s(started, ready_at) - tm["fetch_s"] - tm["install_s"] - after, 0.0),
        "route_s": s(ready_at, answer_at),  # READY → the router's first answer from the box
        "total_s": s(t0, answer_at),
    }
    log.info("bench alarm → answer", gpu=gpu, **{k: round(v, 2) for k, v in phases.items()})
    return {"instance_id": rec.instance_id, "phases": phases, "demand_logged_s": s(t0, demand_at), "served_by": answered[1],
            "paraphrase": answered[2], "unrelated": unrelated[2], "inet_down_mbps": inet_down}


def alarm_to_answer(h: Harness, state_dir: Path, work: Path, runs: int) -> dict[str, Any]:
    """Publish examples/embedder (weights as an artifact), point the channel at it, then ``runs`` alarms → first
    answers on a VAST fake box (a GPU component)."""
    from spotleash.demo.model import prepare_artifact

    weights = prepare_artifact(EMBEDDER, WHEEL_CACHE)
    pub = _publish(EMBEDDER, _state(work, "embedder-publish-state"))
    store = _bucket()
    ptr = pointer_object(h.settings.package_channel)
    store.write_bytes(ptr, f"{pub['sha256']}\n".encode(), if_generation_match=store.generation(ptr))
    _set_launcher_env(state_dir, {"SPOTLEASH_PACKAGE_BUCKET": load_topology().package_bucket})
    out: dict[str, Any] = {"sha256": pub["sha256"], "package_bytes": pub["size_bytes"],
                           "weights_bytes": sum(p.stat().st_size for p in weights.rglob("*") if p.is_file()),
                           "runs": []}
    try:
        for i in range(runs):
            out["runs"].append(one_alarm(h, work, i, gpu=True))
    finally:
        _set_launcher_env(state_dir, {"SPOTLEASH_PACKAGE_BUCKET": ""})
    ph = [r["phases"] for r in out["runs"]]
    out["phases"] = {k: summary([p[k] for p in ph]) for k in ph[0]}
    out["read_mb_s"] = _read_rate(work)
    out["projection"] = project(out)
    return out


def _read_rate(work: Path, mb: int = 256) -> float:
    """MB/s of reading a fresh file (the weights' load is a read from the box's disk; page cache: warm)."""
    path = work / "read-rate.bin"
    with path.open("wb") as f:
        f.write(os.urandom(mb * 2**20))
    t = time.monotonic()
    with path.open("rb") as f:
        while f.read(16 * 2**20):
            pass
    rate = mb * 2**20 / 1e6 / (time.monotonic() - t)
    path.unlink()
    return rate


def project(res: dict[str, Any]) -> dict[str, Any]:
    """Memory alarm → first answer on a real VAST box, a 1 GB model: the field report's provider waits; the
    package and 1 GB of weights over the rented offer's ``inet_down``; the measured install; the measured load
    plus the rest of the 1 GB read from disk; spotleash's own share measured here."""
    ph = {k: v["median"] for k, v in res["phases"].items()}
    downs = [r["inet_down_mbps"] for r in res["runs"] if r.get("inet_down_mbps")]
    inet_down = sorted(downs)[len(downs) // 2] if downs else None
    provider = FIELD_VAST["create_s"] + FIELD_VAST["to_running_s"] + FIELD_VAST["to_ssh_s"]
    model_bytes = PROJECTED_MODEL_BYTES
    over_link = res["package_bytes"] - res["weights_bytes"] + model_bytes
    download = over_link * 8 / (inet_down * 1e6) if inet_down else None
    load = ph["load_s"] + max(model_bytes - res["weights_bytes"], 0) / 1e6 / res["read_mb_s"]
    own = ph["alarm_to_intent_s"] + ph["launch_s"] + ph["handoff_s"] + ph["route_s"]
    total = None if download is None else provider + download + ph["install_s"] + load + own
    # the link the target needs: what is left of 110 s for the download
    left = TARGET_TOTAL_S - (provider + ph["install_s"] + load + own)
    needed = over_link * 8 / 1e6 / left if left > 0 else None
    return {"provider_s": provider, "inet_down_mbps": inet_down, "over_link_bytes": over_link,
            "inet_down_needed_mbps": needed,
            "download_s": download, "install_s": ph["install_s"], "load_s": load, "own_s": own, "total_s": total,
            "total_met": total is not None and total <= TARGET_TOTAL_S, "own_met": own <= TARGET_OWN_S}


# --------------------------------------------------------------------------- the section


def model_section(h: Harness, state_dir: Path, work: Path, publish_runs: int, install_runs: int,
                  alarm_runs: int, res: dict[str, Any]) -> dict[str, Any]:
    """Fills ``res`` part by part: a part that fails leaves the figures of those before it."""
    if publish_runs:
        res["republish"] = republish_big(work, publish_runs)
        shutil.rmtree(work / "big-app", ignore_errors=True)
    if install_runs:
        example = _publish(EXAMPLE, _state(work, "example-publish-state"))
        res["install"] = install_ways(work, example["sha256"], install_runs)
    if alarm_runs:
        res["alarm"] = alarm_to_answer(h, state_dir, work, alarm_runs)
    return res


# --------------------------------------------------------------------------- rows


def _row(key: str, metric: str, s: dict[str, Any], unit: str = "s", baseline: float | None = None,
         baseline_name: str | None = None, target: str | None = None, met: bool | None = None) -> dict[str, Any]:
    ratio = s.get("median") / baseline if baseline and s.get("median") is not None else None
    return {"key": key, "metric": metric, "unit": unit, "n": s.get("n", 0), "median": s.get("median"),
            "p99": s.get("p99") if s.get("n", 0) > 1 else None, "max": s.get("max"), "baseline": baseline,
            "baseline_name": baseline_name, "ratio": ratio, "target": target, "within_target": met}


def _one(value: float) -> dict[str, Any]:
    return {"n": 1, "median": value, "max": value}


def model_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    rp = res.get("republish")
    if rp:
        gb = rp["weights_bytes"] / 2**30
        label = f"examples/thumbs + {gb:.1f} GiB of weights as an artifact ({rp['size_bytes'] / 1e6:,.0f} MB of blobs)"
        rows.append(_row("model_publish_big_first", f"publish {label}, first (empty bucket)", rp["first_s"]))
        rows.append(_row("model_publish_big_oneline", f"publish {label} after a one-line change",
                         rp["oneline_s"], baseline=rp["first_s"]["median"], baseline_name="first publish",
                         target=f"≤ {TARGET_ONELINE_S:g} s", met=rp["oneline_s"]["max"] <= TARGET_ONELINE_S))
        rows.append(_row("model_publish_big_oneline_mb", f"bytes uploaded by that one-line change ({label})",
                         rp["oneline_mb"], unit="MB", baseline=rp["first_mb"]["median"], baseline_name="first publish",
                         target=f"≤ {TARGET_ONELINE_MB:g} MB", met=rp["oneline_mb"]["max"] <= TARGET_ONELINE_MB))
    inst = res.get("install")
    if inst:
        pip_s = inst["pip"]["total_s"]["median"]
        for way in ("uv", "pip"):
            w = inst[way]
            steps = ", ".join(f"{k} {v['median']:.2f} s" for k, v in w["steps"].items() if k not in ("install", "assemble"))
            rows.append(_row(f"model_install_{way}", f"install examples/thumbs with {way} on the instance's code "
                             f"(assemble {w['assemble_s']['median']:.2f} s; {steps})", w["total_s"],
                             baseline=pip_s if way == "uv" else None, baseline_name="pip" if way == "uv" else None,
                             target=f"≤ {TARGET_INSTALL_S:g} s" if way == "uv" else None,
                             met=w["total_s"]["median"] <= TARGET_INSTALL_S if way == "uv" else None))
    al = res.get("alarm")
    if al:
        ph = al["phases"]
        logged = summary([r["demand_logged_s"] for r in al["runs"] if r.get("demand_logged_s") is not None])
        names = (("alarm_to_intent_s", "alarm → intent (detection, demand published"
                  + (f" at {logged['median']:.2f} s" if logged.get("n") else "") + ", Pub/Sub push, on_demand)"),
                 ("launch_s", "launch (intent → the VAST fake's box created)"),
                 ("boot_s", "the fake's boot → bootstrap started"),
                 ("fetch_s", f"fetch + verify ({al['package_bytes'] / 1e6:.0f} MB of blobs, weights included)"),
                 ("install_s", "install (uv, offline)"),
                 ("load_s", "load (the embedder starts, loads MiniLM → healthy)"),
                 ("handoff_s", "hand-off (the agent's start → READY)"),
                 ("route_s", "READY → the router's first answer from the box"))
        rows.append(_row("model_alarm_total", "VAST fake: memory alarm → first model answer (examples/embedder, "
                         "a real /similarity through the agent's router)", ph["total_s"]))
        for key, name in names:
            rows.append(_row(f"model_alarm_{key.removesuffix('_s')}", f"VAST fake: {name}", ph[key]))
        pj = al["projection"]
        if pj["total_s"] is not None:
            rows.append(_row("model_alarm_projected", f"projected real VAST, 1 GB model: memory alarm → first answer "
                             f"(field waits {pj['provider_s']:.2f} s + {pj['over_link_bytes'] / 1e9:.2f} GB at the "
                             f"offer's {pj['inet_down_mbps']:.0f} Mbit/s {pj['download_s']:.2f} s + install "
                             f"{pj['install_s']:.2f} s + load {pj['load_s']:.2f} s + spotleash's own {pj['own_s']:.2f} s)",
                             _one(pj["total_s"]), target=f"≤ {TARGET_TOTAL_S:g} s", met=pj["total_met"]))
        rows.append(_row("model_alarm_projected_own", "projected: spotleash's own share (alarm → intent + launch + "
                         "hand-off + first answer routed)", _one(pj["own_s"]), target=f"≤ {TARGET_OWN_S:g} s",
                         met=pj["own_met"]))
    return rows


def model_notes(res: dict[str, Any]) -> list[str]:
    out = []
    rp = res.get("republish")
    if rp:
        out.append(f"model/republish: `spotleash publish --json` of examples/thumbs with a `weights` artifact of "
                   f"{BIG_FILES} generated files of {BIG_FILE_MB} MiB (random bytes, outside the app tree) against the "
                   "stack's Cloud Storage emulator; each run to an empty bucket (the first publish: every blob, the "
                   "baseline), then a line appended to thumbnailer.py: the app blob and the manifest go up, "
                   f"{rp['oneline'][0]['uploaded_bytes']:,} bytes in {rp['oneline'][0]['blobs_uploaded']} blob. "
                   "The first publish of the first run hashes the 1 GiB; later ones read the hash cache "
                   "(path, size, mtime).")
    inst = res.get("install")
    if inst:
        out.append(f"model/install: `bootstrap.prepare_layered` in-process on the example's {inst['blobs']} verified "
                   f"blobs, a fresh work dir per run (uv extracted from its wheel each time, as on a new instance), "
                   f"uv and pip alternating; interpreter {inst['python']}. uv: {inst['uv']['path']}. pip: "
                   f"{inst['pip']['path']}.")
    al = res.get("alarm")
    if al:
        pj = al["projection"]
        scores = ", ".join(f"{r['paraphrase']:.2f} vs {r['unrelated']:.2f}" for r in al["runs"]
                           if r.get("paraphrase") is not None and r.get("unrelated") is not None)
        out.append("model/alarm: a real `python -m spotleash.agent` with examples/embedder's config (no local copy "
                   "runs: the laptop has no room for the model), its RAM trace raised from 40 % to 95 % of 16 GB at "
                   "t0; the component asks for a GPU, so a VAST fake box is rented; phases from the agent's log "
                   "(demand published), the record, the READY audit entry and the box's timings; the answer is a "
                   f"real MiniLM /similarity through the agent's router, served by the box (paraphrase vs unrelated "
                   f"scores: {scores}). Projection: the field report's VAST waits (create 1.59 s, running 72.77 s, "
                   f"SSH 12.36 s), the package less MiniLM plus 1 GiB of weights over the rented offer's inet_down "
                   f"({pj['inet_down_mbps']} Mbit/s, the fake's offer: real offers range ~100–5000; the 110 s target needs "
                   f"at least {pj.get('inet_down_needed_mbps') or float('nan'):.0f} Mbit/s), the measured "
                   f"install, the measured MiniLM load plus the rest of 1 GiB read at {al['read_mb_s']:.0f} MB/s "
                   "(page cache warm), spotleash's own share measured here (alarm → intent, the launch "
                   "call to the VAST fake — near-instant there, so nearly all of it spotleash's work —, the hand-off "
                   "and the first routed answer).")
    return out
