"""Shared fixtures of the integration tests: real live servers and ffmpeg publishers.

``live`` is nginx-rtmp unless a test module parametrizes it (indirectly) over
:data:`LIVE_SERVERS`: the core pull, push, mix and AvSync tests run against
node-media-server as well, a live server with a GOP cache.

The gateway runs monkey-patched, so the tests do too: ``patch_all()`` comes
before every other import.
"""

from gevent import monkey

monkey.patch_all()

import subprocess  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from wxmgw.nginx import NginxRtmp, free_port  # noqa: E402
from wxmgw.nms import NodeMediaServer  # noqa: E402

__all__ = ["free_port"]

LiveServer = NginxRtmp | NodeMediaServer
#: ``@pytest.mark.parametrize("live", LIVE_SERVERS, indirect=True)``: both live servers.
LIVE_SERVERS = ["nginx-rtmp", "node-media-server"]

Publish = Callable[..., "subprocess.Popen[bytes]"]


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[NginxRtmp]:
    """An nginx-rtmp on ephemeral loopback ports; ``.rtmp_url(stream)`` names a stream."""
    with NginxRtmp(tmp_path / "nginx") as server:
        yield server


def ffmpeg_publish_args(
    url: str,
    *,
    tone_hz: int = 1000,
    seconds: float = 30.0,
    audio: bool = True,
    video: bool = True,
    vcodec: str = "libx264",
    acodec: str = "aac",
    sample_rate: int = 44100,
    fps: int = 25,
    gop: int | None = None,
) -> list[str]:
    """The command line of a live publisher: lavfi test pattern and sine, in real time.

    A keyframe every ``gop`` frames (every second by default)."""
    args = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-re"]
    if video:
        args += ["-f", "lavfi", "-i", f"testsrc=size=320x240:rate={fps}:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency={tone_hz}:sample_rate={sample_rate}"
                 f":duration={seconds}"]
    if video:
        args += ["-c:v", vcodec, "-pix_fmt", "yuv420p", "-g", str(gop or fps)]
        if vcodec == "libx264":
            args += ["-profile:v", "baseline", "-tune", "zerolatency"]
    else:
        args += ["-vn"]
    if audio:
        args += ["-c:a", acodec, "-ar", str(sample_rate), "-ac", "1"]
    return [*args, "-f", "flv", url]


@pytest.fixture
def ffmpeg_publish() -> Iterator[Publish]:
    """Start ffmpeg publishers (see :func:`ffmpeg_publish_args`); all killed at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def publish(url: str, **kwargs: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            ffmpeg_publish_args(url, **kwargs),  # type: ignore[arg-type]
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        procs.append(proc)
        return proc

    yield publish
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.fixture(scope="module")
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """One live server for a whole test module (``nginx`` is one per test): nginx-rtmp,
    or the one named by an indirect parameter (:data:`LIVE_SERVERS`)."""
    kind = getattr(request, "param", "nginx-rtmp")
    workdir = tmp_path_factory.mktemp(kind)
    server: LiveServer = NginxRtmp(workdir) if kind == "nginx-rtmp" else NodeMediaServer(workdir)
    with server:
        yield server


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts (publishers, GStreamer peers, players); killed at teardown."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
