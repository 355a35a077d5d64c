"""Real servers for end-to-end tests: started on a free 127.0.0.1 port and
stopped by the PID (and process group) we started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A server process in its own session, so that stopping it also ends the
    workers it forked (they share its process group)."""

    def __init__(self, argv: Sequence[str], port: int, *, env: dict[str, str] | None = None,
                 cwd: str | None = None, log: str | None = None) -> None:
        self.argv = list(argv)
        self.port = port
        self.env = env
        self.cwd = cwd
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Server:
        out = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[0]} exited with {self.proc.returncode}:\n"
                                   f"{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)  # polling for readiness, not timing a behaviour
        self.stop()
        raise RuntimeError(f"{self.argv[0]} did not listen on {self.port}:\n{self.log()}")

    def log(self) -> str:
        if not self.log_path or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, errors="replace") as f:
            return f.read()[-4000:]

    def stop(self, timeout: float = 20.0) -> None:
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
