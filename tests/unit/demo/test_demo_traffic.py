"""The demo's app side without the stack: its copy of the example's settings (local copies run by the agent),
the example's components started as the agent starts them (``agent.local_copies``) and waited for as the demo
waits, the load generator through a real router (local copies only), and the route log it prints from the
agent's log lines."""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

from spotleash.agent.local_copies import LOCAL_MARKER_ENV, LocalCopies, local_plan, marker_of
from spotleash.demo.moves import Launch, MovesResult, requests_line
from spotleash.demo.traffic import (
    LoadCounts,
    LoadGenerator,
    RouteLog,
    demo_config,
    example_app,
    png_size,
    sample_image,
    wait_local_copies,
)
from spotleash.errors import ConfigError
from spotleash.packaging.appspec import LoadedApp
from spotleash.router import ComponentRoute, RouterConfig, RouterService
from spotleash.supervisor.marked import find_marked

SHIFT = 10200  # clear of a demo (ports + 200) and of the example app's own test (+ 10000)


@pytest.fixture()
def app(tmp_path: Path) -> LoadedApp:
    return demo_config(example_app(), tmp_path, shift=SHIFT)


def test_the_demo_settings_move_only_the_local_copies(app: LoadedApp) -> None:
    assert app.root == example_app() and app.config_file.parent != example_app()
    for c in app.spec.components:
        assert c.local_port == c.port + SHIFT and c.local_url == f"http://127.0.0.1:{c.port + SHIFT}"
        assert c.route_port in (8201, 8202)  # the app's stable ports do not move
        assert c.local_copy == "agent"  # the agent runs them, so its hand-off can stop them


def test_settings_without_a_loopback_local_url_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "app"
    src.mkdir()
    text = (example_app() / "spotleash.toml").read_text().replace('local_url = "http://127.0.0.1:8102"\n', "")
    (src / "spotleash.toml").write_text(text)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConfigError, match="one loopback local_url per component"):
        demo_config(src, out)


def test_png_size_reads_the_header() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48)).save(buf, format="PNG")
    assert png_size(buf.getvalue()) == (64, 48)
    assert png_size(b"GIF89a" + bytes(40)) is None


@pytest.fixture()
def copies(app: LoadedApp, tmp_path: Path) -> Iterator[dict[str, str]]:
    names = [c.name for c in app.spec.components]
    local = LocalCopies(local_plan(app.spec, names), app_root=app.root, lease_id="demo-test", state_dir=tmp_path)
    assert local.names == names  # every component: the demo's settings leave none to the user
    try:
        local.start_all()
        yield wait_local_copies(app, str(local.log_dir), timeout_s=30)
    finally:
        local.close()
    assert find_marked(LOCAL_MARKER_ENV, marker_of("demo-test", tmp_path)) == []


def test_the_load_goes_through_the_router_and_nothing_fails(app: LoadedApp, copies: dict[str, str]) -> None:
    routes = tuple(ComponentRoute(c.name, 0, copies[c.name], c.health_path) for c in app.spec.components)
    service = RouterService(RouterConfig(components=routes, credential="demo-test"))
    addresses = service.start()
    try:
        load = LoadGenerator({n: port for n, (_, port) in addresses.items()}, sample_image(copies["thumbnailer"]),
                             workers=2, pause_s=0.02)
        load.start()
        deadline = time.monotonic() + 30
        while load.snapshot().total < 40 and time.monotonic() < deadline:
            time.sleep(0.1)
        load.stop()
        counts = load.snapshot()
        totals = service.totals()
    finally:
        service.stop()
    assert counts.total >= 40, counts
    assert counts.failed == 0, counts.failures
    assert set(counts.by_kind) == {k for k, _ in LoadGenerator.MIX}, counts.by_kind  # the whole mix was sent
    assert totals == {"total": counts.total, "remote": 0, "retried": 0, "failed": 0}


def test_the_route_log_prints_each_change_and_keeps_the_router_totals(tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    lines = [
        {"logger": "spotleash.agent.runner", "message": "agent starting"},
        {"logger": "spotleash.router.proxy", "message": "route changed", "component": "vectors", "from_target": "local",
         "to_target": "remote:i-1", "reason": "remote copy of vectors ready and its probe passing"},
        {"logger": "spotleash.router.proxy", "message": "route changed", "component": "vectors",
         "from_target": "remote:i-1", "to_target": "local", "reason": "lease released"},
        {"logger": "spotleash.router.service", "message": "router stopped",
         "totals": {"total": 9, "remote": 4, "retried": 1, "failed": 0}},
    ]
    log.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    out = io.StringIO()
    route_log = RouteLog(Console(file=out, width=200), log, None, time.monotonic())
    route_log.start()
    route_log.stop()
    assert [c["to_target"] for c in route_log.changes] == ["remote:i-1", "local"]
    assert route_log.router_totals == {"total": 9, "remote": 4, "retried": 1, "failed": 0}
    printed = out.getvalue()
    assert re.search(r"route vectors → remote i-1 .*probe passing", printed)
    assert re.search(r"route vectors → local .*lease released", printed)


def test_the_last_line_has_exactly_the_agreed_form() -> None:
    load = LoadCounts(total=120, ok=119, failed=1)
    result = MovesResult(launches=list[Launch](), load=load, router={"total": 120, "remote": 50, "retried": 3, "failed": 1})
    assert requests_line(result) == "requests: 120 total, 50 remote, 3 retried, 1 failed"
    assert re.fullmatch(r"requests: \d+ total, \d+ remote, \d+ retried, \d+ failed", requests_line(result))
