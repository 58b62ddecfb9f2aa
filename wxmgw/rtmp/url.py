"""RTMP URLs: ``rtmp://`` and ``rtmps://`` as FFmpeg splits them into app and stream name.

Pure: a string in, a frozen dataclass out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from wxmgw.errors import ParseError

DEFAULT_PORT: Final = 1935
#: rtmps:// without a port: RTMP over TLS is usually served on HTTPS's port.
DEFAULT_TLS_PORT: Final = 443


@dataclass(frozen=True, slots=True)
class RtmpUrl:
    """``rtmp[s]://host[:port]/app[/instance]/stream[?query]`` as FFmpeg splits it.

    The query stays on the stream name, as FFmpeg sends it in ``play`` and
    ``publish`` (cloud live services authenticate with it: ``?txSecret=…``);
    ``tcUrl`` has none.
    """

    host: str
    port: int
    app: str
    stream: str
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> RtmpUrl:
        parts = urlsplit(url)
        if parts.scheme not in ("rtmp", "rtmps") or not parts.hostname:
            raise ParseError(f"not an rtmp:// or rtmps:// URL: {url!r}")
        segments = parts.path.lstrip("/").split("/")
        app_segments = 1 if len(segments) == 2 else 2
        if len(segments) < 2 or not segments[-1]:
            raise ParseError(f"RTMP URL without app and stream name: {url!r}")
        app = "/".join(segments[:app_segments])
        stream = "/".join(segments[app_segments:])
        if parts.query:
            stream += "?" + parts.query
        tls = parts.scheme == "rtmps"
        port = parts.port or (DEFAULT_TLS_PORT if tls else DEFAULT_PORT)
        return cls(parts.hostname, port, app, stream, tls)

    @property
    def tc_url(self) -> str:
        return f"{'rtmps' if self.tls else 'rtmp'}://{self.host}:{self.port}/{self.app}"
