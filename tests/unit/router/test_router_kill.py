"""A remote instance SIGKILLed while requests are in flight on it: nothing idempotent is lost."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from tests.unit.router.router_harness import COMPONENT, run, until, world

from spotleash.router.channel import credential_hash

CHILD = Path(__file__).with_name("remote_instance.py")


def test_sigkill_of_the_remote_instance_loses_no_idempotent_request() -> None:
    async def main() -> None:
        async with world() as w:
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
            child = await asyncio.create_subprocess_exec(
                sys.executable, str(CHILD), credential_hash(w.credential), env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
            try:
                assert child.stdout is not None
                hello = json.loads(await asyncio.wait_for(child.stdout.readline(), 10))
                record = {"instance_id": "sl-k", "state": "READY", "tls_fingerprint": hello["fingerprint"],
                          "component_states": {COMPONENT: {"state": "healthy",
                                                           "endpoint": f"127.0.0.1:{hello['port']}"}}}
                w.router.apply_records([record])
                await until(lambda: w.router.table.current(COMPONENT).key == "remote:sl-k", "remote target")
                assert await w.get_text("/who") == (200, "remote")
                w.local.release.set()
                gets = [asyncio.ensure_future(w.get_text("/hold")) for _ in range(5)]
                post = asyncio.ensure_future(w.get_text("/hold", method="POST", data=b"order"))
                for _ in range(6):
                    assert (await asyncio.wait_for(child.stdout.readline(), 5)).strip() == b"held"
                child.send_signal(signal.SIGKILL)
                assert [await g for g in gets] == [(200, "local after hold")] * 5
                status, text = await post
                assert status == 502 and "not idempotent" in text
                await until(lambda: w.router.table.current(COMPONENT).target == "local", "back to local")
                assert await w.get_text("/who") == (200, "local")
                assert w.router.metrics.totals()["retried"] == 5
            finally:
                if child.returncode is None:
                    child.kill()
                await child.wait()

    run(main())
