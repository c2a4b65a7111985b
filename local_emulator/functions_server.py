"""Serve one function of functions/main.py as functions-framework's CLI does, with gunicorn's shutdown
bounded for a local stack.

``python -m local_emulator.functions_server --target on_demand --source functions/main.py
--signature-type cloudevent --host 127.0.0.1 --port PORT``

functions-framework runs gunicorn (one worker, gthread) and builds its configuration in code, so
neither GUNICORN_CMD_ARGS nor a gunicorn.conf.py reaches it. On SIGTERM gunicorn stops gracefully:
the worker keeps kept-alive connections (the Pub/Sub emulator's pushes hold some open all the time)
until their keepalive runs out (2 s by default) and waits up to ``graceful_timeout`` (30 s) for
requests in flight; the master first stops a control socket it opens in ``~/.gunicorn`` (shared by
every function of the stack). Here the same app and server get ``keepalive=1``, ``graceful_timeout=3``
and no control socket.

Then the processes exit without the interpreter's teardown. Measured on the stack: after SIGTERM all
twelve processes (a master and a worker per function) sat for seconds in their final garbage
collection of the Google client libraries' heap, all at once on two cores, and were SIGKILLed. Once
gunicorn has stopped (requests answered, sockets closed) there is nothing left to finalize, so both
master and worker leave with ``os._exit`` and gunicorn's own exit code, after flushing their output.
SIGTERM stays the signal: gunicorn's quick shutdown (SIGINT/SIGQUIT) exits the worker from inside a
signal handler and did not end faster.

Faults: every function carries the fakes' fault control API (``local_emulator.faults``) at
``/_control/faults`` (``FaultHook``), so a chaos test can catch a function at a chosen moment.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn

from functions_framework import create_app
from functions_framework._http import create_server

from local_emulator.function_faults import FaultHook

# gunicorn settings for a stack that is torn down whole: nothing is left to drain for.
SHUTDOWN_OPTIONS = {"keepalive": 1, "graceful_timeout": 3, "control_socket_disable": True}


def main(argv: list[str] | None = None) -> NoReturn:
    p = argparse.ArgumentParser(prog="python -m local_emulator.functions_server", description=__doc__)
    p.add_argument("--target", required=True)
    p.add_argument("--source", required=True)
    p.add_argument("--signature-type", default="http", choices=["http", "event", "cloudevent", "typed"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    args = p.parse_args(argv)
    app = create_app(args.target, args.source, args.signature_type)
    app.wsgi_app = FaultHook(app.wsgi_app)  # type: ignore[method-assign]
    try:
        create_server(app, False, **SHUTDOWN_OPTIONS).run(args.host, args.port)
        code = 0
    except SystemExit as e:  # gunicorn ends master and worker (a fork of this same call) with sys.exit
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
