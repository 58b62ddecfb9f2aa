"""A real `wxmgw serve` process on free ports, for integration tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from wxmgw.procs import terminate

ROOT = Path(__file__).resolve().parents[2]


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_range(size: int) -> tuple[int, int]:
    """An even-aligned range of ``size`` UDP ports that are free now (best effort)."""
    for _ in range(200):
        lo = free_port(socket.SOCK_DGRAM) & ~1
        if lo + size > 65000:
            continue
        socks = []
        try:
            for port in range(lo, lo + size):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("0.0.0.0", port))
            return lo, lo + size - 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free UDP port range")


class GatewayProcess:
    """`python -m wxmgw.cli serve` with its own ports, log file and clean stop."""

    def __init__(self, tmp: Path, *, transport: str = "buffered", rtp_ports: int = 40,
                 extra: list[str] | None = None, root: Path = ROOT) -> None:
        """``root``: the checkout whose ``wxmgw`` runs (a benchmark compares two)."""
        self.transport = transport
        self.root = root
        for attempt in range(3):
            # Free when chosen, but another process (a player's or a publisher's
            # own connection) may take one before the gateway binds it: choose again.
            self.thrift_port = free_port()
            self.status_port = free_port()
            self.rtp_lo, self.rtp_hi = free_port_range(rtp_ports)
            self.log_path = tmp / f"wxmgw-{self.thrift_port}.log"
            self.args = [
                sys.executable, "-m", "wxmgw.cli", "serve",
                "--thrift-host", "127.0.0.1", "--thrift-port", str(self.thrift_port),
                "--status-port", str(self.status_port), "--transport", transport,
                "--rtp-ports", f"{self.rtp_lo}-{self.rtp_hi}", "--media-ip", "127.0.0.1",
                "--log-file", str(self.log_path), "--log-format", "json", *(extra or []),
            ]
            try:
                self._launch()
                return
            except RuntimeError:
                if attempt == 2 or "Address already in use" not in self.log():
                    raise

    def _launch(self) -> None:
        self.proc = subprocess.Popen(self.args, cwd=self.root,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 20
        while True:
            try:
                self.state()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"wxmgw did not start; log:\n{self.log()}") from None
                time.sleep(0.05)

    def state(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.status_port}/monitor/state"
        with urllib.request.urlopen(url, timeout=2) as r:
            body: dict[str, Any] = json.load(r)
            return body

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = (json.loads(line) for line in self.log().splitlines() if line.startswith("{"))
        return [e for e in lines if e.get("event") == name]

    def stop(self, timeout: float = 10) -> int:
        return terminate(self.proc, timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would: no graceful stop."""
        self.proc.kill()
        self.proc.wait(10)

    def start_again(self) -> None:
        """The same command line again (same ports, same state), once it is ready."""
        self._launch()
