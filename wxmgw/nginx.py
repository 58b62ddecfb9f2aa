"""The nginx-rtmp live server as a child process, for ``make run`` and the tests.

The configuration comes from ``deploy/nginx-rtmp.conf.in``, whose ``@NAME@``
placeholders are replaced literally (nginx keeps ``$`` for its own variables).
Everything nginx writes (pid, logs, temp files) stays in one work directory.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

from .errors import WxmgwError
from .logs import event
from .procs import ChildServer

logger = logging.getLogger(__name__)

TEMPLATE = Path(__file__).resolve().parents[1] / "deploy" / "nginx-rtmp.conf.in"
RTMP_MODULE_CANDIDATES = (
    Path("/usr/lib/nginx/modules/ngx_rtmp_module.so"),  # Debian, Ubuntu
    Path("/usr/lib64/nginx/modules/ngx_rtmp_module.so"),  # Fedora, RHEL
    Path("/usr/local/nginx/modules/ngx_rtmp_module.so"),
)
_POLL_INTERVAL = 0.02


class NginxError(WxmgwError):
    """nginx could not be configured, started or reached."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rtmp_module_path() -> Path:
    """Where this machine's nginx keeps the dynamic RTMP module."""
    for path in RTMP_MODULE_CANDIDATES:
        if path.is_file():
            return path
    raise NginxError("ngx_rtmp_module.so not found; install libnginx-mod-rtmp")


def render_nginx_conf(
    workdir: Path,
    rtmp_port: int,
    http_port: int,
    notify_url: str | None = None,
    *,
    template: Path = TEMPLATE,
) -> Path:
    """Write ``workdir/nginx.conf`` from the template and return its path.

    With ``notify_url`` (the callroute front's ``.../rtmp``), nginx-rtmp asks
    ``<notify_url>/on_publish`` and ``<notify_url>/on_play`` before it lets a
    stream be published or played; without it the hooks are left out.
    """
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    hooks = ("on_publish", "on_play")
    values = {
        "@RTMP_MODULE@": str(rtmp_module_path()),
        "@WORKDIR@": str(workdir),
        "@RTMP_PORT@": str(rtmp_port),
        "@HTTP_PORT@": str(http_port),
    }
    for hook in hooks:
        values[f"@{hook.upper()}@"] = f"{hook} {notify_url}/{hook};" if notify_url else ""
    text = template.read_text()
    for name, value in values.items():
        text = text.replace(name, value)
    conf = workdir / "nginx.conf"
    conf.write_text(text)
    return conf


class NginxRtmp(ChildServer):
    """One nginx-rtmp process on loopback ports; a context manager (the master's pid is
    ``pid``, its worker is its child).

    ``start()`` returns once the RTMP port accepts TCP connections;
    ``restart()`` kills the process and starts a new one on the same ports,
    which is what a live-server crash looks like to the gateway.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        rtmp_port: int | None = None,
        http_port: int | None = None,
        notify_url: str | None = None,
        nginx_bin: str = "nginx",
        start_timeout: float = 10.0,
    ) -> None:
        self.workdir = workdir.resolve()
        self.rtmp_port = rtmp_port or free_port()
        self.http_port = http_port or free_port()
        self.notify_url = notify_url
        self.nginx_bin = nginx_bin
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    def rtmp_url(self, stream: str, app: str = "live") -> str:
        return f"rtmp://127.0.0.1:{self.rtmp_port}/{app}/{stream}"

    @property
    def stat_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/stat"

    def start(self) -> None:
        if self.running:
            return
        conf = render_nginx_conf(self.workdir, self.rtmp_port, self.http_port, self.notify_url)
        with open(self.workdir / "stderr.log", "ab") as stderr:
            self._proc = subprocess.Popen(
                [self.nginx_bin, "-c", str(conf), "-p", f"{self.workdir}/"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        event(logger, "nginx_started", rtmpPort=self.rtmp_port, httpPort=self.http_port)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise NginxError(f"nginx exited with {self._proc.returncode}: {self._log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.rtmp_port), timeout=1.0):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise NginxError(f"nginx not ready: {self._log_tail()}") from None
            time.sleep(_POLL_INTERVAL)

    def _log_tail(self) -> str:
        lines: list[str] = []
        for name in ("stderr.log", "error.log"):
            path = self.workdir / name
            if path.exists():
                lines += path.read_text(errors="replace").splitlines()[-5:]
        return " | ".join(lines)

    def stat(self) -> ET.Element:
        """The rtmp_stat XML document."""
        with urllib.request.urlopen(self.stat_url, timeout=5.0) as resp:
            return ET.fromstring(resp.read())

    def is_publishing(self, stream: str, app: str = "live") -> bool:
        """Whether ``stream`` of ``app`` has an active publisher."""
        for app_el in self.stat().iter("application"):
            if app_el.findtext("name") != app:
                continue
            for stream_el in app_el.iter("stream"):
                if stream_el.findtext("name") == stream:
                    return any(c.find("publishing") is not None for c in stream_el.iter("client"))
        return False
