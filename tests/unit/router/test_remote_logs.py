"""``spotleash logs --remote``'s path with real sockets: the agent's router admin ``/logs/<component>`` → the
instance's TLS front (pinned, the lease credential, ``X-Spotleash-Log``) → the component's log file."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import httpx
import pytest
from tests.unit.router.router_harness import COMPONENT, World, run, world

from spotleash.cli.logs import LogsError, remote_reader
from spotleash.router.channel import (
    CREDENTIAL_HEADER,
    INSTANCE_HEADER,
    LOG_END_HEADER,
    LOG_HEADER,
    LOG_ROTATED_HEADER,
)


def admin(w: World) -> str:
    assert w.router.admin_address is not None
    return "http://{}:{}".format(*w.router.admin_address)


def test_the_router_reads_the_remote_log_through_the_front_tail_offset_and_rotation(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log_file = tmp_path / f"{COMPONENT}.log"
    log_file.write_bytes(b"line 1\nline 2\n")
    credentials: list[str] = []

    async def main() -> None:
        async with world(front_logs={COMPONENT: log_file}) as w:
            credentials.append(w.credential)
            async with w.client.get(admin(w) + f"/logs/{COMPONENT}") as r:
                assert r.status == 404 and "no remote copy of thumbs" in await r.text()
            await w.go_remote()
            async with w.client.get(admin(w) + f"/logs/{COMPONENT}", params={"tail": "7"}) as r:
                assert r.status == 200 and await r.read() == b"line 2\n"
                assert r.headers[LOG_END_HEADER] == "14" and r.headers[INSTANCE_HEADER] == "sl-1"
            with log_file.open("ab") as f:
                f.write(b"line 3\n")
            async with w.client.get(admin(w) + f"/logs/{COMPONENT}", params={"offset": "14"}) as r:
                assert await r.read() == b"line 3\n" and r.headers[LOG_END_HEADER] == "21"
                assert r.headers[LOG_ROTATED_HEADER] == "0"
            log_file.write_bytes(b"new\n")  # rotated: shorter than the offset a follower holds
            async with w.client.get(admin(w) + f"/logs/{COMPONENT}", params={"offset": "21"}) as r:
                assert await r.read() == b"new\n" and r.headers[LOG_ROTATED_HEADER] == "1"
            async with w.client.get(admin(w) + "/logs/nope") as r:
                assert r.status == 404 and "routes no component 'nope'" in await r.text()
            assert w.remote.hits == [], "a log request never reaches the component"

    with caplog.at_level(logging.DEBUG):
        run(main())
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "log read" in logged, "the front logs the read (who, which bytes)"
    assert credentials[0] not in logged and "line 1" not in logged, "neither the credential nor the log text is logged"


def test_the_front_serves_a_log_only_with_the_credential(tmp_path: Path) -> None:
    log_file = tmp_path / f"{COMPONENT}.log"
    log_file.write_bytes(b"secret output\n")

    async def main() -> None:
        async with world(front_logs={COMPONENT: log_file}) as w:
            assert w.front.address is not None
            url = f"https://127.0.0.1:{w.front.address[1]}/"
            pin = aiohttp.Fingerprint(bytes.fromhex(w.front.fingerprint))
            for headers, status in (({LOG_HEADER: COMPONENT}, 401),
                                    ({LOG_HEADER: COMPONENT, CREDENTIAL_HEADER: w.credential + "x"}, 401),
                                    ({LOG_HEADER: "nope", CREDENTIAL_HEADER: w.credential}, 404),
                                    ({LOG_HEADER: COMPONENT, CREDENTIAL_HEADER: w.credential}, 200)):
                async with w.client.get(url, ssl=pin, headers=headers) as r:
                    body = await r.read()
                    assert r.status == status, (headers.keys(), r.status)
                    assert (b"secret output" in body) == (status == 200)

    run(main())


def test_the_logs_command_reads_through_the_agent_and_names_what_is_missing(tmp_path: Path) -> None:
    log_file = tmp_path / f"{COMPONENT}.log"
    log_file.write_bytes(b"hello from the instance\n")
    notes: list[str] = []

    async def main() -> None:
        async with world(front_logs={COMPONENT: log_file}) as w:
            assert w.router.admin_address is not None
            port = w.router.admin_address[1]
            with httpx.Client(trust_env=False) as client:
                read = remote_reader(port, COMPONENT, 1000, client, notes.append)
                with pytest.raises(LogsError, match="no remote copy of thumbs"):
                    await asyncio.to_thread(read, None)
                await w.go_remote()
                piece = await asyncio.to_thread(read, None)
                assert piece.data == b"hello from the instance\n" and piece.window.end == len(piece.data)
                with log_file.open("ab") as f:
                    f.write(b"more\n")
                assert (await asyncio.to_thread(read, piece.window.end)).data == b"more\n"
                with pytest.raises(LogsError, match="routes no component 'other'"):
                    await asyncio.to_thread(remote_reader(port, "other", 10, client), None)
        assert notes == ["(the remote copy of thumbs on instance sl-1)"]

    run(main())


def test_no_agent_listening_is_a_clear_error() -> None:
    with httpx.Client(trust_env=False) as client, pytest.raises(LogsError, match="no agent answers on 127.0.0.1:1"):
        remote_reader(1, COMPONENT, 10, client)(None)
    with httpx.Client(trust_env=False) as client, pytest.raises(LogsError, match="admin port is off"):
        remote_reader(None, COMPONENT, 10, client)
