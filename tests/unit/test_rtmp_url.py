"""RTMP URLs, split as FFmpeg splits them."""

from __future__ import annotations

import pytest

from wxmgw.errors import ParseError
from wxmgw.rtmp.url import RtmpUrl


@pytest.mark.parametrize(("url", "app", "stream", "port"), [
    ("rtmp://127.0.0.1:1936/live/cam", "live", "cam", 1936),
    ("rtmp://h/live/cam?token=a/b", "live", "cam?token=a/b", 1935),
    ("rtmp://h/app/inst/cam", "app/inst", "cam", 1935),
    ("rtmps://h/live/cam?txSecret=s&txTime=5F", "live", "cam?txSecret=s&txTime=5F", 443),
    ("rtmps://h:8443/live/cam", "live", "cam", 8443),
])
def test_url_split_like_ffmpeg(url: str, app: str, stream: str, port: int) -> None:
    parsed = RtmpUrl.parse(url)
    assert (parsed.app, parsed.stream, parsed.port) == (app, stream, port)
    scheme = url.split(":")[0]
    assert parsed.tls == (scheme == "rtmps")
    assert parsed.tc_url == f"{scheme}://{parsed.host}:{port}/{app}"  # no query: FFmpeg's


@pytest.mark.parametrize("url", ["http://h/live/x", "rtmp://h/live", "rtmp:///live/x"])
def test_bad_urls(url: str) -> None:
    with pytest.raises(ParseError):
        RtmpUrl.parse(url)
