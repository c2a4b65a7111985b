"""A stand-in for a remote instance, run as a child process so a test can SIGKILL it: the real
``Front`` before a small component. Prints ``{"port", "fingerprint"}`` once listening, then
``held`` each time a ``/hold`` request arrives (those never get an answer).

    python remote_instance.py <credential sha256>
"""

from __future__ import annotations

import asyncio
import json
import sys

from aiohttp import web

from spotleash.instance_agent.front import Front, FrontConfig


async def main(credential_sha256: str) -> None:
    async def health(_r: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def who(_r: web.Request) -> web.Response:
        return web.Response(text="remote")

    async def hold(r: web.Request) -> web.Response:
        await r.read()
        print("held", flush=True)
        await asyncio.Event().wait()
        return web.Response(text="never")

    app = web.Application()
    app.router.add_get("/healthz", health)
    app.router.add_get("/who", who)
    app.router.add_route("*", "/hold", hold)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    front = Front(FrontConfig(components={"thumbs": port}, credential_sha256=credential_sha256,
                              listen_host="127.0.0.1", listen_port=0))
    _, front_port = await front.start()
    print(json.dumps({"port": front_port, "fingerprint": front.fingerprint}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
