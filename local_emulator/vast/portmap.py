"""VAST's port mapping, faked: a container port a create asked for (``"-p 8443:8443"`` in its ``env``)
is reachable on a host port VAST picks, which the instance JSON (``ports``) and the box's environment
(``VAST_TCP_PORT_<container port>``) name.

A fake box shares this machine's network, so its "container port" is a loopback port: ``PortRelay``
listens on a free host port and relays every connection, byte for byte in both directions, to
``127.0.0.1:<container port>``. (Two fake boxes asking for the same container port reach the same
loopback port; the one that could not bind it reports the port it chose instead, unmapped.)
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading

PORT_REQUEST = re.compile(r"^-p (\d{1,5}):(\d{1,5})(?:/tcp)?$")
_CHUNK = 65536


def requested_ports(env: dict[str, object]) -> list[int]:
    """The container ports of the create's ``-p HOST:CONTAINER`` entries (the vastai SDK's ``parse_env``
    turns ``--env "-p 8443:8443"`` into the key ``"-p 8443:8443"``)."""
    ports = []
    for key in env:
        m = PORT_REQUEST.match(str(key))
        if m and 0 < int(m.group(2)) < 65536:
            ports.append(int(m.group(2)))
    return sorted(set(ports))


class PortRelay:
    def __init__(self, host: str, container_port: int) -> None:
        self.container_port = container_port
        self._listener = socket.create_server((host, 0))
        self.host_port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name=f"vast-port-{self.host_port}", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.container_port), timeout=5)
            except OSError:
                client.close()  # nothing listens in the "container": the connection is refused
                continue
            upstream.settimeout(None)
            pair = [client, upstream]
            with self._lock:
                self._conns += pair
            done = threading.Barrier(2, action=lambda p=pair: self._forget(p))  # both directions ended
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b, done), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, done: threading.Barrier) -> None:
        try:
            while data := src.recv(_CHUNK):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
            with contextlib.suppress(threading.BrokenBarrierError):
                done.wait()

    def _forget(self, pair: list[socket.socket]) -> None:
        with self._lock:
            self._conns = [s for s in self._conns if s not in pair]
        for s in pair:
            s.close()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it (close alone does not)
        self._listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.close()
