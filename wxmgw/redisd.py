"""A redis-server as a child process on loopback, for ``make demo-cluster`` and the tests.

It runs with ``appendonly yes`` in its own work directory, as the README
recommends for production, so that ``restart()`` (kill and start again on
the same port) keeps every key: what a Redis restart looks like to the
fronts and the gateways.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis

from wxmgw.errors import WxmgwError
from wxmgw.nginx import free_port
from wxmgw.procs import ChildServer


class RedisError(WxmgwError):
    """redis-server could not be started or reached."""


class RedisServer(ChildServer):
    """One redis-server on 127.0.0.1; a context manager (:class:`~wxmgw.procs.ChildServer`)."""

    def __init__(self, workdir: Path, *, port: int | None = None,
                 start_timeout: float = 10.0) -> None:
        self.workdir = workdir.resolve()
        self.port = port or free_port()
        self.start_timeout = start_timeout

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.workdir), "--appendonly", "yes", "--save", "",
                "--protected-mode", "no", "--logfile", str(self.workdir / "redis.log")]
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + self.start_timeout
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.RedisError:
                    if not self.running or time.monotonic() > deadline:
                        self.stop()
                        raise RedisError(f"redis-server did not start on {self.port}") from None
                    time.sleep(0.02)
        finally:
            client.close()
