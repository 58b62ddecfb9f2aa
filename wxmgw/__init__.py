"""wxmgw: the WeChat mini-program conference media gateway (RTMP <-> RTP)."""

__version__ = "0.1.0"
