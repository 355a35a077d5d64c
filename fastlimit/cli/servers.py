"""Real servers on loopback, for the demo and the end-to-end tests: started
on a free 127.0.0.1 port, stopped by the PID (and process group) started."""

from __future__ import annotations

import http.client
import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection, Mapping, Sequence
from typing import IO, NamedTuple

__all__ = ["Reply", "Server", "free_port", "gunicorn_argv", "request"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on (right now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A server process in its own session, so that stopping it also ends the
    workers it forked (they share its process group).

    Example:
        >>> import sys
        >>> port = free_port()
        >>> argv = [sys.executable, "-m", "http.server", "-b", "127.0.0.1", str(port)]
        >>> with Server(argv, port) as server:      # doctest: +SKIP
        ...     server.pid
    """

    def __init__(self, argv: Sequence[str], port: int, *, env: Mapping[str, str] | None = None,
                 cwd: str | None = None, log: str | None = None,
                 unix_socket: str | None = None) -> None:
        self.argv = list(argv)
        self.port = port
        self.unix_socket = unix_socket  # listens there instead of on 127.0.0.1:port
        self.env = None if env is None else dict(env)
        self.cwd = cwd
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the server is not running")
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> Server:
        """Start it and wait until it accepts connections."""
        out: IO[bytes] | int = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            if not isinstance(out, int):
                out.close()  # the child has its own copy
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise RuntimeError(f"{self.argv[0]} exited with {code}:\n{self.log()}")
            try:
                if self.unix_socket is not None:
                    with socket.socket(socket.AF_UNIX) as sock:
                        sock.settimeout(0.5)
                        sock.connect(self.unix_socket)
                    return self
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)  # polling for readiness, not timing a behaviour
        self.stop()
        where = self.unix_socket or self.port
        raise RuntimeError(f"{self.argv[0]} did not listen on {where}:\n{self.log()}")

    def children(self) -> list[int]:
        """PIDs of the server's direct children (its workers)."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            # the command name may hold spaces and parentheses: fields start after the last ')'
            if int(stat[stat.rindex(b")") + 2:].split()[1]) == self.pid:
                found.append(int(entry))
        return sorted(found)

    def wait_for_children(self, count: int, *, besides: Collection[int] = (),
                          timeout: float = 30.0) -> list[int]:
        """Poll until the server has ``count`` children other than
        ``besides`` (its workers, forked after it listens); return them."""
        deadline = time.monotonic() + timeout
        while True:
            found = [pid for pid in self.children() if pid not in besides]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline or self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[0]} did not start {count} workers:\n{self.log()}")
            time.sleep(0.05)  # polling for readiness, not timing a behaviour

    def log(self) -> str:
        if not self.log_path or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, errors="replace") as f:
            return f.read()[-4000:]

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the server, SIGKILL its process group if it lingers."""
        if self.proc is None:
            return
        pid = self.proc.pid
        if self.proc.poll() is None:
            os.kill(pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(pid, signal.SIGKILL)
                self.proc.wait(timeout)
        try:  # workers that outlived their master: same group, ours to end
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc = None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def gunicorn_argv(app: str, port: int, *, workers: int, options: Sequence[str] = ()) -> list[str]:
    """The command line of a gunicorn serving ``app`` on 127.0.0.1:``port``,
    from the environment this Python runs in."""
    exe = shutil.which("gunicorn", path=os.path.dirname(sys.executable))
    argv = [exe] if exe else [sys.executable, "-m", "gunicorn"]
    argv += ["--bind", f"127.0.0.1:{port}", "--workers", str(workers), *options]
    try:
        known = importlib.import_module("gunicorn.config").KNOWN_SETTINGS
    except ImportError:
        known = []
    # Recent gunicorns open a control socket at one path per user: two
    # servers at once would fight over it, and nothing here needs it.
    if any(s.name == "control_socket_disable" for s in known):
        argv.append("--no-control-socket")
    return [*argv, app]


class Reply(NamedTuple):
    """One HTTP answer: status, headers (names in lower case), body."""

    status: int
    headers: dict[str, str]
    body: bytes


def request(port: int, method: str = "GET", path: str = "/", *,
            headers: Mapping[str, str] | None = None, source: str = "127.0.0.1",
            timeout: float = 30.0) -> Reply:
    """One request to 127.0.0.1:``port`` on a new connection, sent from the
    loopback address ``source`` (any 127.x.y.z: a different client)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                      source_address=(source, 0))
    try:
        conn.request(method, path, headers=dict(headers or {}))
        r = conn.getresponse()
        body = r.read()
        return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, body)
    finally:
        conn.close()
