"""One paramiko SSH server per running instance: key auth, exec with exit codes, SFTP in its folder.

Choice (documented as the task asks): the SSH listener lives in the fake's own process, one
accept thread per instance, while the instance itself is a separate process group running its
``onstart``. Every ``exec`` request runs ``bash -c CMD`` with the instance's environment and
cwd = the instance's folder, in a session of its own (a process cannot join a group of another
session); the endpoint keeps those and kills their groups when it closes, so destroying the
instance also ends what SSH started. Closing the listener closes the port.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import paramiko
from paramiko.sftp import SFTP_NO_SUCH_FILE, SFTP_OK, SFTP_PERMISSION_DENIED

from spotleash.log import get_logger

log = get_logger("local_emulator.vast.ssh")


def _rooted(root: Path, path: str) -> Path:
    """Map an SFTP path (absolute or relative) into ``root``; refuse to leave it."""
    rel = os.path.normpath("/" + path).lstrip("/")
    full = (root / rel).resolve() if rel else root.resolve()
    if full != root.resolve() and root.resolve() not in full.parents:
        raise PermissionError(path)
    return full


class _Handle(paramiko.SFTPHandle):
    def stat(self) -> Any:
        f = getattr(self, "readfile", None) or getattr(self, "writefile", None)
        try:
            return paramiko.SFTPAttributes.from_stat(os.fstat(f.fileno()))  # type: ignore[union-attr]
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)


class RootedSFTP(paramiko.SFTPServerInterface):
    """SFTP where ``/`` is the instance's own folder."""

    def __init__(self, server: Any, *args: Any, root: Path, **kwargs: Any) -> None:
        super().__init__(server, *args, **kwargs)
        self.root = root

    def _path(self, path: str) -> Path:
        return _rooted(self.root, path)

    def canonicalize(self, path: str) -> str:
        return os.path.normpath("/" + path)

    def list_folder(self, path: str) -> Any:
        try:
            p = self._path(path)
            out = []
            for name in os.listdir(p):
                attr = paramiko.SFTPAttributes.from_stat(os.lstat(p / name))
                attr.filename = name
                out.append(attr)
            return out
        except PermissionError:
            return SFTP_PERMISSION_DENIED
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)

    def stat(self, path: str) -> Any:
        try:
            return paramiko.SFTPAttributes.from_stat(os.stat(self._path(path)))
        except PermissionError:
            return SFTP_PERMISSION_DENIED
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)

    lstat = stat

    def open(self, path: str, flags: int, attr: Any) -> Any:  # noqa: ARG002
        try:
            p = self._path(path)
            fd = os.open(p, flags | getattr(os, "O_BINARY", 0), 0o644)
        except PermissionError:
            return SFTP_PERMISSION_DENIED
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)
        if flags & os.O_WRONLY:
            mode = "ab" if flags & os.O_APPEND else "wb"
        elif flags & os.O_RDWR:
            mode = "a+b" if flags & os.O_APPEND else "r+b"
        else:
            mode = "rb"
        f = os.fdopen(fd, mode)
        h = _Handle(flags)
        h.filename = str(p)  # type: ignore[attr-defined]
        h.readfile = f  # type: ignore[attr-defined]
        h.writefile = f  # type: ignore[attr-defined]
        return h

    def remove(self, path: str) -> int:
        try:
            os.remove(self._path(path))
        except PermissionError:
            return SFTP_PERMISSION_DENIED
        except FileNotFoundError:
            return SFTP_NO_SUCH_FILE
        except OSError as e:
            return int(paramiko.SFTPServer.convert_errno(e.errno))
        return SFTP_OK

    def mkdir(self, path: str, attr: Any) -> int:  # noqa: ARG002
        try:
            os.mkdir(self._path(path))
        except PermissionError:
            return SFTP_PERMISSION_DENIED
        except OSError as e:
            return int(paramiko.SFTPServer.convert_errno(e.errno))
        return SFTP_OK

    def rename(self, oldpath: str, newpath: str) -> int:
        try:
            os.rename(self._path(oldpath), self._path(newpath))
        except PermissionError:
            return SFTP_PERMISSION_DENIED
        except OSError as e:
            return int(paramiko.SFTPServer.convert_errno(e.errno))
        return SFTP_OK


class _Server(paramiko.ServerInterface):
    def __init__(self, authorized: Callable[[], list[str]]) -> None:
        self.authorized = authorized
        self.requests: dict[int, bytes | None] = {}  # chanid -> command (None: a subsystem)
        self.cond = threading.Condition()

    def check_channel_request(self, kind: str, chanid: int) -> int:  # noqa: ARG002
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def get_allowed_auths(self, username: str) -> str:  # noqa: ARG002
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:  # noqa: ARG002
        offered = f"{key.get_name()} {key.get_base64()}"
        for line in self.authorized():
            parts = line.split()
            if len(parts) >= 2 and f"{parts[0]} {parts[1]}" == offered:
                return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        with self.cond:
            self.requests[channel.get_id()] = command
            self.cond.notify_all()
        return True

    def check_channel_subsystem_request(self, channel: paramiko.Channel, name: str) -> bool:
        ok = bool(super().check_channel_subsystem_request(channel, name))
        with self.cond:
            self.requests[channel.get_id()] = None
            self.cond.notify_all()
        return ok


class SshEndpoint:
    """A listener on ``host:port`` (0 = pick one) serving one instance."""

    def __init__(
        self,
        *,
        host: str,
        host_key: paramiko.PKey,
        root: Path,
        env: Mapping[str, str],
        authorized: Callable[[], list[str]],
        name: str,
    ) -> None:
        self.host_key = host_key
        self.root = root
        self.env = dict(env)
        self.authorized = authorized
        self._procs: list[subprocess.Popen[bytes]] = []
        self.name = name
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.host, self.port = self._sock.getsockname()[:2]
        self._stop = threading.Event()
        self._transports: list[paramiko.Transport] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, name=f"vast-ssh-{name}", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        t = paramiko.Transport(conn)
        with self._lock:
            if self._stop.is_set():
                conn.close()
                return
            self._transports.append(t)
        t.add_server_key(self.host_key)
        t.set_subsystem_handler("sftp", paramiko.SFTPServer, RootedSFTP, root=self.root)
        server = _Server(self.authorized)
        try:
            t.start_server(server=server)
            while t.is_active() and not self._stop.is_set():
                chan = t.accept(timeout=0.5)
                if chan is None:
                    continue
                threading.Thread(target=self._session, args=(chan, server), daemon=True).start()
        except (paramiko.SSHException, EOFError, OSError) as e:
            log.debug("ssh connection ended", instance=self.name, reason=str(e))
        finally:
            t.close()

    def _session(self, chan: paramiko.Channel, server: _Server) -> None:
        # An exec request arrives after the channel opens; SFTP is served by its subsystem handler.
        cid = chan.get_id()
        with server.cond:
            if not server.cond.wait_for(lambda: cid in server.requests or chan.closed, timeout=10.0):
                return
            raw = server.requests.pop(cid, None)
        if raw is None:
            return
        cmd = raw.decode("utf-8", errors="replace")
        code = self._run(cmd, chan)
        with contextlib.suppress(OSError, EOFError):
            chan.send_exit_status(code)
            chan.shutdown_write()
            chan.close()

    def _run(self, cmd: str, chan: paramiko.Channel) -> int:
        try:
            with self._lock:
                if self._stop.is_set():
                    return 255
                proc = subprocess.Popen(
                    ["bash", "-c", cmd], cwd=self.root, env=self.env, stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                )
                self._procs.append(proc)
        except OSError as e:
            chan.sendall_stderr(f"cannot run command: {e}\n".encode())
            return 127

        def pump_in() -> None:
            assert proc.stdin is not None
            with contextlib.suppress(OSError, EOFError, ValueError):
                while True:
                    data = chan.recv(32768)
                    if not data:
                        break
                    proc.stdin.write(data)
                    proc.stdin.flush()
            with contextlib.suppress(OSError):
                proc.stdin.close()

        def pump_err() -> None:
            assert proc.stderr is not None
            for chunk in iter(lambda: proc.stderr.read1(32768), b""):  # type: ignore[union-attr]
                with contextlib.suppress(OSError, EOFError):
                    chan.sendall_stderr(chunk)

        threading.Thread(target=pump_in, daemon=True).start()
        err = threading.Thread(target=pump_err, daemon=True)
        err.start()
        assert proc.stdout is not None
        for chunk in iter(lambda: proc.stdout.read1(32768), b""):  # type: ignore[union-attr]
            with contextlib.suppress(OSError, EOFError):
                chan.sendall(chunk)
        err.join(timeout=5)
        return proc.wait()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._sock.close()
        with self._lock:
            ts = list(self._transports)
            procs = list(self._procs)
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
        for t in ts:
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                t.close()
        self._thread.join(timeout=2)
