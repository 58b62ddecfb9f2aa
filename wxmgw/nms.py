"""node-media-server (4.x, npm) as a child process: the tests' second live server.

It behaves as many live servers in the field do and nginx-rtmp does not: a
player that joins gets the media since the last keyframe (its GOP cache) in
one burst. ``make setup`` installs it, pinned, into
``deploy/node-media-server/node_modules``; ``deploy/node-media-server/start.js``
runs it on loopback with its defaults and answers which streams are being
published on a status port. The interface is :class:`~wxmgw.nginx.NginxRtmp`'s,
so a test takes either.
"""

from __future__ import annotations

import logging
import subprocess
import time
import urllib.request
from pathlib import Path

from .errors import WxmgwError
from .logs import event
from .nginx import free_port
from .procs import ChildServer

logger = logging.getLogger(__name__)

DIR = Path(__file__).resolve().parents[1] / "deploy" / "node-media-server"
_POLL_INTERVAL = 0.05


class NmsError(WxmgwError):
    """node-media-server is not installed, or did not start."""


class NodeMediaServer(ChildServer):
    """One node-media-server on loopback ports; a context manager.

    ``start()`` returns once it answers on its status port; ``restart()``
    kills it and starts it again on the same ports.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        rtmp_port: int | None = None,
        status_port: int | None = None,
        node_bin: str = "node",
        start_timeout: float = 15.0,
    ) -> None:
        self.workdir = workdir.resolve()
        self.rtmp_port = rtmp_port or free_port()
        self.status_port = status_port or free_port()
        self.node_bin = node_bin
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"node-media-server:{self.rtmp_port}"

    def rtmp_url(self, stream: str, app: str = "live") -> str:
        return f"rtmp://127.0.0.1:{self.rtmp_port}/{app}/{stream}"

    def start(self) -> None:
        if self.running:
            return
        if not (DIR / "node_modules" / "node-media-server").is_dir():
            raise NmsError(f"node-media-server is not installed in {DIR}: run `make setup`")
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.workdir / "nms.log", "ab") as log:
            self._proc = subprocess.Popen(
                [self.node_bin, str(DIR / "start.js"), str(self.rtmp_port),
                 str(self.status_port), str(self.workdir)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                self._publishing()
                break
            except OSError:
                if not self.running or time.monotonic() > deadline:
                    self.stop()
                    raise NmsError(f"node-media-server did not start: {self._log_tail()}") from None
                time.sleep(_POLL_INTERVAL)
        event(logger, "nms_started", rtmpPort=self.rtmp_port)

    def _log_tail(self) -> str:
        path = self.workdir / "nms.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        return " | ".join(lines[-5:])

    def _publishing(self) -> set[str]:
        url = f"http://127.0.0.1:{self.status_port}/publishing"
        with urllib.request.urlopen(url, timeout=5.0) as resp:
            return set(resp.read().decode().split())

    def is_publishing(self, stream: str, app: str = "live") -> bool:
        """Whether ``stream`` of ``app`` has an active publisher."""
        return f"/{app}/{stream}" in self._publishing()
