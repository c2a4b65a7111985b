"""``spotleash logs COMPONENT [--remote] [--follow]``: a component's output, as ``sky logs`` / ``dstack logs`` show it.

Local (default): the local copy the agent runs, ``<state_dir>/local/<lease>/<component>.log``. ``--remote``: the
copy on this lease's instance, read through the running agent (its router's loopback admin port,
``/logs/<component>``): the agent fetches it from the instance's authenticated TLS front with the lease credential,
which never leaves the agent — so the agent must be running, and the component routed (a ``route_port``).
``--follow`` keeps printing what is written (a rotated file is read again from its start) until Ctrl-C.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import httpx

from spotleash.errors import ConfigError, ExitCode, SpotleashError
from spotleash.router.channel import INSTANCE_HEADER, LOG_END_HEADER, LOG_ROTATED_HEADER
from spotleash.supervisor.logfile import DEFAULT_TAIL_BYTES, Piece, Window, read_window

if TYPE_CHECKING:
    from spotleash.config import Settings
    from spotleash.packaging.appspec import LoadedApp

FOLLOW_EVERY_S = 0.5


class LogsError(SpotleashError):
    """No log to show: the component has no such copy, or the agent that reads remote logs does not answer."""


Reader = Callable[[int | None], Piece]  # offset (None: the tail) → the next piece


def check_component(app: LoadedApp | None, component: str) -> None:
    """ConfigError unless ``component`` is one of the app's (the message lists the known ones)."""
    if app is None:
        raise ConfigError("no spotleash.toml with an [app] table found (SPOTLEASH_CONFIG_FILE, or the working "
                          "directory and above): spotleash logs shows the components it declares")
    names = [c.name for c in app.spec.components]
    if component not in names:
        raise ConfigError(f"no component {component!r} in {app.config_file}; its components: {', '.join(names)}")


def local_reader(app: LoadedApp, state_dir: Path, lease_id: str, component: str, tail: int) -> Reader:
    """Reads the local copy's log; LogsError naming why there is none."""
    from spotleash.agent.local_copies import local_plan, log_dir_of

    path = log_dir_of(state_dir, lease_id) / f"{component}.log"
    if not path.is_file():
        plan = local_plan(app.spec, [component])
        if component in plan.by_user:
            raise LogsError(f"the local copy of {component} is run by you (local_copy = \"user\"), not by the agent: "
                            "its output is wherever you started it; --remote shows the remote copy's")
        if component in plan.none:
            raise LogsError(f"the agent runs no local copy of {component} ({plan.none[component]}); "
                            "--remote shows the remote copy's")
        raise LogsError(f"no log of the local copy of {component} yet ({path}): has `spotleash agent` run here "
                        f"for lease {lease_id!r} (--lease-id)?")

    def read(offset: int | None) -> Piece:
        return read_window(path, offset, tail)

    return read


def remote_reader(admin_port: int | None, component: str, tail: int, client: httpx.Client,
                  note: Callable[[str], None] = lambda _text: None) -> Reader:
    """Reads the remote copy's log through the running agent; LogsError naming why it cannot."""
    if admin_port is None:
        raise LogsError("the agent's router admin port is off (SPOTLEASH_ROUTER_ADMIN_PORT): remote logs are read "
                        "through it")
    url = f"http://127.0.0.1:{admin_port}/logs/{component}"

    def read(offset: int | None) -> Piece:
        params = {"offset": str(offset)} if offset is not None else {"tail": str(tail)}
        try:
            r = client.get(url, params=params, timeout=15.0)
        except httpx.HTTPError as e:
            raise LogsError(f"no agent answers on 127.0.0.1:{admin_port} ({type(e).__name__}): remote logs are read "
                            "through the running `spotleash agent`, which holds the lease's credential") from e
        if r.status_code != 200:
            try:
                why = str(r.json().get("error") or r.text)
            except ValueError:
                why = r.text
            raise LogsError(f"remote log of {component}: {why.strip()[:400]}")
        end = int(r.headers.get(LOG_END_HEADER, "0"))
        if offset is None:
            note(f"(the remote copy of {component} on instance {r.headers.get(INSTANCE_HEADER, '?')})")
        return Piece(r.content, Window(end - len(r.content), end, r.headers.get(LOG_ROTATED_HEADER) == "1"))

    return read


@dataclass
class Follow:
    every_s: float = FOLLOW_EVERY_S
    stop: threading.Event | None = None  # tests end the loop with it; the command runs until Ctrl-C


def show(read: Reader, out: IO[bytes], follow: Follow | None, note: Callable[[str], None]) -> None:
    """Print the tail, then (``follow``) what is written after it."""
    piece = read(None)
    out.write(piece.data)
    out.flush()
    if follow is None:
        return
    stop = follow.stop or threading.Event()
    end = piece.window.end
    while not stop.wait(follow.every_s):
        piece = read(end)
        if piece.window.rotated:
            note("(the log was rotated; reading the new file from its start)")
        out.write(piece.data)
        out.flush()
        end = piece.window.end


def logs_command(settings: Settings, component: str, *, remote: bool, follow: bool, lease_id: str | None,
                 tail: int = DEFAULT_TAIL_BYTES) -> int:
    from spotleash.agent import default_lease_id
    from spotleash.agent.routing import app_of_settings

    app = app_of_settings()
    check_component(app, component)
    assert app is not None
    note: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    with httpx.Client(trust_env=False) as client:
        if remote:
            read = remote_reader(settings.router_admin_port, component, tail, client, note)
        else:
            read = local_reader(app, settings.state_dir, lease_id or default_lease_id(), component, tail)
        show(read, sys.stdout.buffer, Follow() if follow else None, note)
    return ExitCode.OK
