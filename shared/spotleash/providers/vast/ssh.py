"""SSH to a VAST box with paramiko: our key, host key pinning, running a command.

Imported only where SSH is used (creating an instance registers our key; the heartbeat's first
contact learns a host key; the smoke run), never at import time of the control plane. Host keys
are pinned per instance: learned at first contact and handed back to the caller to store; later
connections use ``RejectPolicy``.
"""

from __future__ import annotations

import base64
import io
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paramiko

SSH_USER = "root"
# What a box that is not (yet) reachable raises. BadHostKeyException is an SSHException too, but it
# says the box is not the one we pinned: callers let it through (catch it first), never retry it.
UNREACHABLE = (OSError, paramiko.SSHException, EOFError)
BadHostKey = paramiko.BadHostKeyException


def host_key_line(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.get_base64()}"


def load_or_create_key(path: Path) -> paramiko.PKey:
    """Our SSH key at ``path``, created once with mode 0600."""
    if path.exists():
        return paramiko.ECDSAKey.from_private_key_file(str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    key = paramiko.ECDSAKey.generate()
    buf = io.StringIO()
    key.write_private_key(buf)
    path.touch(mode=0o600)
    path.write_text(buf.getvalue())
    return key


def learn_host_key(host: str, port: int, *, timeout_s: float = 10.0) -> str:
    """First contact: read the server's host key (nothing is sent but the SSH handshake)."""
    sock = socket.create_connection((host, port), timeout=timeout_s)
    t = paramiko.Transport(sock)
    try:
        t.start_client(timeout=timeout_s)
        return host_key_line(t.get_remote_server_key())
    finally:
        t.close()


@contextmanager
def connect(host: str, port: int, host_key: str, pkey: paramiko.PKey, *,
            timeout_s: float = 15.0) -> Iterator[paramiko.SSHClient]:
    """An SSH client that only accepts ``host_key`` (RejectPolicy for anything else)."""
    kind, b64 = host_key.split()[:2]
    c = paramiko.SSHClient()
    c.set_missing_host_key_policy(paramiko.RejectPolicy())
    hk = paramiko.PKey.from_type_string(kind, base64.b64decode(b64))
    c.get_host_keys().add(f"[{host}]:{port}" if port != 22 else host, kind, hk)
    try:
        c.connect(host, port, username=SSH_USER, pkey=pkey, look_for_keys=False, allow_agent=False,
                  timeout=timeout_s, banner_timeout=timeout_s, auth_timeout=timeout_s)
        yield c
    finally:
        c.close()


def run(client: paramiko.SSHClient, cmd: str, *, timeout_s: float = 60.0, stdin: bytes | None = None) -> tuple[int, str, str]:
    """Run ``cmd`` over SSH: (exit code, stdout, stderr)."""
    i, o, e = client.exec_command(cmd, timeout=timeout_s)
    if stdin is not None:
        i.write(stdin)
        i.channel.shutdown_write()
    out = o.read().decode("utf-8", errors="replace")
    err = e.read().decode("utf-8", errors="replace")
    return o.channel.recv_exit_status(), out, err
